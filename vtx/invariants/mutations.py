"""Seeded hypervisor bugs, and the score of the checks that must catch them.

Each :class:`Mutation` is a realistic bug of a hypervisor design, written as a function of a built
machine (the design's state with the bug in it: an EPT entry, a VMCS field, a bitmap page) or, for
bugs of behaviour the executor does not carry (TLB invalidation, AMD ASIDs, snapshots), as a
deviation of the correct procedure beside it. :func:`mutation_score` runs every check that applies
to each mutant and to the correct design (the *baseline*, which every check must pass: a check that
flags the correct design proves nothing) and reports which checks catch each bug:

``invariants``
    the executable predicates on the machine (:func:`vtx.invariants.check_all`);
``adversarial``
    a hostile guest run by the executor: every vCPU 0 loads from every 4-KByte page of the
    guest-physical space its identity paging reaches, reads and writes a sample of I/O ports and
    MSRs; the trace must stay inside the VM's partition and every port / MSR reached without an exit
    must be granted (the stateful test of ``tests/invariants/test_stateful_isolation.py`` runs the
    same checks on drawn programs);
``z3``
    :func:`vtx.proofs.prove_machine` must refute an invariant with a counterexample the concrete
    model replays (``not-covered`` for bugs outside a machine state: TLB contents, SVM, snapshots);
``tlb_coherence``
    after the hypervisor changes EPT and performs its invalidations, every result the SDM permits
    for a guest access (:func:`vtx.paging.tlb.permitted`, stale entries included) reaches only host
    pages the VM's current EPT maps (SDM Vol. 3C §30.4.3.1 "Operations that Invalidate Cached
    Mappings");
``asid_tags``
    no two guests' TLB tags let a translation cached for one serve the other
    (:func:`vtx.invariants.tlb_conflict`, replayed on :mod:`vtx.paging.tlb`);
``encapsulation``
    a VM restored from its snapshot shows its guest exactly what the original shows
    (:func:`vtx.machine.snapshot.guest_visible` of both runs).

``python -m vtx.invariants.mutations --write-results`` writes ``docs/results/mutations.json``
(atomically); docs/mutations.rst renders it.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from vtx import guest_ops as g
from vtx.fileio import atomic_write
from vtx.invariants import TlbTag, check_all, ownership, tlb_conflict
from vtx.invariants.catalogue import Violation
from vtx.invariants.isolation import trace_violations
from vtx.machine.designs import get_design
from vtx.machine.designs.base import ept_levels
from vtx.machine.executor import run
from vtx.machine.memory_map import backing_hpa, ept_map, map_backed
from vtx.machine.model import LinearAccess, Machine, ProgramStep, Trace, Vm
from vtx.machine.scenario import LENGTHS, build_machine, parse_scenario
from vtx.machine.snapshot import VmImage, guest_visible, pause_vm, restore_vm, resume_vm, save_vm
from vtx.paging import tlb as tlbm
from vtx.paging.ept import PS, Ept, R, W, X, translate_gpa
from vtx.paging.formats import PAGE_OFFSET_BITS, PAGE_SIZE
from vtx.paging.guest import Access, AccessKind, PagingFeatures, PagingState
from vtx.paging.memory import HostPhysAddr, PhysicalMemory
from vtx.paging.outcomes import Rights, Translated
from vtx.proofs import prove_machine
from vtx.spec import VMCS_FIELDS, get_control, reg_bit
from vtx.strategies import ept_map_page
from vtx.svm.templates import build_svm_template
from vtx.typecheck import checked
from vtx.vmx.capabilities import load_preset
from vtx.vmx.eptp import ept_in_force
from vtx.vmx.exits import causes
from vtx.vmx.vmcs import Vmcs

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "results" / "mutations.json"
CHECKS = ("invariants", "adversarial", "z3", "tlb_coherence", "asid_tags", "encapsulation")
"""Every check of the score, in table order."""
Z3_TIMEOUT_MS = 10_000

_F = VMCS_FIELDS
_ENABLE_EPT = get_control("proc2", "enable_ept").mask
_WB_LEAF = R | W | X | (6 << 3)
"""A read/write/execute write-back EPT leaf (memory type 6, SDM Vol. 3C §30.3.7 "EPT and Memory Typing")."""

SCENARIO: dict[str, Any] = {
    "seed": 11, "profile": "skylake_client", "logical_processors": 2, "tick": 0.05,
    "vm": [{"name": "a", "memory_mib": 3, "workload": "memory", "length": 10},
           {"name": "b", "kind": "pv", "memory_mib": 4, "workload": "mixed", "length": 10}],
}
"""The machine every mutation starts from: two guests (``a`` with 3 MiB, a whole 2-MByte page plus
half of one; ``b`` a PV-driver guest with a ring page granted to dom0 under the hybrid design)."""

PROBE_PORTS = (0x20, 0x21, 0x60, 0x64, 0x70, 0x71, 0x80, 0xCF8, 0xCFC, 0x3F8, 0x2F8, 0x1F0, 0x170)
"""Ports the hostile guest reads: PIC, keyboard controller (0x64: reset line), CMOS / RTC, POST,
PCI configuration, serial, IDE (the legacy PC ports a host owns)."""
PROBE_MSRS = (0x10, 0x1B, 0x174, 0x175, 0x176, 0x277, 0xC0000080, 0xC0000081, 0xC0000082, 0xC0000100,
              0xC0000101, 0xC0000102)
"""MSRs the hostile guest reads and writes: TSC, APIC base, SYSENTER, PAT, EFER, STAR, LSTAR, FS / GS
bases (SDM Vol. 4 Table 2-2 "IA-32 Architectural MSRs")."""


# ------------------------------------------------------------------ machines and helpers


def base_machine(design: str) -> Machine:
    """The :data:`SCENARIO` machine under ``design``, run until its guests have touched memory."""
    machine = build_machine(parse_scenario({**SCENARIO, "designs": [design]}), design)
    machine, _ = run(machine, 120)
    return machine


def _vmcs(machine: Machine, vm: Vm, vcpu: int = 0) -> Vmcs:
    region = machine.regions[vm.vcpus[vcpu].vmcs_addr]
    assert isinstance(region, Vmcs)
    return region


def _ept(machine: Machine, vm: Vm) -> Ept:
    vmcs = _vmcs(machine, vm)
    return ept_in_force(vmcs, machine.caps)


@checked
def map_page(machine: Machine, vm: Vm, gpa: int, hpa: int, *, size: int = PAGE_SIZE,
             leaf_bits: int = _WB_LEAF) -> Machine:
    """``machine`` with ``vm``'s EPT mapping the ``size`` page of ``gpa`` to ``hpa`` (a 2-MByte or
    1-GByte leaf replaces whatever table was there), tables allocated from the VM's EPT area."""
    memory, next_table, _ = ept_map_page(machine.memory, _ept(machine, vm), gpa, hpa, size=size,
                                         leaf_bits=leaf_bits, next_table=vm.ept_next)
    page = gpa >> PAGE_OFFSET_BITS
    vm = attrs.evolve(vm, ept_next=next_table, mapped=vm.mapped | {page} if vm.is_backed(gpa) else vm.mapped)
    return attrs.evolve(machine, memory=memory).with_vm(vm)


