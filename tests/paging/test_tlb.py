"""TLBs and paging-structure caches: after the invalidations the SDM requires a lookup agrees
with a fresh walk; without them every result lies in the permitted set; tags isolate."""

from __future__ import annotations

from collections.abc import Callable

import paging_builders as pb
import paging_strategies as ps
from hypothesis import given
from hypothesis import strategies as st

from vtx.paging import guest, tlb, walk2d
from vtx.paging.ept import Ept
from vtx.paging.guest import Access, AccessKind, PagingFeatures, PagingState
from vtx.paging.memory import HostPhysAddr, PhysicalMemory
from vtx.paging.outcomes import Outcome, Space, Translated
from vtx.paging.tlb import InveptType, InvpcidType, InvvpidType, Tags, Tlb, TlbControl

Op = Callable[[Tlb, Tags, PagingState, int], Tlb]

COMPLETE: dict[str, Op] = {
    "invlpg": lambda t, tags, s, gla: tlb.invlpg(t, tags, gla),
    "invpcid_all_including_globals": lambda t, tags, s, gla: tlb.invpcid(t, tags,
                                                                          InvpcidType.ALL_CONTEXT_INCLUDING_GLOBALS),
    "invvpid_individual": lambda t, tags, s, gla: tlb.invvpid(t, InvvpidType.INDIVIDUAL_ADDRESS, tags.vpid, gla),
    "invvpid_single": lambda t, tags, s, gla: tlb.invvpid(t, InvvpidType.SINGLE_CONTEXT, tags.vpid),
    "cr4_pge_toggle": lambda t, tags, s, gla: tlb.mov_to_cr4(t, tags, s.cr4, s.cr4 ^ guest.CR4_PGE),
    "vm_transition_without_vpid": lambda t, tags, s, gla: tlb.vmx_transition(t, enable_vpid=False),
}
"""Invalidations that cover every linear mapping of the address (for VPID 0, the tests' VPID)."""

PARTIAL: dict[str, Op] = {
    "none": lambda t, tags, s, gla: t,
    "invlpg_other_page": lambda t, tags, s, gla: tlb.invlpg(t, tags, gla ^ (1 << 40)),
    "invpcid_individual": lambda t, tags, s, gla: tlb.invpcid(t, tags, InvpcidType.INDIVIDUAL_ADDRESS, 0, gla),
    "invpcid_single": lambda t, tags, s, gla: tlb.invpcid(t, tags, InvpcidType.SINGLE_CONTEXT, 0),
    "mov_to_cr3": lambda t, tags, s, gla: tlb.mov_to_cr3(t, tags, s, s.cr3),
    "invvpid_other_vpid": lambda t, tags, s, gla: tlb.invvpid(t, InvvpidType.SINGLE_CONTEXT, 7),
    "invvpid_retaining_globals": lambda t, tags, s, gla: tlb.invvpid(t, InvvpidType.SINGLE_CONTEXT_RETAINING_GLOBALS),
    "vm_transition_with_vpid": lambda t, tags, s, gla: tlb.vmx_transition(t, enable_vpid=True),
}


def fresh(state: PagingState, f: PagingFeatures, mem: PhysicalMemory, gla: int, acc: Access, *,
          ept: Ept | None = None) -> Outcome:
    if ept is None:
        return guest.translate(state, f, mem, gla, acc)
    return walk2d.translate(state, f, mem, gla, acc, ept=ept)


def _mutate(draw: st.DrawFn, out: Outcome, space: Space) -> tuple[int, int] | None:
    """A change of the entry that maps the page (the last one of ``space`` read) that changes
    the result of a fresh walk: clear its present / permission bits or move its frame."""
    refs = [r for r in out.references if r.space is space]
    if not isinstance(out, Translated) or not refs:
        return None
    r = refs[-1]
    return r.host_address, r.value ^ draw(st.sampled_from([7, 1 << 22]))


