"""The invariant predicates accept the reference designs and reject one seeded bug each."""

from __future__ import annotations

from collections.abc import Callable

import attrs
import pytest

from invariants.conftest import default_machine
from vtx.invariants import INVARIANT_NAMES, TlbTag, check_all, check_isolation, check_partitioning, ownership
from vtx.invariants.isolation import tlb_conflict
from vtx.invariants.ownership import ENABLE_EPT, USE_IO_BITMAPS
from vtx.machine.designs.base import ept_levels
from vtx.machine.designs.pv import pte_address
from vtx.machine.executor import run
from vtx.machine.memory_map import LEAF_BITS, ept_map
from vtx.machine.model import Machine
from vtx.machine.scenario import build_machine, parse_scenario
from vtx.paging.ept import PS, EptWalk, walk_ept
from vtx.paging.formats import PAGE_SIZE
from vtx.paging.guest import RW

DESIGNS = ("hosted", "bare_metal", "hybrid")


def remap(machine: Machine, vm: int, gpa: int, hpa: int) -> Machine:
    """A design bug: VM ``vm``'s EPT maps ``gpa`` to ``hpa``."""
    target = machine.vms[vm]
    vmcs = machine.regions[target.vcpus[0].vmcs_addr]
    memory, target = ept_map(machine.memory, target, ept_levels(machine.caps, vmcs), gpa, hpa)
    return attrs.evolve(machine, memory=memory).with_vm(target)


def with_vmcs(machine: Machine, vm: int, fields: dict[str, int]) -> Machine:
    regions = dict(machine.regions)
    for v in machine.vms[vm].vcpus:
        regions[v.vmcs_addr] = regions[v.vmcs_addr].with_fields(fields)
    return attrs.evolve(machine, regions=regions)


def names(violations: tuple[object, ...]) -> set[str]:
    return {v.invariant for v in violations}  # type: ignore[attr-defined]


def test_invariant_names() -> None:
    assert INVARIANT_NAMES == ("partitioning", "isolation", "tlb_isolation", "io_msr_grants", "encapsulation",
                               "hardware_independence")


@pytest.mark.parametrize("design", DESIGNS)
def test_check_all_accepts_reference_designs_before_and_after_a_run(design: str) -> None:
    machine = default_machine(design)
    assert check_all(machine) == ()
    after, trace = run(machine, 300)
    assert any(e.kind == "access" for e in trace)
    assert check_all(after, trace) == ()


def test_ownership_records_partitions_hypervisor_and_grants() -> None:
    own = ownership(default_machine("hybrid"))
    kinds = {r.kind for r in own.hypervisor}
    assert {"vmxon", "vmcs", "ept_table"} <= kinds
    assert [g.owner for g in own.grants] == ["storage"] and own.grants[0].grantee == "dom0"
    assert own.grants[0].permissions


def test_check_partitioning_rejects_a_leaf_into_another_vm() -> None:
    m = default_machine("hosted")
    bad = remap(m, 1, 0x30_0000, m.vms[0].backing + 0x5000)
    found = check_partitioning(bad)
    assert len(found) == 1 and found[0].vm == m.vms[1].name and found[0].gpa == 0x30_0000
    assert m.vms[0].name in found[0].message
    assert "isolation" in names(check_isolation(bad))


def test_check_partitioning_counts_a_large_page_as_its_whole_range() -> None:
    m = default_machine("hosted")
    vm = m.vms[0]
    ctx = ownership(m).vms[0]
    walked = walk_ept(ctx.views[0].ept, m.memory, ctx.views[0].leaves[0].gpa, [])
    assert isinstance(walked, EptWalk)
    pd = walked.entries[2][0] & ~(PAGE_SIZE - 1)
    # a 2-MByte leaf at guest 0x600000 (PD index 3) whose range starts at the partition's last byte's block end
    leaf = (vm.backing + vm.memory_bytes) | LEAF_BITS | PS
    bad = attrs.evolve(m, memory=m.memory.write_int(pd + 3 * 8, 8, leaf))
    found = [v for v in check_partitioning(bad) if v.gpa == 0x60_0000]
    assert len(found) == 1 and "PDE" in found[0].detail and "0x200000 bytes" in found[0].detail
    inside = attrs.evolve(m, memory=m.memory.write_int(pd + 3 * 8, 8, (vm.backing + (2 << 20)) | LEAF_BITS | PS))
    assert check_partitioning(inside) == ()


def test_check_isolation_rejects_a_mapping_of_an_ept_table() -> None:
    m = default_machine("bare_metal")
    bad = remap(m, 0, 0x30_0000, m.vms[0].ept_root)
    found = [v for v in check_isolation(bad) if "ept_table" in v.message]
    assert found and found[0].hpa == m.vms[0].ept_root


