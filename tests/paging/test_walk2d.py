"""The two-dimensional walk: vtx agrees with the independent reference walker; reference
counts and order."""

from __future__ import annotations

import paging_builders as pb
import paging_strategies as ps
from hypothesis import given

from vtx.paging import guest, walk2d
from vtx.paging.ept import ept_from_eptp
from vtx.paging.guest import Access, AccessKind, PagingFeatures, PagingState
from vtx.paging.memory import HostPhysAddr, PhysicalMemory
from vtx.paging.outcomes import Space, Translated
from vtx.vmx.capabilities import load_preset


@given(ps.scenarios(with_ept=True))
def test_2d_walk_agrees_with_the_reference_walker(sc: ps.Scenario) -> None:
    got, got_refs, got_mem = ps.run_vtx(sc)
    want, want_refs, want_mem = ps.run_reference(sc)
    assert got == want
    assert got_refs == want_refs
    assert ps.same_memory(got_mem, want_mem)


STATE = PagingState(cr0=0x80010011, cr3=pb.G_PML4, cr4=0x20, efer=0xD00)
F = PagingFeatures(46, True)


def _translate(mem: PhysicalMemory, state: PagingState = STATE, kind: AccessKind = AccessKind.READ) -> Translated:
    out = walk2d.translate(state, F, mem, pb.LA, Access(kind), ept=pb.ept())
    assert isinstance(out, Translated), out
    return out


def test_4_level_over_4_level_with_4kb_pages_takes_24_references_in_order() -> None:
    out = _translate(pb.full_ept(pb.guest_4level(PhysicalMemory(), through_ept=True)))
    assert len(out.references) == 24
    spaces = [r.space for r in out.references]
    assert spaces == ([Space.EPT] * 4 + [Space.GUEST]) * 4 + [Space.EPT] * 4
    assert [r.name for r in out.references if r.space is Space.GUEST] == ["PML4E", "PDPTE", "PDE", "PTE"]
    # each guest entry is read at the host-physical address its EPT walk produced
    guest_refs = [r for r in out.references if r.space is Space.GUEST]
    assert all(r.host_address == r.address + pb.HOST_OFFSET for r in guest_refs)
    assert out.hpa == pb.DATA_GPA + (pb.LA & 0xFFF) + pb.HOST_OFFSET and out.gpa == pb.DATA_GPA + (pb.LA & 0xFFF)


def test_large_guest_pages_take_fewer_references() -> None:
    mem = pb.guest_4level(PhysicalMemory(), through_ept=True)
    pde = pb.HOST_OFFSET + pb.G_PD + ((pb.LA >> 21) & 511) * 8
    mem = mem.write_int(HostPhysAddr(pde), 8, 0x20_0000 | 0xA7)  # a 2-MByte guest page at GPA 2 MiB
    mem = pb.full_ept(mem)
    mem = pb.ept_map(mem, 0x20_0000 + (pb.LA & 0x1F_F000))
    out = _translate(mem)
    assert len(out.references) == 3 * 5 + 4 and out.page_size == 4096


def test_large_ept_pages_take_fewer_references() -> None:
    # one EPT 1-GByte page maps guest-physical 0-1 GiB to host-physical HOST_OFFSET
    mem = pb.guest_4level(PhysicalMemory(), through_ept=True, host_offset=0x4000_0000)
    mem = mem.write_int(HostPhysAddr(pb.EPT_ROOT), 8, (pb.EPT_ROOT + 0x1000) | 7)
    mem = mem.write_int(HostPhysAddr(pb.EPT_ROOT + 0x1000), 8, 0x4000_0000 | 0x80 | 7 | (6 << 3))
    out = _translate(mem)
    assert len(out.references) == 4 * 3 + 2 and out.page_size == 4096
    assert out.hpa == 0x4000_0000 + pb.DATA_GPA + (pb.LA & 0xFFF)


def test_pae_guest_under_ept_reads_pdptes_from_the_registers() -> None:
    mem = PhysicalMemory()
    mem = mem.write_int(HostPhysAddr(pb.HOST_OFFSET + pb.G_PD), 8, pb.G_PT | 0x27)
    mem = mem.write_int(HostPhysAddr(pb.HOST_OFFSET + pb.G_PT + 8), 8, pb.DATA_GPA | 0x27)
    mem = pb.full_ept(mem)
    state = PagingState(cr0=0x80000011, cr3=pb.G_PML4, cr4=0x20, efer=0, pdptes=(pb.G_PD | 1, 0, 0, 0))
    out = walk2d.translate(state, F, mem, 0x1234, Access(AccessKind.READ), ept=pb.ept())
    assert isinstance(out, Translated) and len(out.references) == 2 * 5 + 4


