"""The paging tables of ``spec/``, loaded once into frozen formats.

``spec/paging/guest.toml`` (IA-32 paging modes, entry bits, the page-fault error code),
``spec/paging/ept.toml`` (EPTP, EPT entries and memory types), ``spec/svm/npt.toml`` (the #NPF
fault code) and the ``[ept_violation]`` rows of ``spec/vmx/exit_qualifications.toml``. The
walkers compile these into masks once per configuration; nothing in ``vtx.paging`` hard-codes
a bit position.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from vtx.bits import BitRange
from vtx.citation import Citation
from vtx.errors import SpecError
from vtx.spec import REGISTERS, Catalogue, _bits, _Table
from vtx.typecheck import checked

LARGE_KINDS = ("leaf", "never", "always", "cr4.pse", "1gb_pages")
"""How a guest paging level may map a page (see spec/paging/guest.toml)."""


@attrs.frozen
class BitField:
    """A named bit or bit range of a register, entry or exit-information field."""

    name: str
    bits: BitRange
    title: str
    citation: Citation

    @property
    def mask(self) -> int:
        return self.bits.mask

    @property
    def lo(self) -> int:
        return self.bits.lo


@attrs.frozen
class LevelFormat:
    """One level of a paging structure: which address bits index it and what its entries hold.

    ``large`` says when an entry maps a page (``leaf``: always; ``never``; or a condition), and
    ``ps_unsupported`` what PS = 1 means where no page may be mapped (``reserved`` or
    ``ignored``). ``reserved`` and ``reserved_page`` are the fixed reserved bits of an entry
    that references a table and of one that maps a page.
    """

    name: str
    depth: int
    index: BitRange
    table: BitRange | None
    page: BitRange | None
    page_high: tuple[BitRange, int] | None
    large: str
    ps_unsupported: str
    reserved: int
    reserved_page: int
    citation: Citation

    @property
    def page_size(self) -> int:
        """The size in bytes of a page mapped by an entry of this level."""
        return 1 << self.index.lo


@attrs.frozen
class PagingMode:
    """A guest paging mode (32-bit, PAE, 4-level, 5-level) and its levels, root first."""

    name: str
    title: str
    entry_bytes: int
    linear_bits: int
    root: BitRange
    execute_disable: bool
    protection_keys: bool
    pdpte_registers: bool
    levels: tuple[LevelFormat, ...]
    citation: Citation


@attrs.frozen
class PatFormat:
    """The IA32_PAT MSR and the memory-type combination table (spec/paging/guest.toml)."""

    reset: int
    entry_bits: int
    type: BitRange
    types: Mapping[int, str]
    effective: Mapping[tuple[str, str], str]
    citation: Citation

    @checked
    def entry(self, pat: int, index: int) -> str:
        """The name of the memory type in PAT entry ``index`` of ``pat`` (KeyError: reserved)."""
        return self.types[self.type.get(pat >> (self.entry_bits * index))]


@attrs.frozen
class GuestPagingFormats:
    """Everything spec/paging/guest.toml says."""

    page_offset_bits: int
    registers: Mapping[tuple[str, str], BitField]
    entry: Catalogue[str, BitField]
    error_code: Catalogue[str, BitField]
    modes: Catalogue[str, PagingMode]
    pat: PatFormat

    def register(self, register: str, name: str) -> BitField:
        return self.registers[(register, name)]


@attrs.frozen
class WalkLength:
    length: int
    encoded: int
    capability: str
    citation: Citation


@attrs.frozen
class MemoryType:
    value: int
    name: str
    eptp_capability: str | None
    citation: Citation


@attrs.frozen
class Rule:
    """A catalogued rule: stable id, statement and citation."""

    id: str
    statement: str
    citation: Citation


@attrs.frozen
class EptFormats:
    """Everything spec/paging/ept.toml says."""

    entry_bytes: int
    eptp_checks: Catalogue[str, Rule]
    misconfigurations: Catalogue[str, Rule]
    eptp: Catalogue[str, BitField]
    walk_lengths: Catalogue[int, WalkLength]
    memory_types: Catalogue[int, MemoryType]
    entry: Catalogue[str, BitField]
    levels: tuple[LevelFormat, ...]


@attrs.frozen
class NptFormats:
    """Everything spec/svm/npt.toml says."""

    exit_code: int
    exit_info_1: Catalogue[str, BitField]
    citation: Citation


def _ranges(value: Any, where: str) -> int:
    m = 0
    for r in value:
        m |= _bits(r, where).mask
    return m


def _fields(t: _Table, kind: str) -> Catalogue[str, BitField]:
    rows = []
    for r in t.rows(kind):
        where = t.where(kind, r)
        bits = _bits(r["bits"] if "bits" in r else r["bit"], where)
        if bits.hi > 63:
            raise SpecError(where, str(bits), "bits must lie in 63:0")
        rows.append(BitField(r["name"], bits, r["title"], t.cite(kind, r)))
    return Catalogue(rows, lambda b: b.name, f"{t.relpath} {kind}")


def _level(t: _Table, kind: str, r: Mapping[str, Any], where: str, large_kinds: tuple[str, ...]) -> LevelFormat:
    high = r.get("page_high")
    large = r["large"]
    if large not in large_kinds:
        raise SpecError(where, large, f"large must be one of {large_kinds}")
    if (large == "never") != ("page" not in r) or (large == "leaf") == ("table" in r):
        raise SpecError(where, large, "a level has `page` iff it may map a page and `table` iff it is not a leaf")
    return LevelFormat(
        name=r["name"], depth=r["depth"], index=_bits(r["index"], where),
        table=_bits(r["table"], where) if "table" in r else None,
        page=_bits(r["page"], where) if "page" in r else None,
        page_high=(_bits(high["bits"], where), high["to"]) if high else None,
        large=large, ps_unsupported=r.get("ps_unsupported", "reserved"),
        reserved=_ranges(r["reserved"], where), reserved_page=_ranges(r["reserved_page"], where),
        citation=t.cite(kind, r),
    )


_TRANSLATION_REGISTERS = ("CR0", "CR3", "CR4", "IA32_EFER", "RFLAGS")
_REGISTER_NAMES = {"IA32_EFER": "efer"}


def _load_guest() -> GuestPagingFormats:
    t = _Table("paging/guest.toml")
    regs = {(_REGISTER_NAMES.get(reg.name, reg.name.lower()), b.name.lower()):
            BitField(b.name.lower(), b.bits, b.title, reg.citation)
            for reg in REGISTERS if reg.name in _TRANSLATION_REGISTERS for b in reg.bits}
    modes = []
    for m in t.rows("mode"):
        where = t.where("mode", m)
        levels = tuple(_level(t, "mode", lv, f"{where}.{lv['name']}", LARGE_KINDS) for lv in m["level"])
        depths = [lv.depth for lv in levels]
        if depths != list(range(len(levels), 0, -1)):
            raise SpecError(where, depths, "levels run from the root down to depth 1")
        if levels[0].index.hi + 1 != m["linear_bits"] or levels[-1].index.lo != t.data["page"]["offset_bits"]:
            raise SpecError(where, m["linear_bits"], "the indexes must cover the linear address above the page offset")
        modes.append(PagingMode(m["name"], m["title"], m["entry_bytes"], m["linear_bits"], _bits(m["root"], where),
                                m["execute_disable"], m["protection_keys"], m["pdpte_registers"], levels,
                                t.cite("mode", m)))
    return GuestPagingFormats(t.data["page"]["offset_bits"], regs, _fields(t, "entry_bit"),
                              _fields(t, "error_code_bit"), Catalogue(modes, lambda m: m.name, "paging mode"),
                              _load_pat(t))


def _load_pat(t: _Table) -> PatFormat:
    pat = t.data["pat"]
    where = f"{t.relpath} [pat]"
    if pat.get("cite") not in t.citations:
        raise SpecError(where, pat.get("cite"), "cite must name a [citations] key")
    types = {r["value"]: r["name"] for r in t.rows("pat_type")}
    effective: dict[tuple[str, str], str] = {}
    for r in t.rows("effective_memory_type"):
        key = (r["mtrr"], r["pat"])
        if key in effective or r["pat"] not in types.values() or r["effective"] not in types.values():
            raise SpecError(t.where("effective_memory_type", r), key, "a new (MTRR type, PAT type) of named types")
        effective[key] = r["effective"]
    mtrr_types = {m for m, _ in effective}
    if len(effective) != len(mtrr_types) * len(types):
        raise SpecError(f"{t.relpath} [[effective_memory_type]]", len(effective), "one row per (MTRR type, PAT type)")
    return PatFormat(pat["reset"], pat["entry_bits"], _bits(pat["type"], where), types, effective,
                     t.citations[pat["cite"]])


def _load_ept() -> EptFormats:
    t = _Table("paging/ept.toml")
    walks = Catalogue([WalkLength(r["length"], r["encoded"], r["capability"], t.cite("walk_length", r))
                       for r in t.rows("walk_length")], lambda w: w.length, "walk_length")
    types = Catalogue([MemoryType(r["value"], r["name"], r.get("eptp_capability"), t.cite("memory_type", r))
                       for r in t.rows("memory_type")], lambda m: m.value, "memory_type")
    kinds = ("leaf", "never", "pdpte_1gb", "pde_2mb")
    levels = tuple(_level(t, "level", r, t.where("level", r), kinds) for r in t.rows("level"))
    rules = {kind: Catalogue([Rule(r["id"], r["statement"], t.cite(kind, r)) for r in t.rows(kind)],
                             lambda r: r.id, kind) for kind in ("eptp_check", "misconfiguration")}
    return EptFormats(t.data["entry_bytes"], rules["eptp_check"], rules["misconfiguration"], _fields(t, "eptp_bit"),
                      walks, types, _fields(t, "entry_bit"), levels)


def _load_npt() -> NptFormats:
    t = _Table("svm/npt.toml")
    npf = t.data["npf"]
    if npf.get("cite") not in t.citations:
        raise SpecError(f"{t.relpath} [npf]", npf.get("cite"), "cite must name a [citations] key")
    return NptFormats(npf["exit_code"], _fields(t, "exit_info_1_bit"), t.citations[npf["cite"]])


def _load_qualifications() -> Catalogue[str, BitField]:
    t = _Table("vmx/exit_qualifications.toml")
    quals = _fields(t, "ept_violation")
    used = 0
    for q in quals:
        if used & q.mask:
            raise SpecError(f"{t.relpath} [[ept_violation]] {q.name}", str(q.bits), "bits overlap")
        used |= q.mask
    return quals


GUEST = _load_guest()
"""Guest paging formats (SDM Vol. 3A Chapter 5 "Paging")."""

EPT = _load_ept()
"""EPT formats (SDM Vol. 3C §30.3 "The Extended Page Table Mechanism (EPT)")."""

NPT = _load_npt()
"""The #NPF exit of AMD nested paging (APM Vol. 2 §15.25 "Nested Paging")."""

EPT_VIOLATION_QUALIFICATION = _load_qualifications()
"""Table 29-7 "Exit Qualification for EPT Violations", by bit name."""

PAGE_OFFSET_BITS = GUEST.page_offset_bits
PAGE_SIZE = 1 << PAGE_OFFSET_BITS
"""The size of a 4-KByte page, the unit of physical memory and of every table."""
