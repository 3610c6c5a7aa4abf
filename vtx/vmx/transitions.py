"""The two mode switches of VMX operation: VM entry into non-root and VM exit back to root.

VM entry after its checks pass (SDM Vol. 3C §28.3.2 "Loading Guest State", §28.4 "Loading MSRs",
§28.6 "Event Injection"): :func:`load_guest_state`. A VM exit (§29.2 recording the exit information,
§29.3 "Saving Guest State", §29.4 "Saving MSRs", §29.5 "Loading Host State", §29.6 "Loading MSRs",
§29.7 "VMX Aborts"): :func:`vm_exit`; :func:`load_host_state` is its second half, shared with
VM-entry failures (§28.8). The MSRs, segments and fixed values come from ``spec/vmx/transitions.toml``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from typing import Any

import attrs

from vtx import spec
from vtx.bits import BitRange, mask
from vtx.errors import InputError, NotEvaluable, SpecError
from vtx.guest_ops import InterruptWindow, NmiWindow, PreemptionTimer
from vtx.paging.memory import HostPhysAddr, PhysicalMemory
from vtx.spec import VMCS_FIELDS, Control, ExitReason, VmcsField, get_control, get_exit_reason, reg_bit
from vtx.typecheck import checked
from vtx.vmx.capabilities import Capabilities
from vtx.vmx.entry import EntryContext
from vtx.vmx.entry.msr_load import (
    MSR_INDICES,
    MsrLoadEntry,
    refuses_fs_gs_base,
    refuses_model_specific,
    refuses_reserved_bits,
    refuses_smm_only,
    refuses_x2apic,
    wrmsr_fault,
)
from vtx.vmx.exits.info import AfterEntry, ExitInfo, record_exit
from vtx.vmx.exits.layouts import LAYOUTS
from vtx.vmx.exits.rules import GuestContext, decide, is_set, is_tpr_below_threshold, read_vtpr
from vtx.vmx.operation import LogicalProcessor, Segment, VmxMode
from vtx.vmx.vmcs import LaunchState, Vmcs

_F = VMCS_FIELDS
_CR4_PAE = reg_bit("CR4", "PAE").mask
_CR4_PCIDE = reg_bit("CR4", "PCIDE").mask
_EFER_LMA = reg_bit("IA32_EFER", "LMA").mask
_EFER_LME = reg_bit("IA32_EFER", "LME").mask
_RFLAGS_FIXED1 = reg_bit("RFLAGS", "FIXED1").mask
_AR_DPL = reg_bit("VMCS_ACCESS_RIGHTS", "DPL").bits
_AR_L = reg_bit("VMCS_ACCESS_RIGHTS", "L").mask
_AR_DB = reg_bit("VMCS_ACCESS_RIGHTS", "DB").mask
_AR_UNUSABLE = reg_bit("VMCS_ACCESS_RIGHTS", "UNUSABLE").mask
_BLOCKING_MOV_SS = reg_bit("VMCS_INTERRUPTIBILITY", "BLOCKING_BY_MOV_SS").mask
_BLOCKING_NMI = reg_bit("VMCS_INTERRUPTIBILITY", "BLOCKING_BY_NMI").mask
_EXIT_HOST_64 = get_control("exit", "host_address_space_size").mask
_EXIT_LOAD_EFER = get_control("exit", "load_ia32_efer").mask
_EXIT_SAVE_DEBUG = get_control("exit", "save_debug_controls").mask
_EXIT_SAVE_TIMER = get_control("exit", "save_vmx_preemption_timer_value").mask
_ENTRY_IA32E = get_control("entry", "ia32e_mode_guest").mask
_ENTRY_LOAD_EFER = get_control("entry", "load_ia32_efer").mask
_ENTRY_LOAD_DEBUG = get_control("entry", "load_debug_controls").mask
_TIMER = get_control("pin", "activate_vmx_preemption_timer")
_MTF = get_control("proc", "monitor_trap_flag")
_USE_TPR_SHADOW = get_control("proc", "use_tpr_shadow")
_FAILED_ENTRY = spec.EXIT_REASON_FORMAT["failed_vmentry"].bits
_MSR_INDEX = reg_bit("VMX_MSR_ENTRY", "INDEX").bits
_MSR_RESERVED = reg_bit("VMX_MSR_ENTRY", "RESERVED").bits
_MSR_DATA = reg_bit("VMX_MSR_ENTRY", "DATA").bits
_MSR_ENTRY_BYTES = (_MSR_DATA.hi + 1) // 8
_MSR_DATA_BYTES = (_MSR_DATA.hi - _MSR_DATA.lo + 1) // 8
_INTR = LAYOUTS["interruption_info"]
_INTR_VALID = _INTR.encode(valid=1)


_CR0_UNCHANGED_ON_EXIT = sum(reg_bit("CR0", b).mask for b in ("ET", "CD", "NW")) | sum(
    BitRange(lo, hi).mask for lo, hi in ((32, 63), (19, 28), (17, 17), (6, 15)))
"""CR0 bits a VM exit does not load from the host CR0 field (SDM Vol. 3C §29.5.1)."""


# ----------------------------------------------------------------------------- spec/vmx/transitions.toml

_T = spec._Table("vmx/transitions.toml")
_ALWAYS, _CLEAR = "always", "clear"
Rule = Control | str | None
"""When a transition moves an MSR: a control (when it is 1), "always", "clear" (exit only), None (never)."""


@attrs.frozen
class MsrTransfer:
    """An MSR with a guest-state field and the controls under which VM entries load it and VM
    exits save and load it (a row of ``[[msr]]``)."""

    name: str
    index: int
    guest: VmcsField
    host: VmcsField | None
    entry_load: Rule
    exit_save: Rule
    exit_load: Rule


@attrs.frozen
class SegmentFields:
    """A segment or descriptor-table register's guest fields, host fields and what a VM exit loads."""

    name: str
    selector: VmcsField | None
    base: VmcsField
    limit: VmcsField
    ar: VmcsField | None
    host_selector: VmcsField | None
    host_base: VmcsField | None
    host_limit: int
    host_ar: str | None


