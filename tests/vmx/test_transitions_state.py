"""The VM-entry and VM-exit transitions beyond the checks: guest state loaded on entry, the MSR
areas, event injection and the exits due right after entry (SDM Vol. 3C §28.3.2, §28.4, §28.6,
§28.7), guest state saved, host state loaded and VMX aborts on exit (§29.3-§29.7)."""

from __future__ import annotations

import attrs
import pytest
from vmx_fixtures import SKYLAKE, VMCS_A, launch_ready, mutate_current

from vtx import guest_ops as g
from vtx.errors import InputError, NotEvaluable
from vtx.outcomes import VmEntered, VmExit
from vtx.paging.memory import HostPhysAddr, PhysicalMemory
from vtx.spec import get_control, reg_bit
from vtx.vmx import instructions as ins
from vtx.vmx.capabilities import load_preset
from vtx.vmx.entry.msr_load import MSR_WRITES
from vtx.vmx.exits.info import ExitInfo
from vtx.vmx.exits.layouts import LAYOUTS
from vtx.vmx.exits.rules import GuestContext, decide
from vtx.vmx.operation import LogicalProcessor, Segment, VmxMode
from vtx.vmx.templates import build_template
from vtx.vmx.transitions import (
    ABORT,
    EFER_INDEX,
    HOST_DR7,
    MSR_TRANSFERS,
    SEGMENTS,
    load_guest_state,
    load_host_state,
    read_msr,
    vm_exit,
)
from vtx.vmx.vmcs import Vmcs

MAX = load_preset("max")
MSR_AREA, STORE_AREA, EXIT_LOAD_AREA = 0x5000, 0x6000, 0x7000
SYSENTER_CS, SYSENTER_ESP, DEBUGCTL, PAT, PERF = 0x174, 0x175, 0x1D9, 0x277, 0x38F
INTR = LAYOUTS["interruption_info"]
UNUSABLE = reg_bit("VMCS_ACCESS_RIGHTS", "UNUSABLE").mask
IF = reg_bit("RFLAGS", "IF").mask
FIXED1 = reg_bit("RFLAGS", "FIXED1").mask


def msr_area(memory: PhysicalMemory, base: int, entries: list[tuple[int, int]], reserved: int = 0) -> PhysicalMemory:
    for i, (index, data) in enumerate(entries):
        memory = memory.write_int(HostPhysAddr(base + 16 * i), 16, index | reserved << 32 | data << 64)
    return memory


def ctl_bits(vmcs: Vmcs, field: str, name: str, on: bool) -> Vmcs:
    vmcs_field = {"exit": "VM_EXIT_CONTROLS", "entry": "VM_ENTRY_CONTROLS", "pin": "PIN_BASED_VM_EXEC_CONTROL",
                  "proc": "CPU_BASED_VM_EXEC_CONTROL"}[field]
    m = get_control(field, name).mask
    return vmcs.with_fields({vmcs_field: vmcs[vmcs_field] | m if on else vmcs[vmcs_field] & ~m})


# ----------------------------------------------------------------------------- VM entry


def entered(**fields: int) -> LogicalProcessor:
    """VMLAUNCH of the long-mode template with ``fields`` changed; asserts the entry succeeded."""
    state = mutate_current(launch_ready(), **fields)
    state, outcome = ins.vmlaunch(state, SKYLAKE)
    assert isinstance(outcome, VmEntered), outcome
    return state


def test_vmlaunch_loads_guest_registers_segments_and_the_msr_load_area() -> None:
    memory = msr_area(PhysicalMemory(), MSR_AREA, [(SYSENTER_CS, 0x33), (SYSENTER_ESP, 0xFFFF_8000_0000_1000)])
    state = mutate_current(attrs.evolve(launch_ready(), memory=memory), GUEST_RIP=0x4000, GUEST_RSP=0x8000,
                           GUEST_CR3=0x9000, GUEST_SYSENTER_CS=0x10, GUEST_SYSENTER_EIP=0x7000,
                           VM_ENTRY_MSR_LOAD_ADDR=MSR_AREA, VM_ENTRY_MSR_LOAD_COUNT=2)
    state, outcome = ins.vmlaunch(state, SKYLAKE)
    assert isinstance(outcome, VmEntered)
    vmcs = state.get_current_vmcs()
    assert (state.mode, state.rip, state.rsp, state.cr3) == (VmxMode.NON_ROOT, 0x4000, 0x8000, 0x9000)
    # the MSR-load area is processed after the SYSENTER fields, so its values win
    assert read_msr(state, SYSENTER_CS) == 0x33 and read_msr(state, SYSENTER_ESP) == 0xFFFF_8000_0000_1000
    assert read_msr(state, 0x176) == 0x7000
    for s in SEGMENTS:
        seg = state.segments[s.name]
        assert (seg.base, seg.limit) == (vmcs.get(s.base), vmcs.get(s.limit)), s.name
        if s.selector is not None and s.ar is not None:
            assert (seg.selector, seg.ar) == (vmcs.get(s.selector), vmcs.get(s.ar)), s.name
    assert state.after_entry is not None and state.after_entry.injected == 0 and state.after_entry.exit is None


