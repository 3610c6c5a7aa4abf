"""The two-dimensional walk: guest paging under EPT (SDM Vol. 3C §30.3.2 "EPT Translation
Mechanism").

With EPT in use, every address the guest's paging structures produce is guest-physical: the
address of each guest paging-structure entry is translated through EPT before the entry is
read, and so is the final guest-physical address. With 4-level guest paging over a 4-level EPT
walk and 4-KByte pages that is 4 guest entries, each preceded by 4 EPT entries, plus 4 EPT
entries for the final address: 24 memory references.

Order of events (as in the SDM's description of the walk and the order Linux KVM's nested
walker emulates): guest entries root first, each through EPT; a guest #PF for a not-present or
reserved entry or for the access rights; then the EPT translation of the final guest-physical
address; then the guest accessed / dirty updates, which are writes to guest-physical addresses
and so need EPT write permission (§30.3.3.2: "Writes by the logical processor to guest paging
structures to update accessed and dirty flags are considered to be data writes").
UNSURE: that the final EPT translation precedes the guest A/D updates; both orders are
consistent with the SDM text.
"""

from __future__ import annotations

import attrs

from vtx.errors import InputError
from vtx.paging import ept as eptmod
from vtx.paging import guest
from vtx.paging.ept import Ept, EptFault, EptWalk, LinearInfo
from vtx.paging.formats import PAGE_OFFSET_BITS
from vtx.paging.guest import Access, AccessKind, GuestWalk, Level, PagingFeatures, PagingState, WalkFault
from vtx.paging.memory import HostPhysAddr, PhysicalMemory
from vtx.paging.outcomes import (
    EptMisconfig,
    EptViolation,
    GeneralProtection,
    Outcome,
    PageFault,
    Reference,
    Space,
    Translated,
)


def _exit(ept: Ept, gpa: int, kind: AccessKind, w: EptWalk | EptFault, linear: LinearInfo, *, refs: list[Reference],
          memory: PhysicalMemory, paging_structure_write: bool, nmi_unblocking: bool) -> Outcome:
    if isinstance(w, EptFault) and w.misconfiguration is not None:
        return EptMisconfig(gpa, tuple(refs), memory)
    leaf = w.leaf if isinstance(w, EptWalk) else None
    q = eptmod.qualification(ept, kind, w.permissions, linear, paging_structure_write=paging_structure_write,
                             nmi_unblocking=nmi_unblocking, leaf=leaf)
    return EptViolation(q, gpa, linear.gla, tuple(refs), memory)


def translate(state: PagingState, features: PagingFeatures, memory: PhysicalMemory, gla: int, access: Access, *,
              ept: Ept) -> Outcome:
    """Translate guest linear address ``gla`` for ``access`` with EPT in use.

    Returns :class:`Translated` (with ``gpa`` and ``hpa``), :class:`PageFault`,
    :class:`EptViolation`, :class:`EptMisconfig` or :class:`GeneralProtection`, each with the
    references in the order made (guest entries by guest-physical address, EPT entries by
    host-physical address) and the memory after the accessed / dirty flags set. Under PAE
    paging ``state.pdptes`` must hold the PDPTE registers (the GUEST_PDPTRn fields).
    """
    if guest.linear_address_fault(state, gla):
        return GeneralProtection((), memory)
    compiled = guest.compile_for(state, features)
    refs: list[Reference] = []
    if compiled is None:
        linear = LinearInfo(gla, final=True)
        return _final(ept, memory, gla, gla, access=access, linear=linear, refs=refs,
                      guest_page_size=1 << PAGE_OFFSET_BITS)
    if compiled.mode.pdpte_registers and state.pdptes is None:
        raise InputError("fields.GUEST_PDPTR0", "missing",
                         "under EPT, PAE paging uses the PDPTE registers that VM entry loads from GUEST_PDPTR0-3")
    entry_bytes = compiled.mode.entry_bytes
    as_write = ept.accessed_dirty
    table_linear = LinearInfo(gla, final=False)
    # per guest entry read: its host-physical address and EPT permissions (for the A/D writes)
    located: list[tuple[int, EptWalk]] = []
    mem = [memory]

    def fetch(gpa: int, lv: Level) -> int | Outcome:
        w = eptmod.walk_ept(ept, mem[0], gpa, refs)
        if isinstance(w, EptFault) or not eptmod.allows(ept, w.permissions, AccessKind.WRITE if as_write
                                                          else AccessKind.READ, True):
            return _exit(ept, gpa, AccessKind.READ, w, table_linear, refs=refs, memory=mem[0],
                         paging_structure_write=as_write, nmi_unblocking=access.nmi_unblocking)
        if as_write:
            mem[0] = mem[0].set_bits(eptmod.accessed_dirty(ept, w, True))
        value = mem[0].read_int(HostPhysAddr(w.hpa), entry_bytes)
        refs.append(Reference(Space.GUEST, lv.depth, lv.name, gpa, w.hpa, value))
        located.append((w.hpa, w))
        return value

    result = guest.walk(compiled, state, gla, fetch)
    if isinstance(result, WalkFault):
        code = guest.error_code(state, access, present=result.reserved, reserved=result.reserved)
        return PageFault(code, gla, tuple(refs), mem[0])
    if not isinstance(result, GuestWalk):
        return result
    ok, pk = guest.access_allowed(state, compiled, result, access)
    if not ok:
        return PageFault(guest.error_code(state, access, present=True, protection_key=pk), gla, tuple(refs), mem[0])
    linear = LinearInfo(gla, final=True, user=result.user, writable=result.writable,
                        execute_disable=result.execute_disable)
    final = _final(ept, mem[0], gla, result.gpa, access=access, linear=linear, refs=refs,
                   guest_page_size=result.page_size)
    if not isinstance(final, Translated):
        return final
    memory = final.memory
    for i, bits in guest.accessed_dirty(result, access):
        _, gpa, _ = result.entries[i]
        hpa, w = located[i]
        if not eptmod.allows(ept, w.permissions, AccessKind.WRITE, True):
            return _exit(ept, gpa, AccessKind.WRITE, w, table_linear, refs=refs, memory=memory,
                         paging_structure_write=False, nmi_unblocking=access.nmi_unblocking)
        memory = memory.set_bits([(HostPhysAddr(hpa), entry_bytes, bits)])
    return attrs.evolve(final, memory=memory, rights=result.rights(state, access))


def _final(ept: Ept, memory: PhysicalMemory, gla: int, gpa: int, *, access: Access, linear: LinearInfo,
           refs: list[Reference], guest_page_size: int) -> Outcome:
    """The EPT translation of the final guest-physical address of the access."""
    w = eptmod.walk_ept(ept, memory, gpa, refs)
    if isinstance(w, EptFault) or not eptmod.allows(ept, w.permissions, access.kind, linear.user):
        return _exit(ept, gpa, access.kind, w, linear, refs=refs, memory=memory, paging_structure_write=False,
                     nmi_unblocking=access.nmi_unblocking)
    memory = memory.set_bits(eptmod.accessed_dirty(ept, w, access.is_write))
    return Translated(gla, gpa, w.hpa, min(guest_page_size, w.page_size), tuple(refs), memory,
                      eptmod.memory_type_name(w.leaf), bool(w.leaf & eptmod.IPAT))
