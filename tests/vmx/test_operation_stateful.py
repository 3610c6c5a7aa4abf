"""Random VMX instruction sequences, checked after every step against the invariants of VMX
operation and against spec/vmx/state_machine.toml."""

from __future__ import annotations

import attrs
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from vmx_fixtures import (
    SKYLAKE,
    VMCS_A,
    VMCS_B,
    VMXON_ADDR,
    WRONG_REV,
    dual_monitor_ready,
    entry_ready,
    fresh,
    kind,
    launch_ready,
    launched,
    mutate_current,
    shadowing_guest,
    vmfunc_guest,
)

from vtx import spec
from vtx.bits import mask
from vtx.outcomes import InstructionOutcome, VmEntered, VmSucceed
from vtx.spec import VMCS_FIELDS, VmcsField
from vtx.vmx import instructions as ins
from vtx.vmx.operation import INVALID_POINTER, LogicalProcessor, VmxMode
from vtx.vmx.vmcs import LaunchState, Vmcs

CAPS = SKYLAKE
POINTERS = [VMXON_ADDR, VMCS_A, VMCS_B, WRONG_REV, VMCS_A + 8, 1 << 40]
WRITABLE = [f for f in VMCS_FIELDS if CAPS.field_exists(f)]
ALLOWED = {(t.source, i, t.target, o) for t in spec.VMX_TRANSITIONS for i in t.instructions for o in t.outcomes}
MODE_NAME = {VmxMode.OUTSIDE: "outside", VmxMode.ROOT: "root", VmxMode.NON_ROOT: "non_root"}


def prepared() -> LogicalProcessor:
    """Both VMCS regions hold controls that pass the VM-entry checks."""
    state = fresh()
    for address in (VMCS_A, VMCS_B):
        state = state.with_region(address, state.get_vmcs(address).with_fields(entry_ready(CAPS)))
    return state