@given(ps.scenarios(with_ept=False), st.data())
def test_tlb_without_ept_agrees_after_invalidation_and_stays_permitted_without(sc: ps.Scenario,
                                                                              data: st.DataObject) -> None:
    state, f, mem, acc, _ = ps.vtx_inputs(sc)
    tags = Tags()
    first, t = tlb.access(Tlb(), tags, mem, sc.gla, acc, state=state, features=f)
    mem = first.memory
    change = _mutate(data.draw, first, Space.GUEST)
    if change is not None:
        mem = mem.write_int(HostPhysAddr(change[0]), 8 if guest.paging_mode(state).entry_bytes == 8 else 4,  # type: ignore[union-attr]
                            change[1] & ((1 << (8 * guest.paging_mode(state).entry_bytes)) - 1))  # type: ignore[union-attr]
    second_acc = Access(AccessKind(data.draw(st.sampled_from(ps.KINDS))), user=acc.user)
    name = data.draw(st.sampled_from(sorted(COMPLETE) * 2 + sorted(PARTIAL)))
    t = (COMPLETE | PARTIAL)[name](t, tags, state, sc.gla)
    got, _ = tlb.access(t, tags, mem, sc.gla, second_acc, state=state, features=f)
    assert tlb.outcome_key(got) in tlb.permitted(t, tags, mem, sc.gla, second_acc, state=state, features=f)
    if name in COMPLETE:
        assert tlb.outcome_key(got) == tlb.outcome_key(fresh(state, f, mem, sc.gla, second_acc))


@given(ps.scenarios(with_ept=True), st.data())
def test_tlb_with_ept_agrees_after_invept_and_stays_permitted_without(sc: ps.Scenario, data: st.DataObject) -> None:
    state, f, mem, acc, ept = ps.vtx_inputs(sc)
    assert ept is not None
    tags = Tags(vpid=1, ep4ta=ept.ep4ta)
    first, t = tlb.access(Tlb(), tags, mem, sc.gla, acc, state=state, features=f, ept=ept)
    mem = first.memory
    space = data.draw(st.sampled_from([Space.EPT, Space.GUEST]))
    change = _mutate(data.draw, first, space)
    if change is not None:
        size = 4 if guest.paging_mode(state) is guest.GUEST.modes["32bit"] else 8
        mem = mem.write_int(HostPhysAddr(change[0]), size, change[1] & ((1 << (8 * size)) - 1))
    op = data.draw(st.sampled_from(["invept_single", "invept_global", "invvpid_single", "none", "invept_other"]))
    t = {"invept_single": lambda: tlb.invept(t, InveptType.SINGLE_CONTEXT, ept.ep4ta),
         "invept_global": lambda: tlb.invept(t, InveptType.GLOBAL),
         "invvpid_single": lambda: tlb.invvpid(t, InvvpidType.SINGLE_CONTEXT, 1),
         "invept_other": lambda: tlb.invept(t, InveptType.SINGLE_CONTEXT, ept.ep4ta ^ 0x1000),
         "none": lambda: t}[op]()
    got, _ = tlb.access(t, tags, mem, sc.gla, acc, state=state, features=f, ept=ept)
    assert tlb.outcome_key(got) in tlb.permitted(t, tags, mem, sc.gla, acc, state=state, features=f, ept=ept)
    # INVEPT covers every mapping; INVVPID leaves guest-physical mappings, so it suffices only for
    # a change to the guest's tables (SDM Vol. 3C §30.4.3.1)
    if op in ("invept_single", "invept_global") or (op == "invvpid_single" and space is Space.GUEST):
        assert tlb.outcome_key(got) == tlb.outcome_key(fresh(state, f, mem, sc.gla, acc, ept=ept))


# ------------------------------------------------------------------ deterministic cases

F = PagingFeatures(46, True)
STATE = PagingState(cr0=0x80000011, cr3=pb.G_PML4, cr4=0x20 | guest.CR4_PGE | guest.CR4_PCIDE, efer=0xD00)
READ = Access(AccessKind.READ)
PTE = pb.G_PT + ((pb.LA >> 12) & 511) * 8


def world(pte_flags: int = pb.GUEST_FLAGS) -> PhysicalMemory:
    return pb.guest_4level(PhysicalMemory(), through_ept=False, leaf=pte_flags | 0x40)


def remap(mem: PhysicalMemory) -> PhysicalMemory:
    """The PTE now maps the page at 0x7000."""
    return mem.write_int(HostPhysAddr(PTE), 8, 0x7000 | pb.GUEST_FLAGS | 0x40)


def hpa(out: Outcome) -> int:
    assert isinstance(out, Translated), out
    return out.hpa