# (entry control, guest field, MSR index) loaded only with the control
ENTRY_MSR_ROWS = [("load_ia32_pat", "GUEST_IA32_PAT", PAT), ("load_ia32_perf_global_ctrl",
                                                               "GUEST_IA32_PERF_GLOBAL_CTRL", PERF),
                  ("load_debug_controls", "GUEST_IA32_DEBUGCTL", DEBUGCTL)]


@pytest.mark.parametrize(("control", "field", "index"), ENTRY_MSR_ROWS)
@pytest.mark.parametrize("on", [True, False])
def test_entry_msr_controls(control: str, field: str, index: int, on: bool) -> None:
    vmcs = ctl_bits(build_template("long-mode", MAX).with_fields({field: 0x0007_0406_0007_0406 & 0xFFFF}),
                    "entry", control, on)
    state = attrs.evolve(LogicalProcessor(current_vmcs=VMCS_A), msrs={index: 0x1234})
    loaded = load_guest_state(state, vmcs, launch=True)
    assert loaded.msrs[index] == (0x0406 if on else 0x1234)


def test_event_injection_clears_valid_and_is_received_first() -> None:
    raw = INTR.encode(vector=14, type="hardware_exception", error_code_valid=1, valid=1)
    state = entered(VM_ENTRY_INTR_INFO_FIELD=raw, VM_ENTRY_EXCEPTION_ERROR_CODE=2)
    assert state.after_entry is not None
    assert (state.after_entry.injected, state.after_entry.error_code, state.after_entry.exit) == (raw, 2, None)
    assert state.get_current_vmcs()["VM_ENTRY_INTR_INFO_FIELD"] == raw & ~INTR.encode(valid=1)


def _after(vmcs: Vmcs, **changes: object) -> ExitInfo | None:
    state = attrs.evolve(LogicalProcessor(current_vmcs=VMCS_A), **changes)
    after = load_guest_state(state, vmcs, launch=False).after_entry
    assert after is not None
    return after.exit


