"""Classic PV guests (Xen): a guest kernel deprivileged to ring 3 of VMX root operation, with
no VMCS and no EPT (Barham et al., "Xen and the Art of Virtualization", SOSP 2003, §2-3).

* **Direct paging.** The guest's page tables hold machine frame numbers: the processor walks
  them straight to host-physical addresses (:func:`vtx.paging.guest.translate`, no EPT). The
  hypervisor validated them when it built the domain and keeps them read-only to the guest; a
  PTE write is an mmu_update hypercall it checks (:func:`mmu_update`): the frame must belong to
  the domain, and a page-table frame may not be mapped writable.
* **Privileged instructions** fault at CPL 3 (#GP(0), or #UD for CPUID behind Xen's
  forced-emulation prefix) and the hypervisor emulates them; **hypercalls** enter the hypervisor
  by SYSCALL; how each program operation is performed is ``[[pv_op]]`` of
  ``spec/machine/designs.toml``.

The guest kernel's accesses are user-mode accesses (CPL 3, SDM Vol. 3A §5.6 "Access Rights"), so
every paging-structure entry that maps its memory sets U/S, as Xen requires of 64-bit PV guests.
"""

from __future__ import annotations

import attrs

from vtx import guest_ops as g
from vtx.errors import InputError
from vtx.kvm.boot import CR0, CR4, EFER, MODE, RFLAGS, PageTables
from vtx.machine.designs.base import Handling
from vtx.machine.designs.choices import PV_OPS, PvOp
from vtx.machine.memory_map import backing_hpa
from vtx.machine.model import LinearAccess, MapPage, ProgramStep, Vm
from vtx.paging.formats import PAGE_OFFSET_BITS, PAGE_SIZE
from vtx.paging.guest import RW, US, Access, P, PagingFeatures, PagingState, translate
from vtx.paging.memory import HostPhysAddr, PhysicalMemory
from vtx.paging.outcomes import Outcome
from vtx.typecheck import checked

PV_KIND = "pv_classic"
ENTRY_BYTES = MODE.entry_bytes
KERNEL_RW = P | RW | US
"""A writable mapping of the ring-3 guest kernel's memory."""
KERNEL_RO = P | US
"""A read-only one: how the guest sees its own page-table frames."""
MIB_BITS = 20


@attrs.frozen
class PvStep:
    """What one operation of a classic PV vCPU does: ``kind`` is ``native`` (runs in ring 3),
    ``trap`` (exception ``vector`` to the hypervisor) or ``hypercall`` (``hypercall``); ``handling``
    is what the hypervisor did (None when the operation ran natively)."""

    kind: str
    operation: str
    handling: Handling | None = None
    vector: int | None = None
    hypercall: str | None = None


@checked
def op_name(step: ProgramStep) -> str:
    """The ``[[pv_op]]`` key of a program step: an instruction's mnemonic, ``in`` / ``out``, else its kind."""
    if isinstance(step, g.Instruction):
        return step.mnemonic
    if isinstance(step, g.Io):
        return "in" if step.input else "out"
    return step.kind


@checked
def pv_op(step: ProgramStep) -> PvOp | None:
    """How a classic PV kernel performs ``step`` (None: the operation has no PV form)."""
    return PV_OPS.get(op_name(step))


@checked
def paging_state(vm: Vm) -> PagingState:
    """The registers the processor translates a classic PV guest's accesses with: IA-32e mode,
    4-level paging (the hypervisor's own CR0 / CR4 / IA32_EFER) and CR3 = the guest's top-level
    page table, a machine address."""
    return PagingState(CR0, vm.cr3, CR4, EFER, RFLAGS)


@checked
def pv_translate(memory: PhysicalMemory, features: PagingFeatures, vm: Vm, step: LinearAccess) -> Outcome:
    """The processor's walk of the guest's own tables for a ring-3 access: ``gpa`` = ``hpa``."""
    return translate(paging_state(vm), features, memory, step.gva, Access(step.access, user=True, size=step.size))


@checked
def owns(vm: Vm, frame: int) -> bool:
    """Whether machine frame ``frame`` is one of the domain's pages."""
    return vm.backing >> PAGE_OFFSET_BITS <= frame < (vm.backing + vm.memory_bytes) >> PAGE_OFFSET_BITS


