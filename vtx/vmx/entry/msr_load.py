"""VM-entry MSR loading (SDM Vol. 3C §28.4 "Loading MSRs"); a failure is a VM-entry failure with exit
reason 34 and the 1-based index of the failing entry as qualification."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import attrs

from vtx import spec
from vtx.bits import BitRange
from vtx.errors import NotEvaluable
from vtx.spec import VMCS_FIELDS, reg_bit
from vtx.vmx.capabilities import Capabilities
from vtx.vmx.entry import EntryContext, Finding, entry_check
from vtx.vmx.vmcs import Vmcs

_TABLE = spec._Table("x86/guest_non_register.toml")
_MSR_ROWS = [r for r in _TABLE.rows("value") if r["of"] == "MSR_INDEX"]
MSR_INDICES: Mapping[str, int] = {str(r["name"]): int(r["value"]) for r in _MSR_ROWS}
"""The MSRs the loading rules name, by SDM name."""
_MSR_NAMES = {index: name for name, index in MSR_INDICES.items()}
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


def read_msr_load_area(vmcs: Vmcs, ctx: EntryContext) -> Iterator[MsrLoadEntry]:
    """The entries of the VM-entry MSR-load area, in the order VM entry processes them."""
    base = vmcs.get(_ADDRESS)
    for number in range(1, vmcs.get(_COUNT) + 1):
        address = base + (number - 1) * ENTRY_BYTES
        raw = ctx.read_int(address, ENTRY_BYTES)
        yield MsrLoadEntry(number, address, _INDEX.get(raw), _RESERVED.get(raw), _DATA.get(raw))


MsrRule = Callable[[MsrLoadEntry, EntryContext], str | None]
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


def first_refused_entry(vmcs: Vmcs, caps: Capabilities,
                        ctx: EntryContext) -> tuple[MsrLoadEntry, Mapping[str, str]] | None:
    """The first entry that a rule vtx can decide refuses, with every such rule's id and reason.

    VM entry stops at the first entry it cannot load, so entries after it are never examined.
    """
    if vmcs.get(_COUNT) == 0:
        return None
    _check_list_length(vmcs.get(_COUNT), caps)
    for entry in read_msr_load_area(vmcs, ctx):
        reasons = {check_id: reason for check_id, rule in _RULES if (reason := rule(entry, ctx)) is not None}
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


@_msr_load_rule("msr_load.fs_gs_base")
def refuses_fs_gs_base(entry: MsrLoadEntry, ctx: EntryContext) -> str | None:
    """The entry does not name IA32_FS_BASE or IA32_GS_BASE."""
    if entry.index in _FS_GS_BASE:
        return f"VM entry does not load {_MSR_NAMES[entry.index]} from the MSR-load area"
    return None


@_msr_load_rule("msr_load.x2apic")
def refuses_x2apic(entry: MsrLoadEntry, ctx: EntryContext) -> str | None:
    """The entry does not name an x2APIC MSR (bits 31:8 of the index are not 000008H)."""
    if _X2APIC_PREFIX_BITS.get(entry.index) == _X2APIC_PREFIX:
        return "VM entry does not load x2APIC MSRs (800H-8FFH) from the MSR-load area"
    return None


@_msr_load_rule("msr_load.smm_only")
def refuses_smm_only(entry: MsrLoadEntry, ctx: EntryContext) -> str | None:
    """The entry does not name an MSR writable only in SMM unless the VM entry started in SMM."""
    if entry.index in _SMM_ONLY and not ctx.in_smm:
        return "the MSR is writable only in SMM and the VM entry did not start in SMM"
    return None


@_msr_load_rule("msr_load.model_specific")
def refuses_model_specific(entry: MsrLoadEntry, ctx: EntryContext) -> str | None:
    """The entry does not name an MSR that VM entry refuses to load for model-specific reasons (the
    microcode-update MSRs)."""
    if entry.index in _MODEL_SPECIFIC:
        return "VM entry refuses to load this MSR for model-specific reasons"
    return None


@_msr_load_rule("msr_load.reserved_bits")
def refuses_reserved_bits(entry: MsrLoadEntry, ctx: EntryContext) -> str | None:
    """Bits 63:32 of the entry (reserved) are 0."""
    if entry.reserved:
        return f"reserved bits 63:32 of the entry are {entry.reserved:#x}, not 0"
    return None


@entry_check("msr_load.wrmsr_fault")
def check_msr_load_wrmsr_fault(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[Finding]:
    """WRMSR at CPL 0 of each entry's data to its MSR would not raise #GP.

    vtx has no model of a processor's MSRs (which exist, which values they accept), so this rule is
    not evaluable for the entries VM entry would load before the first entry another rule refuses.
    """
    count = vmcs.get(_COUNT)
    if count == 0:
        return
    refused = first_refused_entry(vmcs, caps, ctx)
    loaded = count if refused is None else refused[0].number - 1
    if loaded:
        raise NotEvaluable("VM_ENTRY_MSR_LOAD_ADDR", f"entries 1-{loaded}" if loaded > 1 else "entry 1",
                           "whether WRMSR accepts them (and whether the processor refuses any of them for "
                           "other model-specific reasons) depends on its MSRs, which no capability profile "
                           "describes")
    yield from ()
