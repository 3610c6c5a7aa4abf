"""Memory typing under EPT: the PAT entry a guest page selects, the Table 12-7 combination with
the EPT memory type, IPAT and CR0.CD (SDM Vol. 3C §30.3.7), and the memory types of the
paging-structure references."""

from __future__ import annotations

import paging_builders as pb
import pytest

from vtx.errors import InputError
from vtx.paging import walk2d
from vtx.paging.ept import effective_memory_type, structure_memory_type, translate_gpa
from vtx.paging.formats import GUEST
from vtx.paging.guest import Access, AccessKind, PagingFeatures, PagingState, pat_index, pat_memory_type
from vtx.paging.memory import HostPhysAddr, PhysicalMemory
from vtx.paging.outcomes import Outcome, Space, Translated

F = PagingFeatures(46, True)
STATE = PagingState(cr0=0x80010011, cr3=pb.G_PML4, cr4=0x20, efer=0xD00)
CD = GUEST.register("cr0", "cd").mask
WB, WT, UC, WC = 6 << 3, 4 << 3, 0 << 3, 1 << 3
IPAT = 1 << 6
PWT, PCD, PAT_PTE, PAT_LARGE = 1 << 3, 1 << 4, 1 << 7, 1 << 12


def go(*, data_leaf: int = 7 | WB, guest_leaf: int = pb.GUEST_FLAGS, state: PagingState = STATE) -> Translated:
    mem = pb.full_ept(pb.guest_4level(PhysicalMemory(), through_ept=True, leaf=guest_leaf), data_leaf=data_leaf)
    out = walk2d.translate(state, F, mem, pb.LA, Access(AccessKind.READ), ept=pb.ept())
    assert isinstance(out, Translated), out
    return out


def test_the_combination_table_is_complete_and_as_printed() -> None:
    table = GUEST.pat.effective
    assert len(table) == 5 * 6
    assert table[("WP", "UC-")] == "WC" and table[("WT", "WP")] == "WP" and table[("WC", "WB")] == "WC"
    assert all(table[(m, "WB")] == m for m in ("UC", "WC", "WT", "WB", "WP"))
    assert all(table[(m, "UC")] == "UC" for m in ("UC", "WC", "WT", "WB", "WP"))


def test_pat_index_uses_bit_7_of_a_pte_and_bit_12_of_a_large_page() -> None:
    assert pat_index(PAT_PTE | PCD | PWT, pat_bit=True) == 7
    assert pat_index(PAT_PTE, pat_bit=True, pte=False) == 0
    assert pat_index(PAT_LARGE | PWT, pat_bit=True, pte=False) == 5
    assert pat_index(PAT_PTE | PCD, pat_bit=False) == 2  # a paging structure: PCD and PWT only


def test_reset_pat_and_reserved_entries() -> None:
    assert [pat_memory_type(GUEST.pat.reset, i) for i in range(8)] == ["WB", "WT", "UC-", "UC"] * 2
    with pytest.raises(InputError, match=r"guest\.pat"):
        pat_memory_type(0x02, 0)


def test_ipat_clear_combines_the_ept_type_with_the_guest_pat_type() -> None:
    out = go(guest_leaf=pb.GUEST_FLAGS | PCD)  # PAT2 = UC- by reset; WB x UC- = UC
    assert (out.memory_type, out.ept_memory_type, out.pat_memory_type, out.ignore_pat) == ("UC", "WB", "UC-", False)
    assert go().memory_type == "WB"
    assert go(data_leaf=7 | WT, guest_leaf=pb.GUEST_FLAGS | PWT).memory_type == "WT"  # WT x WT


def test_ipat_set_takes_the_ept_type() -> None:
    out = go(data_leaf=7 | WB | IPAT, guest_leaf=pb.GUEST_FLAGS | PCD)
    assert (out.memory_type, out.ignore_pat) == ("WB", True)
    assert go(data_leaf=7 | WC | IPAT).memory_type == "WC"


def test_cache_disable_gives_uc() -> None:
    assert go(state=PagingState(cr0=STATE.cr0 | CD, cr3=STATE.cr3, cr4=STATE.cr4, efer=STATE.efer)).memory_type == "UC"
    assert effective_memory_type(CD, 7 | WB | IPAT, "WB") == "UC"
    assert effective_memory_type(0, 7 | WB | IPAT, "UC") == "WB"


def test_guest_pat_value_selects_the_type() -> None:
    pat = GUEST.pat.reset & ~(0xFF << 32) | (4 << 32)  # PAT4 = WT
    state = PagingState(cr0=STATE.cr0, cr3=STATE.cr3, cr4=STATE.cr4, efer=STATE.efer, pat=pat)
    assert go(guest_leaf=pb.GUEST_FLAGS | PAT_PTE, state=state).memory_type == "WT"
    assert go(guest_leaf=pb.GUEST_FLAGS, state=state).memory_type == "WB"


def test_large_guest_page_takes_pat_from_bit_12() -> None:
    mem = pb.guest_4level(PhysicalMemory(), through_ept=True)
    pde = pb.HOST_OFFSET + pb.G_PD + ((pb.LA >> 21) & 511) * 8
    mem = mem.write_int(HostPhysAddr(pde), 8, 0x20_0000 | 0xA7 | PAT_LARGE | PCD)  # PAT6 = UC-
    mem = pb.ept_map(pb.full_ept(mem), 0x20_0000 + (pb.LA & 0x1F_F000))
    out = walk2d.translate(STATE, F, mem, pb.LA, Access(AccessKind.READ), ept=pb.ept())
    assert isinstance(out, Translated) and out.pat_memory_type == "UC-" and out.memory_type == "UC"


def test_guest_physical_access_uses_the_ept_type() -> None:
    out = translate_gpa(pb.ept(), pb.full_ept(PhysicalMemory(), data_leaf=7 | WT), pb.DATA_GPA, AccessKind.READ)
    assert isinstance(out, Translated) and out.memory_type == "WT" and out.pat_memory_type == "WB"


def test_paging_structure_references_have_their_memory_types() -> None:
    table_leaf = 7 | WT
    mem = pb.full_ept(pb.guest_4level(PhysicalMemory(), through_ept=True, upper=pb.GUEST_FLAGS | PCD),
                      leaf=table_leaf, data_leaf=7 | WB)
    state = PagingState(cr0=STATE.cr0, cr3=STATE.cr3 | PWT, cr4=STATE.cr4, efer=STATE.efer)
    out: Outcome = walk2d.translate(state, F, mem, pb.LA, Access(AccessKind.READ), ept=pb.ept())
    types = walk2d.reference_memory_types(out.references, state, pb.ept())
    ept_types = {t for r, t in zip(out.references, types, strict=True) if r.space is Space.EPT}
    assert ept_types == {structure_memory_type(pb.ept(), state.cr0)} == {"WB"}
    guest_types = [t for r, t in zip(out.references, types, strict=True) if r.space is Space.GUEST]
    # the PML4 through CR3 (PWT: PAT1 = WT), the rest through entries with PCD (PAT2 = UC-): WT x UC- = UC
    assert guest_types == ["WT", "UC", "UC", "UC"]
    assert structure_memory_type(pb.ept(), CD) == "UC"