def _rule(where: str, field: str, value: str | None, *, clear: bool = False) -> Rule:
    if value is None or value == _ALWAYS or (clear and value == _CLEAR):
        return value
    try:
        return get_control(field, value)
    except SpecError as e:
        raise SpecError(where, value, f'must be "always"{", clear" if clear else ""} or a {field} control') from e


def _opt(name: str) -> VmcsField | None:
    return _F.get(name)


def _load_msrs() -> tuple[MsrTransfer, ...]:
    rows = []
    for r in _T.rows("msr"):
        where = _T.where("msr", r)
        _T.cite("msr", r)
        rows.append(MsrTransfer(r["name"], r["index"], _F[r["guest"]], _F[r["host"]] if "host" in r else None,
                                _rule(where, "entry", r.get("entry_load")), _rule(where, "exit", r.get("exit_save")),
                                _rule(where, "exit", r.get("exit_load"), clear=True)))
    return tuple(rows)


def _load_segments() -> tuple[SegmentFields, ...]:
    rows = []
    for r in _T.rows("segment"):
        n = r["name"]
        _T.cite("segment", r)
        if r.get("host_ar") is not None and r["host_ar"] not in _T.data["host_access_rights"]:
            raise SpecError(_T.where("segment", r), r["host_ar"], "host_ar must name a [host_access_rights] table")
        rows.append(SegmentFields(
            n, _opt(f"GUEST_{n}_SELECTOR"), _F[f"GUEST_{n}_BASE"], _F[f"GUEST_{n}_LIMIT"], _opt(f"GUEST_{n}_AR_BYTES"),
            _F[f"HOST_{n}_SELECTOR"] if r["host_selector"] else None, _F[f"HOST_{n}_BASE"] if r["host_base"] else None,
            r["host_limit"], r.get("host_ar")))
    return tuple(rows)


def _access_rights(values: Mapping[str, int]) -> int:
    ar = 0
    for name, value in values.items():
        ar = reg_bit("VMCS_ACCESS_RIGHTS", name).bits.put(ar, value)
    return ar