def _with_vmcs_fields(machine: Machine, vm: Vm, fields: dict[str, int]) -> Machine:
    regions = dict(machine.regions)
    for v in vm.vcpus:
        regions[v.vmcs_addr] = _vmcs(machine, vm, v.index).with_fields(fields)
    return attrs.evolve(machine, regions=regions)


def _set_bitmap_bit(machine: Machine, page: int, bit: int, value: int) -> Machine:
    at = HostPhysAddr(page + bit // 8)
    byte = machine.memory.read_int(at, 1)
    byte = byte | 1 << bit % 8 if value else byte & ~(1 << bit % 8)
    return attrs.evolve(machine, memory=machine.memory.write_int(at, 1, byte))


# ------------------------------------------------------------------ the seeded bugs of machine state


@checked
def overlapping_ept(machine: Machine) -> Machine:
    """The allocator hands the same host page to two VMs: VM ``b``'s last guest page is mapped to
    the first page of VM ``a``'s memory."""
    a, b = machine.vms[0], machine.vms[1]
    return map_page(machine, b, b.memory_bytes - PAGE_SIZE, backing_hpa(a, 0))


@checked
def ept_leaf_maps_ept_table(machine: Machine) -> Machine:
    """A leaf of VM ``a``'s EPT maps its own EPT PML4 table (a table page reused as a data page
    after a free): the guest can rewrite its own EPT."""
    a = machine.vms[0]
    return map_page(machine, a, a.memory_bytes - PAGE_SIZE, a.ept_root)


@checked
def large_page_spills(machine: Machine) -> Machine:
    """VM ``a`` (3 MiB) is mapped with 2-MByte EPT pages rounding its size up: the page for
    guest-physical [2 MiB, 4 MiB) covers 1 MiB of host memory past the end of its partition
    (SDM Vol. 3C §30.3.2 "EPT Translation Mechanism": a PDE with bit 7 set maps a whole 2-MByte page)."""
    a = machine.vms[0]
    size = 1 << 21
    return map_page(machine, a, size, backing_hpa(a, size), size=size, leaf_bits=_WB_LEAF | PS)


@checked
def writable_vmcs_mapping(machine: Machine) -> Machine:
    """An off-by-one in the memory-map loop maps the page just past VM ``a``'s memory, read/write,
    onto the next host allocation: its own VMCS region (SDM Vol. 3C §26.2 "Format of the VMCS
    Region": software must access the VMCS only with VMREAD / VMWRITE)."""
    a = machine.vms[0]
    return map_page(machine, a, a.memory_bytes, a.vcpus[0].vmcs_addr)


@checked
def shared_vpid_without_ept(machine: Machine) -> Machine:
    """A design that falls back to shadow paging (EPT off) and tags every guest with VPID 1: linear
    mappings are tagged by VPID and PCID only, so one guest's cached translations serve another
    (SDM Vol. 3C §30.4.1 "Information That May Be Cached", §30.4.2)."""
    for vm in machine.vms:
        vmcs = _vmcs(machine, vm)
        machine = _with_vmcs_fields(machine, vm, {"VIRTUAL_PROCESSOR_ID": 1,
                                                  "SECONDARY_VM_EXEC_CONTROL": vmcs["SECONDARY_VM_EXEC_CONTROL"]
                                                  & ~_ENABLE_EPT})
    return machine


@checked
def eptp_copied_from_first_vm(machine: Machine) -> Machine:
    """A copy-paste bug: VM ``b``'s VMCSs get VM ``a``'s EPT pointer, so ``b`` runs on ``a``'s memory."""
    a, b = machine.vms[0], machine.vms[1]
    return _with_vmcs_fields(machine, b, {"EPT_POINTER": _vmcs(machine, a)["EPT_POINTER"]})


@checked
def io_bitmap_zeroed(machine: Machine) -> Machine:
    """VM ``a``'s I/O bitmap A is left zeroed (allocated, never filled with ones): every port below
    8000H, the host's PIC, keyboard controller and PCI configuration ports included, is reached
    without a VM exit (SDM Vol. 3C §26.6.4 "I/O-Bitmap Addresses", §27.1.3)."""
    a = machine.vms[0]
    page = _vmcs(machine, a)["IO_BITMAP_A"]
    return attrs.evolve(machine, memory=machine.memory.write(HostPhysAddr(page), bytes(PAGE_SIZE)))


@checked
def io_exiting_dropped(machine: Machine) -> Machine:
    """A design that turns off "unconditional I/O exiting" (to use bitmaps later) without turning on
    "use I/O bitmaps": then no IN / OUT exits at all (SDM Vol. 3C §26.6.2 "Processor-Based
    VM-Execution Controls")."""
    a = machine.vms[0]
    primary = _vmcs(machine, a)["CPU_BASED_VM_EXEC_CONTROL"]
    drop = get_control("proc", "unconditional_io_exiting").mask | get_control("proc", "use_io_bitmaps").mask
    return _with_vmcs_fields(machine, a, {"CPU_BASED_VM_EXEC_CONTROL": primary & ~drop})


APIC_BASE = 0x1B
"""IA32_APIC_BASE: the physical local APIC's base address and enable bit. VM entry and exit do not
switch it, so a guest WRMSR that does not exit relocates or disables the host's own local APIC,
through which the host takes its timer and IPIs (SDM Vol. 3A §12.4.4 "Local APIC Status and
Location", numbered as spec/x86/msr_writes.toml numbers the pinned edition's Vol. 3A chapters;
every reference design intercepts it: spec/machine/designs.toml grants none of them it)."""


@checked
def msr_bitmap_passes_apic_base(machine: Machine) -> Machine:
    """VM ``a``'s MSR bitmap clears the read and write intercepts of IA32_APIC_BASE (a pass-through
    list with one entry too many; SDM Vol. 3C §26.6.9 "MSR-Bitmap Address")."""
    a = machine.vms[0]
    page = _vmcs(machine, a)["MSR_BITMAP"]
    low = causes.MSR_LOW
    for offset in (0, 2048):  # read bitmap for low MSRs, write bitmap for low MSRs
        machine = _set_bitmap_bit(machine, page + offset, APIC_BASE - low.lo, 0)
    return machine


@checked
def ept_maps_msr_bitmap(machine: Machine) -> Machine:
    """VM ``a``'s EPT maps a guest page onto its own MSR bitmap: the guest can clear its intercepts."""
    a = machine.vms[0]
    return map_page(machine, a, a.memory_bytes + PAGE_SIZE, _vmcs(machine, a)["MSR_BITMAP"])


@checked
def vmxon_region_mapped(machine: Machine) -> Machine:
    """VM ``a``'s EPT maps a guest page, read-only, onto logical processor 0's VMXON region."""
    a = machine.vms[0]
    return map_page(machine, a, a.memory_bytes + 2 * PAGE_SIZE, machine.layout.vmxon_region(0),
                    leaf_bits=R | (6 << 3))


@checked
def mmio_identity_mapped(machine: Machine) -> Machine:
    """The design maps VM ``a``'s device window one to one (guest-physical = host-physical) instead
    of leaving it unmapped so that accesses exit and are emulated."""
    a = machine.vms[0]
    mmio = machine.layout.mmio_gpa
    return map_page(machine, a, mmio, mmio)


@checked
def grant_beyond_ring(machine: Machine) -> Machine:
    """A grant-table bounds error: dom0's grant mapping of VM ``b``'s ring page also maps the next
    guest page, which ``b`` never granted."""
    b, service = machine.vms[1], machine.service
    assert service is not None, "the hybrid design has a service VM"
    ring = machine.layout.ring_gpa
    slot = machine.layout.grant_slot(b.index)
    memory, service = map_backed_to(machine, service, slot + PAGE_SIZE * 16, backing_hpa(b, ring + PAGE_SIZE))
    return attrs.evolve(machine, memory=memory, service=service)


@checked
def map_backed_to(machine: Machine, vm: Vm, gpa: int, hpa: int) -> tuple[PhysicalMemory, Vm]:
    """Map ``gpa`` of ``vm`` (the service VM included) to ``hpa`` with the executor's own EPT writer."""
    return ept_map(machine.memory, vm, ept_levels(machine.caps, _vmcs(machine, vm)), gpa, hpa)


# ------------------------------------------------------------------ TLB: a missed INVEPT


@attrs.frozen
class TlbCase:
    """A VM's access through the TLB model before and after the hypervisor moves one of its pages."""

    machine: Machine
    vm: Vm
    state: PagingState
    tags: tlbm.Tags
    ept: Ept
    gla: int


def _tlb_case(machine: Machine) -> TlbCase:
    a = machine.vms[0]
    vmcs = _vmcs(machine, a)
    ia32e = vmcs["VM_ENTRY_CONTROLS"] & get_control("entry", "ia32e_mode_guest").mask
    efer = reg_bit("IA32_EFER", "LME").mask | reg_bit("IA32_EFER", "LMA").mask if ia32e else 0
    state = PagingState(vmcs["GUEST_CR0"], vmcs["GUEST_CR3"], vmcs["GUEST_CR4"], efer, vmcs["GUEST_RFLAGS"])
    ept = _ept(machine, a)
    gla = a.memory_bytes // 2  # identity-mapped data page of the guest
    memory, a = map_backed(machine.memory, a, ept.levels, gla)
    machine = attrs.evolve(machine, memory=memory).with_vm(a)
    return TlbCase(machine, a, state, tlbm.Tags(vmcs["VIRTUAL_PROCESSOR_ID"], 0, ept.ep4ta), ept, gla)


@checked
def remap_page(case: TlbCase, *, invept: bool) -> tuple[set[int], set[int]]:
    """The hypervisor moves the guest page of ``case.gla`` to another page of the VM's partition
    (compaction: the old host page goes back to the allocator), invalidating with INVEPT
    single-context (``invept``) or not. Returns the host pages the permitted results of the next
    read reach, and those the VM's current EPT maps for that guest page."""
    features = PagingFeatures.from_capabilities(case.machine.caps)
    out, tlb = tlbm.access(tlbm.Tlb(), case.tags, case.machine.memory, case.gla, Access(AccessKind.READ),
                           state=case.state, features=features, ept=case.ept)
    assert isinstance(out, Translated)
    new_hpa = backing_hpa(case.vm, case.vm.memory_bytes - PAGE_SIZE)
    memory, _ = ept_map(case.machine.memory, case.vm, case.ept.levels, out.gpa, new_hpa)
    if invept:
        tlb = tlbm.invept(tlb, tlbm.InveptType.SINGLE_CONTEXT, case.ept.ep4ta)
    results = tlbm.permitted(tlb, case.tags, memory, case.gla, Access(AccessKind.READ), state=case.state,
                             features=features, ept=case.ept)
    reached = {int(str(r[2])) >> PAGE_OFFSET_BITS for r in results if r[0] == "ok"}
    now = translate_gpa(case.ept, memory, out.gpa, AccessKind.READ)
    current = {now.hpa >> PAGE_OFFSET_BITS} if isinstance(now, Translated) else set()
    return reached, current


@checked
def tlb_coherence(case: TlbCase, *, invept: bool) -> list[str]:
    """Violations of TLB coherence after the remap: host pages a permitted result reaches that the
    VM's current EPT does not map."""
    reached, current = remap_page(case, invept=invept)
    return [f"{case.vm.name} can still reach host page {p << PAGE_OFFSET_BITS:#x} through a stale combined "
            f"mapping (EP4TA {case.tags.ep4ta:#x}, VPID {case.tags.vpid}) after the remap"
            for p in sorted(reached - current)]


# ------------------------------------------------------------------ AMD: shared ASIDs


@checked
def asid_tags(asids: Sequence[int]) -> list[str]:
    """For guests with ``asids`` (one VMCB each, built from the ``long-mode`` SVM template under the
    ``amd_genoa_server`` preset): each pair whose tags conflict (:func:`vtx.invariants.tlb_conflict`:
    on AMD the ASID is the only tag, APM Vol. 2 §15.16 "TLB Control"), confirmed on the TLB model:
    a translation cached while one guest ran is usable while the other runs."""
    caps = load_preset("amd_genoa_server")
    vmcbs = [build_svm_template("long-mode", caps).with_fields({"control.asid": asid}) for asid in asids]
    tags = [TlbTag(f"g{n}", f"g{n}.0", "amd", v["control.asid"]) for n, v in enumerate(vmcbs)]
    out = []
    for i, a in enumerate(tags):
        for b in tags[i + 1:]:
            why = tlb_conflict(a, b)
            if why is None:
                continue
            entry = tlbm.CachedTranslation(a.tag, 0, None, 0, PAGE_SIZE, 0, 0, _rights())
            cached = tlbm.Tlb(frozenset({entry}))
            if tlbm.lookup(cached, tlbm.Tags(b.tag), 0):
                out.append(f"{a.vm} and {b.vm}: {why} (replayed: {b.vm} hits {a.vm}'s cached translation)")
    return out


def _rights() -> Rights:
    return Rights(user=True, writable=True, execute_disable=False, protection_key=0, dirty=True, is_global=False)


# ------------------------------------------------------------------ snapshots: an omitted field


@checked
def omit_field(image: VmImage, field: str = "GUEST_CR3") -> VmImage:
    """A save routine whose field list misses ``field`` (default GUEST_CR3: the restored guest walks
    its page tables from guest-physical 0)."""
    vcpus = tuple(attrs.evolve(v, fields={k: x for k, x in v.fields.items() if k != field}) for v in image.vcpus)
    return attrs.evolve(image, vcpus=vcpus)


ENCAPSULATION_SCENARIO: dict[str, Any] = {
    "seed": 5, "profile": "skylake_client", "design": "hosted",
    "vm": [{"name": "a", "memory_mib": 4, "program": [
        {"op": "store", "gva": 0x200000, "value": 1}, {"op": "cpuid"}, {"op": "store", "gva": 0x201000, "value": 2},
        {"op": "load", "gva": 0x200000}, {"op": "load", "gva": 0x201000}, {"op": "rdtsc"},
        {"op": "store", "gva": 0x300000, "value": 3}, {"op": "load", "gva": 0x300000}]}],
}
"""A guest that stores, loads back and computes; saved after its first operations."""


def encapsulation(save: Callable[[Machine, int], VmImage]) -> list[str]:
    """Run :data:`ENCAPSULATION_SCENARIO`'s guest a few steps, pause it and save it with ``save``;
    restore the image on a fresh machine of the same design; run both to the end. Differences of
    what the guest observes after the save point (:func:`guest_visible`)."""
    scenario = parse_scenario(ENCAPSULATION_SCENARIO)
    machine, _ = run(build_machine(scenario, "hosted"), 12)
    machine, _ = pause_vm(machine, 0)
    image = save(machine, 0)
    _, trace = run(resume_vm(machine, 0), 2000)
    other = parse_scenario({**ENCAPSULATION_SCENARIO, "vm": [{"name": "host", "program": []}]})
    target = restore_vm(build_machine(other, "hosted"), image)
    _, rtrace = run(target, 2000)
    want, got = guest_visible(trace, "a"), guest_visible(rtrace, "a")
    if want == got:
        return []
    return [f"the restored VM shows its guest {len(got)} vCPU sequences that differ from the original's "
            f"(first: {_first_difference(want, got)})"]


def _first_difference(want: Any, got: Any) -> str:
    for (_, a), (_, b) in zip(want, got, strict=False):
        for n, (x, y) in enumerate(zip(a, b, strict=False)):
            if x != y:
                return f"observation {n}: {x} vs {y}"
        if len(a) != len(b):
            return f"{len(a)} vs {len(b)} observations"
    return f"{len(want)} vs {len(got)} vCPUs"


# ------------------------------------------------------------------ the adversarial run


SWEEP_STRIDE = 1 << 16
"""The hostile guest probes its guest-physical space every 64 KiB ..."""
SWEEP_BOUNDARY = 1 << 15
"""... and page by page within 32 KiB either side of the end of its memory (where off-by-one bugs map)."""


@checked
def sweep_addresses(vm: Vm, machine: Machine) -> list[int]:
    """The guest-physical addresses :func:`sweep_program` loads from: every :data:`SWEEP_STRIDE`
    below the end of the identity paging, every page within :data:`SWEEP_BOUNDARY` of the end of the
    VM's memory, and the device window."""
    layout = machine.layout
    end = vm.memory_bytes
    pages = set(range(0, layout.identity_bytes, SWEEP_STRIDE))
    pages |= set(range(max(0, end - SWEEP_BOUNDARY), min(layout.identity_bytes, end + SWEEP_BOUNDARY), PAGE_SIZE))
    return sorted(pages | {layout.mmio_gpa})


@checked
def sweep_program(vm: Vm, machine: Machine) -> tuple[ProgramStep, ...]:
    """A hostile program: a load from each of :func:`sweep_addresses` (the identity paging makes
    linear = guest-physical), then IN from each of :data:`PROBE_PORTS`, RDMSR and WRMSR of each of
    :data:`PROBE_MSRS`, then HLT."""
    steps: list[ProgramStep] = [LinearAccess(gpa, AccessKind.READ, 8) for gpa in sweep_addresses(vm, machine)]
    steps += [g.Io(port, 1, input=True, length=LENGTHS["in"]) for port in PROBE_PORTS]
    for msr in PROBE_MSRS:
        steps += [g.Rdmsr(msr, length=LENGTHS["rdmsr"]), g.Wrmsr(msr, 0, length=LENGTHS["wrmsr"])]
    return (*steps, g.Instruction("hlt", length=LENGTHS["hlt"]))


@checked
def ungranted_operations(machine: Machine, trace: Trace) -> list[str]:
    """Port I/O and MSR accesses of ``trace`` that completed without a VM exit though the design does
    not grant the port or MSR to the VM."""
    design = get_design(machine.design)
    by_name = {vm.name: vm for vm in machine.all_vms}
    out = []
    for e in trace:
        vm = by_name.get(e.vm or "")
        if e.kind != "executed" or vm is None:
            continue
        op = e.op
        if isinstance(op, g.Io) and op.port not in design.io_grants(vm):
            out.append(f"step {e.step}: {e.vcpu} reached port {op.port:#x} without an exit")
        if isinstance(op, g.Rdmsr | g.Wrmsr) and op.msr not in design.msr_grants(vm):
            out.append(f"step {e.step}: {e.vcpu} {op.kind} {op.msr:#x} without an exit")
    return out


@checked
def adversarial(machine: Machine, *, steps: int = 30_000) -> list[str]:
    """Run :func:`sweep_program` on vCPU 0 of every guest (the other vCPUs idle) and report every
    access that left its VM's partition and every ungranted port / MSR reached."""
    for vm in machine.vms:
        vcpus = tuple(attrs.evolve(v, program=sweep_program(vm, machine) if v.index == 0 else (), pc=0,
                                   yielded=False, pending_vector=None) for v in vm.vcpus)
        machine = machine.with_vm(attrs.evolve(vm, vcpus=vcpus))
    machine, trace = run(machine, steps)
    escapes = [str(v) for v in trace_violations(ownership(machine), trace)]
    return escapes + ungranted_operations(machine, trace)


# ------------------------------------------------------------------ the catalogue


@attrs.frozen
class Mutation:
    """One seeded bug: ``name``, the design it is seeded in, what it is (``bug``, from the function's
    docstring), and which checks apply (``checks``; the others are not run for it)."""

    name: str
    design: str
    checks: tuple[str, ...]
    bug: str
    mutate: Callable[[Machine], Machine] | None = attrs.field(default=None, eq=False, repr=False)


_MACHINE = ("invariants", "adversarial", "z3")


def _machine_mutation(fn: Callable[[Machine], Machine], design: str = "hosted") -> Mutation:
    return Mutation(fn.__name__, design, _MACHINE, " ".join((fn.__doc__ or "").split()), fn)


MUTATIONS: tuple[Mutation, ...] = (
    _machine_mutation(overlapping_ept),
    _machine_mutation(ept_leaf_maps_ept_table),
    _machine_mutation(large_page_spills),
    _machine_mutation(writable_vmcs_mapping),
    _machine_mutation(shared_vpid_without_ept),
    _machine_mutation(eptp_copied_from_first_vm),
    _machine_mutation(io_bitmap_zeroed, "hybrid"),
    _machine_mutation(io_exiting_dropped, "bare_metal"),
    _machine_mutation(msr_bitmap_passes_apic_base),
    _machine_mutation(ept_maps_msr_bitmap),
    _machine_mutation(vmxon_region_mapped, "bare_metal"),
    _machine_mutation(mmio_identity_mapped),
    _machine_mutation(grant_beyond_ring, "hybrid"),
    Mutation("missed_invept", "hosted", ("tlb_coherence",),
             "The hypervisor moves a guest page (compaction) and rewrites the EPT leaf but skips INVEPT: the "
             "combined mapping cached for the old page (tagged by VPID, PCID and EP4TA) keeps serving the "
             "guest's accesses to a host page the VM no longer owns (SDM Vol. 3C §30.4.3.1)."),
    Mutation("shared_asid_amd", "svm", ("asid_tags",),
             "An AMD design that runs every guest with ASID 1 (the template's) instead of one ASID per guest: "
             "the ASID is the only tag of a cached translation, so one guest's translations serve the next "
             "(APM Vol. 2 §15.16 \"TLB Control\"). The executor is VMX-only: checked on VMCBs of vtx.svm and "
             "the TLB model's ASID tags."),
    Mutation("snapshot_omits_field", "hosted", ("encapsulation",),
             "A save routine whose field list misses GUEST_CR3: the restored guest walks its page tables from "
             "guest-physical 0 and sees different memory (encapsulation: restore(save(vm)) must be "
             "observationally equal to vm)."),
)
"""Every seeded bug, in table order."""


@checked
def get_mutation(name: str) -> Mutation:
    for m in MUTATIONS:
        if m.name == name:
            return m
    raise KeyError(name)


# ------------------------------------------------------------------ running the checks


@attrs.frozen
class CheckResult:
    """One check on one subject: ``caught`` (it found a violation), the first findings, the time."""

    check: str
    caught: bool
    findings: tuple[str, ...]
    seconds: float


def _z3(machine: Machine) -> CheckResult:
    start = time.perf_counter()
    results = prove_machine(machine, timeout_ms=Z3_TIMEOUT_MS)
    refuted = [r for r in results if r.verdict == "refuted" and r.replayed]
    open_ = [r for r in results if r.verdict != "proved" and not (r.verdict == "refuted" and r.replayed)]
    findings = tuple(f"{r.invariant}: refuted, replayed: {r.counterexample}" for r in refuted) + tuple(
        f"{r.invariant}: {r.verdict} (not replayed)" for r in open_)
    return CheckResult("z3", bool(refuted), findings, time.perf_counter() - start)


def _timed(check: str, fn: Callable[[], Sequence[object]]) -> CheckResult:
    start = time.perf_counter()
    found = [str(x) for x in fn()]
    return CheckResult(check, bool(found), tuple(found[:5]), time.perf_counter() - start)


@checked
def run_checks(mutation: Mutation, *, mutated: bool = True) -> tuple[CheckResult, ...]:
    """Every check of ``mutation`` on the mutant (``mutated``) or on the correct design."""
    if mutation.mutate is not None:
        if not mutated:
            return _baseline(mutation.design, mutation.checks)
        return _machine_checks(mutation.mutate(base_machine(mutation.design)), mutation.checks)
    if mutation.name == "missed_invept":
        case = _tlb_case(base_machine(mutation.design))
        return (_timed("tlb_coherence", lambda: tlb_coherence(case, invept=not mutated)),)
    if mutation.name == "shared_asid_amd":
        return (_timed("asid_tags", lambda: asid_tags((1, 1, 1) if mutated else (1, 2, 3))),)
    if mutation.name == "snapshot_omits_field":
        return (_timed("encapsulation", lambda: encapsulation(
            (lambda m, i: omit_field(save_vm(m, i))) if mutated else save_vm)),)
    raise AssertionError(f"no checks for {mutation.name}")


def _machine_checks(machine: Machine, checks: tuple[str, ...]) -> tuple[CheckResult, ...]:
    out = []
    for check in checks:
        if check == "invariants":
            out.append(_timed(check, lambda: _violations(check_all(machine))))
        elif check == "adversarial":
            out.append(_timed(check, lambda: adversarial(machine)))
        elif check == "z3":
            out.append(_z3(machine))
    return tuple(out)


@functools.cache
def _baseline(design: str, checks: tuple[str, ...]) -> tuple[CheckResult, ...]:
    """The checks on the correct design's machine (the same for every mutation of the design)."""
    return _machine_checks(base_machine(design), checks)


def _violations(found: Sequence[Violation]) -> list[str]:
    return [str(v) for v in found]


@attrs.frozen
class Outcome:
    """The checks on one mutant and on the correct design: which caught the mutant; ``z3`` is
    ``yes`` (refuted with a replayed counterexample), ``no`` or ``not-covered``."""

    mutation: Mutation
    mutant: tuple[CheckResult, ...]
    baseline: tuple[CheckResult, ...]

    @property
    def caught_by(self) -> tuple[str, ...]:
        return tuple(r.check for r in self.mutant if r.caught)

    @property
    def z3(self) -> str:
        if "z3" not in self.mutation.checks:
            return "not-covered"
        return "yes" if "z3" in self.caught_by else "no"

    @property
    def false_alarms(self) -> tuple[str, ...]:
        """Checks that flag the correct design (each must be empty for the score to mean anything)."""
        return tuple(r.check for r in self.baseline if r.caught)

    def to_json(self) -> dict[str, Any]:
        return {"mutation": self.mutation.name, "design": self.mutation.design, "bug": self.mutation.bug,
                "checks": list(self.mutation.checks), "caught_by": list(self.caught_by), "z3": self.z3,
                "false_alarms": list(self.false_alarms),
                "findings": {r.check: list(r.findings[:2]) for r in self.mutant if r.caught},
                "seconds": round(sum(r.seconds for r in self.mutant + self.baseline), 3)}


@attrs.frozen
class MutationReport:
    """The score: every mutation's outcome."""

    outcomes: tuple[Outcome, ...]
    seconds: float

    @property
    def caught(self) -> int:
        return sum(1 for o in self.outcomes if o.caught_by)

    @property
    def score(self) -> float:
        """The fraction of seeded bugs at least one check catches."""
        return self.caught / len(self.outcomes) if self.outcomes else 0.0

    @property
    def z3_score(self) -> tuple[int, int]:
        """(refuted by z3, mutations z3 covers)."""
        covered = [o for o in self.outcomes if o.z3 != "not-covered"]
        return sum(1 for o in covered if o.z3 == "yes"), len(covered)

    def to_json(self) -> dict[str, Any]:
        z3_yes, z3_covered = self.z3_score
        return {"measured": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "host": f"{platform.node()} ({platform.machine()}, Python {platform.python_version()})",
                "mutations": len(self.outcomes), "caught": self.caught, "score": round(self.score, 4),
                "z3_refuted": z3_yes, "z3_covered": z3_covered, "seconds": round(self.seconds, 1),
                "checks": list(CHECKS), "outcomes": [o.to_json() for o in self.outcomes]}


@checked
def mutation_score(mutations: Sequence[Mutation] = MUTATIONS) -> MutationReport:
    """Run every check on every mutant and on the correct design."""
    start = time.perf_counter()
    outcomes = tuple(Outcome(m, run_checks(m), run_checks(m, mutated=False)) for m in mutations)
    return MutationReport(outcomes, time.perf_counter() - start)


@checked
def format_report(report: MutationReport) -> str:
    lines = [f"{'mutation':32} {'design':11} {'caught by':40} z3"]
    for o in report.outcomes:
        lines.append(f"{o.mutation.name:32} {o.mutation.design:11} {', '.join(o.caught_by) or '-':40} {o.z3}"
                     + (f"  FALSE ALARM: {', '.join(o.false_alarms)}" if o.false_alarms else ""))
    z3_yes, z3_covered = report.z3_score
    lines.append(f"score {report.caught}/{len(report.outcomes)} ({report.score:.0%}); z3 refuted {z3_yes} of "
                 f"{z3_covered} it covers; {report.seconds:.1f} s")
    return "\n".join(lines)


@checked
def write_results(report: MutationReport, path: Path = RESULTS) -> None:
    """Write ``report`` as JSON to ``path`` atomically (:func:`vtx.fileio.atomic_write`)."""
    atomic_write(path, (json.dumps(report.to_json(), indent=2) + "\n").encode())


@checked
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vtx.invariants.mutations", description=__doc__.split("\n")[0])
    parser.add_argument("--write-results", action="store_true", help=f"write {RESULTS.relative_to(ROOT)}")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    report = mutation_score()
    print(json.dumps(report.to_json(), indent=2) if args.json else format_report(report))
    if args.write_results:
        write_results(report)
    return 0 if report.score == 1.0 and not any(o.false_alarms for o in report.outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
