"""AMD nested paging: the nested walk shares the guest walker; #NPF fault codes."""

from __future__ import annotations

from vtx.paging import npt
from vtx.paging.formats import NPT
from vtx.paging.guest import Access, AccessKind, PagingFeatures, PagingState
from vtx.paging.memory import HostPhysAddr, PhysicalMemory
from vtx.paging.outcomes import Npf, Outcome, PageFault, Space, Translated

F = PagingFeatures(46, True)
HOST = PagingState(cr0=0x80000011, cr3=0x80_0000, cr4=0x20, efer=0xD00)  # nCR3 in cr3
GUEST = PagingState(cr0=0x80000011, cr3=0x1000, cr4=0x20, efer=0xD00)
OFFSET = 0x1000_0000
LA = 0x1234
BIT = {b.name: b.mask for b in NPT.exit_info_1}


def nested_map(mem: PhysicalMemory, gpa: int, *, leaf: int = 0x67, upper: int = 0x27) -> PhysicalMemory:
    root = HOST.cr3
    pdpt, pd, pt = root + 0x1000, root + 0x2000, root + 0x3000
    mem = mem.write_int(HostPhysAddr(root + ((gpa >> 39) & 511) * 8), 8, pdpt | upper)
    mem = mem.write_int(HostPhysAddr(pdpt + ((gpa >> 30) & 511) * 8), 8, pd | upper)
    mem = mem.write_int(HostPhysAddr(pd + ((gpa >> 21) & 511) * 8), 8, pt | upper)
    return mem.write_int(HostPhysAddr(pt + ((gpa >> 12) & 511) * 8), 8, ((gpa & ~0xFFF) + OFFSET) | leaf)


def world(*, table_leaf: int = 0x67, data_leaf: int = 0x67, guest_pte: int = 0x27) -> PhysicalMemory:
    mem = PhysicalMemory()
    tables = (0x1000, 0x2000, 0x3000, 0x4000)
    for here, nxt in zip(tables, (*tables[1:], 0x5000), strict=True):
        flags = guest_pte if here == 0x4000 else 0x27
        mem = mem.write_int(HostPhysAddr(OFFSET + here + (((LA >> (12 + 9 * (4 - tables.index(here) - 1))) & 511)
                                                           * 8)), 8, nxt | flags)
        mem = nested_map(mem, here, leaf=table_leaf)
    return nested_map(mem, 0x5000, leaf=data_leaf)


def go(mem: PhysicalMemory, kind: AccessKind = AccessKind.READ, *, user: bool = False) -> Outcome:
    return npt.translate(GUEST, F, mem, LA, Access(kind, user=user), host=HOST)


def test_nested_walk_4_over_4_takes_24_references() -> None:
    out = go(world())
    assert isinstance(out, Translated) and out.hpa == OFFSET + 0x5234
    assert len(out.references) == 24
    assert [r.space for r in out.references] == ([Space.NPT] * 4 + [Space.GUEST]) * 4 + [Space.NPT] * 4


def test_final_translation_fault() -> None:
    out = go(world(data_leaf=0x66))
    assert isinstance(out, Npf) and out.exit_info_2 == 0x5234
    assert out.exit_info_1 == BIT["final_translation"] | BIT["user"]


def test_guest_page_table_fault_is_a_write_and_reports_bit_33() -> None:
    out = go(world(table_leaf=0x65))  # guest tables mapped read-only
    assert isinstance(out, Npf) and out.exit_info_2 == 0x1000
    assert out.exit_info_1 == BIT["guest_page_table"] | BIT["user"] | BIT["present"] | BIT["write"]


def test_nested_reserved_bit_and_fetch() -> None:
    out = go(world(data_leaf=0x67 | (1 << 50)), AccessKind.FETCH)
    assert isinstance(out, Npf)
    assert out.exit_info_1 & BIT["reserved"] and out.exit_info_1 & BIT["present"] and out.exit_info_1 & BIT["fetch"]
    assert not out.exit_info_1 & BIT["guest_page_table"]


def test_nested_tables_treat_every_guest_access_as_user() -> None:
    out = go(world(data_leaf=0x63))  # nested leaf supervisor-only: even a supervisor guest access faults
    assert isinstance(out, Npf) and out.exit_info_1 & BIT["present"]


def test_guest_page_fault_is_the_guests() -> None:
    out = go(world(guest_pte=0x26))
    assert isinstance(out, PageFault) and out.error_code == 0 and out.address == LA


def test_nested_and_guest_accessed_flags_are_set() -> None:
    mem = world(table_leaf=0x07, guest_pte=0x07)
    out = go(mem, AccessKind.WRITE)
    assert isinstance(out, Translated)
    for r in out.references:
        assert out.memory.read_int(HostPhysAddr(r.host_address), 8) & 0x20, r