MSR_TRANSFERS = _load_msrs()
SEGMENTS = _load_segments()
HOST_ACCESS_RIGHTS = {k: _access_rights(v) for k, v in _T.data["host_access_rights"].items()}
HOST_DR7: int = _T.data["host"]["dr7"]
ABORT: Mapping[str, int] = {k: v for k, v in _T.data["vmx_abort"].items() if k != "cite"}
EFER_INDEX: int = _T.data["efer"]["index"]
_EFER_GUEST = _F[_T.data["efer"]["guest"]]
_EFER_SAVE = _rule("[efer]", "exit", _T.data["efer"]["exit_save"])
_STORE_REFUSED = frozenset(_T.data["msr_store"]["refused"])
_MTF_TYPE = _INTR.value("type", _T.data["event_injection"]["pending_mtf_type"])
_MTF_VECTOR: int = _T.data["event_injection"]["pending_mtf_vector"]
_SEGMENT_BASE_MSRS = {MSR_INDICES[f"IA32_{n}_BASE"]: n for n in ("FS", "GS")}


_CONTROL_MASKS = {(c.field, c.name): c.mask for c in spec.CONTROLS}


def _on(rule: Rule, controls: int) -> bool:
    """Whether ``rule`` applies under the control-field value ``controls``."""
    if rule is None or rule.__class__ is str:
        return rule is not None and rule != _CLEAR
    assert isinstance(rule, Control)
    return bool(controls & _CONTROL_MASKS[rule.field, rule.name])


def _keep(old: int, new: int, keep: int) -> int:
    return (old & keep) | (new & ~keep)


# ----------------------------------------------------------------------------- MSR values


@checked
def read_msr(state: LogicalProcessor, index: int) -> int:
    """The current value of MSR ``index`` (IA32_EFER is ``state.efer``, IA32_FS_BASE / IA32_GS_BASE the
    segment bases); NotEvaluable for an MSR whose value ``state.msrs`` does not hold."""
    if index == EFER_INDEX:
        return state.efer
    if index in _SEGMENT_BASE_MSRS:
        return state.segments.get(_SEGMENT_BASE_MSRS[index], Segment()).base
    if index not in state.msrs:
        raise NotEvaluable(f"MSR {index:#x}", "unknown", "the processor's MSR values (LogicalProcessor.msrs) lack it")
    return state.msrs[index]


def _write_msrs(state: LogicalProcessor, values: Mapping[int, int]) -> LogicalProcessor:
    if not values:
        return state
    return state.replace(**_written_msrs(state.msrs, state.efer, values))


def _written_msrs(msrs: Mapping[int, int], efer: int, values: Mapping[int, int]) -> dict[str, Any]:
    """The processor's ``msrs`` and ``efer`` after WRMSR of ``values`` in order (IA32_EFER is its own attribute)."""
    if not values:
        return {"msrs": msrs, "efer": efer}
    written = dict(msrs)
    for index, value in values.items():
        if index == EFER_INDEX:
            efer = value
        else:
            written[index] = value
    return {"msrs": written, "efer": efer}


def _msr_area(state: LogicalProcessor, address: int, count: int) -> Iterator[MsrLoadEntry]:
    """The 16-byte entries of an MSR-load or MSR-store area (§26.7.2 "Format of an MSR Entry")."""
    for number in range(1, count + 1):
        at = address + (number - 1) * _MSR_ENTRY_BYTES
        raw = state.memory.read_int(HostPhysAddr(at), _MSR_ENTRY_BYTES)
        yield MsrLoadEntry(number, at, _MSR_INDEX.get(raw), _MSR_RESERVED.get(raw), _MSR_DATA.get(raw))


_LOAD_REFUSALS = (refuses_fs_gs_base, refuses_x2apic, refuses_smm_only, refuses_model_specific, refuses_reserved_bits)


@checked
def exit_msr_load_refusal(entry: MsrLoadEntry, caps: Capabilities, state: LogicalProcessor) -> str | None:
    """Why a VM exit cannot load the entry of its VM-exit MSR-load area (§29.6: the VM-entry rules of
    §28.4, with the exit ending outside SMM unless ``state.in_smm``), or None."""
    ctx = EntryContext(in_smm=state.in_smm)
    for refusal in _LOAD_REFUSALS:
        if (reason := refusal(entry, caps, ctx)) is not None:
            return reason
    return wrmsr_fault(entry.index, entry.data, caps)


