"""Checking partitioning and isolation at scale: VMs of 1 GiB, each mapped by 2-MiB EPT pages (every
16th left unmapped: holes) plus 4-KiB pages, on the bare-metal design.

The concrete check (:func:`vtx.invariants.check_all`) is a range analysis over EPT leaves: every
leaf is visited once and compared with its VM's partition, the grants and the hypervisor's regions
(sorted and merged, bisected); its agreement with the z3 proofs is tested on small machines
(tests/invariants/test_proofs.py). z3 (:func:`vtx.proofs.prove_machine`) is timed on the smaller
machines to show how it grows. Target: 64 VMs x 1 GiB with 1,024 4-KiB pages each in under 60 s.
Run with ``python -m bench invariants`` (merges the rows into docs/results/bench.json).
"""

from __future__ import annotations

import sys

import attrs

from bench.harness import Result, measure
from vtx.invariants import check_all, ownership
from vtx.machine.layout import LAYOUT
from vtx.machine.memory_map import LEAF_BITS
from vtx.machine.model import Machine
from vtx.machine.scenario import DEFAULT_SCENARIO, Scenario, VmSpec, _instruction, build_machine, load_scenario
from vtx.paging.ept import ENTRY_BYTES, PS, EptWalk, walk_ept
from vtx.paging.formats import PAGE_SIZE
from vtx.paging.memory import HostPhysAddr, PhysicalMemory
from vtx.proofs import prove_machine

GIB, MIB = 1 << 30, 1 << 20
LARGE = 2 * MIB
HOLE_EVERY = 16
"""Every 16th 2-MiB block of a VM is left unmapped."""
SMALL_BASE = 16 * MIB
"""Where a VM's 4-KiB mappings start (guest-physical); the 2-MiB pages cover the blocks above them."""
LAYOUT_AT_SCALE = attrs.evolve(LAYOUT, ept_stride=0x2_0000, backing=GIB, backing_stride=GIB)
"""The default layout with room for 64 VMs of 1 GiB: 32 EPT table pages per VM, a 1-GiB backing stride."""


def machine_at_scale(vms: int, small_pages: int) -> Machine:
    """``vms`` VMs of 1 GiB each: 4-KiB mappings of ``small_pages`` pages from :data:`SMALL_BASE`,
    2-MiB mappings of every block above them but every :data:`HOLE_EVERY`-th."""
    scenario = load_scenario(DEFAULT_SCENARIO)
    program = (_instruction("hlt"),)
    scenario = Scenario(scenario.seed, 1, scenario.caps, 1, ("bare_metal",), 0.0,
                        tuple(VmSpec(f"vm{n}", 1, "hvm", GIB, (program,)) for n in range(vms)))
    machine = build_machine(scenario, "bare_metal", LAYOUT_AT_SCALE)
    pages = dict(machine.memory.pages)
    writes: list[tuple[HostPhysAddr, bytes]] = []
    own = ownership(machine)
    vms_out = []
    for ctx, vm in zip(own.vms, machine.vms, strict=True):
        view = ctx.views[0]
        first = walk_ept(view.ept, machine.memory, view.leaves[0].gpa, [])
        assert isinstance(first, EptWalk)
        pd = first.entries[-2][0] & ~(PAGE_SIZE - 1)
        free = vm.ept_next
        tables = (small_pages * PAGE_SIZE + LARGE - 1) // LARGE
        first_large = (SMALL_BASE // LARGE) + tables
        for t in range(tables):  # page tables for the 4-KiB mappings
            gpa = SMALL_BASE + t * LARGE
            writes.append((HostPhysAddr(pd + (gpa // LARGE) * ENTRY_BYTES), (free | 0b111).to_bytes(8, "little")))
            for i in range(min(512, small_pages - t * 512)):
                hpa = vm.backing + gpa + i * PAGE_SIZE
                writes.append((HostPhysAddr(free + i * ENTRY_BYTES), (hpa | LEAF_BITS).to_bytes(8, "little")))
            free += PAGE_SIZE
        for block in range(first_large, GIB // LARGE):
            if block % HOLE_EVERY:
                leaf = (vm.backing + block * LARGE) | LEAF_BITS | PS
                writes.append((HostPhysAddr(pd + block * ENTRY_BYTES), leaf.to_bytes(8, "little")))
        vms_out.append(attrs.evolve(vm, ept_next=free))
    extra = PhysicalMemory.from_writes(writes)
    for number in extra.page_numbers():
        base = bytearray(pages.get(number, bytes(PAGE_SIZE)))
        new = extra.pages[number]
        for i in range(0, PAGE_SIZE, ENTRY_BYTES):
            if any(new[i:i + ENTRY_BYTES]):
                base[i:i + ENTRY_BYTES] = new[i:i + ENTRY_BYTES]
        pages[number] = bytes(base)
    return attrs.evolve(machine, memory=PhysicalMemory.from_pages(pages), vms=tuple(vms_out))


def run() -> list[Result]:
    out = []
    for vms in (1, 4, 16, 64):
        machine = machine_at_scale(vms, 1024)
        leaves = sum(len(v.leaves) for c in ownership(machine).vms for v in c.views)
        assert check_all(machine) == (), check_all(machine)[:3]
        target = 1 / 60 if vms == 64 else None
        out.append(measure(f"check_all range analysis, {vms} VMs x 1 GiB ({leaves} leaves)",
                           lambda m=machine: check_all(m), inner=1, repetitions=3, warmup=0,
                           target_per_second=target))
    for small in (256, 4096):
        machine = machine_at_scale(16, small)
        out.append(measure(f"check_all range analysis, 16 VMs, {small} 4-KiB pages each",
                           lambda m=machine: check_all(m), inner=1, repetitions=3, warmup=0))
    for vms in (1,):
        machine = machine_at_scale(vms, 1024)
        assert all(r.verdict == "proved" for r in prove_machine(machine))
        out.append(measure(f"z3 prove_machine, {vms} VMs x 1 GiB, 1024 4-KiB pages each",
                           lambda m=machine: prove_machine(m), inner=1, repetitions=1, warmup=0))
    return out


if __name__ == "__main__":
    from bench.__main__ import main

    sys.exit(main(["invariants"]))