def cached(tags: Tags, mem: PhysicalMemory, state: PagingState = STATE) -> Tlb:
    _, t = tlb.access(Tlb(), tags, mem, pb.LA, READ, state=state, features=F)
    return t


def test_stale_translation_is_used_until_invalidated_and_both_results_are_permitted() -> None:
    tags = Tags(pcid=0)
    mem = world()
    t = cached(tags, mem)
    new = remap(mem)
    stale, _ = tlb.access(t, tags, new, pb.LA, READ, state=STATE, features=F)
    assert hpa(stale) == pb.DATA_GPA + 0x234 and stale.references == ()
    allowed = tlb.permitted(t, tags, new, pb.LA, READ, state=STATE, features=F)
    assert allowed == {("ok", 0x5234, 0x5234), ("ok", 0x7234, 0x7234)}
    after, _ = tlb.access(tlb.invlpg(t, tags, pb.LA), tags, new, pb.LA, READ, state=STATE, features=F)
    assert hpa(after) == 0x7234


def test_pcid_tags_and_global_translations() -> None:
    mem = world()
    t = cached(Tags(pcid=1), mem)
    other, _ = tlb.access(t, Tags(pcid=2), remap(mem), pb.LA, READ, state=STATE, features=F)
    assert hpa(other) == 0x7234  # not global: PCID 1's entry is not used with PCID 2
    t = cached(Tags(pcid=1), world(pb.GUEST_FLAGS | 0x100))
    glob, _ = tlb.access(t, Tags(pcid=2), remap(mem), pb.LA, READ, state=STATE, features=F)
    assert hpa(glob) == 0x5234  # global: used with any PCID
    t2 = tlb.mov_to_cr3(t, Tags(pcid=1), STATE, pb.G_PML4 | 1)
    assert tlb.lookup(t2, Tags(pcid=1), pb.LA)  # MOV to CR3 keeps global translations
    assert not tlb.lookup(tlb.invpcid(t, Tags(), InvpcidType.ALL_CONTEXT_INCLUDING_GLOBALS), Tags(pcid=1), pb.LA)


def test_mov_to_cr3_invalidates_the_new_pcid_unless_bit_63() -> None:
    t = cached(Tags(pcid=1), world())
    assert not tlb.lookup(tlb.mov_to_cr3(t, Tags(pcid=1), STATE, pb.G_PML4 | 1), Tags(pcid=1), pb.LA)
    assert tlb.lookup(tlb.mov_to_cr3(t, Tags(pcid=1), STATE, pb.G_PML4 | 1, no_flush=True), Tags(pcid=1), pb.LA)
    assert tlb.lookup(tlb.mov_to_cr3(t, Tags(pcid=1), STATE, pb.G_PML4 | 2), Tags(pcid=1), pb.LA)


def test_vpid_tags() -> None:
    t = cached(Tags(vpid=1), world())
    assert tlb.lookup(t, Tags(vpid=1), pb.LA) and not tlb.lookup(t, Tags(vpid=2), pb.LA)
    assert not tlb.lookup(tlb.invvpid(t, InvvpidType.SINGLE_CONTEXT, 1), Tags(vpid=1), pb.LA)
    assert tlb.lookup(tlb.invvpid(t, InvvpidType.SINGLE_CONTEXT, 2), Tags(vpid=1), pb.LA)
    assert not tlb.lookup(tlb.invvpid(t, InvvpidType.ALL_CONTEXT), Tags(vpid=1), pb.LA)
    assert tlb.lookup(tlb.vmx_transition(t, enable_vpid=False), Tags(vpid=1), pb.LA)


def test_invvpid_individual_address_and_retaining_globals() -> None:
    t = cached(Tags(vpid=1), world(pb.GUEST_FLAGS | 0x100))
    assert not tlb.lookup(tlb.invvpid(t, InvvpidType.INDIVIDUAL_ADDRESS, 1, pb.LA), Tags(vpid=1), pb.LA)
    assert tlb.lookup(tlb.invvpid(t, InvvpidType.INDIVIDUAL_ADDRESS, 1, pb.LA + 0x1000), Tags(vpid=1), pb.LA)
    assert tlb.lookup(tlb.invvpid(t, InvvpidType.SINGLE_CONTEXT_RETAINING_GLOBALS, 1), Tags(vpid=1), pb.LA)
    nonglobal = cached(Tags(vpid=1), world())
    assert not tlb.lookup(tlb.invvpid(nonglobal, InvvpidType.SINGLE_CONTEXT_RETAINING_GLOBALS, 1), Tags(vpid=1),
                          pb.LA)


