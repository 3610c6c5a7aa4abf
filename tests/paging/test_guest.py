"""Guest paging without EPT: agreement with the reference walker in every mode, and the rules
of access rights, reserved bits, accessed / dirty flags and the #PF error code."""

from __future__ import annotations

import paging_strategies as ps
import pytest
from hypothesis import given

from vtx.errors import InputError
from vtx.paging import guest
from vtx.paging.formats import GUEST
from vtx.paging.guest import Access, AccessKind, PagingFeatures, PagingState
from vtx.paging.memory import HostPhysAddr, PhysicalMemory
from vtx.paging.outcomes import GeneralProtection, Outcome, PageFault, Translated

F = PagingFeatures(46, True)
PF = {b.name: b.mask for b in GUEST.error_code}
CR0 = 0x80000011
WP = 1 << 16
LONG = {"cr4": 0x20, "efer": 0x500}
PML4, PDPT, PD, PT = 0x1000, 0x2000, 0x3000, 0x4000
LA = 0x40_1234  # PML4 0, PDPT 0, PD 2, PT 1


@given(ps.scenarios(with_ept=False))
def test_guest_walk_agrees_with_the_reference_walker(sc: ps.Scenario) -> None:
    got, got_refs, got_mem = ps.run_vtx(sc)
    want, want_refs, want_mem = ps.run_reference(sc)
    assert got == want
    assert got_refs == want_refs
    assert ps.same_memory(got_mem, want_mem)


def four_level(*, pte: int = 0x27, upper: int = 0x27, pde: int | None = None) -> PhysicalMemory:
    m = PhysicalMemory()
    m = m.write_int(HostPhysAddr(PML4), 8, PDPT | upper).write_int(HostPhysAddr(PDPT), 8, PD | upper)
    m = m.write_int(HostPhysAddr(PD + 2 * 8), 8, (PT | upper) if pde is None else pde)
    return m.write_int(HostPhysAddr(PT + 8), 8, 0x9000 | pte)


def go(mem: PhysicalMemory, kind: str = "read", *, user: bool = False, implicit: bool = False, cr0: int = CR0,
       cr4: int = 0x20, efer: int = 0x500, rflags: int = 2, pkru: int = 0, la: int = LA,
       features: PagingFeatures = F) -> Outcome:
    st = PagingState(cr0=cr0, cr3=PML4, cr4=cr4, efer=efer, rflags=rflags, pkru=pkru)
    return guest.translate(st, features, mem, la, Access(AccessKind(kind), user=user, implicit=implicit))


def pf(out: Outcome) -> int:
    assert isinstance(out, PageFault), out
    return out.error_code


def test_4level_translation_and_reference_order() -> None:
    out = go(four_level())
    assert isinstance(out, Translated) and out.hpa == 0x9234
    assert [r.name for r in out.references] == ["PML4E", "PDPTE", "PDE", "PTE"]


def test_not_present_and_reserved_set_p_and_rsvd() -> None:
    assert pf(go(four_level(pte=0x26))) == 0
    assert pf(go(four_level(pte=0x27 | (1 << 50)))) == PF["present"] | PF["reserved"]
    assert isinstance(go(four_level(pte=0x27 | (1 << 45))), Translated)  # below MAXPHYADDR 46


def test_xd_is_reserved_unless_nxe() -> None:
    mem = four_level(pte=0x27 | (1 << 63))
    assert pf(go(mem)) == PF["present"] | PF["reserved"]
    assert isinstance(go(mem, efer=0xD00), Translated)
    assert pf(go(mem, "fetch", efer=0xD00)) == PF["present"] | PF["fetch"]


def test_1gb_page_needs_processor_support() -> None:
    m = PhysicalMemory().write_int(HostPhysAddr(PML4), 8, PDPT | 0x27)
    m = m.write_int(HostPhysAddr(PDPT), 8, 0x4000_0000 | 0xA7)
    out = go(m)
    assert isinstance(out, Translated) and out.page_size == 1 << 30 and out.hpa == 0x4000_0000 + LA
    assert pf(go(m, features=PagingFeatures(46, False))) == PF["present"] | PF["reserved"]