VAPIC = 0x8000
BASE = build_template("long-mode", MAX)
MTF = INTR.encode(vector=0, type="other_event", valid=1)
# (name, VMCS changes, exit reason right after entry or None)
AFTER_ENTRY_ROWS: list[tuple[str, Vmcs, str | None]] = [
    ("nothing pending", BASE, None),
    ("interrupt window, IF = 1", ctl_bits(BASE.with_fields({"GUEST_RFLAGS": IF | FIXED1}), "proc",
                                          "interrupt_window_exiting", True), "INTERRUPT_WINDOW"),
    ("interrupt window, IF = 0", ctl_bits(BASE, "proc", "interrupt_window_exiting", True), None),
    ("interrupt window, blocked by STI", ctl_bits(BASE.with_fields({"GUEST_RFLAGS": IF | FIXED1,
                                                                    "GUEST_INTERRUPTIBILITY_INFO": 1}),
                                                  "proc", "interrupt_window_exiting", True), None),
    ("NMI window", ctl_bits(BASE, "proc", "nmi_window_exiting", True), "NMI_WINDOW"),
    ("NMI window, blocked by NMI", ctl_bits(BASE.with_fields({"GUEST_INTERRUPTIBILITY_INFO": 8}), "proc",
                                            "nmi_window_exiting", True), None),
    ("preemption timer 0", ctl_bits(BASE, "pin", "activate_vmx_preemption_timer", True), "PREEMPTION_TIMER"),
    ("preemption timer 5", ctl_bits(BASE.with_fields({"VMX_PREEMPTION_TIMER_VALUE": 5}), "pin",
                                    "activate_vmx_preemption_timer", True), None),
    ("pending MTF", ctl_bits(BASE.with_fields({"VM_ENTRY_INTR_INFO_FIELD": MTF}), "proc", "monitor_trap_flag",
                             True), "MONITOR_TRAP_FLAG"),
    ("TPR below threshold", ctl_bits(BASE.with_fields({"VIRTUAL_APIC_PAGE_ADDR": VAPIC, "TPR_THRESHOLD": 3}),
                                     "proc", "use_tpr_shadow", True), "TPR_BELOW_THRESHOLD"),
    ("TPR at threshold", ctl_bits(BASE.with_fields({"VIRTUAL_APIC_PAGE_ADDR": VAPIC, "TPR_THRESHOLD": 2}),
                                  "proc", "use_tpr_shadow", True), None),
    ("TPR below threshold outranks the timer", ctl_bits(ctl_bits(BASE.with_fields(
        {"VIRTUAL_APIC_PAGE_ADDR": VAPIC, "TPR_THRESHOLD": 3}), "proc", "use_tpr_shadow", True), "pin",
        "activate_vmx_preemption_timer", True), "TPR_BELOW_THRESHOLD"),
    ("an injected event comes first", ctl_bits(BASE.with_fields(
        {"VM_ENTRY_INTR_INFO_FIELD": INTR.encode(vector=32, type="external_interrupt", valid=1)}), "pin",
        "activate_vmx_preemption_timer", True), None),
]


@pytest.mark.parametrize(("name", "vmcs", "reason"), AFTER_ENTRY_ROWS, ids=[r[0] for r in AFTER_ENTRY_ROWS])
def test_exits_due_right_after_entry(name: str, vmcs: Vmcs, reason: str | None) -> None:
    memory = PhysicalMemory().write_int(HostPhysAddr(VAPIC + 0x80), 1, 0x20)  # VTPR[7:4] = 2
    out = _after(vmcs, memory=memory)
    assert (out.reason.name if out else None) == reason


# ----------------------------------------------------------------------------- VM exit

GUEST_MSRS = {SYSENTER_CS: 0x10, SYSENTER_ESP: 0x1000, 0x176: 0x2000, DEBUGCTL: 0x1, PAT: 0x0007_0406_0007_0406,
              PERF: 0xF}


def running(**fields: int) -> LogicalProcessor:
    """A guest entered from the long-mode template, with known MSR values and byte memory."""
    state = entered(**fields)
    return attrs.evolve(state, msrs={**state.msrs, **GUEST_MSRS}, rip=0x4321, rsp=0x8765, dr7=0x401,
                        preemption_timer=77, pending_debug_exceptions=0x4000, blocking_by_mov_ss=True)


def cpuid_exit(state: LogicalProcessor) -> ExitInfo:
    info = decide(g.Instruction("cpuid", length=2), state.get_current_vmcs(), GuestContext(cr0=state.cr0))
    assert isinstance(info, ExitInfo)
    return info


def test_vm_exit_saves_guest_state_and_loads_host_state() -> None:
    state = running()
    host = vm_exit(state, SKYLAKE, cpuid_exit(state))
    vmcs = host.get_current_vmcs()
    assert host.mode is VmxMode.ROOT and not host.shutdown and host.cpl == 0
    assert (vmcs["GUEST_RIP"], vmcs["GUEST_RSP"], vmcs["GUEST_CR3"]) == (0x4321, 0x8765, state.cr3)
    assert vmcs["GUEST_INTERRUPTIBILITY_INFO"] & 2 and vmcs["GUEST_PENDING_DBG_EXCEPTIONS"] == 0x4000
    assert vmcs["GUEST_SYSENTER_ESP"] == 0x1000 and vmcs["VM_EXIT_REASON"] == cpuid_exit(state).reason.number
    assert (host.rip, host.rsp, host.cr3) == (vmcs["HOST_RIP"], vmcs["HOST_RSP"], vmcs["HOST_CR3"])
    assert host.dr7 == HOST_DR7 and host.msrs[DEBUGCTL] == 0
    assert host.msrs[SYSENTER_ESP] == vmcs["HOST_IA32_SYSENTER_ESP"]
    cs, ss, tr, ldtr, gdtr = (host.segments[n] for n in ("CS", "SS", "TR", "LDTR", "GDTR"))
    assert (cs.selector, cs.base, cs.limit) == (vmcs["HOST_CS_SELECTOR"], 0, 0xFFFF_FFFF)
    assert cs.ar & reg_bit("VMCS_ACCESS_RIGHTS", "L").mask and not cs.ar & UNUSABLE
    assert (ss.selector, ss.base) == (vmcs["HOST_SS_SELECTOR"], 0)
    assert (tr.base, tr.limit) == (vmcs["HOST_TR_BASE"], 0x67)
    assert ldtr.selector == 0 and ldtr.ar & UNUSABLE
    assert (gdtr.base, gdtr.limit) == (vmcs["HOST_GDTR_BASE"], 0xFFFF)