def test_all_context_invvpid_keeps_vpid_0_and_vm_transitions_without_vpid_flush_it() -> None:
    t = cached(Tags(vpid=0), world())
    assert tlb.lookup(tlb.invvpid(t, InvvpidType.ALL_CONTEXT), Tags(vpid=0), pb.LA)
    assert not tlb.lookup(tlb.vmx_transition(t, enable_vpid=False), Tags(vpid=0), pb.LA)
    assert tlb.lookup(tlb.vmx_transition(t, enable_vpid=True), Tags(vpid=0), pb.LA)


def test_page_fault_invalidates_the_address() -> None:
    tags = Tags()
    mem = world(0x25)  # read-only: the cached rights deny a write, so the processor walks
    t = cached(tags, mem)
    write = Access(AccessKind.WRITE, user=True)
    out, t2 = tlb.access(t, tags, mem, pb.LA, write, state=STATE, features=F)
    assert not isinstance(out, Translated) and tlb.lookup(t, tags, pb.LA) and not tlb.lookup(t2, tags, pb.LA)


def test_paging_structure_cache_is_used_for_a_neighbouring_page() -> None:
    tags = Tags()
    mem = world().write_int(HostPhysAddr(PTE + 8), 8, 0x6000 | pb.GUEST_FLAGS)
    t = cached(tags, mem)
    # the PML4E now points elsewhere; a walk for the next page may still start from the cached PDE
    moved = mem.write_int(HostPhysAddr(pb.G_PML4), 8, 0)
    out, _ = tlb.access(t, tags, moved, pb.LA + 0x1000, READ, state=STATE, features=F)
    assert hpa(out) == 0x6234 and len(out.references) == 1
    allowed = tlb.permitted(t, tags, moved, pb.LA + 0x1000, READ, state=STATE, features=F)
    assert ("ok", 0x6234, 0x6234) in allowed and len(allowed) == 2
    after, _ = tlb.access(tlb.mov_to_cr3(t, tags, STATE, pb.G_PML4), tags, moved, pb.LA + 0x1000, READ,
                          state=STATE, features=F)
    assert not isinstance(after, Translated)


def test_combined_mappings_are_tagged_by_ep4ta_not_the_whole_eptp() -> None:
    mem = pb.full_ept(pb.guest_4level(PhysicalMemory(), through_ept=True))
    state = PagingState(cr0=0x80000011, cr3=pb.G_PML4, cr4=0x20, efer=0xD00)
    e = pb.ept()
    tags = Tags(vpid=1, ep4ta=e.ep4ta)
    _, t = tlb.access(Tlb(), tags, mem, pb.LA, READ, state=state, features=F, ept=e)
    with_ad = pb.ept(ad=True)
    assert with_ad.ep4ta == e.ep4ta and tlb.lookup(t, Tags(vpid=1, ep4ta=with_ad.ep4ta), pb.LA)
    assert not tlb.lookup(t, Tags(vpid=1, ep4ta=e.ep4ta + 0x10_0000), pb.LA)
    assert not tlb.lookup(t, Tags(vpid=1), pb.LA)  # a combined mapping is not a linear one
    assert t.guest_physical and not tlb.invept(t, InveptType.SINGLE_CONTEXT, e.ep4ta).guest_physical
    kept = tlb.invept(t, InveptType.SINGLE_CONTEXT, e.ep4ta + 0x1000)
    assert kept == t and not tlb.invept(t, InveptType.GLOBAL).translations
    assert tlb.lookup(tlb.invlpg(t, Tags(vpid=2), pb.LA), tags, pb.LA)  # INVLPG: current VPID only
    assert not tlb.lookup(tlb.invlpg(t, tags, pb.LA), tags, pb.LA)


def test_invept_keeps_linear_mappings() -> None:
    t = cached(Tags(vpid=1), world())
    assert tlb.invept(t, InveptType.GLOBAL) == t