def test_2mb_page_reserved_bits_20_to_13() -> None:
    assert isinstance(go(four_level(pde=0x20_0000 | 0xA7)), Translated)
    assert pf(go(four_level(pde=0x20_0000 | 0xA7 | (1 << 13)))) & PF["reserved"]


def test_write_protect_governs_supervisor_writes_to_read_only_pages() -> None:
    mem = four_level(pte=0x25)
    assert isinstance(go(mem, "write"), Translated)
    assert pf(go(mem, "write", cr0=CR0 | WP)) == PF["present"] | PF["write"]
    assert pf(go(mem, "write", user=True)) == PF["present"] | PF["write"] | PF["user"]


def test_user_access_to_supervisor_page_faults() -> None:
    assert pf(go(four_level(pte=0x23), user=True)) == PF["present"] | PF["user"]
    assert isinstance(go(four_level(pte=0x23)), Translated)


def test_smap_with_ac_and_implicit_accesses() -> None:
    smap = 0x20 | (1 << 21)
    mem = four_level()
    assert pf(go(mem, cr4=smap)) == PF["present"]
    assert isinstance(go(mem, cr4=smap, rflags=2 | (1 << 18)), Translated)
    assert pf(go(mem, cr4=smap, rflags=2 | (1 << 18), implicit=True)) == PF["present"]
    assert isinstance(go(mem, cr4=0x20), Translated)


def test_smep_blocks_supervisor_fetches_from_user_pages() -> None:
    smep = 0x20 | (1 << 20)
    assert pf(go(four_level(), "fetch", cr4=smep)) == PF["present"] | PF["fetch"]
    assert isinstance(go(four_level(), "fetch"), Translated)
    assert isinstance(go(four_level(pte=0x23), "fetch", cr4=smep), Translated)


def test_fetch_flag_only_with_smep_or_pae_and_nxe() -> None:
    # a not-present fetch: I/D reported only if CR4.SMEP or (CR4.PAE and NXE)
    mem = four_level(pte=0x26)
    assert pf(go(mem, "fetch")) == 0
    assert pf(go(mem, "fetch", efer=0xD00)) == PF["fetch"]
    assert pf(go(mem, "fetch", cr4=0x20 | (1 << 20))) == PF["fetch"]


def test_protection_keys() -> None:
    pke = 0x20 | (1 << 22)
    mem = four_level(pte=0x27 | (3 << 59))
    ad, wd = 1 << 6, 1 << 7  # key 3
    assert pf(go(mem, user=True, cr4=pke, pkru=ad)) == PF["present"] | PF["user"] | PF["protection_key"]
    assert isinstance(go(mem, user=True, cr4=pke, pkru=wd), Translated)
    assert pf(go(mem, "write", user=True, cr4=pke, pkru=wd)) & PF["protection_key"]
    assert isinstance(go(mem, "write", cr4=pke, pkru=wd), Translated)  # supervisor, WP = 0
    assert pf(go(mem, "write", cr0=CR0 | WP, cr4=pke, pkru=wd)) & PF["protection_key"]
    assert isinstance(go(mem, "fetch", user=True, cr4=pke, pkru=ad), Translated)  # keys do not govern fetches
    assert isinstance(go(mem, user=True, cr4=0x20, pkru=ad), Translated)  # CR4.PKE = 0


def test_accessed_and_dirty_flags() -> None:
    mem = four_level(pte=0x07, upper=0x07)
    out = go(mem, "write")
    assert isinstance(out, Translated)
    values = [out.memory.read_int(HostPhysAddr(r.host_address), 8) for r in out.references]
    assert all(v & 0x20 for v in values) and values[-1] & 0x40 and not values[0] & 0x40
    read = go(mem)
    assert isinstance(read, Translated)
    assert not read.memory.read_int(HostPhysAddr(read.references[-1].host_address), 8) & 0x40
    not_present = four_level(pte=0x06, upper=0x07)
    fault = go(not_present)
    assert isinstance(fault, PageFault) and fault.memory is not_present  # nothing set on a fault