# (exit control, guest field, value the guest had)
EXIT_SAVE_ROWS = [("save_ia32_pat", "GUEST_IA32_PAT", GUEST_MSRS[PAT]),
                  ("save_debug_controls", "GUEST_IA32_DEBUGCTL", GUEST_MSRS[DEBUGCTL]),
                  ("save_debug_controls", "GUEST_DR7", 0x401),
                  ("save_vmx_preemption_timer_value", "VMX_PREEMPTION_TIMER_VALUE", 77)]


@pytest.mark.parametrize(("control", "field", "value"), EXIT_SAVE_ROWS)
@pytest.mark.parametrize("on", [True, False])
def test_exit_save_controls(control: str, field: str, value: int, on: bool) -> None:
    state = running()
    vmcs = ctl_bits(state.get_current_vmcs().with_fields({field: 0x400 if field == "GUEST_DR7" else 0}),
                    "exit", control, on)
    host = vm_exit(state.with_region(VMCS_A, vmcs), MAX, cpuid_exit(state))
    assert host.get_current_vmcs()[field] == (value if on else vmcs[field])


def test_exit_load_controls_and_efer_save() -> None:
    state = running()
    vmcs = ctl_bits(ctl_bits(state.get_current_vmcs().with_fields({"HOST_IA32_PAT": 0x0606_0606_0606_0606}), "exit",
                             "load_ia32_pat", True), "exit", "save_ia32_efer", True)
    host = vm_exit(state.with_region(VMCS_A, vmcs), MAX, cpuid_exit(state))
    assert host.msrs[PAT] == 0x0606_0606_0606_0606 and host.get_current_vmcs()["GUEST_IA32_EFER"] == state.efer
    kept = vm_exit(state.with_region(VMCS_A, ctl_bits(vmcs, "exit", "load_ia32_pat", False)), MAX, cpuid_exit(state))
    assert kept.msrs[PAT] == GUEST_MSRS[PAT]


def test_msr_store_and_exit_msr_load_areas() -> None:
    state = running(VM_EXIT_MSR_STORE_ADDR=STORE_AREA, VM_EXIT_MSR_STORE_COUNT=2,
                    VM_EXIT_MSR_LOAD_ADDR=EXIT_LOAD_AREA, VM_EXIT_MSR_LOAD_COUNT=1)
    assert isinstance(state.memory, PhysicalMemory)
    memory = msr_area(state.memory, STORE_AREA, [(PAT, 0), (EFER_INDEX, 0)])
    memory = msr_area(memory, EXIT_LOAD_AREA, [(SYSENTER_CS, 0x99)])
    host = vm_exit(attrs.evolve(state, memory=memory), SKYLAKE, cpuid_exit(state))
    assert isinstance(host.memory, PhysicalMemory)
    assert host.memory.read_int(HostPhysAddr(STORE_AREA + 8), 8) == GUEST_MSRS[PAT]
    assert host.memory.read_int(HostPhysAddr(STORE_AREA + 24), 8) == state.efer
    assert host.memory.read_int(HostPhysAddr(STORE_AREA), 8) == PAT  # the index half is not written
    assert host.msrs[SYSENTER_CS] == 0x99  # the MSR-load area is processed after the host-state fields


# (name, MSR-store entries, MSR-load entries, abort indicator)
ABORT_ROWS = [
    ("store an x2APIC MSR", [(0x808, 0)], [], ABORT["save_msrs"]),
    ("store IA32_SMBASE", [(0x9E, 0)], [], ABORT["save_msrs"]),
    ("load IA32_FS_BASE", [], [(0xC0000100, 0)], ABORT["load_msrs"]),
    ("load a non-canonical SYSENTER_ESP", [], [(SYSENTER_ESP, 1 << 63)], ABORT["load_msrs"]),
    ("load sets reserved entry bits", [], [(SYSENTER_CS, 0)], ABORT["load_msrs"]),
]