def test_amd_tlb_control_by_asid() -> None:
    t = cached(Tags(vpid=5), world())  # the ASID rides in the VPID slot
    assert tlb.tlb_control(t, TlbControl.NOTHING, 5) == t
    assert not tlb.lookup(tlb.tlb_control(t, TlbControl.FLUSH_ASID, 5), Tags(vpid=5), pb.LA)
    assert tlb.lookup(tlb.tlb_control(t, TlbControl.FLUSH_ASID, 6), Tags(vpid=5), pb.LA)
    assert tlb.tlb_control(t, TlbControl.FLUSH_ALL, 6) == Tlb()
    assert not tlb.lookup(tlb.tlb_control(t, TlbControl.FLUSH_ASID_NON_GLOBAL, 5), Tags(vpid=5), pb.LA)


def test_write_through_a_clean_cached_translation_walks_to_set_dirty() -> None:
    tags = Tags()
    mem = pb.guest_4level(PhysicalMemory(), through_ept=False)  # D = 0
    t = cached(tags, mem)
    out, _ = tlb.access(t, tags, mem, pb.LA, Access(AccessKind.WRITE), state=STATE, features=F)
    assert isinstance(out, Translated) and out.references and out.memory.read_int(HostPhysAddr(PTE), 8) & 0x40


# ------------------------------------------------------------------ the TLB-hit path


@given(st.lists(ps.scenarios(with_ept=False), min_size=1, max_size=4), st.data())
def test_hit_equals_the_linear_search(scs: list[ps.Scenario], data: st.DataObject) -> None:
    t = Tlb()
    all_tags = [Tags(vpid=v, pcid=p) for v in (0, 1) for p in (0, 1)]
    for sc in scs:
        state, f, mem, acc, _ = ps.vtx_inputs(sc)
        _, t = tlb.access(t, data.draw(st.sampled_from(all_tags)), mem, sc.gla, acc, state=state, features=f)
    sc = data.draw(st.sampled_from(scs))
    state, f, _, _, _ = ps.vtx_inputs(sc)
    acc = Access(AccessKind(data.draw(st.sampled_from(ps.KINDS))), user=data.draw(st.booleans()))
    tags = data.draw(st.sampled_from(all_tags))
    mode = guest.paging_mode(state)
    keys = mode is not None and mode.protection_keys

    def allows(entry: tlb.CachedTranslation) -> bool:
        return tlb.entry_allows(state, keys, entry, acc, None)

    linear = next((c for c in tlb.lookup(t, tags, sc.gla) if allows(c)), None)
    assert tlb.hit(t, tags, sc.gla, allows) == linear


def test_hit_prefers_the_current_pcid_and_needs_global_for_another() -> None:
    mem = world()
    t = cached(Tags(pcid=1), mem)
    t = Tlb(t.translations | cached(Tags(pcid=2), remap(mem)).translations)
    assert tlb.hit(t, Tags(pcid=2), pb.LA, lambda entry: True).hpa == 0x7000  # type: ignore[union-attr]
    assert tlb.hit(t, Tags(pcid=1), pb.LA, lambda entry: True).hpa == 0x5000  # type: ignore[union-attr]
    assert tlb.hit(t, Tags(pcid=3), pb.LA, lambda entry: True) is None  # neither is global
    assert tlb.hit(t, Tags(pcid=1), pb.LA, lambda entry: False) is None


# ------------------------------------------------------------------ guest-physical mappings


def _ept_world() -> tuple[PhysicalMemory, PagingState, Tags, Ept]:
    mem = pb.full_ept(pb.guest_4level(PhysicalMemory(), through_ept=True))
    state = PagingState(cr0=0x80000011, cr3=pb.G_PML4, cr4=0x20, efer=0xD00)
    e = pb.ept()
    return mem, state, Tags(vpid=1, ep4ta=e.ep4ta), e


DATA_EPT_PTE = pb.EPT_ROOT + 0x3000 + (pb.DATA_GPA >> 12) * 8