@checked
def exit_msr_store_refusal(entry: MsrLoadEntry, caps: Capabilities, state: LogicalProcessor) -> str | None:
    """Why a VM exit cannot store the MSR an entry of its VM-exit MSR-store area names (§29.4: an
    x2APIC MSR, IA32_SMBASE, bits 63:32 of the entry not 0), or None; NotEvaluable where vtx does not
    know the MSR's value (RDMSR of an unimplemented MSR would fault)."""
    ctx = EntryContext(in_smm=state.in_smm)
    for refusal in (refuses_x2apic, refuses_reserved_bits):
        if (reason := refusal(entry, caps, ctx)) is not None:
            return reason
    if entry.index in _STORE_REFUSED:
        return f"MSR {entry.index:#x} cannot be stored by a VM exit"
    read_msr(state, entry.index)
    return None


def _writable(state: LogicalProcessor) -> PhysicalMemory:
    if not isinstance(state.memory, PhysicalMemory):
        raise InputError("memory", type(state.memory).__name__, "the VM-exit MSR-store area needs PhysicalMemory")
    return state.memory


def _abort(state: LogicalProcessor, vmcs: Vmcs, indicator: str) -> LogicalProcessor:
    """A VMX abort (§29.7): the indicator is saved at byte offset 4 of the VMCS region, the VMCS data are
    not modified, and the logical processor enters the shutdown state."""
    region = attrs.evolve(vmcs, abort_indicator=ABORT[indicator])
    return attrs.evolve(state, shutdown=True, regions={**state.regions, state.current_vmcs: region})


# ----------------------------------------------------------------------------- VM entry


def _guest_segments(vmcs: Vmcs) -> dict[str, Segment]:
    return dict(_segment_registers(tuple(map(vmcs.get, _GUEST_SEGMENT_FIELDS))))


_GUEST_SEGMENT_FIELDS = tuple(f for s in SEGMENTS for f in (s.selector, s.base, s.limit, s.ar) if f is not None)
"""The selector, base, limit and access-rights fields of each register of :data:`SEGMENTS` (GDTR and IDTR
have base and limit only), in that order."""


@functools.lru_cache(maxsize=1024)
def _segment_registers(values: tuple[int, ...]) -> dict[str, Segment]:
    """The registers of :data:`SEGMENTS` holding ``values`` (of :data:`_GUEST_SEGMENT_FIELDS`; a register
    without a selector or access-rights field has 0 there), built once per distinct value (a guest's
    segments seldom change); callers copy the dict."""
    value = iter(values)
    return {s.name: Segment(next(value) if s.selector else 0, next(value), next(value), next(value) if s.ar else 0)
            for s in SEGMENTS}


def _after_entry(state: LogicalProcessor, vmcs: Vmcs) -> tuple[Vmcs, AfterEntry]:
    """Event injection and the VM exits due before the guest's first instruction (§28.6, §28.7):
    the VM-entry interruption-information field's valid bit is cleared; an injected event is what the
    guest receives first; "other event" with vector 0 is a pending MTF VM exit, not an event. Without
    injection, in this order: TPR below threshold (use TPR shadow, no virtual-interrupt delivery, VTPR
    below the threshold), the pending MTF VM exit, the preemption timer at 0, an open NMI window, an
    open interrupt window (the event priorities of §27.2 and Vol. 3A §7.9).
    UNSURE: with an injected event those exits are decided after its delivery, on state vtx does not
    model, so none is reported then; TPR below threshold before a pending MTF VM exit is vtx's reading."""
    raw = vmcs.get(_F["VM_ENTRY_INTR_INFO_FIELD"])
    intr = _INTR.decode(raw)
    pending_mtf = bool(intr["valid"]) and intr["type"] == _MTF_TYPE and intr["vector"] == _MTF_VECTOR
    if intr["valid"]:
        vmcs = vmcs.set(_F["VM_ENTRY_INTR_INFO_FIELD"], raw & ~_INTR_VALID)
        if not pending_mtf:
            error = vmcs.get(_F["VM_ENTRY_EXCEPTION_ERROR_CODE"]) if intr["error_code_valid"] else 0
            return vmcs, AfterEntry(injected=raw, error_code=error)
    if is_set(vmcs, _USE_TPR_SHADOW):
        vtpr = read_vtpr(vmcs, state.memory)
        if is_tpr_below_threshold(vmcs, vtpr):
            return vmcs, AfterEntry(exit=ExitInfo(get_exit_reason("TPR_BELOW_THRESHOLD"), trap=True, value=vtpr))
    if pending_mtf:
        return vmcs, AfterEntry(exit=ExitInfo(get_exit_reason("MONITOR_TRAP_FLAG")))
    ctx = GuestContext(cpl=state.cpl, rflags=state.rflags, cr0=state.cr0, cr4=state.cr4, efer=state.efer,
                       cs_l=state.cs_l, interruptibility=_interruptibility(state),
                       activity_state=state.activity_state)
    for op in (PreemptionTimer(), NmiWindow(), InterruptWindow()):
        out = decide(op, vmcs, ctx)
        if isinstance(out, ExitInfo):
            return vmcs, AfterEntry(exit=out)
    return vmcs, AfterEntry()


