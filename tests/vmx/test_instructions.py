"""VMX instructions, branch by branch of the SDM pseudocode (Vol. 3C §32.3).

For every VM-instruction error these instructions produce: an input that produces it and the
nearest input that does not.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import pytest
from vmx_fixtures import (
    BITMAPS,
    IVYBRIDGE,
    SHADOW,
    SKYLAKE,
    VMCS_A,
    VMCS_B,
    VMXON_ADDR,
    WRONG_REV,
    dual_monitor_ready,
    fresh,
    kind,
    launch_ready,
    launched,
    mutate_current,
    revision,
    root,
    shadowing_guest,
    vmfunc_guest,
    with_current,
)

from vtx import spec
from vtx.outcomes import Fault, VmEntered, VmExit, VmFailInvalid, VmFailValid, VmSucceed
from vtx.paging.memory import PhysicalMemory
from vtx.spec import VMCS_FIELDS
from vtx.vmx import instructions as ins
from vtx.vmx.capabilities import Capabilities
from vtx.vmx.entry import evaluate_vm_entry
from vtx.vmx.operation import INVALID_POINTER, LogicalProcessor, MsegHeader, VmxMode, VmxonRegion
from vtx.vmx.vmcs import LaunchState, Vmcs

Step = tuple[LogicalProcessor, object]
MSEG = 0x10_0000


def error_of(step: Step) -> int | None:
    outcome = step[1]
    return outcome.error.number if isinstance(outcome, VmFailValid) else None


# (error number, producing step, nearest non-producing step)
ERROR_CASES: list[tuple[int, Callable[[], Step], Callable[[], Step]]] = [
    (1, lambda: ins.vmcall(with_current(), SKYLAKE),
        lambda: ins.vmcall(dual_monitor_ready(), SKYLAKE)),
    (2, lambda: ins.vmclear(with_current(), SKYLAKE, VMCS_B + 8),
        lambda: ins.vmclear(with_current(), SKYLAKE, VMCS_B)),
    (2, lambda: ins.vmclear(with_current(), SKYLAKE, 1 << 39),      # beyond MAXPHYADDR = 39
        lambda: ins.vmclear(with_current(), SKYLAKE, (1 << 39) - 0x1000)),
    (3, lambda: ins.vmclear(with_current(), SKYLAKE, VMXON_ADDR),
        lambda: ins.vmclear(with_current(), SKYLAKE, VMCS_A)),
    (4, lambda: ins.vmlaunch(attrs.evolve(launched()), SKYLAKE),
        lambda: ins.vmlaunch(launch_ready(), SKYLAKE)),
    (5, lambda: ins.vmresume(launch_ready(), SKYLAKE),
        lambda: ins.vmresume(launched(), SKYLAKE)),
    (7, lambda: ins.vmlaunch(mutate_current(launch_ready(), PIN_BASED_VM_EXEC_CONTROL=0), SKYLAKE),
        lambda: ins.vmlaunch(launch_ready(), SKYLAKE)),
    (8, lambda: ins.vmlaunch(mutate_current(launch_ready(), HOST_CR0=0x31), SKYLAKE),   # CR0.PG cleared
        lambda: ins.vmlaunch(launch_ready(), SKYLAKE)),
    (8, lambda: ins.vmlaunch(mutate_current(launch_ready(), HOST_CR4=0x20), SKYLAKE),   # CR4.VMXE cleared
        lambda: ins.vmlaunch(launch_ready(), SKYLAKE)),
    (9, lambda: ins.vmptrld(with_current(), SKYLAKE, VMCS_B | 0x800),
        lambda: ins.vmptrld(with_current(), SKYLAKE, VMCS_B)),
    (10, lambda: ins.vmptrld(with_current(), SKYLAKE, VMXON_ADDR),
         lambda: ins.vmptrld(with_current(), SKYLAKE, VMCS_B)),
    (11, lambda: ins.vmptrld(with_current(), SKYLAKE, WRONG_REV),
         lambda: ins.vmptrld(with_current(), SKYLAKE, VMCS_B)),
    (11, lambda: ins.vmptrld(with_current(IVYBRIDGE).with_region(
            VMCS_B, Vmcs(revision_id=revision(IVYBRIDGE), shadow=True)), IVYBRIDGE, VMCS_B),
         lambda: ins.vmptrld(with_current(SKYLAKE).with_region(
            VMCS_B, Vmcs(revision_id=revision(SKYLAKE), shadow=True)), SKYLAKE, VMCS_B)),
    (12, lambda: ins.vmread(with_current(), SKYLAKE, 0x6801),
         lambda: ins.vmread(with_current(), SKYLAKE, 0x6800)),
    (13, lambda: ins.vmwrite(with_current(IVYBRIDGE), IVYBRIDGE, VMCS_FIELDS["EXIT_QUALIFICATION"].encoding, 1),
         lambda: ins.vmwrite(with_current(SKYLAKE), SKYLAKE, VMCS_FIELDS["EXIT_QUALIFICATION"].encoding, 1)),
    (15, lambda: ins.vmxon(with_current(), SKYLAKE, VMXON_ADDR),
         lambda: ins.vmxon(fresh(), SKYLAKE, VMXON_ADDR)),
    (19, lambda: ins.vmcall(dual_monitor_ready().with_region(
             VMCS_A, attrs.evolve(dual_monitor_ready().get_current_vmcs(), launch_state=LaunchState.LAUNCHED)),
             SKYLAKE),
         lambda: ins.vmcall(dual_monitor_ready(), SKYLAKE)),
    (20, lambda: ins.vmcall(mutate_current(dual_monitor_ready(), VM_EXIT_CONTROLS=0), SKYLAKE),
         lambda: ins.vmcall(dual_monitor_ready(), SKYLAKE)),
    (22, lambda: ins.vmcall(dual_monitor_ready().with_region(MSEG, MsegHeader(revision_id=1)), SKYLAKE),
         lambda: ins.vmcall(dual_monitor_ready(), SKYLAKE)),
    (23, lambda: ins.vmxoff(with_current(dual_monitor_active=True), SKYLAKE),
         lambda: ins.vmxoff(with_current(), SKYLAKE)),
    (24, lambda: ins.vmcall(dual_monitor_ready().with_region(MSEG, MsegHeader(revision_id=0, features=2)), SKYLAKE),
         lambda: ins.vmcall(dual_monitor_ready().with_region(MSEG, MsegHeader(revision_id=0, features=1)), SKYLAKE)),
    (26, lambda: ins.vmlaunch(attrs.evolve(launch_ready(), blocking_by_mov_ss=True), SKYLAKE),
         lambda: ins.vmlaunch(launch_ready(), SKYLAKE)),
    (28, lambda: ins.invept(with_current(), SKYLAKE, 3, 0),
         lambda: ins.invept(with_current(), SKYLAKE, 2, 0)),
    (28, lambda: ins.invept(with_current(), SKYLAKE, 1, 0x1234_5000 | 7),       # memory type 7 invalid
         lambda: ins.invept(with_current(), SKYLAKE, 1, 0x1234_5000 | 6 | 3 << 3)),
    (28, lambda: ins.invvpid(with_current(), SKYLAKE, 1, 0),                     # VPID 0
         lambda: ins.invvpid(with_current(), SKYLAKE, 1, 5)),
    (28, lambda: ins.invvpid(with_current(), SKYLAKE, 1, 5 | 1 << 16),           # reserved bits 63:16
         lambda: ins.invvpid(with_current(), SKYLAKE, 1, 5)),
    (28, lambda: ins.invvpid(with_current(), SKYLAKE, 0, 5 | 0x0000_8000_0000_0000 << 64),  # non-canonical
         lambda: ins.invvpid(with_current(), SKYLAKE, 0, 5 | 0xFFFF_8000_0000_0000 << 64)),
]


@pytest.mark.parametrize(("error", "produce", "avoid"), ERROR_CASES,
                         ids=[f"error{e}-{i}" for i, (e, _, _) in enumerate(ERROR_CASES)])
def test_error_number_is_produced_and_avoided(error: int, produce: Callable[[], Step],
                                              avoid: Callable[[], Step]) -> None:
    state, outcome = produce()
    assert error_of((state, outcome)) == error, outcome
    assert state.get_current_vmcs().get(VMCS_FIELDS["VM_INSTRUCTION_ERROR"]) == error
    assert state.rflags & 1 << 6 and not state.rflags & 1  # ZF = 1, CF = 0
    assert error_of(avoid()) != error


def test_errors_cover_every_error_these_instructions_can_produce() -> None:
    produced = {e for e, _, _ in ERROR_CASES}
    vmx_instructions = set(spec.VMX_INSTRUCTIONS.keys())
    # 6: no processor produces it through this pseudocode;
    # 16, 17, 18, 25: VM entries that return from SMM to an executive VMCS (dual-monitor SMM).
    not_here = {6, 16, 17, 18, 25}
    expected = {e.number for e in spec.VM_INSTRUCTION_ERRORS
                if set(e.instructions) & vmx_instructions} - not_here
    assert produced == expected


# ----------------------------------------------------------------------------- VMfailInvalid


def test_controls_are_checked_before_host_state_and_both_reported() -> None:
    vmcs = mutate_current(launch_ready(), HOST_CR0=0x31, PIN_BASED_VM_EXEC_CONTROL=0).get_current_vmcs()
    verdict = evaluate_vm_entry(vmcs, SKYLAKE)
    assert isinstance(verdict.outcome, VmFailValid) and verdict.outcome.error.number == 7
    assert {v.check_id for v in verdict.violations} == {"controls.pin_based.reserved_bits", "host.cr0.fixed_bits"}
    assert [o.error.number for o in verdict.possible_outcomes if isinstance(o, VmFailValid)] == [7, 8]


def test_vmfail_without_current_vmcs_is_vmfail_invalid() -> None:
    state, outcome = ins.vmclear(root(), SKYLAKE, VMCS_B + 8)
    assert isinstance(outcome, VmFailInvalid)
    assert state.rflags & 1 and not state.rflags & 1 << 6  # CF = 1, ZF = 0


@pytest.mark.parametrize("pointer", [VMXON_ADDR + 4, 1 << 39, WRONG_REV])
def test_vmxon_with_bad_region_is_vmfail_invalid(pointer: int) -> None:
    state, outcome = ins.vmxon(fresh(), SKYLAKE, pointer)
    assert isinstance(outcome, VmFailInvalid) and state.mode is VmxMode.OUTSIDE


def test_vmxon_rejects_a_region_with_bit_31_set() -> None:
    state = fresh().with_region(VMXON_ADDR, VmxonRegion(revision(SKYLAKE) | 1 << 31))
    assert isinstance(ins.vmxon(state, SKYLAKE, VMXON_ADDR)[1], VmFailInvalid)


def test_vmxon_reads_the_revision_from_plain_memory_too() -> None:
    state = attrs.evolve(fresh(), memory=PhysicalMemory().write_int(0x9000, 4, revision(SKYLAKE)))
    assert isinstance(ins.vmxon(state, SKYLAKE, 0x9000)[1], VmSucceed)


@pytest.mark.parametrize("instruction", ["vmlaunch", "vmresume"])
def test_entry_without_current_vmcs_or_with_shadow_vmcs_is_vmfail_invalid(instruction: str) -> None:
    fn = getattr(ins, instruction)
    assert isinstance(fn(root(), SKYLAKE)[1], VmFailInvalid)
    shadow = launch_ready()
    shadow = shadow.with_region(VMCS_A, attrs.evolve(shadow.get_current_vmcs(), shadow=True))
    assert isinstance(fn(shadow, SKYLAKE)[1], VmFailInvalid)


def test_vmread_without_current_vmcs_is_vmfail_invalid() -> None:
    assert isinstance(ins.vmread(root(), SKYLAKE, 0x6800)[1], VmFailInvalid)


# ----------------------------------------------------------------------------- faults


@pytest.mark.parametrize("changes", [{"cr4": 0}, {"cr0": 0}, {"rflags": 2 | 1 << 17}, {"cs_l": False}])
def test_vmxon_ud_conditions(changes: dict[str, int]) -> None:
    assert ins.vmxon(fresh(**changes), SKYLAKE, VMXON_ADDR)[1] == Fault("UD")


@pytest.mark.parametrize("changes", [{"cpl": 3}, {"a20m": True}, {"feature_control": 0b100},
                                     {"feature_control": 0b001}, {"in_smx": True}, {"cr0": 0x80000001}])
def test_vmxon_gp_conditions(changes: dict[str, object]) -> None:
    assert ins.vmxon(fresh(**changes), SKYLAKE, VMXON_ADDR)[1] == Fault("GP", 0)


def test_vmxon_inside_smx_needs_bit_1() -> None:
    assert isinstance(ins.vmxon(fresh(in_smx=True, feature_control=0b011), SKYLAKE, VMXON_ADDR)[1], VmSucceed)


@pytest.mark.parametrize("name", ["vmxoff", "vmptrst", "vmlaunch", "vmresume", "vmcall"])
def test_instructions_outside_vmx_operation_raise_ud(name: str) -> None:
    assert getattr(ins, name)(fresh(), SKYLAKE)[1] == Fault("UD")


@pytest.mark.parametrize("name", ["vmxoff", "vmptrst", "vmlaunch", "vmresume", "vmcall"])
def test_instructions_at_cpl_3_raise_gp(name: str) -> None:
    assert getattr(ins, name)(with_current(cpl=3), SKYLAKE)[1] == Fault("GP", 0)


def test_invept_and_invvpid_ud_where_unsupported() -> None:
    no_ept = Capabilities.from_json({"IA32_VMX_PROCBASED_CTLS2": SKYLAKE.msrs["IA32_VMX_PROCBASED_CTLS2"]
                                     & ~(1 << 33 | 1 << 37)}, base=SKYLAKE)
    state = with_current()
    assert ins.invept(state, no_ept, 2, 0)[1] == Fault("UD")
    assert ins.invvpid(state, no_ept, 2, 0)[1] == Fault("UD")
    assert isinstance(ins.invept(state, SKYLAKE, 2, 0)[1], VmSucceed)


# ----------------------------------------------------------------------------- mode changes


def test_vmlaunch_enters_non_root_marks_launched_and_loads_guest_registers() -> None:
    state, outcome = ins.vmlaunch(launch_ready(), SKYLAKE)
    assert isinstance(outcome, VmEntered)
    assert state.mode is VmxMode.NON_ROOT
    assert state.get_current_vmcs().launch_state is LaunchState.LAUNCHED
    assert (state.cr0, state.cr4, state.cpl, state.cs_l) == (0x80000031, 0x2020, 0, True)


def test_instruction_in_non_root_exits_to_root_with_its_reason() -> None:
    guest, _ = ins.vmlaunch(launch_ready(), SKYLAKE)
    host, outcome = ins.vmptrst(guest, SKYLAKE)
    assert isinstance(outcome, VmExit) and outcome.reason.number == 22
    assert host.mode is VmxMode.ROOT and host.cpl == 0 and host.rflags == 2
    assert host.get_current_vmcs().get(VMCS_FIELDS["VM_EXIT_REASON"]) == 22


def test_vmresume_after_exit_reenters() -> None:
    _, outcome = ins.vmresume(launched(), SKYLAKE)
    assert isinstance(outcome, VmEntered)


def test_vmclear_makes_clear_and_invalidates_current_pointer() -> None:
    state, outcome = ins.vmclear(launched(), SKYLAKE, VMCS_A)
    assert isinstance(outcome, VmSucceed)
    assert state.current_vmcs == INVALID_POINTER
    assert state.get_vmcs(VMCS_A).launch_state is LaunchState.CLEAR


def test_vmxoff_leaves_vmx_operation() -> None:
    state, outcome = ins.vmxoff(with_current(), SKYLAKE)
    assert isinstance(outcome, VmSucceed) and state.mode is VmxMode.OUTSIDE


def test_vmptrst_stores_the_current_pointer() -> None:
    assert ins.vmptrst(with_current(), SKYLAKE)[1] == VmSucceed(VMCS_A)
    assert ins.vmptrst(root(), SKYLAKE)[1] == VmSucceed(INVALID_POINTER)


def test_dual_monitor_activation_succeeds() -> None:
    state, outcome = ins.vmcall(dual_monitor_ready(), SKYLAKE)
    assert isinstance(outcome, VmSucceed) and state.dual_monitor_active


# ----------------------------------------------------------------------------- VMCS shadowing


def test_shadowing_reads_the_shadow_vmcs_without_exiting() -> None:
    rip = VMCS_FIELDS["GUEST_RIP"].encoding
    guest = shadowing_guest()
    state, outcome = ins.vmread(guest, SKYLAKE, rip)
    assert outcome == VmSucceed(0x1234) and state.mode is VmxMode.NON_ROOT
    state, outcome = ins.vmwrite(guest, SKYLAKE, rip, 0x99)
    assert isinstance(outcome, VmSucceed)
    assert state.get_vmcs(SHADOW)["GUEST_RIP"] == 0x99
    # the controlling VMCS is untouched
    assert state.get_vmcs(VMCS_A)["GUEST_RIP"] == guest.get_vmcs(VMCS_A)["GUEST_RIP"]


def test_shadowing_bitmap_bit_set_exits() -> None:
    rip = VMCS_FIELDS["GUEST_RIP"].encoding
    guest = shadowing_guest({BITMAPS + rip // 8: 1 << (rip % 8)})
    _, outcome = ins.vmread(guest, SKYLAKE, rip)
    assert isinstance(outcome, VmExit) and outcome.reason.number == 23
    assert isinstance(ins.vmwrite(guest, SKYLAKE, rip, 1)[1], VmSucceed)  # VMWRITE bitmap bit is 0


def test_shadowing_exits_for_encodings_above_bit_14() -> None:
    _, outcome = ins.vmread(shadowing_guest(), SKYLAKE, 0x8000)
    assert isinstance(outcome, VmExit)


def test_vmread_in_non_root_without_shadowing_exits() -> None:
    guest, _ = ins.vmlaunch(launch_ready(), SKYLAKE)
    _, outcome = ins.vmread(guest, SKYLAKE, 0x6800)
    assert isinstance(outcome, VmExit) and outcome.reason.name == "VMREAD"


def test_shadowing_with_invalid_link_pointer_is_vmfail_invalid() -> None:
    guest = shadowing_guest()
    guest = mutate_current(guest, VMCS_LINK_POINTER=INVALID_POINTER)
    assert isinstance(ins.vmread(guest, SKYLAKE, 0x681E)[1], VmFailInvalid)


# ----------------------------------------------------------------------------- VMFUNC


def test_vmfunc_eptp_switching() -> None:
    good = 0x0000_1234_5000 | 6 | 3 << 3
    state, outcome = ins.vmfunc(vmfunc_guest(good), SKYLAKE, 0, 3)
    assert isinstance(outcome, VmSucceed) and state.get_current_vmcs()["EPT_POINTER"] == good
    for function, index in ((1, 3), (0, 512), (0, 4)):   # disabled function, index >= 512, invalid entry
        _, outcome = ins.vmfunc(vmfunc_guest(good), SKYLAKE, function, index)
        assert isinstance(outcome, VmExit) and outcome.reason.number == 59
    assert ins.vmfunc(with_current(), SKYLAKE, 0, 0)[1] == Fault("UD")


def test_kind_names_every_outcome() -> None:
    assert kind(VmSucceed()) == "succeed" and kind(Fault("GP", 0)) == "gp"