def test_guest_physical_mappings_survive_invvpid_and_are_used_until_invept() -> None:
    mem, state, tags, e = _ept_world()
    _, t = tlb.access(Tlb(), tags, mem, pb.LA, READ, state=state, features=F, ept=e)
    assert tlb.usable_guest_physical(t, tags, pb.DATA_GPA) and tlb.usable_guest_physical(t, tags, pb.G_PT)
    moved = mem.write_int(HostPhysAddr(DATA_EPT_PTE), 8, 0x7777000 | 7 | (6 << 3))  # EPT now maps elsewhere
    t = tlb.invvpid(t, InvvpidType.SINGLE_CONTEXT, 1)  # combined mappings gone, guest-physical ones stay
    out, _ = tlb.access(t, tags, moved, pb.LA, READ, state=state, features=F, ept=e)
    stale = pb.DATA_GPA + pb.HOST_OFFSET + 0x234
    assert hpa(out) == stale and not [r for r in out.references if r.space is Space.EPT]
    allowed = tlb.permitted(t, tags, moved, pb.LA, READ, state=state, features=F, ept=e)
    assert ("ok", 0x5234, stale) in allowed and ("ok", 0x5234, 0x7777234) in allowed
    t = tlb.invept(t, InveptType.SINGLE_CONTEXT, e.ep4ta)
    out, _ = tlb.access(t, tags, moved, pb.LA, READ, state=state, features=F, ept=e)
    assert hpa(out) == 0x7777234
    assert tlb.permitted(t, tags, moved, pb.LA, READ, state=state, features=F, ept=e) == {("ok", 0x5234, 0x7777234)}


def test_guest_physical_mappings_of_another_ep4ta_are_not_used() -> None:
    mem, state, tags, e = _ept_world()
    _, t = tlb.access(Tlb(), tags, mem, pb.LA, READ, state=state, features=F, ept=e)
    other = Tags(vpid=1, ep4ta=e.ep4ta + 0x10_0000)
    assert not tlb.usable_guest_physical(t, other, pb.DATA_GPA)


def test_no_cached_guest_physical_mapping_is_used_with_ept_accessed_dirty_flags() -> None:
    mem, state, tags, _ = _ept_world()
    e = pb.ept(ad=True)
    _, t = tlb.access(Tlb(), tags, mem, pb.LA, READ, state=state, features=F, ept=e)
    t = tlb.invvpid(t, InvvpidType.SINGLE_CONTEXT, 1)
    out, _ = tlb.access(t, tags, mem, pb.LA, READ, state=state, features=F, ept=e)
    assert len(out.references) == 24


def test_a_combined_mapping_carries_its_ept_permissions() -> None:
    # EPT maps the data page read-only: a read caches the combined mapping, a later write may not use it
    mem = pb.full_ept(pb.guest_4level(PhysicalMemory(), through_ept=True, leaf=pb.GUEST_FLAGS | 0x40),
                      data_leaf=1 | (6 << 3))
    state = PagingState(cr0=0x80000011, cr3=pb.G_PML4, cr4=0x20, efer=0xD00)
    e = pb.ept()
    tags = Tags(vpid=1, ep4ta=e.ep4ta)
    _, t = tlb.access(Tlb(), tags, mem, pb.LA, READ, state=state, features=F, ept=e)
    (entry,) = tlb.lookup(t, tags, pb.LA)
    write = Access(AccessKind.WRITE)
    assert entry.ept_permissions is not None and tlb.entry_allows(state, True, entry, READ, e)
    assert not tlb.entry_allows(state, True, entry, write, e)
    out, _ = tlb.access(t, tags, mem, pb.LA, write, state=state, features=F, ept=e)
    assert not isinstance(out, Translated) and out.references  # walked: an EPT violation
    assert tlb.outcome_key(out) in tlb.permitted(t, tags, mem, pb.LA, write, state=state, features=F, ept=e)
    # with EPT A/D flags a write needs the EPT dirty flag: a read left it clear, so the write walks
    ad = pb.ept(ad=True)
    writable = pb.full_ept(pb.guest_4level(PhysicalMemory(), through_ept=True, leaf=pb.GUEST_FLAGS | 0x40))
    _, t = tlb.access(Tlb(), tags, writable, pb.LA, READ, state=state, features=F, ept=ad)
    (entry,) = tlb.lookup(t, tags, pb.LA)
    assert not entry.ept_dirty and not tlb.entry_allows(state, True, entry, write, ad)
    assert tlb.entry_allows(state, True, entry, write, e)  # A/D disabled: nothing to set