@checked
def load_guest_state(state: LogicalProcessor, vmcs: Vmcs, *, launch: bool) -> LogicalProcessor:
    """Enter VMX non-root operation after the checks passed (SDM Vol. 3C §28.3.2 "Loading Guest
    State"): CR0, CR3, CR4, DR7 and IA32_DEBUGCTL (with "load debug controls"), the SYSENTER MSRs,
    IA32_PAT / IA32_PERF_GLOBAL_CTRL / IA32_EFER per their "load" controls (else EFER.LMA and LME
    follow "IA-32e mode guest"), every segment and descriptor-table register, RSP, RIP, RFLAGS, the
    interruptibility and activity state, pending debug exceptions and the preemption timer; then the
    VM-entry MSR-load area (§28.4; the checks have accepted every entry), then event injection
    (§28.6, :class:`~vtx.vmx.exits.info.AfterEntry`). VMLAUNCH marks the VMCS launched (§32.3)."""
    entry = vmcs.get(_F["VM_ENTRY_CONTROLS"])
    ia32e = bool(entry & _ENTRY_IA32E)
    if entry & _ENTRY_LOAD_EFER:
        efer = vmcs.get(_F["GUEST_IA32_EFER"])
    else:
        lm = (_EFER_LMA | _EFER_LME) if ia32e else 0
        efer = (state.efer & ~(_EFER_LMA | _EFER_LME)) | lm
    if launch:
        vmcs = attrs.evolve(vmcs, launch_state=LaunchState.LAUNCHED)
    interruptibility = vmcs.get(_F["GUEST_INTERRUPTIBILITY_INFO"])
    # the MSRs of the "load" controls, then the VM-entry MSR-load area (a later write wins)
    msrs = {m.index: vmcs.get(m.guest) for m in MSR_TRANSFERS if _on(m.entry_load, entry)}
    msrs |= {e.index: e.data for e in _msr_area(state, vmcs.get(_F["VM_ENTRY_MSR_LOAD_ADDR"]),
                                                vmcs.get(_F["VM_ENTRY_MSR_LOAD_COUNT"]))}
    state = state.replace(
        mode=VmxMode.NON_ROOT, cr0=vmcs.get(_F["GUEST_CR0"]), cr3=vmcs.get(_F["GUEST_CR3"]),
        cr4=vmcs.get(_F["GUEST_CR4"]), dr7=vmcs.get(_F["GUEST_DR7"]) if entry & _ENTRY_LOAD_DEBUG
        else state.dr7, rflags=vmcs.get(_F["GUEST_RFLAGS"]), rip=vmcs.get(_F["GUEST_RIP"]),
        rsp=vmcs.get(_F["GUEST_RSP"]), cpl=_AR_DPL.get(vmcs.get(_F["GUEST_SS_AR_BYTES"])),
        cs_l=bool(vmcs.get(_F["GUEST_CS_AR_BYTES"]) & _AR_L), segments=_guest_segments(vmcs),
        blocking_by_mov_ss=bool(interruptibility & _BLOCKING_MOV_SS), interruptibility=interruptibility,
        activity_state=vmcs.get(_F["GUEST_ACTIVITY_STATE"]),
        pending_debug_exceptions=vmcs.get(_F["GUEST_PENDING_DBG_EXCEPTIONS"]),
        preemption_timer=vmcs.get(_F["VMX_PREEMPTION_TIMER_VALUE"]) if is_set(vmcs, _TIMER)
        else state.preemption_timer, **_written_msrs(state.msrs, efer, msrs))
    vmcs, after = _after_entry(state, vmcs)
    return state.replace(after_entry=after, regions={**state.regions, state.current_vmcs: vmcs})


