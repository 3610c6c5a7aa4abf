"""The exit-information formats of ``spec/vmx/exit_qualifications.toml``: exit qualifications,
interruption / IDT-vectoring information and instruction information, each an encoder and a
decoder over named fields (SDM Vol. 3C §29.2 "Recording VM-Exit Information and Updating VM-Entry
Control Fields"). ``[[ept_violation]]`` stays with :mod:`vtx.paging.ept`, which produces it."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from vtx.bits import BitRange
from vtx.citation import Citation
from vtx.errors import InputError, SpecError
from vtx.spec import _bits, _Table

_SKIP = ("citations", "enum", "ept_violation")


@attrs.frozen
class Layout:
    """One exit-information format: named bit fields and, for some, named values."""

    name: str
    fields: Mapping[str, BitRange]
    enums: Mapping[str, Mapping[str, int]]
    citations: Mapping[str, Citation]

    def encode(self, **values: int | str) -> int:
        """The field value with each named field set (a value may be an enum name); InputError for
        an unknown field or a value that does not fit."""
        out = 0
        for name, given in values.items():
            if name not in self.fields:
                raise InputError(f"{self.name}.{name}", given, f"known fields: {', '.join(self.fields)}")
            value = self.value(name, given) if isinstance(given, str) else given
            bits = self.fields[name]
            if not 0 <= value < 1 << bits.width:
                raise InputError(f"{self.name}.{name}", value, f"does not fit bits {bits}")
            out = bits.put(out, value)
        return out

    def decode(self, raw: int) -> dict[str, int]:
        """Every named field of ``raw``."""
        return {name: bits.get(raw) for name, bits in self.fields.items()}

    def value(self, field: str, name: str) -> int:
        """The number of the named value ``name`` of ``field``."""
        try:
            return self.enums[field][name]
        except KeyError:
            raise InputError(f"{self.name}.{field}", repr(name), "no such named value") from None

    @property
    def defined_mask(self) -> int:
        return sum(b.mask for b in self.fields.values())


def _load() -> dict[str, Layout]:
    t = _Table("vmx/exit_qualifications.toml")
    enums: dict[tuple[str, str], dict[str, int]] = {}
    for row in t.rows("enum"):
        t.cite("enum", row)
        names = row["layout"] if isinstance(row["layout"], list) else [row["layout"]]
        for layout_name in names:
            enums[(layout_name, row["field"])] = dict(row["values"])
    layouts = {}
    for name, rows in t.data.items():
        if name in _SKIP:
            continue
        fields: dict[str, BitRange] = {}
        cites: dict[str, Citation] = {}
        used = 0
        for r in rows:
            where = t.where(name, r)
            bits = _bits(r["bits"], where)
            if used & bits.mask or bits.hi > 63:
                raise SpecError(where, str(bits), "bits overlap or lie above 63")
            used |= bits.mask
            fields[r["name"]] = bits
            cites[r["name"]] = t.cite(name, r)
        named = {f: enums.get((name, f), enums.get(("*", f), {})) for f in fields}
        for f, values in named.items():
            for v in values.values():
                if not 0 <= v < 1 << fields[f].width:
                    raise SpecError(f"{t.relpath} [[enum]] {name}.{f}", v, "does not fit the field")
        layouts[name] = Layout(name, fields, {f: v for f, v in named.items() if v}, cites)
    for layout, field in enums:
        if layout != "*" and (layout not in layouts or field not in layouts[layout].fields):
            raise SpecError(f"{t.relpath} [[enum]]", f"{layout}.{field}", "names no layout field")
    return layouts


LAYOUTS = _load()
"""Every exit-information layout by name (``cr_access``, ``io_instruction``, ``interruption_info``...)."""
