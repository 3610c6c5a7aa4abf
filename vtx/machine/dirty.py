"""Dirty-page tracking, both as the processor does it and as a hypervisor uses it.

Two architectural mechanisms tell a hypervisor which guest-physical pages a guest wrote:

* **EPT accessed and dirty flags** (SDM Vol. 3C §30.3.4 "Accessed and Dirty Flags for EPT"):
  with EPTP bit 6 = 1 the processor sets bit 9 (dirty) of the EPT entry that maps a page when
  the guest writes it (and treats guest paging-structure accesses as writes). The hypervisor
  scans the leaf entries, collects the dirty ones and clears their flags; the processor may
  cache translations with the flag set, so the clear must be followed by an invalidation
  (INVEPT, §30.4.3.4 "Guidelines for Use of the INVEPT Instruction") on every processor, before
  which each processor running a guest is interrupted (it exits and executes INVEPT).
* **Page-modification logging** (§30.3.6 "Page-Modification Logging"): with "enable PML" = 1 and
  EPT A/D on, each time the processor sets a dirty flag from 0 to 1 it first checks the PML
  index (a 16-bit VMCS field); if it is outside 0-511 a page-modification log-full event causes
  a VM exit (reason PML_FULL) and the access does not happen; otherwise it writes the
  guest-physical address (bits 11:0 cleared) to the PML address + 8 x index and decrements the
  index. The hypervisor drains the log (on that exit, and when it collects) and resets the index.

:func:`log_writes` is the processor side the executor calls after a translated access;
:func:`drain_pml` and :func:`ept_dirty_pages` are the hypervisor's reading of them; clearing and
invalidating is in :mod:`vtx.machine.migration`.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from vtx.bits import mask
from vtx.errors import SpecError
from vtx.machine.model import Machine, Vm
from vtx.paging.ept import DIRTY, ENTRY_BYTES, EptFault, walk_ept
from vtx.paging.formats import PAGE_OFFSET_BITS, PAGE_SIZE
from vtx.paging.memory import HostPhysAddr, PhysicalMemory
from vtx.paging.outcomes import Space, Translated
from vtx.spec import VMCS_FIELDS
from vtx.typecheck import checked
from vtx.vmx.eptp import ept_in_force
from vtx.vmx.exits.causes import PML_ENTRIES
from vtx.vmx.vmcs import Vmcs

_F = VMCS_FIELDS
_INDEX = _F["GUEST_PML_INDEX"]
_PML_ADDRESS = _F["PML_ADDRESS"]
_INDEX_MASK = mask(_INDEX.bits)
_PAGE_MASK = ~(PAGE_SIZE - 1)
PML_ENTRY_BYTES = 8
"""Each log entry is a 64-bit guest-physical address (§30.3.6)."""
MODES = ("pml", "ept_dirty")
"""How the hypervisor learns which pages were written: the page-modification log, or a scan of
the EPT dirty flags."""


# ------------------------------------------------------------------ the processor side


@checked
def newly_dirty(before: PhysicalMemory, out: Translated) -> list[tuple[int, int]]:
    """The (guest-physical page address, EPT leaf-entry address) of each page whose EPT dirty flag
    the translation ``out`` set from 0 to 1, in the order the walk used them. The references of a
    2D walk are EPT walks, each followed by the guest entry it located (whose guest-physical
    address it translated) or, last, by nothing (the final address ``out.gpa``)."""
    found: list[tuple[int, int]] = []
    seen: set[int] = set()
    refs = out.references
    last = len(refs) - 1
    for n, ref in enumerate(refs):
        if ref.space is not Space.EPT or (n < last and refs[n + 1].space is Space.EPT):
            continue
        leaf = ref.host_address
        if leaf in seen or ref.value & DIRTY or before.read_int(HostPhysAddr(leaf), ENTRY_BYTES) & DIRTY:
            continue
        if out.memory.read_int(HostPhysAddr(leaf), ENTRY_BYTES) & DIRTY:
            seen.add(leaf)
            gpa = refs[n + 1].address if n < last else out.gpa
            found.append((gpa & _PAGE_MASK, leaf))
    return found


@checked
def log_writes(before: PhysicalMemory, out: Translated, vmcs: Vmcs) -> tuple[PhysicalMemory, Vmcs, int | None]:
    """Page-modification logging for a translated access made with ``before`` as memory, under a
    VMCS with "enable PML" = 1: the memory after it (``out.memory`` plus a log entry per newly
    dirty page), the VMCS with the index decremented (the same object if nothing was logged), and
    the guest-physical address whose logging found the index outside 0-511 — a log-full event: the
    access does not happen and the dirty flags not yet logged are left clear — or None."""
    pages = newly_dirty(before, out)
    if not pages:
        return out.memory, vmcs, None
    memory = out.memory
    index = vmcs.get(_INDEX)
    base = vmcs.get(_PML_ADDRESS)
    entries: dict[int, int] = {}
    full = None
    for n, (gpa, _) in enumerate(pages):
        if index >= PML_ENTRIES:
            full = gpa
            entries.update({a: memory.read_int(HostPhysAddr(a), ENTRY_BYTES) & ~DIRTY for _, a in pages[n:]})
            break
        entries[base + PML_ENTRY_BYTES * index] = gpa
        index = (index - 1) & _INDEX_MASK
    return store_entries(memory, entries), vmcs.set(_INDEX, index), full


@checked
def store_entries(memory: PhysicalMemory, entries: Mapping[int, int]) -> PhysicalMemory:
    """``memory`` with each 8-byte entry at host-physical address -> value written, copying each
    touched page once (a scan of hundreds of EPT entries stays linear)."""
    if not entries:
        return memory
    work: dict[int, bytearray] = {}
    for address, value in entries.items():
        number, offset = address >> PAGE_OFFSET_BITS, address & (PAGE_SIZE - 1)
        page = work.get(number)
        if page is None:
            page = work[number] = bytearray(memory.read(HostPhysAddr(number << PAGE_OFFSET_BITS), PAGE_SIZE))
        page[offset:offset + ENTRY_BYTES] = value.to_bytes(ENTRY_BYTES, "little")
    return PhysicalMemory({**memory.pages, **{n: bytes(p) for n, p in work.items()}})


# ------------------------------------------------------------------ the hypervisor side


def first_vmcs(machine: Machine, vm: Vm) -> Vmcs:
    vmcs = machine.regions[vm.vcpus[0].vmcs_addr]
    assert isinstance(vmcs, Vmcs)
    return vmcs


@checked
def pml_entries(memory: PhysicalMemory, vmcs: Vmcs) -> list[int]:
    """The guest-physical addresses in the log of ``vmcs``: entries index + 1 to 511 (all 512 once
    the index has wrapped below 0)."""
    start = (vmcs.get(_INDEX) + 1) & _INDEX_MASK
    base = vmcs.get(_PML_ADDRESS)
    return [memory.read_int(HostPhysAddr(base + PML_ENTRY_BYTES * i), PML_ENTRY_BYTES)
            for i in range(start, PML_ENTRIES)]


@checked
def drain_pml(machine: Machine, vm_index: int, vcpu_index: int) -> Machine:
    """The hypervisor empties the log of one vCPU: its pages join the VM's ``logged`` set and the
    index goes back to the top entry (511)."""
    vm = machine.vm(vm_index)
    address = vm.vcpus[vcpu_index].vmcs_addr
    vmcs = machine.regions[address]
    assert isinstance(vmcs, Vmcs)
    pages = {gpa >> PAGE_OFFSET_BITS for gpa in pml_entries(machine.memory, vmcs)}
    regions = {**machine.regions, address: vmcs.set(_INDEX, PML_ENTRIES - 1)}
    return attrs.evolve(machine, regions=regions).with_vm(attrs.evolve(vm, logged=vm.logged | pages))


@checked
def leaf_entries(machine: Machine, vm: Vm) -> dict[int, int]:
    """Guest-physical page number -> host-physical address of the EPT entry that maps it, for every
    page the VM's EPT maps."""
    vmcs = first_vmcs(machine, vm)
    ept = ept_in_force(vmcs, machine.caps)
    out = {}
    for page in sorted(vm.mapped):
        w = walk_ept(ept, machine.memory, page << PAGE_OFFSET_BITS, [])
        if isinstance(w, EptFault):
            raise SpecError("executor", f"guest page {page:#x}", "a page the hypervisor mapped has no EPT translation")
        out[page] = w.entries[-1][0]
    return out


@checked
def ept_dirty_pages(machine: Machine, vm: Vm) -> frozenset[int]:
    """The guest-physical page numbers whose EPT leaf entry has the dirty flag set."""
    return frozenset(page for page, leaf in leaf_entries(machine, vm).items()
                     if machine.memory.read_int(HostPhysAddr(leaf), ENTRY_BYTES) & DIRTY)


__all__ = ["MODES", "drain_pml", "ept_dirty_pages", "leaf_entries", "log_writes", "newly_dirty", "pml_entries",
           "store_entries"]