def test_check_isolation_rejects_a_mapping_of_a_vmcs() -> None:
    m = default_machine("bare_metal")
    bad = remap(m, 0, 0x30_0000, m.vms[1].vcpus[0].vmcs_addr)
    assert any("vmcs" in v.message for v in check_isolation(bad))


def test_tlb_isolation_rejects_a_shared_vpid_without_ept() -> None:
    m = default_machine("hosted")
    proc2 = m.regions[m.vms[0].vcpus[0].vmcs_addr]["SECONDARY_VM_EXEC_CONTROL"]
    bad = with_vmcs(with_vmcs(m, 1, {"VIRTUAL_PROCESSOR_ID": 1, "SECONDARY_VM_EXEC_CONTROL": proc2 & ~ENABLE_EPT.mask}),
                    0, {"SECONDARY_VM_EXEC_CONTROL": proc2 & ~ENABLE_EPT.mask})
    assert "tlb_isolation" in names(check_isolation(bad))
    shared_with_ept = with_vmcs(m, 1, {"VIRTUAL_PROCESSOR_ID": 1})
    assert "tlb_isolation" not in names(check_isolation(shared_with_ept))


def test_tlb_conflict_per_vendor() -> None:
    a, b = TlbTag("a", "a.0", "amd", 3), TlbTag("b", "b.0", "amd", 3)
    assert tlb_conflict(a, b) and tlb_conflict(a, attrs.evolve(b, tag=4)) is None
    x = TlbTag("a", "a.0", "intel", 5, True, 0x1000)
    assert tlb_conflict(x, TlbTag("b", "b.0", "intel", 5, True, 0x2000)) is None
    assert tlb_conflict(x, TlbTag("b", "b.0", "intel", 5, True, 0x1000))
    assert tlb_conflict(TlbTag("a", "a.0", "intel", 5), TlbTag("b", "b.0", "intel", 5))
    assert tlb_conflict(TlbTag("a", "a.0", "intel", 0, False), TlbTag("b", "b.0", "intel", 0, False)) is None


def test_io_msr_grants_rejects_a_zeroed_io_bitmap() -> None:
    m = default_machine("hosted")
    proc = m.regions[m.vms[0].vcpus[0].vmcs_addr]["CPU_BASED_VM_EXEC_CONTROL"]
    bad = with_vmcs(m, 0, {"CPU_BASED_VM_EXEC_CONTROL": proc | USE_IO_BITMAPS.mask,
                           "IO_BITMAP_A": 0x7000_0000, "IO_BITMAP_B": 0x7000_1000})
    found = [v for v in check_isolation(bad) if v.invariant == "io_msr_grants"]
    assert found and "65536 I/O port" in found[0].message


CLASSIC = {"seed": 1, "steps": 200, "design": "hybrid", "vm": [
    {"name": "a", "memory_mib": 4, "workload": "compute", "length": 6},
    {"name": "classic", "kind": "pv_classic", "memory_mib": 2, "workload": "compute", "length": 6}]}


def classic_machine() -> Machine:
    return build_machine(parse_scenario(CLASSIC), "hybrid")


def rewrite_pte(machine: Machine, gla: int, change: Callable[[int], int]) -> Machine:
    """A bug in the hypervisor's page-table validation: the classic PV guest's PTE of ``gla`` changed."""
    vm = machine.vms[1]
    at = pte_address(machine.memory, vm, gla)
    assert at is not None
    return attrs.evolve(machine, memory=machine.memory.write_int(at, 8, change(machine.memory.read_int(at, 8))))


def test_classic_pv_guest_checked_through_its_page_tables() -> None:
    m = classic_machine()
    ctx = ownership(m).vms[1]
    assert ctx.classic_pv and len(ctx.page_tables) == 512 and not ctx.views
    assert check_all(m) == ()
    after, trace = run(m, 200)
    assert check_all(after, trace) == ()


def test_classic_pv_rejects_a_writable_page_table_frame_and_a_foreign_frame() -> None:
    m = classic_machine()
    vm = m.vms[1]
    frame = min(vm.page_tables)
    writable = rewrite_pte(m, (frame << 12) - vm.backing, lambda e: e | RW)
    assert any("page-table frames writable" in v.message for v in check_isolation(writable))
    foreign = rewrite_pte(m, 0x1000, lambda e: (e & 0xFFF) | (m.vms[0].backing + 0x3000))
    found = check_partitioning(foreign)
    assert len(found) == 1 and found[0].gpa == 0x1000 and "page tables" in found[0].message
