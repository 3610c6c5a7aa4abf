"""The line formats of VMCS dumps (``spec/dumps/vmcs_dump.toml``), compiled once.

Every named group of a pattern is a VMCS field of ``spec/vmx/fields.toml`` (or ``reported``, a
value a user-space VMM reports that is no field); a table that names an unknown field, section,
source or conversion is a :class:`~vtx.errors.SpecError`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from vtx.bits import BitRange
from vtx.errors import SpecError
from vtx.spec import VMCS_FIELDS, _bits, _Table, reg_bit

_T = _Table("dumps/vmcs_dump.toml")
FORMATS = ("kvm", "xen", "qemu")
"""The text formats, in the order an ambiguous dump is named."""
SECTIONS = ("guest", "host", "control")
REPORTED = "reported"
HEX = r"(?:0x)?[0-9a-fA-F]+"


@attrs.frozen
class Marker:
    """A line that opens a dump: ``header`` (printed just before it) or ``start`` (its first line)."""

    formats: frozenset[str]
    kind: str
    regex: re.Pattern[str]


@attrs.frozen
class Section:
    formats: frozenset[str]
    name: str
    regex: re.Pattern[str]


@attrs.frozen
class LineFormat:
    """One printed line: the formats and section it appears in, and how its values map to fields."""

    formats: frozenset[str]
    section: str
    regex: re.Pattern[str]
    convert: Mapping[str, str]


def _compile(pattern: str, where: str) -> re.Pattern[str]:
    try:
        regex = re.compile(pattern.replace("{hex}", HEX))
    except re.error as e:
        raise SpecError(where, pattern, f"not a regular expression ({e})") from e
    for group in regex.groupindex:
        if group != REPORTED and group not in VMCS_FIELDS:
            raise SpecError(where, group, "a named group must be a VMCS field of spec/vmx/fields.toml or 'reported'")
    return regex


def _formats(row: Mapping[str, object], where: str) -> frozenset[str]:
    formats = row["formats"]
    if not isinstance(formats, list) or not formats or any(f not in FORMATS for f in formats):
        raise SpecError(where, formats, f"formats must be a non-empty list of {', '.join(FORMATS)}")
    return frozenset(str(f) for f in formats)


def _check_src(row: Mapping[str, Any], where: str) -> None:
    for key in row.get("src", []):
        if key not in _T.data["sources"]:
            raise SpecError(where, key, "src must name a [sources] key")


def _load_markers() -> tuple[Marker, ...]:
    out = []
    for i, r in enumerate(_T.rows("marker")):
        where = f"{_T.relpath} [[marker]] #{i + 1}"
        if r["kind"] not in ("header", "start"):
            raise SpecError(where, r["kind"], "kind must be header or start")
        _check_src(r, where)
        out.append(Marker(_formats(r, where), r["kind"], _compile(r["pattern"], where)))
    return tuple(out)


def _load_sections() -> tuple[Section, ...]:
    out = []
    for r in _T.rows("section"):
        where = f"{_T.relpath} [[section]] {r['name']}"
        if r["name"] not in SECTIONS:
            raise SpecError(where, r["name"], f"section must be one of {', '.join(SECTIONS)}")
        out.append(Section(_formats(r, where), r["name"], _compile(r["pattern"], where)))
    return tuple(out)


def _load_lines() -> tuple[LineFormat, ...]:
    out = []
    for i, r in enumerate(_T.rows("line")):
        where = f"{_T.relpath} [[line]] #{i + 1}"
        if r["section"] not in SECTIONS:
            raise SpecError(where, r["section"], f"section must be one of {', '.join(SECTIONS)}")
        _check_src(r, where)
        for label, stem in (r.get("each") or {"": ""}).items():
            def fill(s: str, label: str = label, stem: str = stem) -> str:
                return s.replace("{label}", label).replace("{stem}", stem)

            convert = {fill(k): v for k, v in r.get("convert", {}).items()}
            regex = _compile(fill(r["pattern"]), where)
            for group, name in convert.items():
                if name not in CONVERSIONS or group not in regex.groupindex:
                    raise SpecError(where, f"{group} = {name}", "convert names a group of the pattern and one of "
                                    f"{', '.join(CONVERSIONS)}")
            out.append(LineFormat(_formats(r, where), r["section"], regex, convert))
    return tuple(out)


def _qemu_segment() -> Callable[[int], int]:
    """QEMU's printed segment flags (the descriptor's bits 63:32) as VMCS access rights, as KVM
    builds them (SDM Vol. 3C §26.4.1 "Guest Register State"): the descriptor's type, S, DPL, P,
    AVL, L, D/B and G bits, and "unusable" when the segment is not present."""
    q = _T.data["qemu_segment"]
    offset = q["descriptor_offset"]
    table = _Table("kvm/boot.toml")
    bits = {r["name"]: _bits(r["bits"], table.where("descriptor_bit", r)) for r in table.rows("descriptor_bit")}
    pairs: list[tuple[BitRange, BitRange]] = []
    for name, ar_name in q["access_rights"].items():
        d = bits[name]
        pairs.append((BitRange(d.lo - offset, d.hi - offset), reg_bit("VMCS_ACCESS_RIGHTS", ar_name).bits))
    present = bits[q["present"]]
    present_flag = BitRange(present.lo - offset, present.hi - offset)
    unusable = reg_bit("VMCS_ACCESS_RIGHTS", q["unusable"]).bits

    def convert(flags: int) -> int:
        ar = 0
        for src, dst in pairs:
            ar = dst.put(ar, src.get(flags))
        return unusable.put(ar, int(not present_flag.get(flags)))

    return convert


CONVERSIONS: Mapping[str, Callable[[int], int]] = {"qemu_segment": _qemu_segment()}
MARKERS = _load_markers()
SECTION_HEADINGS = _load_sections()
LINES = _load_lines()
PROCESSOR: Mapping[str, Mapping[str, Any]] = {f: dict(_T.data["processor"].get(f, {})) for f in FORMATS}
"""Per format, the :class:`~vtx.vmx.entry.EntryContext` attributes its hypervisor guarantees."""
