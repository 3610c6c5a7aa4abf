"""AMD nested paging: guest-physical addresses translated through the nested page tables at
nCR3 (AMD APM Vol. 2 §15.25 "Nested Paging").

The nested page tables have the host's legacy page-table format, chosen by the host's CR0, CR4
and EFER at VMRUN, so the nested walk *is* the guest-paging walker of
:mod:`vtx.paging.guest` run on the host's state with nCR3 as its root. Every nested access is a
user access; accesses to guest page tables are treated as writes (they may set accessed and
dirty flags). A failure is #VMEXIT(NPF): EXITINFO1 holds the fault code, with bit 32 for the
final guest-physical address and bit 33 for a guest page-table access, and EXITINFO2 the
guest-physical address (§15.25.6 "Nested versus Guest Page Faults, Fault Ordering").

UNSURE (listed with their tests): guest page-table accesses count as writes for nested
permissions (as Linux KVM's nested walker has it); protection keys do not apply to nested
accesses; under legacy PAE the guest's and the host's PDPTEs are read during each walk rather
than from registers; a guest-physical address wider than the nested mode translates is a
not-present #NPF.
"""

from __future__ import annotations

from vtx.paging import guest
from vtx.paging.formats import GUEST, NPT, PAGE_OFFSET_BITS
from vtx.paging.guest import Access, AccessKind, GuestWalk, Level, PagingFeatures, PagingState, WalkFault
from vtx.paging.memory import HostPhysAddr, PhysicalMemory
from vtx.paging.outcomes import GeneralProtection, Npf, Outcome, PageFault, Reference, Space, Translated
from vtx.typecheck import checked

_I = {b.name: b.mask for b in NPT.exit_info_1}


@checked
def fault_code(host: PagingState, kind: AccessKind, *, present: bool, reserved: bool, guest_table: bool) -> int:
    """EXITINFO1 of #VMEXIT(NPF) (APM Vol. 2 §15.25.6): P, RW, US (always: nested accesses are
    user accesses), RSV, ID (for a fetch, under the host's NX / SMEP rule of the #PF error code),
    and bit 32 or 33 for a final or a guest page-table access."""
    code = _I["user"] | (_I["guest_page_table"] if guest_table else _I["final_translation"])
    pf = guest.error_code(host, Access(kind, user=True), present=present, reserved=reserved)
    for name in ("present", "write", "reserved", "fetch"):
        if pf & GUEST.error_code[name].mask:
            code |= _I[name]
    return code


@checked
def nested_translate(host: PagingState, features: PagingFeatures, memory: PhysicalMemory, gpa: int,
                     kind: AccessKind, *, refs: list[Reference], guest_table: bool
                     ) -> tuple[int, int, PhysicalMemory] | Npf:
    """Translate ``gpa`` through the nested page tables (``host.cr3`` = nCR3): the host-physical
    address, the nested page size and the memory with nested A/D flags set, or the #NPF."""
    compiled = guest.compile_for(host, features)
    assert compiled is not None, "nested paging needs host paging"
    effective = AccessKind.WRITE if guest_table else kind
    access = Access(effective, user=True)
    if gpa >> compiled.mode.linear_bits:
        return Npf(fault_code(host, effective, present=False, reserved=False, guest_table=guest_table), gpa,
                   tuple(refs), memory)
    entry_bytes = compiled.mode.entry_bytes

    def fetch(address: int, lv: Level) -> int:
        value = memory.read_int(HostPhysAddr(address), entry_bytes)
        refs.append(Reference(Space.NPT, lv.depth, lv.name, address, address, value))
        return value

    w = guest.walk(compiled, host, gpa, fetch)
    if isinstance(w, WalkFault):
        return Npf(fault_code(host, effective, present=w.reserved, reserved=w.reserved, guest_table=guest_table),
                   gpa, tuple(refs), memory)
    assert isinstance(w, GuestWalk)
    ok, _ = guest.access_allowed(host, compiled, w, access)
    if not ok:
        return Npf(fault_code(host, effective, present=True, reserved=False, guest_table=guest_table), gpa,
                   tuple(refs), memory)
    memory = memory.set_bits((HostPhysAddr(w.entries[i][1]), entry_bytes, bits)
                             for i, bits in guest.accessed_dirty(w, access))
    return w.gpa, w.page_size, memory