# ----------------------------------------------------------------------------- VM exit


def _interruptibility(state: LogicalProcessor) -> int:
    return (state.interruptibility & ~_BLOCKING_MOV_SS) | (_BLOCKING_MOV_SS if state.blocking_by_mov_ss else 0)


@checked
def save_guest_state(state: LogicalProcessor, vmcs: Vmcs) -> Vmcs:
    """The guest-state area after a VM exit (SDM Vol. 3C §29.3 "Saving Guest State"): CR0, CR3, CR4,
    the SYSENTER MSRs, DR7 and IA32_DEBUGCTL with "save debug controls", IA32_PAT / IA32_EFER /
    IA32_PERF_GLOBAL_CTRL with their "save" controls, every segment and descriptor-table register,
    RSP, RIP (``state.rip``: the instruction that caused the exit, or the next one for a trap-like
    exit), RFLAGS, the interruptibility and activity state, pending debug exceptions, and the
    preemption timer with "save VMX-preemption timer value"."""
    exit_ctls = vmcs.get(_F["VM_EXIT_CONTROLS"])
    fields: dict[VmcsField, int] = {
        _F["GUEST_CR0"]: state.cr0, _F["GUEST_CR3"]: state.cr3, _F["GUEST_CR4"]: state.cr4,
        _F["GUEST_RSP"]: state.rsp, _F["GUEST_RIP"]: state.rip, _F["GUEST_RFLAGS"]: state.rflags,
        _F["GUEST_INTERRUPTIBILITY_INFO"]: _interruptibility(state),
        _F["GUEST_ACTIVITY_STATE"]: state.activity_state,
        _F["GUEST_PENDING_DBG_EXCEPTIONS"]: state.pending_debug_exceptions}
    if exit_ctls & _EXIT_SAVE_DEBUG:
        fields[_F["GUEST_DR7"]] = state.dr7
    fields |= {m.guest: read_msr(state, m.index) for m in MSR_TRANSFERS if _on(m.exit_save, exit_ctls)}
    if _on(_EFER_SAVE, exit_ctls):
        fields[_EFER_GUEST] = state.efer
    if exit_ctls & _EXIT_SAVE_TIMER:
        fields[_F["VMX_PREEMPTION_TIMER_VALUE"]] = state.preemption_timer
    for s in SEGMENTS:
        seg = state.segments.get(s.name, Segment())
        fields |= {s.base: seg.base, s.limit: seg.limit}
        if s.selector is not None and s.ar is not None:
            fields |= {s.selector: seg.selector, s.ar: seg.ar}
    for f, v in fields.items():
        vmcs = vmcs.set(f, v)
    return vmcs


