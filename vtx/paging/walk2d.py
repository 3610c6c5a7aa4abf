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

:func:`translate` is the rule. :func:`translate_fast` is the same translation written for speed
for the common case (IA-32e guest paging, every entry present and valid, the access allowed,
every accessed / dirty flag it needs already set); it returns None for everything else, and a
property test asserts it equals :func:`translate` wherever it answers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import attrs

from vtx.errors import InputError
from vtx.paging import ept as eptmod
from vtx.paging import guest
from vtx.paging.ept import Ept, EptFault, EptWalk, LinearInfo
from vtx.paging.formats import GUEST, PAGE_OFFSET_BITS
from vtx.paging.guest import (
    Access,
    AccessKind,
    CompiledMode,
    GuestWalk,
    Level,
    PagingFeatures,
    PagingState,
    WalkFault,
)
from vtx.paging.memory import HostPhysAddr, PhysicalMemory
from vtx.paging.outcomes import (
    EptMisconfig,
    EptViolation,
    GeneralProtection,
    Outcome,
    PageFault,
    Reference,
    Rights,
    Space,
    Translated,
)
from vtx.typecheck import checked


def _exit(ept: Ept, gpa: int, kind: AccessKind, w: EptWalk | EptFault, linear: LinearInfo, *, refs: list[Reference],
          memory: PhysicalMemory, paging_structure_write: bool, access: Access) -> Outcome:
    if isinstance(w, EptFault) and w.misconfiguration is not None:
        return EptMisconfig(gpa, tuple(refs), memory)
    leaf = w.leaf if isinstance(w, EptWalk) else None
    q = eptmod.qualification(ept, kind, w.permissions, linear, paging_structure_write=paging_structure_write,
                             nmi_unblocking=access.nmi_unblocking, leaf=leaf,
                             shadow_stack=access.shadow_stack and linear.final, asynchronous=access.asynchronous)
    return EptViolation(q, gpa, linear.gla, tuple(refs), memory)


GpaCache = Callable[[int], "EptWalk | None"]
"""A source of cached guest-physical mappings (SDM Vol. 3C §30.4.2 "Creating and Using Cached
Translation Information"): the cached EPT translation to use for a guest-physical address, or
None to walk the EPT paging structures."""


@checked
def translate(state: PagingState, features: PagingFeatures, memory: PhysicalMemory, gla: int, access: Access, *,
              ept: Ept, gpa_cache: GpaCache | None = None) -> Outcome:
    """Translate guest linear address ``gla`` for ``access`` with EPT in use.

    Returns :class:`Translated` (with ``gpa``, ``hpa`` and the memory types), :class:`PageFault`,
    :class:`EptViolation`, :class:`EptMisconfig` or :class:`GeneralProtection`, each with the
    references in the order made (guest entries by guest-physical address, EPT entries by
    host-physical address) and the memory after the accessed / dirty flags set. Under PAE
    paging ``state.pdptes`` must hold the PDPTE registers (the GUEST_PDPTRn fields). An access
    that crosses a page boundary is two accesses (:func:`vtx.paging.guest.split_access`).
    ``gpa_cache`` supplies cached guest-physical mappings (the TLB model's).
    """
    if guest.crosses_page(gla, access):
        return guest.split_access(state, gla, access, memory, lambda a, part, mem: translate_page(
            state, features, mem, a, part, ept=ept, gpa_cache=gpa_cache))
    return translate_page(state, features, memory, gla, access, ept=ept, gpa_cache=gpa_cache)


def translate_page(state: PagingState, features: PagingFeatures, memory: PhysicalMemory, gla: int, access: Access,
                   *, ept: Ept, gpa_cache: GpaCache | None = None) -> Outcome:
    """:func:`translate` for an access within one page: the fast path where it answers, else
    :func:`translate_readable`."""
    if guest.linear_address_fault(state, gla):
        return GeneralProtection((), memory)
    compiled = guest.compile_for(state, features)
    if compiled is not None and not compiled.mode.pdpte_registers and not access.shadow_stack and gpa_cache is None:
        fast = translate_fast(state, compiled, memory, gla, access, ept=ept)
        if fast is not None:
            return fast
    return translate_readable(state, features, memory, gla, access, ept=ept, gpa_cache=gpa_cache)