@checked
def p2m(vm: Vm, pfn: int) -> int | None:
    """The machine frame of the domain's pseudo-physical frame ``pfn`` (its physical-to-machine
    table), None beyond its memory."""
    if not 0 <= pfn < vm.memory_bytes >> PAGE_OFFSET_BITS:
        return None
    return backing_hpa(vm, pfn << PAGE_OFFSET_BITS) >> PAGE_OFFSET_BITS


@checked
def build_direct_paging(memory: PhysicalMemory, vm: Vm, cr3_gpa: int) -> tuple[PhysicalMemory, Vm]:
    """The page tables the domain builder gives a classic PV guest: linear [0, memory) mapped
    4-KByte page by page to the domain's machine frames, the tables in its own frames from
    pseudo-physical ``cr3_gpa`` on, and those frames mapped read-only (the hypervisor's validation
    refuses a writable mapping of a page-table page)."""
    root = backing_hpa(vm, cr3_gpa)
    tables = PageTables.empty(memory, root)
    for gla in range(0, vm.memory_bytes, PAGE_SIZE):
        tables = tables.map(gla, backing_hpa(vm, gla), PAGE_SIZE, KERNEL_RW, KERNEL_RW)
    frames = frozenset(range(root >> PAGE_OFFSET_BITS, tables.next_table >> PAGE_OFFSET_BITS))
    if not all(owns(vm, f) for f in frames):
        raise InputError(f"vm[{vm.index}].memory_mib", vm.memory_bytes >> MIB_BITS,
                         f"a classic PV guest's page tables lie in its own memory from pseudo-physical "
                         f"{cr3_gpa:#x} ({len(frames)} pages): give it more memory")
    for frame in sorted(frames):
        gla = (frame << PAGE_OFFSET_BITS) - vm.backing
        tables = tables.map(gla, frame << PAGE_OFFSET_BITS, PAGE_SIZE, KERNEL_RO, KERNEL_RW)
    return tables.memory, attrs.evolve(vm, cr3=root, page_tables=frames)


@checked
def pte_address(memory: PhysicalMemory, vm: Vm, gva: int) -> int | None:
    """The machine address of the page-table entry that maps ``gva`` (None when an upper level
    does not reference a table)."""
    table = vm.cr3
    for level in MODE.levels:
        at = table + level.index.get(gva) * ENTRY_BYTES
        if level.page_size == PAGE_SIZE:
            return at
        entry = memory.read_int(HostPhysAddr(at), ENTRY_BYTES)
        assert level.table is not None
        if not entry & P:
            return None
        table = entry & level.table.mask
    return None


@attrs.frozen
class MmuUpdate:
    """The outcome of one mmu_update request: the memory after it, the PTE's machine address,
    the frame named and, when the hypervisor refused it, why."""

    memory: PhysicalMemory
    pte: int | None
    frame: int | None
    refused: str = ""


@checked
def mmu_update(memory: PhysicalMemory, vm: Vm, step: MapPage) -> MmuUpdate:
    """Validate and carry out the guest's request to map ``step.gva`` (Xen do_mmu_update
    MMU_NORMAL_PT_UPDATE): the PTE must lie in one of the domain's validated page tables, the
    frame must belong to the domain, and a page-table frame may be mapped read-only only."""
    frame = step.frame if step.machine else p2m(vm, step.frame)
    pte = pte_address(memory, vm, step.gva)
    if pte is None or pte >> PAGE_OFFSET_BITS not in vm.page_tables:
        return MmuUpdate(memory, pte, frame, f"no validated page table of {vm.name} maps {step.gva:#x}")
    if frame is None or not owns(vm, frame):
        shown = f"{frame:#x}" if frame is not None else f"of pfn {step.frame:#x} (none)"
        return MmuUpdate(memory, pte, frame, f"machine frame {shown} does not belong to {vm.name}")
    if step.writable and frame in vm.page_tables:
        return MmuUpdate(memory, pte, frame, f"frame {frame:#x} is a page table: only a read-only mapping")
    bits = KERNEL_RW if step.writable else KERNEL_RO
    return MmuUpdate(memory.write_int(HostPhysAddr(pte), ENTRY_BYTES, frame << PAGE_OFFSET_BITS | bits), pte, frame)


__all__ = ["PV_KIND", "MmuUpdate", "PvStep", "build_direct_paging", "mmu_update", "op_name", "owns", "p2m",
           "paging_state", "pte_address", "pv_op", "pv_translate"]