@checked
def translate(state: PagingState, features: PagingFeatures, memory: PhysicalMemory, gla: int, access: Access, *,
              host: PagingState) -> Outcome:
    """Translate guest linear address ``gla`` with nested paging (``host.cr3`` = nCR3).

    Returns :class:`Translated`, :class:`PageFault` (for the guest), :class:`Npf` or
    :class:`GeneralProtection`, with the references made (guest entries by guest-physical
    address, nested entries by host-physical address) and the memory after A/D updates. An
    access that crosses a page boundary is two accesses (:func:`vtx.paging.guest.split_access`).
    """
    if guest.crosses_page(gla, access):
        return guest.split_access(state, gla, access, memory,
                                  lambda a, part, mem: _translate_page(state, features, mem, a, part, host=host))
    return _translate_page(state, features, memory, gla, access, host=host)


def _translate_page(state: PagingState, features: PagingFeatures, memory: PhysicalMemory, gla: int, access: Access,
                    *, host: PagingState) -> Outcome:
    host = PagingState(host.cr0, host.cr3, host.cr4, host.efer)  # no PKRU, no PDPTE registers
    if guest.linear_address_fault(state, gla):
        return GeneralProtection((), memory)
    refs: list[Reference] = []
    compiled = guest.compile_for(state, features)
    if compiled is None:
        return _final(host, features, memory, gla, gla, access=access, refs=refs, guest_page_size=1 << PAGE_OFFSET_BITS)
    state = PagingState(state.cr0, state.cr3, state.cr4, state.efer, state.rflags, state.pkru, pat=state.pat)
    entry_bytes = compiled.mode.entry_bytes
    mem = [memory]
    hpas: list[int] = []

    def fetch(gpa: int, lv: Level) -> int | Outcome:
        got = nested_translate(host, features, mem[0], gpa, AccessKind.READ, refs=refs, guest_table=True)
        if isinstance(got, Npf):
            return got
        hpa, _, mem[0] = got
        value = mem[0].read_int(HostPhysAddr(hpa), entry_bytes)
        refs.append(Reference(Space.GUEST, lv.depth, lv.name, gpa, hpa, value))
        hpas.append(hpa)
        return value

    w = guest.walk(compiled, state, gla, fetch)
    if isinstance(w, WalkFault):
        return PageFault(guest.error_code(state, access, present=w.reserved, reserved=w.reserved), gla,
                         tuple(refs), mem[0])
    if not isinstance(w, GuestWalk):
        return w
    ok, pk = guest.access_allowed(state, compiled, w, access)
    if not ok:
        return PageFault(guest.error_code(state, access, present=True, protection_key=pk), gla, tuple(refs), mem[0])
    final = _final(host, features, mem[0], gla, w.gpa, access=access, refs=refs, guest_page_size=w.page_size)
    if not isinstance(final, Translated):
        return final
    updated = final.memory.set_bits((HostPhysAddr(hpas[i]), entry_bytes, bits)
                                    for i, bits in guest.accessed_dirty(w, access))
    return Translated(gla, w.gpa, final.hpa, final.page_size, final.references, updated, rights=w.rights(state, access))


def _final(host: PagingState, features: PagingFeatures, memory: PhysicalMemory, gla: int, gpa: int, *,
           access: Access, refs: list[Reference], guest_page_size: int) -> Outcome:
    got = nested_translate(host, features, memory, gpa, access.kind, refs=refs, guest_table=False)
    if isinstance(got, Npf):
        return got
    hpa, size, memory = got
    return Translated(gla, gpa, hpa, min(size, guest_page_size), tuple(refs), memory)
