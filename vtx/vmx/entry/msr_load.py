"""VM-entry MSR loading (SDM Vol. 3C §28.4 "Loading MSRs"); a failure is a VM-entry failure with exit
reason 34 and the 1-based index of the failing entry as qualification."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs

from vtx import spec
from vtx.bits import BitRange
from vtx.citation import Citation
from vtx.conditions import Always, Condition, ProcessorFact, parse_condition
from vtx.errors import NotEvaluable, SpecError
from vtx.spec import CAPABILITY_MSRS, CPUID_FACTS, REGISTERS, VMCS_FIELDS, reg_bit
from vtx.typecheck import checked
from vtx.vmx.capabilities import Capabilities
from vtx.vmx.entry import EntryContext, Finding, entry_check
from vtx.vmx.entry.common import canonical_problem, invalid_pat_entries, linear_width, reserved_mask
from vtx.vmx.vmcs import Vmcs

_TABLE = spec._Table("x86/guest_non_register.toml")
_MSR_ROWS = [r for r in _TABLE.rows("value") if r["of"] == "MSR_INDEX"]
MSR_INDICES: Mapping[str, int] = {str(r["name"]): int(r["value"]) for r in _MSR_ROWS}
"""The MSRs the loading rules name, by SDM name."""
_SMM_ONLY = frozenset(int(r["value"]) for r in _MSR_ROWS if r.get("entry_load") == "smm_only")
_MODEL_SPECIFIC = frozenset(int(r["value"]) for r in _MSR_ROWS if r.get("entry_load") == "model_specific")
_FS_GS_BASE = frozenset(MSR_INDICES[n] for n in ("IA32_FS_BASE", "IA32_GS_BASE"))

_INDEX = reg_bit("VMX_MSR_ENTRY", "INDEX").bits
_RESERVED = reg_bit("VMX_MSR_ENTRY", "RESERVED").bits
_DATA = reg_bit("VMX_MSR_ENTRY", "DATA").bits
ENTRY_BYTES = (_DATA.hi + 1) // 8
"""The size of one MSR-load entry: 16 bytes (SDM Vol. 3C §26.7.2, "Format of an MSR Entry")."""

# §28.4: an MSR index whose bits 31:8 are 000008H names an x2APIC MSR (800H-8FFH).
_X2APIC_PREFIX_BITS = BitRange(8, 31)
_X2APIC_PREFIX = 0x8

# Vol. 3D §A.6 "Miscellaneous Data": with IA32_VMX_MISC[27:25] = N, 512 * (N + 1) is the recommended
# maximum number of entries of an MSR list; above it the processor's behaviour is undefined.
_LIST_LENGTH_UNIT = 512

_COUNT = VMCS_FIELDS["VM_ENTRY_MSR_LOAD_COUNT"]
_ADDRESS = VMCS_FIELDS["VM_ENTRY_MSR_LOAD_ADDR"]

WRMSR_FAULT = "msr_load.wrmsr_fault"

# ----------------------------------------------------------------------------- which WRMSRs fault


_EXISTS_ALWAYS = Condition((Always(),))


@attrs.frozen
class MsrWrite:
    """What WRMSR at CPL 0 accepts for one MSR (a row of spec/x86/msr_writes.toml): the write raises
    #GP if the MSR does not exist or is read-only, if the value sets a reserved bit, is not canonical
    where the MSR holds an address, or is not a valid IA32_PAT value."""

    name: str
    index: int
    citation: Citation
    exists: Condition = _EXISTS_ALWAYS
    read_only: bool = False
    register: str | None = None
    """The spec/x86 register whose RESERVED_* bits the value must clear."""
    reserved: int = 0
    enumerated: int = 0
    """Bits that exist only where an enumeration no capability profile carries says so."""
    canonical: bool = False
    pat: bool = False


_WRITES_FILE = "x86/msr_writes.toml"
_MSR_KEYS = frozenset({"name", "index", "cite", "exists", "read_only", "reserved", "enumerated", "canonical", "pat"})


def _msr_write(t: spec._Table, row: Mapping[str, Any]) -> MsrWrite:
    where = t.where("msr", row)
    if unknown := set(row) - _MSR_KEYS:
        raise SpecError(where, sorted(unknown), f"unknown keys (known: {', '.join(sorted(_MSR_KEYS))})")
    exists = parse_condition(row.get("exists", "always"), where)
    for term in exists.terms:
        if isinstance(term, ProcessorFact) and term.fact not in CPUID_FACTS:
            raise SpecError(where, str(term), "names a fact that cpuid.toml lacks")
    register = row.get("reserved")
    enumerated = 0
    if register is not None and register not in REGISTERS:
        raise SpecError(where, register, "reserved must name a [[register]] of spec/x86")
    for name in row.get("enumerated", []):
        if register is None or name not in REGISTERS[register].bits:
            raise SpecError(where, name, "enumerated must name bits of the reserved register")
        enumerated |= reg_bit(register, name).mask
    return MsrWrite(row["name"], row["index"], t.cite("msr", row), exists, bool(row.get("read_only")), register,
                    reserved_mask(register) if register else 0, enumerated, bool(row.get("canonical")),
                    bool(row.get("pat")))


def _load_msr_writes() -> Mapping[int, MsrWrite]:
    t = spec._Table(_WRITES_FILE)
    capability = t.data["capability_msrs"]
    if capability.get("read_only") is not True:
        raise SpecError(f"{_WRITES_FILE} [capability_msrs]", capability.get("read_only"), "read_only must be true")
    citation = t.cite("capability_msrs", capability)
    rows = [MsrWrite(m.name, m.index, citation, read_only=True) for m in CAPABILITY_MSRS]
    rows += [_msr_write(t, r) for r in t.rows("msr")]
    by_index: dict[int, MsrWrite] = {}
    for w in rows:
        if w.index in by_index:
            raise SpecError(f"{_WRITES_FILE} [[msr]] {w.name}", hex(w.index), f"index of {by_index[w.index].name} too")
        by_index[w.index] = w
    return by_index


MSR_WRITES = _load_msr_writes()
"""The MSRs whose WRMSR faults vtx models, by index (spec/x86/msr_writes.toml and the VMX capability
MSRs)."""

_MSR_NAMES = {w.index: w.name for w in MSR_WRITES.values()} | {index: name for name, index in MSR_INDICES.items()}


@checked
def wrmsr_fault(index: int, data: int, caps: Capabilities) -> str | None:
    """Why WRMSR at CPL 0 of ``data`` to MSR ``index`` would raise #GP, or None if it would not.

    SDM Vol. 2D "WRMSR—Write to Model Specific Register": #GP(0) if the MSR is unimplemented or
    reserved, if the value sets a bit reserved in the MSR, or if it is not canonical for an MSR that
    holds a linear address; Vol. 4 Table 2-2 "IA-32 Architectural MSRs" gives the MSRs and their bits.
    NotEvaluable for an MSR spec/x86/msr_writes.toml does not describe, or when the profile lacks a
    fact the answer depends on.
    """
    msr = MSR_WRITES.get(index)
    if msr is None:
        raise NotEvaluable(f"MSR {index:#x}", hex(data), "vtx does not model which writes to this MSR fault "
                           "(no row in spec/x86/msr_writes.toml)")
    if msr.read_only:
        return f"{msr.name} is read-only: every WRMSR to it raises #GP"
    exists = caps.evaluate(msr.exists)
    if exists is None:
        raise NotEvaluable(msr.name, str(msr.exists), "the profile does not say whether the processor implements it")
    if not exists:
        return f"the processor does not implement {msr.name} ({msr.exists} is false): WRMSR raises #GP"
    if data & msr.reserved:
        return f"data {data:#x} sets bits {data & msr.reserved:#x} reserved in {msr.register}: WRMSR raises #GP"
    if data & msr.enumerated:
        raise NotEvaluable(msr.name, hex(data), f"bits {data & msr.enumerated:#x} exist only where an enumeration "
                           "the profile does not carry says so")
    if msr.canonical:
        for problem in canonical_problem(f"{msr.name} data", data, linear_width(caps)):
            return f"{problem}: WRMSR raises #GP"
    if msr.pat and (bad := invalid_pat_entries(data)):
        entries = ", ".join(f"PA{i} = {t:#x}" for i, t in bad)
        return f"IA32_PAT data {data:#x} holds no valid memory type in {entries}: WRMSR raises #GP"
    return None


# ----------------------------------------------------------------------------- the MSR-load area


@attrs.frozen
class MsrLoadEntry:
    """One entry of the VM-entry MSR-load area, as VM entry reads it."""

    number: int
    """The entry's 1-based position: the exit qualification if VM entry fails on it."""
    address: int
    index: int
    reserved: int
    data: int

    def __str__(self) -> str:
        name = _MSR_NAMES.get(self.index)
        return (f"VM-entry MSR-load entry {self.number} (at {self.address:#x}: MSR {self.index:#x}"
                f"{f' {name}' if name else ''}, data {self.data:#x})")