@checked
def store_msrs(state: LogicalProcessor, caps: Capabilities, vmcs: Vmcs) -> PhysicalMemory | None:
    """Memory after the VM-exit MSR-store area is written (§29.4 "Saving MSRs": bits 127:64 of each
    entry receive the MSR that bits 31:0 name, in order), or None if an entry cannot be stored (the
    VM exit then ends in a VMX abort)."""
    count = vmcs.get(_F["VM_EXIT_MSR_STORE_COUNT"])
    memory = _writable(state)
    for entry in _msr_area(state, vmcs.get(_F["VM_EXIT_MSR_STORE_ADDR"]), count):
        if exit_msr_store_refusal(entry, caps, state) is not None:
            return None
        memory = memory.write_int(HostPhysAddr(entry.address + _MSR_DATA.lo // 8), _MSR_DATA_BYTES,
                                  read_msr(state, entry.index))
    return memory


def _host_segments(vmcs: Vmcs, host64: bool) -> dict[str, Segment]:
    """§29.5.2: selectors from the host fields (LDTR 0); a data segment with selector 0, and LDTR, are
    unusable; CS, SS, DS, ES bases 0, FS, GS, TR, GDTR, IDTR bases from the host fields; limits and
    access rights fixed (CS.L = "host address-space size", CS.D/B its inverse). UNSURE: what the SDM
    leaves undefined for an unusable segment (base, limit, other access rights) is 0 here."""
    fields = tuple((vmcs.get(s.host_selector) if s.host_selector else 0, vmcs.get(s.host_base) if s.host_base else 0)
                   for s in SEGMENTS)
    return dict(_host_segment_registers(fields, host64))


@functools.lru_cache(maxsize=256)
def _host_segment_registers(fields: tuple[tuple[int, int], ...], host64: bool) -> dict[str, Segment]:
    """:func:`_host_segments` from the (selector, base) host fields of each register, once per distinct value."""
    segments = {}
    for s, (selector, base) in zip(SEGMENTS, fields, strict=True):
        if s.host_ar is None:
            ar = _AR_UNUSABLE if s.ar is not None else 0
        elif selector == 0 and s.host_ar == "data":
            segments[s.name] = Segment(0, base if s.host_base else 0, 0, _AR_UNUSABLE)
            continue
        else:
            ar = HOST_ACCESS_RIGHTS[s.host_ar]
            if s.host_ar == "code":
                ar |= _AR_L if host64 else _AR_DB
        limit = s.host_limit if ar != _AR_UNUSABLE else 0
        segments[s.name] = Segment(selector, base, limit, ar)
    return segments


@checked
def load_host_state(state: LogicalProcessor, caps: Capabilities, vmcs: Vmcs, reason: ExitReason, *,
                    qualification: int = 0,
                    entry_failure: bool = False, info: ExitInfo | None = None) -> LogicalProcessor:
    """Return to VMX root operation: record the exit reason (and bit 31 for a VM-entry failure,
    SDM Vol. 3C §29.2.1 "Basic VM-Exit Information") and load the host state (§29.5.1 "Loading Host
    Control Registers, Debug Registers, MSRs": CR0 bits ET, CD, NW, 63:32, 28:19, 17 and 15:6, and
    the CR0 and CR4 bits fixed in VMX operation, keep their values; CR4.PAE is set and CR4.PCIDE kept
    only for a 64-bit host; CR3; DR7 is 400H; IA32_DEBUGCTL is cleared; the SYSENTER MSRs, and
    IA32_PAT / IA32_PERF_GLOBAL_CTRL / IA32_EFER with their "load" controls; without "load
    IA32_EFER", EFER.LMA and LME follow "host address-space size"; §29.5.2 segments and descriptor
    tables; §29.5.3 RIP and RSP, RFLAGS cleared but for bit 1; CPL is 0), then the VM-exit MSR-load
    area (§29.6). A VMX abort (§29.7) ends the exit where a 64-bit guest returns to a host with
    "host address-space size" 0, or an MSR-load entry cannot be loaded. With ``info`` (an exit
    decided by :func:`vtx.vmx.exits.rules.decide`) every exit-information field it reports is recorded
    too (§29.2 "Recording VM-Exit Information and Updating VM-Entry Control Fields")."""
    return _load_host(state, caps, vmcs, reason, qualification=qualification, entry_failure=entry_failure,
                      info=info, unmodified=vmcs)


def _load_host(state: LogicalProcessor, caps: Capabilities, vmcs: Vmcs, reason: ExitReason, *, qualification: int,
               entry_failure: bool, info: ExitInfo | None, unmodified: Vmcs) -> LogicalProcessor:
    """:func:`load_host_state`; a VMX abort leaves the VMCS data as ``unmodified`` (before the exit)."""
    exit_ctls = vmcs.get(_F["VM_EXIT_CONTROLS"])
    host64 = bool(exit_ctls & _EXIT_HOST_64)
    if info is not None and (info.reason.number != reason.number or entry_failure):  # (a number names a reason)
        raise InputError("info", str(info), f"must describe a true VM exit with basic reason {reason.number}")
    if state.is_ia32e_mode and not host64:
        return _abort(state, unmodified, "host_address_space")
    fixed0 = {r: caps.msr(f"IA32_VMX_{r}_FIXED0") or 0 for r in ("CR0", "CR4")}
    fixed1 = {r: caps.msr(f"IA32_VMX_{r}_FIXED1") for r in ("CR0", "CR4")}
    fixed = {r: fixed0[r] | (~f1 & mask(64) if f1 is not None else 0) for r, f1 in fixed1.items()}
    cr0 = _keep(state.cr0, vmcs.get(_F["HOST_CR0"]), _CR0_UNCHANGED_ON_EXIT | fixed["CR0"])
    cr4 = _keep(state.cr4, vmcs.get(_F["HOST_CR4"]), fixed["CR4"])
    cr4 = cr4 | _CR4_PAE if host64 else cr4 & ~_CR4_PCIDE
    if exit_ctls & _EXIT_LOAD_EFER:
        efer = vmcs.get(_F["HOST_IA32_EFER"])
    else:
        lm = (_EFER_LMA | _EFER_LME) if host64 else 0
        efer = (state.efer & ~(_EFER_LMA | _EFER_LME)) | lm
    if info is None:
        full_reason = _FAILED_ENTRY.put(reason.number, int(entry_failure))
        vmcs = vmcs.with_fields({"VM_EXIT_REASON": full_reason, "EXIT_QUALIFICATION": qualification})
    else:
        vmcs = record_exit(vmcs, info)
    msrs = {m.index: (vmcs.get(m.host) if m.host is not None else 0) for m in MSR_TRANSFERS
            if m.exit_load == _CLEAR or _on(m.exit_load, exit_ctls)}
    host = state.replace(
        mode=VmxMode.ROOT, cpl=0, cr0=cr0, cr3=vmcs.get(_F["HOST_CR3"]), cr4=cr4, dr7=HOST_DR7,
        rflags=_RFLAGS_FIXED1, rip=vmcs.get(_F["HOST_RIP"]), rsp=vmcs.get(_F["HOST_RSP"]), cs_l=host64,
        segments=_host_segments(vmcs, host64), blocking_by_mov_ss=False,
        interruptibility=state.interruptibility & _BLOCKING_NMI, activity_state=0, pending_debug_exceptions=0,
        after_entry=None, regions={**state.regions, state.current_vmcs: vmcs}, **_written_msrs(state.msrs, efer, msrs))
    loads = {}
    for entry in _msr_area(host, vmcs.get(_F["VM_EXIT_MSR_LOAD_ADDR"]), vmcs.get(_F["VM_EXIT_MSR_LOAD_COUNT"])):
        if exit_msr_load_refusal(entry, caps, host) is not None:
            return _abort(state, unmodified, "load_msrs")
        loads[entry.index] = entry.data
    return _write_msrs(host, loads)


@checked
def vm_exit(state: LogicalProcessor, caps: Capabilities, info: ExitInfo) -> LogicalProcessor:
    """A VM exit from VMX non-root operation with ``info`` (SDM Vol. 3C chapter 29): record the exit
    information and clear the valid bit of the VM-entry interruption-information field (§29.2), save
    the guest state (§29.3), store MSRs into the VM-exit MSR-store area (§29.4; a failure is a VMX
    abort), then :func:`load_host_state` (§29.5, §29.6)."""
    if state.mode is not VmxMode.NON_ROOT:
        raise InputError("state.mode", state.mode.value, "a VM exit starts in VMX non-root operation")
    original = state.get_current_vmcs()
    vmcs = save_guest_state(state, original)
    entry_info = vmcs.get(_F["VM_ENTRY_INTR_INFO_FIELD"])
    vmcs = vmcs.set(_F["VM_ENTRY_INTR_INFO_FIELD"], entry_info & ~_INTR_VALID)
    memory = store_msrs(state, caps, vmcs)
    if memory is None:
        return _abort(state, original, "save_msrs")
    state = state.replace(memory=memory, regions={**state.regions, state.current_vmcs: vmcs})
    return _load_host(state, caps, vmcs, info.reason, qualification=0, entry_failure=False, info=info,
                      unmodified=original)
