"""The reference executor: determinism, the architecture of scheduling, exits as the rules predict."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from machine_fixtures import machine, scenario

from vtx import spec
from vtx.machine.designs import DESIGNS
from vtx.machine.designs.hybrid import Hybrid
from vtx.machine.executor import run
from vtx.machine.layout import LAYOUT
from vtx.machine.model import Event, LinearAccess, Machine
from vtx.machine.run_cmd import RunReport, run_scenario
from vtx.machine.scenario import DEFAULT_SCENARIO, build_machine, load_scenario, parse_scenario
from vtx.paging.guest import AccessKind
from vtx.paging.memory import HostPhysAddr
from vtx.spec import VMCS_FIELDS, get_control, reg_bit
from vtx.vmx.exits.info import ExitInfo
from vtx.vmx.exits.rules import Executes, GuestContext, decide
from vtx.vmx.operation import VmxMode
from vtx.vmx.vmcs import Vmcs

_BASIC = spec.EXIT_REASON_FORMAT["basic_exit_reason"].bits


# ------------------------------------------------------------------ the default scenario


@pytest.mark.parametrize("design", list(DESIGNS))
def test_each_design_runs_the_default_scenario(design: str) -> None:
    s = load_scenario(DEFAULT_SCENARIO)
    final, trace = run(build_machine(s, design), s.steps)
    report = RunReport(design, final, trace).summary()
    assert report["finished"], report["failed"]
    assert report["entries"] == report["exits"] > 0
    assert report["translations"] > 0 and report["injected"] > 0
    assert all(e.get("checks") == "pass" for e in trace if e.kind == "entry")
    assert set(report["exits_by_reason"]) >= {"CPUID", "HLT", "IO_INSTRUCTION", "EPT_VIOLATION", "VMCALL"}


def test_default_scenario_has_three_vms_and_all_designs() -> None:
    s = load_scenario(DEFAULT_SCENARIO)
    assert len(s.vms) == 3 and set(s.designs) == set(DESIGNS)
    assert {v.kind for v in s.vms} == {"hvm", "pv"}


# ------------------------------------------------------------------ determinism and frozen values


@settings(max_examples=20)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_same_scenario_and_seed_give_the_same_trace(seed: int) -> None:
    m = machine("hybrid", seed=seed, steps=120)
    first = run(m, 120)
    second = run(m, 120)
    assert first[1] == second[1]
    assert first[0] == second[0]


def test_runs_compose_step_by_step() -> None:
    """Running n steps at once or one at a time gives the same machine and trace."""
    m = machine("bare_metal")
    whole, trace = run(m, 60)
    parts: list[Event] = []
    for _ in range(60):
        m, t = run(m, 1)
        parts += t
    assert m == whole and tuple(parts) == trace


def test_machine_is_frozen_and_run_leaves_it_unchanged() -> None:
    m = machine()
    before = attrs.evolve(m)
    run(m, 50)
    assert m == before
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        m.step = 3  # type: ignore[misc]


# ------------------------------------------------------------------ exits: exactly what the rules predict

_SS_DPL = reg_bit("VMCS_ACCESS_RIGHTS", "DPL").bits
_CS_L = reg_bit("VMCS_ACCESS_RIGHTS", "L").mask
_EFER_LM = reg_bit("IA32_EFER", "LMA").mask | reg_bit("IA32_EFER", "LME").mask
_IA32E = get_control("entry", "ia32e_mode_guest").mask


def context_from_vmcs(vmcs: Vmcs, m: Machine) -> GuestContext:
    """The guest context read straight from the guest-state area (the templates have no
    "load IA32_EFER", so EFER.LMA/LME follow "IA-32e mode guest")."""
    efer = _EFER_LM if vmcs["VM_ENTRY_CONTROLS"] & _IA32E else 0
    return GuestContext(cpl=_SS_DPL.get(vmcs["GUEST_SS_AR_BYTES"]), rflags=vmcs["GUEST_RFLAGS"],
                        cr0=vmcs["GUEST_CR0"], cr4=vmcs["GUEST_CR4"], efer=efer,
                        cs_l=bool(vmcs["GUEST_CS_AR_BYTES"] & _CS_L),
                        interruptibility=vmcs["GUEST_INTERRUPTIBILITY_INFO"],
                        activity_state=vmcs["GUEST_ACTIVITY_STATE"], memory=m.memory)


@pytest.mark.parametrize("design", list(DESIGNS))
def test_exits_are_exactly_those_the_exit_rules_predict(design: str) -> None:
    """Step by step: every guest operation was judged under the VMCS current on its processor
    before the step, and the exit rules, given that VMCS, decide exactly what the trace shows;
    each exit's reason is what the VMCS's exit-reason field holds afterwards."""
    m = machine(design)
    judged = exits = 0
    for _ in range(400):
        after, trace = run(m, 1)
        for e in trace:
            if e.kind not in ("exit", "executed", "access"):
                continue
            assert e.lp is not None
            lp, ref = m.lps[e.lp], m.running[e.lp]
            assert lp.mode is VmxMode.NON_ROOT and ref is not None
            vcpu = m.vcpu(*ref)
            vmcs = m.regions[vcpu.vmcs_addr]
            assert isinstance(vmcs, Vmcs) and lp.current_vmcs == vcpu.vmcs_addr
            assert e.vmcs == vmcs
            if not vcpu.done and not isinstance(vcpu.program[vcpu.pc], LinearAccess) and e.get("operation") != \
                    "external_interrupt":
                assert e.op == vcpu.program[vcpu.pc]
            decision = decide(e.op, vmcs, context_from_vmcs(vmcs, m), caps=m.caps)
            if e.kind == "exit":
                assert isinstance(decision, ExitInfo)
                assert (decision.reason.name, decision.qualification) == (e.get("reason"), e.get("qualification"))
                assert _BASIC.get(after.regions[vcpu.vmcs_addr]["VM_EXIT_REASON"]) == decision.reason.number
                exits += 1
            else:
                assert isinstance(decision, Executes)
            judged += 1
        m = after
    assert exits > 10 and judged > exits


# ------------------------------------------------------------------ scheduling follows the architecture


@pytest.mark.parametrize("design", list(DESIGNS))
def test_moving_a_vcpu_is_vmclear_vmptrld_vmlaunch(design: str) -> None:
    """A vCPU entered on another processor than last time was VMCLEARed on the old one and
    VMPTRLDed on the new one, and is entered with VMLAUNCH; otherwise with VMRESUME."""
    _, trace = run(machine(design, seed=5, tick=0.3), 400)
    last_lp: dict[str, int] = {}
    cleared: set[str] = set()
    loaded: dict[str, int] = {}
    moves = 0
    for e in trace:
        assert e.vcpu is not None
        name = str(e.vcpu)
        if e.kind == "vmx" and e.get("instruction") == "vmclear":
            assert last_lp.get(name) == e.lp
            cleared.add(name)
        elif e.kind == "vmx" and e.get("instruction") == "vmptrld":
            assert e.lp is not None
            loaded[name] = e.lp
        elif e.kind == "entry":
            first = name not in last_lp
            moved = not first and last_lp[name] != e.lp
            if moved:
                moves += 1
                assert name in cleared and loaded.get(name) == e.lp
            expected = "vmlaunch" if first or name in cleared else "vmresume"
            assert e.get("instruction") == expected
            cleared.discard(name)
            assert e.lp is not None
            last_lp[name] = e.lp
    assert moves > 0


def test_a_failed_vm_entry_stops_the_vcpu_and_is_reported() -> None:
    m = machine("bare_metal")
    vcpu = m.vcpu(0, 0)
    vmcs = m.regions[vcpu.vmcs_addr]
    assert isinstance(vmcs, Vmcs)
    broken = vmcs.with_fields({"GUEST_RFLAGS": 0})  # RFLAGS bit 1 must be 1 (SDM Vol. 3C §28.3.1.4)
    m = attrs.evolve(m, regions={**m.regions, vcpu.vmcs_addr: broken})
    final, trace = run(m, 400)
    report = RunReport("bare_metal", final, trace)
    assert not report.finished and report.failed[0].startswith("a.0")
    assert any(e.kind == "entry" and e.vcpu == "a.0" and e.get("checks") == "fail" for e in trace)


# ------------------------------------------------------------------ memory: the 2D walk and EPT faults


def _program(*items: dict[str, object], kind: str = "hvm", design: str = "hosted") -> tuple[Machine, tuple[Event, ...]]:
    s = parse_scenario({"seed": 3, "steps": 200, "tick": 0.0, "design": design,
                        "vm": [{"name": "t", "kind": kind, "program": list(items)}]})
    return run(build_machine(s, design), s.steps)


def test_first_touch_of_backed_memory_is_an_ept_fault_then_the_access_retries() -> None:
    final, trace = _program({"op": "store", "gva": 0x30_0010, "value": 0xABCD}, {"op": "load", "gva": 0x30_0010})
    kinds = [(e.kind, e.get("reason") or e.get("action") or e.get("access")) for e in trace
             if e.kind in ("exit", "handled", "access")]
    assert kinds[:4] == [("exit", "EPT_VIOLATION"), ("handled", "map"), ("access", "write"), ("access", "read")]
    access = next(e for e in trace if e.kind == "access")
    vm = final.vms[0]
    assert (access.get("gva"), access.get("gpa"), access.get("hpa")) == (0x30_0010, 0x30_0010, vm.backing + 0x30_0010)
    assert final.memory.read_int(access.get("hpa"), 8) == 0xABCD


def test_mmio_goes_to_user_space_on_hosted_and_is_handled_in_place_on_bare_metal() -> None:
    for design, handler in (("hosted", "user"), ("bare_metal", "hypervisor"), ("hybrid", "dom0")):
        _, trace = _program({"op": "mmio_write", "value": 1}, {"op": "out"}, design=design)
        handled = [e for e in trace if e.kind == "handled" and e.get("action") in ("mmio", "emulate")]
        assert [e.get("handler") for e in handled] == [handler, handler]


def test_pv_ring_request_is_read_by_dom0_through_the_grant() -> None:
    """The guest's VMCALL sends dom0 an event; dom0's vCPU, entered with that interrupt, reads the
    request through its grant mapping (a guest access through dom0's EPT to the guest's ring page),
    writes the response, and the guest, woken by an event, reads it."""
    final, trace = _program({"op": "ring_notify", "value": 0x5A5A}, kind="pv", design="hybrid")
    assert final.service is not None
    ring_hpa = final.vms[0].backing + LAYOUT.ring_gpa
    dom0 = [e for e in trace if e.vm == "dom0" and e.kind in ("inject", "access", "exit")]
    assert [(e.kind, e.get("access") or e.get("reason")) for e in dom0] == [
        ("inject", None), ("access", "read"), ("access", "write"), ("exit", "VMCALL")]
    read, write = dom0[1], dom0[2]
    assert (read.get("gva"), read.get("gpa"), read.get("hpa"), read.get("value")) == (
        LAYOUT.grant_slot(0), LAYOUT.grant_slot(0), ring_hpa, 0x5A5A)
    assert write.get("hpa") == ring_hpa + LAYOUT.ring_response and write.get("value") == 0x5A5A
    seen = [e for e in trace if e.vm == "t" and e.kind == "access" and e.get("access") == "read"]
    assert seen[-1].get("value") == 0x5A5A and seen[-1].step > write.step
    assert any(e.kind == "inject" and e.vm == "t" and e.get("vector") == LAYOUT.event_vector for e in trace)
    assert final.vms[0].vcpus[0].rax == 0x5A5A


def test_without_the_grant_dom0_cannot_read_the_ring() -> None:
    s = parse_scenario({"seed": 3, "steps": 200, "tick": 0.0, "design": "hybrid",
                        "vm": [{"name": "t", "kind": "pv", "program": [{"op": "ring_notify", "value": 9}]}]})
    m = build_machine(s, "hybrid")
    assert m.service is not None and m.vms[0].granted
    m = Hybrid().unmap_grant(m, 0)
    final, trace = run(m, 200)
    faults = [e for e in trace if e.kind == "handled" and e.vm == "dom0" and e.get("action") == "grant_fault"]
    assert len(faults) == 1 and final.service is not None and final.service.vcpus[0].failed
    assert not any(e.vm == "dom0" and e.kind == "access" for e in trace)
    assert final.vms[0].vcpus[0].waiting  # the frontend never gets its response


def test_guest_accesses_record_gva_gpa_hpa_through_ept() -> None:
    _, trace = _program({"op": "load", "gva": 0x10_0000})  # the guest's own PML4 page: mapped at creation
    access = next(e for e in trace if e.kind == "access")
    assert access.get("access") == AccessKind.READ.value and access.get("gpa") == 0x10_0000


# ------------------------------------------------------------------ the cost model


def test_io_heavy_workload_costs_more_hosted_than_bare_metal() -> None:
    s = scenario(designs=["hosted", "bare_metal"], vm=[{"name": "io", "vcpus": 2, "workload": "io", "length": 30}])
    hosted, bare = (r.summary() for r in run_scenario(s))
    assert hosted["finished"] and bare["finished"]
    assert hosted["world_switches"]["kernel_user_round_trip"] > 0
    assert "kernel_user_round_trip" not in bare["world_switches"]
    assert hosted["cycles"] > bare["cycles"]


def test_exit_events_name_the_vmcs_field_value() -> None:
    _, trace = _program({"op": "cpuid"})
    exit_ = next(e for e in trace if e.kind == "exit")
    assert exit_.get("reason") == "CPUID" and exit_.get("number") == spec.get_exit_reason("CPUID").number
    assert VMCS_FIELDS["VM_EXIT_REASON"].name == "VM_EXIT_REASON"


def test_a_guest_page_fault_is_delivered_in_the_guest_when_the_exception_bitmap_does_not_intercept_it() -> None:
    _, trace = _program({"op": "load", "gva": 0x4000_0000})  # beyond the guest's identity map: not present
    faults = [e for e in trace if e.kind == "executed" and e.get("operation") == "exception"]
    assert len(faults) == 1 and faults[0].op.vector == 14
    assert not any(e.kind == "exit" and e.get("reason") == "EXCEPTION_NMI" for e in trace)


def test_an_access_crossing_a_page_uses_both_pages_translations() -> None:
    """A store of 8 bytes at the last 4 bytes of a page writes 4 bytes to each page's host frame;
    loads of either part, or of the whole, read them back (each page of the access is
    translated separately: vtx.paging splits it)."""
    program = [{"op": "store", "gva": 0x300FFC, "value": 0x1122334455667788},
               {"op": "load", "gva": 0x300FFC}, {"op": "load", "gva": 0x301000, "size": 4},
               {"op": "load", "gva": 0x300FFC, "size": 4}]
    doc = {"tick": 0.0, "vm": [{"name": "g", "program": program}]}
    machine, trace = run(build_machine(parse_scenario(doc), "bare_metal"), 200)
    accesses = [e for e in trace if e.kind == "access"]
    assert [e.get("value") for e in accesses] == [0x1122334455667788, 0x1122334455667788, 0x11223344, 0x55667788]
    vm = machine.vms[0]
    assert machine.memory.read_int(HostPhysAddr(vm.backing + 0x301000), 4) == 0x11223344
    assert machine.memory.read_int(HostPhysAddr(vm.backing + 0x300FFC), 4) == 0x55667788