def test_paging_disabled_under_ept_translates_the_linear_address_as_guest_physical() -> None:
    mem = pb.ept_map(PhysicalMemory(), pb.DATA_GPA, leaf=4 | (6 << 3))
    state = PagingState(cr0=0x11, cr3=0, cr4=0, efer=0)
    out = walk2d.translate(state, F, mem, pb.DATA_GPA, Access(AccessKind.READ), ept=pb.ept())
    assert not isinstance(out, Translated)
    # every linear address is a user-mode, read/write, executable one: bits 9 and 10 set, 11 clear
    assert out.qualification & 0xF80 == 0x780  # type: ignore[union-attr]
    assert len(out.references) == 4


def test_ept_a_d_flags_are_set_in_the_memory_returned() -> None:
    mem = pb.full_ept(pb.guest_4level(PhysicalMemory(), through_ept=True))
    out = walk2d.translate(STATE, F, mem, pb.LA, Access(AccessKind.WRITE), ept=pb.ept(ad=True))
    assert isinstance(out, Translated)
    ept_refs = [r for r in out.references if r.space is Space.EPT]
    assert all(out.memory.read_int(HostPhysAddr(r.host_address), 8) & (1 << 8) for r in ept_refs)
    assert ept_from_eptp(pb.eptp(ad=True), load_preset("max")).accessed_dirty


# ------------------------------------------------------------------ the fast path


def _fast_and_readable(sc: ps.Scenario, memory: PhysicalMemory | None = None) -> tuple[object, object]:
    state, f, mem, acc, ept = ps.vtx_inputs(sc)
    assert ept is not None
    mem = mem if memory is None else memory
    compiled = guest.compile_for(state, f)
    if compiled is None or guest.linear_address_fault(state, sc.gla):
        return None, None
    return (walk2d.translate_fast(state, compiled, mem, sc.gla, acc, ept=ept),
            walk2d.translate_readable(state, f, mem, sc.gla, acc, ept=ept))


@given(ps.scenarios(with_ept=True))
def test_fast_path_equals_the_readable_walk_wherever_it_answers(sc: ps.Scenario) -> None:
    fast, readable = _fast_and_readable(sc)
    assert fast is None or fast == readable
    # again on the memory after the first access, whose A/D flags are now set: the fast path's case
    if isinstance(readable, Translated):
        fast, again = _fast_and_readable(sc, readable.memory)
        assert fast is None or fast == again
        state, _, _, acc, ept = ps.vtx_inputs(sc)
        assert ept is not None
        mode = guest.paging_mode(state)
        readable_ept = all(r.value & 1 for r in again.references if r.space is Space.EPT)  # type: ignore[union-attr]
        if not acc.shadow_stack and not guest.crosses_page(sc.gla, acc) and mode is not None and \
                not mode.pdpte_registers and readable_ept and not ept.paging_write and \
                not ept.guest_paging_verification:
            assert fast is not None  # nothing left to set, no execute-only entry: the fast path answers


def test_fast_path_answers_the_24_reference_walk_and_declines_what_it_does_not_model() -> None:
    mem = pb.full_ept(pb.guest_4level(PhysicalMemory(), through_ept=True))
    compiled = guest.compile_for(STATE, F)
    assert compiled is not None
    read = Access(AccessKind.READ)
    fast = walk2d.translate_fast(STATE, compiled, mem, pb.LA, read, ept=pb.ept())
    assert fast is not None and len(fast.references) == 24
    assert fast == walk2d.translate_readable(STATE, F, mem, pb.LA, read, ept=pb.ept())
    # a write must set the guest dirty flag (memory changes): the readable walk does it
    assert walk2d.translate_fast(STATE, compiled, mem, pb.LA, Access(AccessKind.WRITE), ept=pb.ept()) is None
    assert walk2d.translate_fast(STATE, compiled, mem, pb.LA, Access(AccessKind.READ, shadow_stack=True),
                                 ept=pb.ept()) is None
    assert walk2d.translate_fast(STATE, compiled, mem, pb.LA | 0xFFF, Access(AccessKind.READ, size=2),
                                 ept=pb.ept()) is None