@checked
def read_msr_load_area(vmcs: Vmcs, ctx: EntryContext) -> Iterator[MsrLoadEntry]:
    """The entries of the VM-entry MSR-load area, in the order VM entry processes them."""
    base = vmcs.get(_ADDRESS)
    for number in range(1, vmcs.get(_COUNT) + 1):
        address = base + (number - 1) * ENTRY_BYTES
        raw = ctx.read_int(address, ENTRY_BYTES)
        yield MsrLoadEntry(number, address, _INDEX.get(raw), _RESERVED.get(raw), _DATA.get(raw))


MsrRule = Callable[[MsrLoadEntry, Capabilities, EntryContext], str | None]
"""A rule on one entry: why VM entry refuses to load it, or None."""

_RULES: list[tuple[str, MsrRule]] = []
"""The rules vtx can decide, by catalogue id, in catalogue order."""


def _check_list_length(count: int, caps: Capabilities) -> None:
    if count <= _LIST_LENGTH_UNIT:
        return
    n = caps.msr_field("IA32_VMX_MISC", "max_msr_list_count")
    if n is None:
        raise NotEvaluable("VM_ENTRY_MSR_LOAD_COUNT", count, "the profile lacks IA32_VMX_MISC (recommended maximum)")
    if count > _LIST_LENGTH_UNIT * (n + 1):
        raise NotEvaluable("VM_ENTRY_MSR_LOAD_COUNT", count,
                           f"exceeds the recommended maximum {_LIST_LENGTH_UNIT * (n + 1)} of IA32_VMX_MISC; "
                           "the processor's behaviour is undefined")