class VmxOperation(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = prepared()
        self.written: dict[tuple[int, int], int] = {}

    def step(self, name: str, result: tuple[LogicalProcessor, InstructionOutcome],
             target: int | None = None) -> None:
        before, (after, outcome) = self.state, result
        row = (MODE_NAME[before.mode], name, MODE_NAME[after.mode], kind(outcome))
        assert row in ALLOWED, f"{row} is not a transition of spec/vmx/state_machine.toml"
        # non-root only after a successful VMLAUNCH / VMRESUME (or staying in non-root)
        if after.mode is VmxMode.NON_ROOT and before.mode is not VmxMode.NON_ROOT:
            assert isinstance(outcome, VmEntered)
        # launch states: clear -> launched only by VMLAUNCH, launched -> clear only by VMCLEAR
        for address in (VMCS_A, VMCS_B):
            old, new = before.get_vmcs(address).launch_state, after.get_vmcs(address).launch_state
            if old is LaunchState.CLEAR and new is LaunchState.LAUNCHED:
                assert name == "vmlaunch" and isinstance(outcome, VmEntered)
            if old is LaunchState.LAUNCHED and new is LaunchState.CLEAR:
                assert name == "vmclear" and isinstance(outcome, VmSucceed)
        # no instruction corrupts another VMCS region: only the current VMCS, the operand's region,
        # or (VM exit, entry failure) the current VMCS change
        touched = {before.current_vmcs, after.current_vmcs, target}
        for address, region in before.regions.items():
            if address not in touched:
                assert after.regions.get(address) == region, f"{name} changed the region at {address:#x}"
        if name in ("vmlaunch", "vmresume", "vmptrld") or isinstance(outcome, VmEntered) or kind(outcome) in (
                "vm_exit", "entry_failed"):
            self.written.clear()
        self.state = after

    @rule()
    def vmxon(self) -> None:
        self.step("vmxon", ins.vmxon(self.state, CAPS, VMXON_ADDR))

    @rule()
    def vmxoff(self) -> None:
        self.step("vmxoff", ins.vmxoff(self.state, CAPS))

    @rule(pointer=st.sampled_from(POINTERS))
    def vmclear(self, pointer: int) -> None:
        self.step("vmclear", ins.vmclear(self.state, CAPS, pointer), target=pointer)

    @rule(pointer=st.sampled_from(POINTERS))
    def vmptrld(self, pointer: int) -> None:
        self.step("vmptrld", ins.vmptrld(self.state, CAPS, pointer), target=pointer)

    @rule()
    def vmptrst(self) -> None:
        self.step("vmptrst", ins.vmptrst(self.state, CAPS))

    @rule(field=st.sampled_from(WRITABLE), value=st.integers(0, mask(64)))
    def vmwrite(self, field: VmcsField, value: int) -> None:
        if field.name in ("VM_EXIT_CONTROLS", "VM_ENTRY_CONTROLS", "PIN_BASED_VM_EXEC_CONTROL",
                          "CPU_BASED_VM_EXEC_CONTROL") and value % 3:
            value = self.state.get_vmcs(VMCS_A)[field.name] if self.state.has_current_vmcs else value
        step = ins.vmwrite(self.state, CAPS, field.encoding, value)
        was_root_with_vmcs = self.state.mode is VmxMode.ROOT and self.state.has_current_vmcs
        current = self.state.current_vmcs
        self.step("vmwrite", step)
        if was_root_with_vmcs and isinstance(step[1], VmSucceed):
            self.written[(current, field.encoding)] = value & mask(field.bits)

    @rule(field=st.sampled_from(WRITABLE))
    def vmread(self, field: VmcsField) -> None:
        before = self.state
        step = ins.vmread(self.state, CAPS, field.encoding)
        self.step("vmread", step)
        key = (before.current_vmcs, field.encoding)
        if before.mode is VmxMode.ROOT and key in self.written and isinstance(step[1], VmSucceed):
            assert step[1].value == self.written[key]

    @rule()
    def vmlaunch(self) -> None:
        self.step("vmlaunch", ins.vmlaunch(self.state, CAPS))

    @rule()
    def vmresume(self) -> None:
        self.step("vmresume", ins.vmresume(self.state, CAPS))

    @rule(kind=st.sampled_from([1, 2, 3]))
    def invept(self, kind: int) -> None:
        self.step("invept", ins.invept(self.state, CAPS, kind, 0x1000 | 6 | 3 << 3))

    @rule(kind=st.sampled_from([0, 1, 2, 3]), vpid=st.sampled_from([0, 1]))
    def invvpid(self, kind: int, vpid: int) -> None:
        self.step("invvpid", ins.invvpid(self.state, CAPS, kind, vpid))

    @rule()
    def vmcall(self) -> None:
        self.step("vmcall", ins.vmcall(self.state, CAPS))

    @rule()
    def vmfunc(self) -> None:
        self.step("vmfunc", ins.vmfunc(self.state, CAPS, 0, 0))

    @invariant()
    def at_most_one_current_vmcs_and_it_is_a_vmcs(self) -> None:
        s = self.state
        if s.current_vmcs != INVALID_POINTER:
            assert s.in_vmx_operation and isinstance(s.regions.get(s.current_vmcs), Vmcs)
        if s.mode is VmxMode.NON_ROOT:
            assert s.has_current_vmcs
        if s.mode is VmxMode.OUTSIDE:
            assert s.vmxon_pointer is None and not s.has_current_vmcs


TestVmxOperation = VmxOperation.TestCase


def test_every_state_machine_row_is_reachable() -> None:
    """Deterministic exploration: breadth-first over instruction sequences from a fresh processor,
    with a few state variations (CPL 3, compatibility mode, guest in real mode), until every
    (mode, instruction, mode, outcome kind) row of the state machine has been seen."""
    seen: set[tuple[str, str, str, str]] = set()
    good_eptp = 0x1000 | 6 | 3 << 3
    frontier = [prepared(), launched(), shadowing_guest(), vmfunc_guest(good_eptp),
                dual_monitor_ready(), mutate_current(launched(), GUEST_RFLAGS=0),
                mutate_current(launch_ready(), GUEST_RFLAGS=0), launch_ready(),
                mutate_current(shadowing_guest(), VMCS_LINK_POINTER=INVALID_POINTER)]
    variations: list[dict[str, object]] = [{}, {"cpl": 3}, {"cs_l": False}, {"cr0": 0x20}]
    for _ in range(4):
        nxt = []
        for base in frontier:
            for changes in variations:
                state = attrs.evolve(base, **changes)
                for name, result in explore(state):
                    after, outcome = result
                    row = (MODE_NAME[state.mode], name, MODE_NAME[after.mode], kind(outcome))
                    assert row in ALLOWED, row
                    if row not in seen:
                        seen.add(row)
                        nxt.append(after)
        frontier = nxt[:60]
    missing = ALLOWED - seen
    assert not missing, f"state-machine rows never reached: {sorted(missing)}"


def explore(state: LogicalProcessor) -> list[tuple[str, tuple[LogicalProcessor, InstructionOutcome]]]:
    rip = VMCS_FIELDS["GUEST_RIP"].encoding
    out: list[tuple[str, tuple[LogicalProcessor, InstructionOutcome]]] = []
    calls = [
        ("vmxon", lambda: ins.vmxon(state, CAPS, VMXON_ADDR)), ("vmxon", lambda: ins.vmxon(state, CAPS, WRONG_REV)),
        ("vmxoff", lambda: ins.vmxoff(state, CAPS)),
        ("vmxoff", lambda: ins.vmxoff(attrs.evolve(state, dual_monitor_active=True), CAPS)),
        ("vmptrst", lambda: ins.vmptrst(state, CAPS)), ("vmcall", lambda: ins.vmcall(state, CAPS)),
        ("vmlaunch", lambda: ins.vmlaunch(state, CAPS)), ("vmresume", lambda: ins.vmresume(state, CAPS)),
        ("vmfunc", lambda: ins.vmfunc(state, CAPS, 0, 0)), ("vmfunc", lambda: ins.vmfunc(state, CAPS, 0, 3)),
        ("vmfunc", lambda: ins.vmfunc(state, CAPS, 5, 0)), ("invept", lambda: ins.invept(state, CAPS, 2, 0)),
        ("invept", lambda: ins.invept(state, CAPS, 3, 0)), ("invvpid", lambda: ins.invvpid(state, CAPS, 2, 0)),
        ("invvpid", lambda: ins.invvpid(state, CAPS, 1, 0)),
        ("vmread", lambda: ins.vmread(state, CAPS, rip)), ("vmread", lambda: ins.vmread(state, CAPS, 0x6801)),
        ("vmwrite", lambda: ins.vmwrite(state, CAPS, rip, 5)), ("vmwrite", lambda: ins.vmwrite(state, CAPS, 0x6801, 5)),
        ("vmwrite", lambda: ins.vmwrite(state, CAPS, VMCS_FIELDS["PIN_BASED_VM_EXEC_CONTROL"].encoding, 0)),
    ]
    for pointer in (VMCS_A, VMCS_A + 8):
        calls += [("vmclear", lambda p=pointer: ins.vmclear(state, CAPS, p)),
                  ("vmptrld", lambda p=pointer: ins.vmptrld(state, CAPS, p))]
    for name, call in calls:
        out.append((name, call()))
    return out