def _walk_ept(ept: Ept, memory: PhysicalMemory, gpa: int, refs: list[Reference], *, gpa_cache: GpaCache | None,
              access: Access) -> EptWalk | EptFault:
    """The EPT translation of ``gpa``: a cached guest-physical mapping if ``gpa_cache`` offers
    one, else the walk of :func:`vtx.paging.ept.walk_ept`. vtx uses cached mappings only where
    they settle the access by themselves: with EPT accessed and dirty flags disabled (nothing to
    set in memory) and for accesses other than shadow-stack ones (whose rule reads every EPT
    entry); using fewer cached entries than the SDM allows is always permitted."""
    if gpa_cache is not None and not ept.accessed_dirty and not access.shadow_stack:
        cached = gpa_cache(gpa)
        if cached is not None:
            return cached
    return eptmod.walk_ept(ept, memory, gpa, refs)


def translate_readable(state: PagingState, features: PagingFeatures, memory: PhysicalMemory, gla: int,
                       access: Access, *, ept: Ept, gpa_cache: GpaCache | None = None) -> Outcome:
    """The 2D walk of an access within one page, written as the rules read."""
    if guest.linear_address_fault(state, gla):
        return GeneralProtection((), memory)
    compiled = guest.compile_for(state, features)
    refs: list[Reference] = []
    if compiled is None:
        linear = LinearInfo(gla, final=True)
        return _final(ept, memory, state, gla, gla, access=access, linear=linear, refs=refs,
                      guest_page_size=1 << PAGE_OFFSET_BITS, pat_type=eptmod.WB, gpa_cache=gpa_cache)
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
        w = _walk_ept(ept, mem[0], gpa, refs, gpa_cache=gpa_cache, access=access)
        if isinstance(w, EptFault) or not (eptmod.allows_paging_write(ept, w) if as_write
                                           else eptmod.allows(ept, w.permissions, AccessKind.READ, True)):
            return _exit(ept, gpa, AccessKind.READ, w, table_linear, refs=refs, memory=mem[0],
                         paging_structure_write=as_write, access=access)
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
    final = _final(ept, mem[0], state, gla, result.gpa, access=access, linear=linear, refs=refs,
                   guest_page_size=result.page_size, pat_type=result.pat_memory_type(state), gpa_cache=gpa_cache,
                   table_pages=[w for _, w in located])
    if not isinstance(final, Translated):
        return final
    memory = final.memory
    for i, bits in guest.accessed_dirty(result, access):
        _, gpa, _ = result.entries[i]
        hpa, w = located[i]
        if not eptmod.allows_paging_write(ept, w):
            return _exit(ept, gpa, AccessKind.WRITE, w, table_linear, refs=refs, memory=memory,
                         paging_structure_write=False, access=access)
        memory = memory.set_bits([(HostPhysAddr(hpa), entry_bytes, bits)])
    return attrs.evolve(final, memory=memory, rights=result.rights(state, access))


def _final(ept: Ept, memory: PhysicalMemory, state: PagingState, gla: int, gpa: int, *, access: Access,
           linear: LinearInfo, refs: list[Reference], guest_page_size: int, pat_type: str,
           gpa_cache: GpaCache | None, table_pages: list[EptWalk] | None = None) -> Outcome:
    """The EPT translation of the final guest-physical address of the access. A supervisor
    shadow-stack access under EPTP bit 7 has its own rule
    (:func:`vtx.paging.ept.allows_supervisor_shadow_stack`); any other access, a user-mode
    shadow-stack one included, needs the permission of its kind (§30.3.3.2). Then
    guest-paging verification, given the EPT translations of the guest paging-structure pages
    (``table_pages``)."""
    w = _walk_ept(ept, memory, gpa, refs, gpa_cache=gpa_cache, access=access)
    if isinstance(w, EptWalk):
        if access.shadow_stack and not access.user and ept.supervisor_shadow_stack:
            allowed = eptmod.allows_supervisor_shadow_stack(w)
        else:
            allowed = eptmod.allows(ept, w.permissions, access.kind, linear.user)
    if isinstance(w, EptFault) or not allowed:
        return _exit(ept, gpa, access.kind, w, linear, refs=refs, memory=memory, paging_structure_write=False,
                     access=access)
    if eptmod.fails_guest_paging_verification(ept, w, table_pages or []):
        q = eptmod.qualification(ept, access.kind, w.permissions, linear, nmi_unblocking=access.nmi_unblocking,
                                 leaf=w.leaf, shadow_stack=access.shadow_stack, asynchronous=access.asynchronous,
                                 guest_paging_verification=True)
        return EptViolation(q, gpa, linear.gla, tuple(refs), memory)
    memory = memory.set_bits(eptmod.accessed_dirty(ept, w, access.is_write))
    return Translated(gla, gpa, w.hpa, min(guest_page_size, w.page_size), tuple(refs), memory,
                      eptmod.effective_memory_type(state.cr0, w.leaf, pat_type), bool(w.leaf & eptmod.IPAT),
                      ept_memory_type=eptmod.memory_type_name(w.leaf), pat_memory_type=pat_type)