@checked
def first_refused_entry(vmcs: Vmcs, caps: Capabilities,
                        ctx: EntryContext) -> tuple[MsrLoadEntry, Mapping[str, str]] | None:
    """The first entry that a rule vtx can decide refuses, with every such rule's id and reason.

    VM entry stops at the first entry it cannot load, so entries after it are never examined.
    """
    if vmcs.get(_COUNT) == 0:
        return None
    _check_list_length(vmcs.get(_COUNT), caps)
    for entry in read_msr_load_area(vmcs, ctx):
        reasons = {check_id: reason for check_id, rule in _RULES if (reason := rule(entry, caps, ctx)) is not None}
        if reasons:
            return entry, reasons
    return None


def _msr_load_rule(check_id: str) -> Callable[[MsrRule], MsrRule]:
    """Register a per-entry rule as the check ``check_id``: the check reports the first entry VM entry
    refuses when this rule is among the reasons, with that entry's number as qualification."""

    def register(rule: MsrRule) -> MsrRule:
        _RULES.append((check_id, rule))

        def check(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[Finding]:
            refused = first_refused_entry(vmcs, caps, ctx)
            if refused is not None and check_id in refused[1]:
                entry, reasons = refused
                yield Finding(f"{entry}: {reasons[check_id]}", entry.number)

        check.__name__, check.__doc__ = f"check_{check_id.replace('.', '_')}", rule.__doc__
        entry_check(check_id)(check)
        return rule

    return register


@checked
@_msr_load_rule("msr_load.fs_gs_base")
def refuses_fs_gs_base(entry: MsrLoadEntry, caps: Capabilities, ctx: EntryContext) -> str | None:
    """The entry does not name IA32_FS_BASE or IA32_GS_BASE."""
    if entry.index in _FS_GS_BASE:
        return f"VM entry does not load {_MSR_NAMES[entry.index]} from the MSR-load area"
    return None


@checked
@_msr_load_rule("msr_load.x2apic")
def refuses_x2apic(entry: MsrLoadEntry, caps: Capabilities, ctx: EntryContext) -> str | None:
    """The entry does not name an x2APIC MSR (bits 31:8 of the index are not 000008H)."""
    if _X2APIC_PREFIX_BITS.get(entry.index) == _X2APIC_PREFIX:
        return "VM entry does not load x2APIC MSRs (800H-8FFH) from the MSR-load area"
    return None


@checked
@_msr_load_rule("msr_load.smm_only")
def refuses_smm_only(entry: MsrLoadEntry, caps: Capabilities, ctx: EntryContext) -> str | None:
    """The entry does not name an MSR writable only in SMM unless the VM entry started in SMM."""
    if entry.index in _SMM_ONLY and not ctx.in_smm:
        return "the MSR is writable only in SMM and the VM entry did not start in SMM"
    return None


@checked
@_msr_load_rule("msr_load.model_specific")
def refuses_model_specific(entry: MsrLoadEntry, caps: Capabilities, ctx: EntryContext) -> str | None:
    """The entry does not name an MSR that VM entry refuses to load for model-specific reasons (the
    microcode-update MSRs)."""
    if entry.index in _MODEL_SPECIFIC:
        return "VM entry refuses to load this MSR for model-specific reasons"
    return None


@checked
@_msr_load_rule("msr_load.reserved_bits")
def refuses_reserved_bits(entry: MsrLoadEntry, caps: Capabilities, ctx: EntryContext) -> str | None:
    """Bits 63:32 of the entry (reserved) are 0."""
    if entry.reserved:
        return f"reserved bits 63:32 of the entry are {entry.reserved:#x}, not 0"
    return None


def _decided_wrmsr_fault(entry: MsrLoadEntry, caps: Capabilities, ctx: EntryContext) -> str | None:
    """WRMSR at CPL 0 of the entry's data to its MSR would raise #GP, as far as vtx can decide (an entry
    it cannot decide is not refused here; :func:`check_msr_load_wrmsr_fault` reports it)."""
    try:
        return wrmsr_fault(entry.index, entry.data, caps)
    except NotEvaluable:
        return None


_RULES.append((WRMSR_FAULT, _decided_wrmsr_fault))


@entry_check(WRMSR_FAULT)
def check_msr_load_wrmsr_fault(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[Finding]:
    """WRMSR at CPL 0 of each entry's data to its MSR would not raise #GP (spec/x86/msr_writes.toml).

    VM entry loads the entries in order and fails on the first it cannot load. The rule is violated
    at the first refused entry if WRMSR of that entry faults, and every entry before it is decided;
    it is not evaluable from the first entry before the refused one (or the end of the list) whose
    MSR vtx does not model or whose outcome the profile cannot decide.
    """
    if vmcs.get(_COUNT) == 0:
        return
    refused = first_refused_entry(vmcs, caps, ctx)
    end = vmcs.get(_COUNT) + 1 if refused is None else refused[0].number
    for entry in read_msr_load_area(vmcs, ctx):
        if entry.number >= end:
            break
        try:
            wrmsr_fault(entry.index, entry.data, caps)
        except NotEvaluable as e:
            raise NotEvaluable(str(entry), e.value, f"{e.where}: {e.rule}; whether VM entry would load it, "
                               "or fail on it, is not known") from e
    if refused is not None and WRMSR_FAULT in refused[1]:
        entry, reasons = refused
        yield Finding(f"{entry}: {reasons[WRMSR_FAULT]}", entry.number)
