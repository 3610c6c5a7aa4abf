"""Building a VM's address spaces in host-physical memory: EPT mappings (SDM Vol. 3C §30.3.2
"EPT Translation Mechanism") and the guest's own paging structures.

The hypervisor owns EPT: it maps guest-physical page by page to host-physical, allocating
tables from the VM's EPT area. A guest's paging structures live in guest-physical memory, so
they are built in a scratch guest-physical image (with the 4-level builder that the KVM boot
image uses) and then copied, page by page, to where EPT maps those pages.
"""

from __future__ import annotations

import attrs

from vtx.errors import InputError
from vtx.kvm.boot import identity_tables
from vtx.machine.model import Vm
from vtx.paging.ept import ENTRY_BYTES, MEMORY_TYPE, EptLevel, R, W, X
from vtx.paging.formats import EPT, PAGE_OFFSET_BITS, PAGE_SIZE
from vtx.paging.memory import HostPhysAddr, PhysicalMemory
from vtx.typecheck import checked

_WB = next(t.value for t in EPT.memory_types if t.name == "WB")
LEAF_BITS = R | W | X | MEMORY_TYPE.put(0, _WB)
"""A 4-KByte EPT leaf: read, write, execute, write-back memory type (§30.3.7 "EPT and Memory Typing")."""
TABLE_BITS = R | W | X
"""An EPT entry referencing the next table: every permission (the leaf decides)."""


@checked
def ept_map(memory: PhysicalMemory, vm: Vm, levels: tuple[EptLevel, ...], gpa: int, hpa: int,
            *, leaf_bits: int = LEAF_BITS) -> tuple[PhysicalMemory, Vm]:
    """Map the 4-KByte guest-physical page of ``gpa`` to the host page of ``hpa`` in ``vm``'s EPT,
    creating missing tables; returns the new memory and the VM (its table allocator and mapped set)."""
    table, free = vm.ept_root, vm.ept_next
    for lv in levels[:-1]:
        at = HostPhysAddr(table + ((gpa >> lv.shift) & lv.index_mask) * ENTRY_BYTES)
        entry = memory.read_int(at, ENTRY_BYTES)
        if entry & TABLE_BITS:
            table = entry & lv.table_mask
            continue
        memory = memory.write_int(at, ENTRY_BYTES, free | TABLE_BITS)
        table, free = free, free + PAGE_SIZE
    leaf = levels[-1]
    at = HostPhysAddr(table + ((gpa >> leaf.shift) & leaf.index_mask) * ENTRY_BYTES)
    memory = memory.write_int(at, ENTRY_BYTES, (hpa & leaf.page_mask) | leaf_bits)
    page = gpa >> PAGE_OFFSET_BITS
    return memory, attrs.evolve(vm, ept_next=free, mapped=vm.mapped | {page})


@checked
def backing_hpa(vm: Vm, gpa: int) -> int:
    """Where guest-physical ``gpa`` of a backed page lives in host memory."""
    return vm.backing + gpa


@checked
def map_backed(memory: PhysicalMemory, vm: Vm, levels: tuple[EptLevel, ...], gpa: int) -> tuple[PhysicalMemory, Vm]:
    """Map the backed guest page of ``gpa`` to its host page."""
    return ept_map(memory, vm, levels, gpa, backing_hpa(vm, gpa))


@checked
def install_guest_paging(memory: PhysicalMemory, vm: Vm, levels: tuple[EptLevel, ...], cr3: int,
                         identity_bytes: int) -> tuple[PhysicalMemory, Vm]:
    """Guest 4-level paging at guest-physical ``cr3`` mapping linear [0, ``identity_bytes``) to the
    same guest-physical addresses, written to the VM's backing and mapped in EPT (the hypervisor
    maps the pages the guest kernel's tables occupy eagerly, as a loader does)."""
    image = identity_tables(PhysicalMemory(), cr3, identity_bytes).memory
    top = (max(image.page_numbers()) + 1) << PAGE_OFFSET_BITS
    if not vm.is_backed(top - 1):
        raise InputError(f"vm[{vm.index}].memory_mib", vm.memory_bytes >> 20,
                         f"the guest's page tables occupy guest-physical [{cr3:#x}, {top:#x}): memory must cover them")
    for number in image.page_numbers():
        gpa = number << PAGE_OFFSET_BITS
        memory = memory.write(HostPhysAddr(backing_hpa(vm, gpa)), image.pages[number])
        memory, vm = map_backed(memory, vm, levels, gpa)
    return memory, vm