# ------------------------------------------------------------------ the fast path

_new_tuple = tuple.__new__
_EPT_ENTRY_BYTES = eptmod.ENTRY_BYTES
_EPT_ENTRY_SHIFT = _EPT_ENTRY_BYTES.bit_length() - 1
_OFFSET_MASK = (1 << PAGE_OFFSET_BITS) - 1
_GUEST_PA = guest.P | guest.ACCESSED
_PAE_PDPTE = GUEST.modes["pae"].levels[0]
_R, _W, _PS, _A, _D = eptmod.R, eptmod.W, eptmod.PS, eptmod.ACCESSED, eptmod.DIRTY
_MEMORY_TYPE_MASK, _RESERVED_TYPES = eptmod.MEMORY_TYPE.mask, eptmod._RESERVED_TYPE_VALUES


def _ept_fast(ept: Ept, views: Mapping[int, Sequence[int]], gpa: int, append: Callable[[Reference], None],
              write: bool) -> tuple[int, int, int, int] | None:
    """:func:`vtx.paging.ept.walk_ept` for an address every entry of whose walk is present,
    readable and valid and has the EPT accessed (and, for ``write``, dirty) flags the access
    would set already set: (host-physical address, page size, entry that maps the page, AND of
    the permission bits); None otherwise. Appends each entry read with ``append``."""
    if gpa >> ept.address_bits:
        return None
    need = _R | _A if ept.accessed_dirty else _R
    need_leaf = need | _D if write and ept.accessed_dirty else need
    table = ept.root
    perms = ept.present_mask
    for shift, index_mask, depth, name, leaf, ps, rsvd_table, rsvd_page, table_mask, page_mask, offset in \
            ept.fast_levels:
        hpa = table + ((gpa >> shift) & index_mask) * _EPT_ENTRY_BYTES
        e = views[hpa >> PAGE_OFFSET_BITS][(hpa & _OFFSET_MASK) >> _EPT_ENTRY_SHIFT]
        append(_new_tuple(Reference, (Space.EPT, depth, name, hpa, hpa, e)))  # Reference(...), without its __new__
        perms &= e
        if leaf or e & ps:
            if e & (need_leaf | rsvd_page) != need_leaf or e & _MEMORY_TYPE_MASK in _RESERVED_TYPES:
                return None
            return (e & page_mask) | (gpa & offset), offset + 1, e, perms
        if e & (need | rsvd_table) != need:
            return None
        table = e & table_mask
    return None


