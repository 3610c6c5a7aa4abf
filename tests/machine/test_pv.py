"""Classic PV guests (ring 3, no VMX non-root operation, direct paging, hypercalls) and dom0's
own vCPU serving the shared rings, on the hybrid design."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vtx.errors import InputError
from vtx.kvm.boot import MODE
from vtx.machine.cost import COSTS, PV_HYPERCALL, PV_TRAP
from vtx.machine.designs.choices import PV_OPS
from vtx.machine.designs.pv import ENTRY_BYTES, KERNEL_RO, mmu_update, owns, p2m, pte_address
from vtx.machine.executor import in_guest, in_pv_guest, run
from vtx.machine.layout import LAYOUT
from vtx.machine.model import Event, Machine, MapPage
from vtx.machine.run_cmd import RunReport
from vtx.machine.scenario import build_machine, parse_scenario
from vtx.paging.formats import PAGE_OFFSET_BITS, PAGE_SIZE
from vtx.paging.guest import RW, US, P
from vtx.paging.memory import HostPhysAddr
from vtx.vmx.exits.causes import VECTORS
from vtx.vmx.operation import VmxMode

DATA = 0x30_0000
"""A data page in the upper half of a 4-MiB guest."""
FRAME = MODE.levels[-1].page.mask
"""The frame bits of a PTE (the walk may set its accessed and dirty flags)."""


def classic(*items: dict[str, Any], steps: int = 300, others: tuple[dict[str, Any], ...] = (),
            **top: Any) -> tuple[Machine, Machine, tuple[Event, ...]]:
    """A classic PV guest ``c`` running ``items`` (plus ``others`` VMs) on the hybrid design:
    the machine built, the machine after the run and the trace."""
    doc = {"seed": 5, "steps": steps, "tick": 0.0, "design": "hybrid",
           "vm": [{"name": "c", "kind": "pv_classic", "program": list(items)}, *others], **top}
    s = parse_scenario(doc)
    m = build_machine(s, "hybrid")
    final, trace = run(m, steps)
    return m, final, trace


def of(trace: tuple[Event, ...], vm: str, *kinds: str) -> list[Event]:
    return [e for e in trace if e.vm == vm and e.kind in kinds]


# ------------------------------------------------------------------ no VMX for the guest


def test_a_classic_pv_guest_has_no_vmcs_and_no_vm_entry() -> None:
    built, final, trace = classic({"op": "cpuid"}, {"op": "pause"})
    vcpu = built.vms[0].vcpus[0]
    assert vcpu.vmcs_addr not in built.regions
    assert not of(trace, "c", "entry", "exit", "vmx")
    assert of(trace, "c", "pv_enter") and RunReport("hybrid", final, trace).finished


def test_it_runs_in_ring_3_of_vmx_root_operation() -> None:
    m, _, _ = classic({"op": "pause"}, {"op": "pause"})
    m, trace = run(m, 1)
    assert [e.kind for e in trace] == ["pv_enter"]
    lp = m.lps[0]
    assert lp.mode is VmxMode.ROOT and lp.cpl == 3 and in_pv_guest(lp) and in_guest(lp)
    m, trace = run(m, 1)
    assert [e.kind for e in trace] == ["native"] and in_pv_guest(m.lps[0])


def test_each_operation_is_native_a_trap_or_a_hypercall_as_the_table_says() -> None:
    _, _, trace = classic({"op": "cpuid"}, {"op": "rdmsr", "msr": 0x10}, {"op": "wrmsr", "msr": 0x10, "value": 1},
                          {"op": "in"}, {"op": "out"}, {"op": "wbinvd"}, {"op": "pause"}, {"op": "rdtsc"},
                          {"op": "hlt"})
    seen = [(e.kind, e.get("operation"), e.get("vector"), e.get("hypercall"))
            for e in of(trace, "c", "trap", "hypercall", "native")]
    ud, gp = VECTORS["invalid_opcode"], VECTORS["general_protection"]
    assert seen == [("trap", "cpuid", ud, None), ("trap", "rdmsr", gp, None), ("trap", "wrmsr", gp, None),
                    ("trap", "in", gp, None), ("trap", "out", gp, None), ("trap", "wbinvd", gp, None),
                    ("native", "pause", None, None), ("native", "rdtsc", None, None),
                    ("hypercall", "hlt", None, "sched_op")]
    for kind, op, _vector, _hypercall in seen:
        assert PV_OPS[op].mechanism == kind
    handled = of(trace, "c", "handled")
    assert [h.get("action") for h in handled[:6]] == ["emulate"] * 6
    assert all(h.get("switches") == (PV_TRAP,) for h in handled[:6])
    assert handled[6].get("switches") == (PV_HYPERCALL,) and handled[6].get("action") == "block"


def test_a_hlt_blocks_and_the_vcpu_is_woken_by_an_upcall() -> None:
    _, _, trace = classic({"op": "hlt"}, {"op": "pause"})
    kinds = [(e.kind, e.get("type")) for e in of(trace, "c", "pv_enter", "inject", "hypercall", "native")]
    assert kinds[:4] == [("pv_enter", None), ("hypercall", None), ("pv_enter", None), ("inject", "upcall")]


# ------------------------------------------------------------------ direct paging


def test_guest_page_tables_hold_machine_frames() -> None:
    m, _, _ = classic({"op": "pause"})
    vm = m.vms[0]
    assert vm.cr3 == vm.backing + LAYOUT.pv_cr3 and vm.cr3 >> PAGE_OFFSET_BITS in vm.page_tables
    pte = pte_address(m.memory, vm, DATA)
    assert pte is not None and pte >> PAGE_OFFSET_BITS in vm.page_tables
    entry = m.memory.read_int(HostPhysAddr(pte), ENTRY_BYTES)
    assert entry >> PAGE_OFFSET_BITS == (vm.backing + DATA) >> PAGE_OFFSET_BITS and entry & (P | RW | US) == P | RW | US


def test_page_table_frames_are_mapped_read_only_to_the_guest() -> None:
    m, _, _ = classic({"op": "pause"})
    vm = m.vms[0]
    for frame in vm.page_tables:
        pte = pte_address(m.memory, vm, (frame << PAGE_OFFSET_BITS) - vm.backing)
        assert pte is not None and m.memory.read_int(HostPhysAddr(pte), ENTRY_BYTES) & (P | RW | US) == KERNEL_RO


def test_accesses_go_straight_to_machine_frames_without_ept() -> None:
    _, final, trace = classic({"op": "store", "gva": DATA + 8, "value": 0x1234}, {"op": "load", "gva": DATA + 8})
    store, load = of(trace, "c", "direct_access")
    hpa = final.vms[0].backing + DATA + 8
    assert (store.get("hpa"), load.get("hpa"), load.get("value")) == (hpa, hpa, 0x1234)
    assert store.get("gpa") is None and final.memory.read_int(HostPhysAddr(hpa), 8) == 0x1234
    assert final.vms[0].mapped == frozenset() and final.vms[0].vcpus[0].rax == 0x1234


def test_a_store_to_a_page_table_is_a_page_fault_bounced_to_the_guest() -> None:
    _, final, trace = classic({"op": "store", "gva": LAYOUT.pv_cr3, "value": 0})
    (trap,) = of(trace, "c", "trap")
    assert trap.get("vector") == VECTORS["page_fault"] and trap.get("operation") == "memory"
    assert of(trace, "c", "handled")[0].get("action") == "bounce"
    assert final.memory.read_int(HostPhysAddr(final.vms[0].cr3), 8) != 0


def test_mmu_update_remaps_a_page_to_one_of_the_guests_own_frames() -> None:
    alias = DATA + 0x1_0000
    _, final, trace = classic({"op": "store", "gva": DATA, "value": 77},
                              {"op": "map", "gva": alias, "pfn": DATA >> PAGE_OFFSET_BITS},
                              {"op": "load", "gva": alias})
    (call,) = [e for e in of(trace, "c", "hypercall") if e.get("hypercall") == "mmu_update"]
    assert of(trace, "c", "handled")[0].get("action") == "mmu_update"
    load = of(trace, "c", "direct_access")[-1]
    assert load.get("hpa") == final.vms[0].backing + DATA and load.get("value") == 77 and call.step < load.step


@pytest.mark.parametrize(("item", "why"), [
    ({"mfn": (0x1_0000_0000 + LAYOUT.backing_stride + DATA) >> PAGE_OFFSET_BITS}, "does not belong"),
    ({"mfn": LAYOUT.vmcs >> PAGE_OFFSET_BITS}, "does not belong"),
    ({"pfn": 0x10_0000}, "does not belong"),
    ({"pfn": LAYOUT.pv_cr3 >> PAGE_OFFSET_BITS}, "page table"),
])
def test_mmu_update_refuses_a_frame_the_guest_may_not_map(item: dict[str, Any], why: str) -> None:
    m, final, trace = classic({"op": "map", "gva": DATA, **item}, {"op": "load", "gva": DATA},
                              others=({"name": "other", "program": [{"op": "pause"}]},))
    handled = of(trace, "c", "handled")[0]
    assert handled.get("action") == "mmu_update_refused" and why in handled.get("note")
    vm = m.vms[0]
    pte = pte_address(m.memory, vm, DATA)
    kept = P | RW | US | FRAME
    assert pte is not None
    assert final.memory.read_int(HostPhysAddr(pte), 8) & kept == m.memory.read_int(HostPhysAddr(pte), 8) & kept
    assert of(trace, "c", "direct_access")[-1].get("hpa") == vm.backing + DATA


def test_a_read_only_mapping_of_a_page_table_is_allowed() -> None:
    _, _, trace = classic({"op": "map", "gva": DATA, "pfn": LAYOUT.pv_cr3 >> PAGE_OFFSET_BITS, "writable": False},
                          {"op": "load", "gva": DATA}, {"op": "store", "gva": DATA, "value": 1})
    assert of(trace, "c", "handled")[0].get("action") == "mmu_update"
    assert [e.kind for e in of(trace, "c", "direct_access", "trap")] == ["direct_access", "trap"]


def test_page_tables_must_fit_in_the_guests_memory() -> None:
    s = parse_scenario({"design": "hybrid", "vm": [{"kind": "pv_classic", "memory_mib": 1}]})
    with pytest.raises(InputError, match=r"vm\[0\]\.memory_mib"):
        build_machine(s, "hybrid")
    assert build_machine(parse_scenario({"design": "hybrid", "vm": [{"kind": "pv_classic", "memory_mib": 2}]}),
                         "hybrid").vms[0].page_tables


def test_ownership_and_p2m() -> None:
    m, _, _ = classic({"op": "pause"})
    vm = m.vms[0]
    assert owns(vm, vm.backing >> PAGE_OFFSET_BITS) and not owns(vm, (vm.backing + vm.memory_bytes) >> PAGE_OFFSET_BITS)
    assert p2m(vm, 1) == (vm.backing + PAGE_SIZE) >> PAGE_OFFSET_BITS and p2m(vm, vm.memory_bytes // PAGE_SIZE) is None


@pytest.mark.parametrize(("item", "key"), [
    ({"op": "map", "gva": 0, "pfn": 1, "mfn": 1}, "pfn"),
    ({"op": "map", "gva": 0}, "pfn"),
    ({"op": "map", "gva": 0, "pfn": 1, "writable": 1}, "writable"),
])
def test_bad_map_items_name_the_key(item: dict[str, Any], key: str) -> None:
    with pytest.raises(InputError, match=rf"program\[0\]\.{key}"):
        parse_scenario({"design": "hybrid", "vm": [{"kind": "pv_classic", "program": [item]}]})
    with pytest.raises(InputError, match="classic PV"):
        parse_scenario({"design": "hybrid", "vm": [{"kind": "hvm", "program": [{"op": "map", "gva": 0, "pfn": 1}]}]})


# ------------------------------------------------------------------ rings and dom0's vCPU


def test_a_classic_pv_notify_is_a_hypercall_and_dom0_serves_it_through_its_ept() -> None:
    _, final, trace = classic({"op": "ring_notify", "value": 0xBEEF})
    assert next(e.get("hypercall") for e in of(trace, "c", "hypercall")) == "event_channel_op"
    ring = final.vms[0].backing + LAYOUT.ring_gpa
    reads = [e for e in of(trace, "dom0", "access") if e.get("access") == "read"]
    assert (reads[0].get("gpa"), reads[0].get("hpa"), reads[0].get("value")) == (LAYOUT.grant_slot(0), ring, 0xBEEF)
    assert of(trace, "dom0", "inject")[0].get("vector") == LAYOUT.event_vector
    response = next(e for e in of(trace, "c", "direct_access") if e.get("access") == "read")
    assert response.get("hpa") == ring + LAYOUT.ring_response and response.get("value") == 0xBEEF


def test_the_frontend_waits_until_dom0_answers() -> None:
    m, _, _ = classic({"op": "ring_notify", "value": 3}, logical_processors=2)
    for _ in range(200):
        m, trace = run(m, 1)
        front = m.vms[0].vcpus[0]
        if any(e.kind == "handled" and e.get("action") == "event_send" for e in trace):
            assert not front.waiting and front.pending_vector == LAYOUT.event_vector
            return
        if front.waiting:
            assert not in_guest(m.lps[0]) or m.running[0] != (0, 0)
    raise AssertionError("dom0 never answered")


@settings(max_examples=10)
@given(st.integers(0, 2**32 - 1))
def test_runs_with_dom0_and_classic_pv_guests_are_deterministic(seed: int) -> None:
    doc = {"seed": seed, "steps": 300, "logical_processors": 2, "tick": 0.1, "design": "hybrid",
           "vm": [{"name": "c", "kind": "pv_classic", "workload": "mixed", "length": 8},
                  {"name": "p", "kind": "pv", "workload": "io", "length": 8}]}
    m = build_machine(parse_scenario(doc), "hybrid")
    assert run(m, 300) == run(m, 300)


# ------------------------------------------------------------------ the difference in exits and cost


def _io_run(kind: str) -> tuple[dict[str, Any], Counter[str], Counter[str]]:
    doc = {"seed": 11, "steps": 3000, "logical_processors": 2, "tick": 0.05, "design": "hybrid",
           "vm": [{"name": "g", "kind": kind, "workload": "io", "length": 40}]}
    final, trace = run(build_machine(parse_scenario(doc), "hybrid"), 3000)
    summary = RunReport("hybrid", final, trace).summary()
    assert summary["finished"], summary["failed"]
    exits = Counter(str(e.get("reason")) for e in trace if e.kind == "exit" and e.vm == "g")
    pv = Counter(e.kind for e in trace if e.vm == "g" and e.kind in ("trap", "hypercall"))
    return summary, exits, pv


def test_the_same_io_workload_as_hvm_pv_and_classic_pv() -> None:
    """HVM guests trap on every device access (port I/O, MMIO: a VM exit and a dom0 round trip
    each); PV-driver guests exit only for the VMCALL notify, and dom0's vCPU does the backend's
    work; classic PV guests make no VM exit at all (hypercalls and traps into the hypervisor)."""
    hvm, hvm_exits, _ = _io_run("hvm")
    pv, pv_exits, _ = _io_run("pv")
    classic_pv, classic_exits, classic_calls = _io_run("pv_classic")
    assert hvm_exits["IO_INSTRUCTION"] + hvm_exits["EPT_VIOLATION"] > 0 and "VMCALL" not in hvm_exits
    assert pv_exits["VMCALL"] > 0 and "IO_INSTRUCTION" not in pv_exits
    assert sum(classic_exits.values()) == 0 and classic_calls["hypercall"] > 0
    assert classic_pv["world_switches"].get(PV_HYPERCALL, 0) > 0 and classic_pv["exits"] > 0  # dom0's exits
    assert hvm["world_switches"]["dom0_round_trip"] > 0 and "dom0_round_trip" not in pv["world_switches"]
    assert hvm["cycles"] > pv["cycles"] > classic_pv["cycles"]
    assert COSTS[PV_HYPERCALL].unsure and COSTS[PV_TRAP].unsure


# ------------------------------------------------------------------ isolation under direct paging

_BUILT, _, _ = classic({"op": "pause"}, others=({"name": "other", "program": [{"op": "pause"}]},))
_VM = _BUILT.vms[0]
_FRAMES = st.one_of(st.integers(0, (1 << 40) - 1),
                    st.integers(_VM.backing >> PAGE_OFFSET_BITS, (_VM.backing + _VM.memory_bytes) >> PAGE_OFFSET_BITS),
                    st.sampled_from(sorted(_VM.page_tables)))


@given(gva=st.integers(0, _VM.memory_bytes - 1), frame=_FRAMES, writable=st.booleans())
def test_mmu_update_accepts_exactly_owned_frames_and_read_only_page_tables(gva: int, frame: int,
                                                                          writable: bool) -> None:
    out = mmu_update(_BUILT.memory, _VM, MapPage(gva, frame, machine=True, writable=writable))
    allowed = owns(_VM, frame) and not (writable and frame in _VM.page_tables)
    assert (out.refused == "") == allowed
    assert (out.memory is _BUILT.memory) == (not allowed)


@settings(max_examples=15)
@given(st.lists(st.tuples(st.integers(0, 63), _FRAMES, st.booleans()), min_size=1, max_size=4))
def test_whatever_a_classic_pv_kernel_maps_its_accesses_stay_in_its_frames(maps: list[tuple[int, int, bool]]) -> None:
    items: list[dict[str, Any]] = []
    for page, frame, writable in maps:
        gva = DATA + page * PAGE_SIZE
        items += [{"op": "map", "gva": gva, "mfn": frame, "writable": writable},
                  {"op": "store", "gva": gva, "value": 1}, {"op": "load", "gva": gva}]
    _, final, trace = classic(*items, others=({"name": "other", "program": [{"op": "pause"}]},), steps=400)
    vm = final.vms[0]
    accesses = of(trace, "c", "direct_access")
    assert accesses and all(owns(vm, e.get("hpa") >> PAGE_OFFSET_BITS) for e in accesses)
    assert not any(e.get("access") == "write" and e.get("hpa") >> PAGE_OFFSET_BITS in vm.page_tables
                   for e in accesses)