def test_32bit_paging_with_4mb_pages_and_pse36() -> None:
    m = PhysicalMemory().write_int(HostPhysAddr(PML4 + 4 * (LA >> 22)), 4, 0x0040_0000 | 0x87 | (0x3 << 13))
    out = go(m, cr4=1 << 4, efer=0)
    assert isinstance(out, Translated) and out.hpa == (3 << 32) + 0x40_0000 + (LA & 0x3F_FFFF)
    assert out.page_size == 1 << 22
    assert pf(go(m, cr4=1 << 4, efer=0, features=PagingFeatures(32, True))) & PF["reserved"]
    # without CR4.PSE bit 7 is ignored: the PDE references a page table
    assert [r.name for r in go(m, cr4=0, efer=0).references] == ["PDE", "PTE"]


def test_pae_uses_pdpte_registers() -> None:
    m = PhysicalMemory().write_int(HostPhysAddr(PML4), 8, PD | 1)
    m = m.write_int(HostPhysAddr(PD + 2 * 8), 8, PT | 0x27).write_int(HostPhysAddr(PT + 8), 8, 0x9027)
    st = PagingState(cr0=CR0, cr3=PML4, cr4=0x20, efer=0)
    out = guest.translate(st, F, m, LA, Access(AccessKind.READ))
    assert isinstance(out, Translated) and [r.name for r in out.references] == ["PDE", "PTE"]
    empty = PagingState(cr0=CR0, cr3=PML4, cr4=0x20, efer=0, pdptes=(0, 0, 0, 0))
    assert pf(guest.translate(empty, F, m, LA, Access(AccessKind.READ))) == 0
    bad = m.write_int(HostPhysAddr(PML4), 8, PD | 1 | 2)
    with pytest.raises(InputError, match="reserved"):
        guest.translate(st, F, bad, LA, Access(AccessKind.READ))


def test_non_canonical_address_is_general_protection() -> None:
    assert isinstance(go(four_level(), la=1 << 47), GeneralProtection)
    assert not isinstance(go(four_level(), la=(1 << 64) - (1 << 47)), GeneralProtection)
    assert not isinstance(go(four_level(), la=1 << 47, cr4=0x20 | (1 << 12)), GeneralProtection)


def test_paging_disabled_is_identity() -> None:
    out = go(PhysicalMemory(), cr0=0x11, cr4=0, efer=0, la=0xDEAD_BEEF)
    assert isinstance(out, Translated) and out.hpa == 0xDEAD_BEEF and out.references == ()
    with pytest.raises(InputError, match="32 bits"):
        go(PhysicalMemory(), cr0=0x11, cr4=0, efer=0, la=1 << 32)


# ------------------------------------------------------------------ shadow-stack accesses

SS_PTE = 0x61  # P A D, R/W = 0, U/S = 0: a supervisor shadow-stack page
CET = 1 << 23


def ss(mem: PhysicalMemory, kind: str = "read", *, user: bool = False) -> Outcome:
    st = PagingState(cr0=CR0 | WP, cr3=PML4, cr4=0x20 | CET, efer=0x500)
    return guest.translate(st, F, mem, LA, Access(AccessKind(kind), user=user, shadow_stack=True))


def test_shadow_stack_access_needs_a_shadow_stack_page() -> None:
    assert isinstance(ss(four_level(pte=SS_PTE), "write"), Translated)
    assert isinstance(ss(four_level(pte=SS_PTE)), Translated)
    for pte in (SS_PTE | 2, SS_PTE & ~0x40):  # writable, or not dirty: not a shadow-stack page
        assert pf(ss(four_level(pte=pte), "write")) == PF["present"] | PF["write"] | PF["shadow_stack"]
    # R/W = 0 above the entry that maps the page
    assert pf(ss(four_level(pte=SS_PTE, upper=0x25))) == PF["present"] | PF["shadow_stack"]