def translate_fast(state: PagingState, compiled: CompiledMode, memory: PhysicalMemory, gla: int, access: Access, *,
                   ept: Ept) -> Translated | None:
    """:func:`translate_readable` for the common case, or None: a guest mode without PDPTE
    registers, an access within one page that is not a shadow-stack access, every guest and EPT
    entry present, readable and valid, the access allowed, every accessed / dirty flag it would
    set already set (so memory is unchanged), and neither EPT paging-write control nor
    guest-paging verification in use. Equal to :func:`translate_readable` wherever
    it answers (tested)."""
    if compiled.mode.pdpte_registers or access.shadow_stack or guest.crosses_page(gla, access) or \
            ept.paging_write or ept.guest_paging_verification:
        return None
    entry_bytes = compiled.mode.entry_bytes
    entry_shift = entry_bytes.bit_length() - 1
    ept_views = memory.entry_views(eptmod.ENTRY_BYTES)
    guest_views = memory.entry_views(entry_bytes)
    refs: list[Reference] = []
    append = refs.append
    as_write = ept.accessed_dirty
    need = _R | _W if as_write else _R
    table = state.cr3 & compiled.root_mask
    user = writable = True
    xd = False
    entry = depth = size = 0
    nx = compiled.execute_disable
    for name, depth, shift, index_mask, table_mask, page_mask, high_mask, high_shift, maps_page, rsvd_table, \
            rsvd_page, size, _ in compiled.levels:
        gpa = table + ((gla >> shift) & index_mask) * entry_bytes
        w = _ept_fast(ept, ept_views, gpa, append, as_write)
        if w is None or w[3] & need != need:
            return None
        hpa = w[0]
        entry = guest_views[hpa >> PAGE_OFFSET_BITS][(hpa & _OFFSET_MASK) >> entry_shift]
        append(_new_tuple(Reference, (Space.GUEST, depth, name, gpa, hpa, entry)))
        if entry & _GUEST_PA != _GUEST_PA:
            return None
        page = maps_page == guest.LEAF or (maps_page == guest.PS_PAGE and entry & guest.PS)
        if entry & (rsvd_page if page else rsvd_table):
            return None
        user = user and bool(entry & guest.US)
        writable = writable and bool(entry & guest.RW)
        xd = xd or (nx and bool(entry & guest.XD))
        if page:
            gpa = (entry & page_mask) | ((entry & high_mask) << high_shift) | (gla & (size - 1))
            break
        table = entry & table_mask
    if access.is_write and not entry & guest.DIRTY:
        return None
    key = guest.PKEY.get(entry)
    ok, _ = guest.rights_allow(state, access, protection_keys=compiled.mode.protection_keys, user=user,
                               writable=writable, execute_disable=xd, key=key)
    if not ok:
        return None
    final = _ept_fast(ept, ept_views, gpa, append, access.is_write)
    if final is None or not eptmod.allows(ept, final[3], access.kind, user):
        return None
    hpa, ept_size, leaf, _ = final
    pat_type = guest.pat_memory_type(state.pat, guest.pat_index(entry, pat_bit=True, pte=depth == 1))
    rights = Rights(user, writable, xd, key, bool(entry & guest.DIRTY),
                    bool(entry & guest.GLOBAL) and bool(state.cr4 & guest.CR4_PGE))
    return Translated(gla, gpa, hpa, min(size, ept_size), tuple(refs), memory,
                      eptmod.effective_memory_type(state.cr0, leaf, pat_type), bool(leaf & eptmod.IPAT), rights,
                      eptmod.memory_type_name(leaf), pat_type)


# ------------------------------------------------------------------ memory types of the references


@checked
def reference_memory_types(references: tuple[Reference, ...], state: PagingState, ept: Ept) -> list[str]:
    """The memory type of each paging-structure reference of a 2D walk, in order.

    An EPT entry is read with the EPT paging-structure memory type (SDM Vol. 3C §30.3.7.1). A
    guest entry lies at a translated guest-physical address (§30.3.7.2): the EPT memory type of
    its page (the entry of the EPT walk just before it) combined with the PAT type that PCD and
    PWT select, of CR3 for the root table and of the entry that references the table otherwise
    (a PDPTE register under PAE paging; SDM Vol. 3A §5.9.2)."""
    out = []
    ept_leaf = 0
    parent: int | None = None
    previous_level = 0
    structures = eptmod.structure_memory_type(ept, state.cr0)
    for r in references:
        if r.space is Space.EPT:
            out.append(structures)
            ept_leaf = r.value
            continue
        if parent is None or r.level >= previous_level:
            parent = _root_parent(state, r)
        pat_type = guest.pat_memory_type(state.pat, guest.pat_index(parent, pat_bit=False))
        out.append(eptmod.effective_memory_type(state.cr0, ept_leaf, pat_type))
        parent, previous_level = r.value, r.level
    return out


def _root_parent(state: PagingState, r: Reference) -> int:
    """What references the table of ``r``, the first guest entry of a walk: CR3, or under PAE
    paging the PDPTE register that points to the page directory holding ``r``."""
    for pdpte in state.pdptes or ():
        if pdpte & guest.P and (pdpte ^ r.address) & _PDPTE_TABLE == 0:
            return pdpte
    return state.cr3


_PDPTE_TABLE = _PAE_PDPTE.table.mask if _PAE_PDPTE.table is not None else 0