@pytest.mark.parametrize(("name", "store", "load", "indicator"), ABORT_ROWS, ids=[r[0] for r in ABORT_ROWS])
def test_vmx_aborts(name: str, store: list[tuple[int, int]], load: list[tuple[int, int]], indicator: int) -> None:
    state = running(VM_EXIT_MSR_STORE_ADDR=STORE_AREA, VM_EXIT_MSR_STORE_COUNT=len(store),
                    VM_EXIT_MSR_LOAD_ADDR=EXIT_LOAD_AREA, VM_EXIT_MSR_LOAD_COUNT=len(load))
    assert isinstance(state.memory, PhysicalMemory)
    memory = msr_area(msr_area(state.memory, STORE_AREA, store), EXIT_LOAD_AREA, load,
                      reserved=1 if "reserved" in name else 0)
    before = state.get_current_vmcs()
    out = vm_exit(attrs.evolve(state, memory=memory), SKYLAKE, cpuid_exit(state))
    region = out.regions[VMCS_A]
    assert isinstance(region, Vmcs)
    assert out.shutdown and region.abort_indicator == indicator
    assert region.values == before.values  # a VMX abort does not modify the VMCS data


def test_abort_when_a_64_bit_guest_returns_to_a_32_bit_host() -> None:
    state = running()
    vmcs = ctl_bits(state.get_current_vmcs(), "exit", "host_address_space_size", False)
    out = vm_exit(state.with_region(VMCS_A, vmcs), SKYLAKE, cpuid_exit(state))
    assert out.shutdown and out.get_current_vmcs().abort_indicator == ABORT["host_address_space"]


def test_unknown_msr_values_are_not_evaluable_and_exits_start_in_non_root() -> None:
    state = entered()
    with pytest.raises(NotEvaluable):
        vm_exit(attrs.evolve(state, msrs={}), SKYLAKE, cpuid_exit(state))
    with pytest.raises(InputError):
        vm_exit(attrs.evolve(state, mode=VmxMode.ROOT), SKYLAKE, cpuid_exit(state))


def test_vmcall_exit_in_the_instruction_path_loads_the_host_segments() -> None:
    state = entered()
    host, outcome = ins.vmcall(state, SKYLAKE)
    assert isinstance(outcome, VmExit)
    assert host.segments["CS"] == Segment(state.get_current_vmcs()["HOST_CS_SELECTOR"], 0, 0xFFFF_FFFF,
                                          host.segments["CS"].ar)
    assert host.rip == host.get_current_vmcs()["HOST_RIP"]


def test_entry_failure_keeps_the_guest_state_area() -> None:
    state = entered()
    failed = load_host_state(state, SKYLAKE, state.get_current_vmcs(), cpuid_exit(state).reason, entry_failure=True)
    assert failed.get_current_vmcs()["GUEST_RIP"] == state.get_current_vmcs()["GUEST_RIP"]


def test_tpr_below_threshold_outranks_a_pending_mtf_exit() -> None:
    """UNSURE: both are due right after entry; vtx reports the TPR-threshold exit first."""
    vmcs = ctl_bits(ctl_bits(BASE.with_fields({"VIRTUAL_APIC_PAGE_ADDR": VAPIC, "TPR_THRESHOLD": 3,
                                               "VM_ENTRY_INTR_INFO_FIELD": MTF}), "proc", "use_tpr_shadow", True),
                    "proc", "monitor_trap_flag", True)
    out = _after(vmcs, memory=PhysicalMemory().write_int(HostPhysAddr(VAPIC + 0x80), 1, 0x20))
    assert out is not None and out.reason.name == "TPR_BELOW_THRESHOLD"


def test_msr_indices_agree_with_the_other_tables() -> None:
    """An MSR named in spec/vmx/transitions.toml has the index spec/x86/msr_writes.toml gives it."""
    by_name = {w.name: w.index for w in MSR_WRITES.values()}
    shared = [m for m in MSR_TRANSFERS if m.name in by_name]
    assert shared and all(by_name[m.name] == m.index for m in shared)
