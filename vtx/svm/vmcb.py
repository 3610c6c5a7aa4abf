"""The virtual machine control block (VMCB) as a frozen value.

The VMCB is a 4-KByte page: the control area (offsets 000h-3FFh) and the state-save area
(400h-FFFh), laid out as AMD APM Vol. 2 Appendix B "Layout of VMCB" tables B-1 and B-2 say
(:data:`vtx.svm.spec.VMCB_FIELDS`). Fields are named as the members of Linux's ``struct
vmcb_control_area`` / ``struct vmcb_save_area`` with an area prefix: ``control.intercepts[3]``,
``control.asid``, ``save.efer``, ``save.cs.attrib``. The older Linux names of
:data:`vtx.svm.spec.ALIASES` (``control.intercept``, ``control.nested_ctl``) are accepted on input.

The VMCB clean field (§15.15.3 "VMCB Clean Field") lets the processor keep cached copies of
groups of fields; :func:`compute_clean_bits` gives the bits a hypervisor may set after changing
one VMCB into another.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Literal

import attrs

from vtx.bits import mask, parse_int
from vtx.errors import InputError
from vtx.inputs import shown
from vtx.svm.spec import ALIASES, CLEAN_BITS, LAYOUT, VMCB_FIELDS, Alias, VmcbField
from vtx.typecheck import checked

_INDEX = {f.name: i for i, f in enumerate(VMCB_FIELDS)}
_ZEROS = (0,) * len(VMCB_FIELDS)
_CLEAN_INDICES = tuple((c.mask, tuple(_INDEX[f.name] for f in c.fields)) for c in CLEAN_BITS)
_ORDER: Literal["little"] = "little"

FieldValues = Mapping[str, object]
"""Field values by name (``control.asid``), value an int or a hex string."""


def _parse(where: str, raw: object, bits: int) -> int:
    try:
        value = parse_int(raw)
    except ValueError as e:
        raise InputError(where, shown(raw), f"a field value is an integer or hex string ({e})") from e
    if not 0 <= value <= mask(bits):
        raise InputError(where, hex(value) if value >= 0 else str(value),
                         f"wider than the {bits}-bit field (APM Vol. 2 Appendix B)")
    return value


@checked
def resolve(name: str) -> VmcbField | Alias:
    """The field or alias ``name`` names; InputError listing the areas if none."""
    field = VMCB_FIELDS.get(name)
    if field is not None:
        return field
    alias = ALIASES.get(name)
    if alias is not None:
        return alias
    raise InputError(name, "unknown", "not a VMCB field: names are Linux's struct vmcb_control_area / "
                     "vmcb_save_area members prefixed 'control.' or 'save.' (control.intercepts[3], save.efer)")


@checked
def split(name: str, raw: object) -> Iterator[tuple[VmcbField, int]]:
    """The fields a value for ``name`` (a field or an alias) sets, with their parts of the value."""
    target = resolve(name)
    value = _parse(name, raw, target.bits)
    if isinstance(target, VmcbField):
        yield target, value
        return
    for f in target.fields:
        yield f, value & f.mask
        value >>= f.bits


@checked
@attrs.frozen
class Vmcb:
    """A VMCB: the value of every field of both areas (0 if never written)."""

    values: tuple[int, ...] = attrs.field(default=_ZEROS, repr=False)

    @values.validator
    def _check(self, _: attrs.Attribute[tuple[int, ...]], values: tuple[int, ...]) -> None:
        if len(values) != len(VMCB_FIELDS):
            raise InputError("values", len(values), f"a VMCB has {len(VMCB_FIELDS)} fields")

    @classmethod
    def from_fields(cls, fields: FieldValues) -> Vmcb:
        """A VMCB holding ``fields`` (by name or alias; ints or hex strings). A value wider than its
        field is bad input, not truncated."""
        return cls().with_fields(fields)

    @checked
    def with_fields(self, fields: FieldValues) -> Vmcb:
        """A copy with several fields set (same input rules as :meth:`from_fields`)."""
        values = list(self.values)
        for name, raw in fields.items():
            for field, value in split(name, raw):
                values[_INDEX[field.name]] = value
        return Vmcb(tuple(values))

    @checked
    def get(self, field: VmcbField) -> int:
        return self.values[_INDEX[field.name]]

    def __getitem__(self, name: str) -> int:
        target = resolve(name)
        if isinstance(target, VmcbField):
            return self.get(target)
        value, shift = 0, 0
        for f in target.fields:
            value |= self.get(f) << shift
            shift += f.bits
        return value

    def nonzero_fields(self) -> dict[str, int]:
        """Every field with a non-zero value, by name, in offset order of the table."""
        return {f.name: v for f, v in zip(VMCB_FIELDS, self.values, strict=True) if v}

    def to_bytes(self) -> bytes:
        """The 4-KByte VMCB page, each field little-endian at its APM offset; reserved bytes 0."""
        page = bytearray(LAYOUT.size)
        for f, v in zip(VMCB_FIELDS, self.values, strict=True):
            page[f.offset:f.end] = v.to_bytes(f.size, _ORDER)
        return bytes(page)

    @classmethod
    @checked
    def from_bytes(cls, data: bytes) -> Vmcb:
        """The VMCB in a 4-KByte page (reserved bytes are not kept)."""
        if len(data) != LAYOUT.size:
            raise InputError("vmcb", f"{len(data)} bytes", f"a VMCB page is {LAYOUT.size} bytes")
        return cls(tuple(int.from_bytes(data[f.offset:f.end], _ORDER) for f in VMCB_FIELDS))


@checked
def compute_clean_bits(old: Vmcb, new: Vmcb) -> int:
    """The clean bits a hypervisor may set for ``new`` when the processor last ran ``old``: one bit
    per group of §15.15.3 whose fields are all unchanged (undefined bits stay 0)."""
    clean = 0
    for bit, indices in _CLEAN_INDICES:
        if all(old.values[i] == new.values[i] for i in indices):
            clean |= bit
    return clean