def test_shadow_stack_privilege_must_match_the_page() -> None:
    user_page = SS_PTE | 4
    assert isinstance(ss(four_level(pte=user_page), user=True), Translated)
    assert pf(ss(four_level(pte=SS_PTE), user=True)) == PF["present"] | PF["user"] | PF["shadow_stack"]
    assert pf(ss(four_level(pte=user_page))) == PF["present"] | PF["shadow_stack"]


def test_data_write_to_a_shadow_stack_page_faults_without_the_ss_flag() -> None:
    st = PagingState(cr0=CR0 | WP, cr3=PML4, cr4=0x20 | CET, efer=0x500)
    out = guest.translate(st, F, four_level(pte=SS_PTE), LA, Access(AccessKind.WRITE))
    assert pf(out) == PF["present"] | PF["write"]


def test_shadow_stack_fetch_is_bad_input() -> None:
    with pytest.raises(InputError, match="shadow_stack"):
        Access(AccessKind.FETCH, shadow_stack=True)


# ------------------------------------------------------------------ accesses that cross a page


def two_pages(second: int | None = 0xA027) -> PhysicalMemory:
    mem = four_level()
    return mem if second is None else mem.write_int(HostPhysAddr(PT + 16), 8, second)


def test_access_crossing_a_page_translates_both_pages_in_order() -> None:
    out = go_sized(two_pages(), LA | 0xFFC, 8)
    assert isinstance(out, Translated) and out.hpa == 0x9FFC and out.second is not None
    assert out.second.gla == (LA | 0xFFF) + 1 and out.second.hpa == 0xA000
    assert [r.name for r in out.references] == ["PML4E", "PDPTE", "PDE", "PTE"] * 2
    assert out.references[3].address == PT + 8 and out.references[7].address == PT + 16


def test_fault_on_the_second_page_reports_its_address() -> None:
    out = go_sized(two_pages(None), LA | 0xFFC, 8)
    assert isinstance(out, PageFault) and out.address == (LA | 0xFFF) + 1 and len(out.references) == 8
    # the first page's translation completed: its accessed flags are set in the memory returned
    fresh = four_level(pte=0x07, upper=0x07)
    out = go_sized(fresh, LA | 0xFFC, 8)
    assert isinstance(out, PageFault) and out.memory.read_int(HostPhysAddr(PT + 8), 8) & 0x20


def test_access_within_a_page_is_not_split() -> None:
    out = go_sized(two_pages(), (LA & ~0xFFF) | 0xFF8, 8)
    assert isinstance(out, Translated) and out.second is None and len(out.references) == 4


def test_crossing_into_a_non_canonical_address_is_general_protection_before_any_walk() -> None:
    out = go_sized(two_pages(), (1 << 47) - 4, 8)
    assert isinstance(out, GeneralProtection) and out.references == ()


def test_32bit_linear_addresses_wrap_at_4_gib() -> None:
    m = PhysicalMemory().write_int(HostPhysAddr(PML4 + 4 * 1023), 4, 0xFFC0_0000 | 0x87)
    m = m.write_int(HostPhysAddr(PML4), 4, 0x0040_0000 | 0x87)
    st = PagingState(cr0=CR0, cr3=PML4, cr4=1 << 4, efer=0)
    out = guest.translate(st, F, m, 0xFFFF_FFFE, Access(AccessKind.READ, size=4))
    assert isinstance(out, Translated) and out.second is not None
    assert out.second.gla == 0 and out.second.hpa == 0x40_0000


def go_sized(mem: PhysicalMemory, la: int, size: int) -> Outcome:
    st = PagingState(cr0=CR0, cr3=PML4, cr4=0x20, efer=0x500)
    return guest.translate(st, F, mem, la, Access(AccessKind.READ, size=size))
