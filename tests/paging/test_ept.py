"""EPT: EPTP validity, every misconfiguration condition and every exit-qualification bit, each
with a case that sets it and one that does not; EPT accessed and dirty flags."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import paging_builders as pb
import pytest

from vtx.errors import InputError
from vtx.paging import walk2d
from vtx.paging.ept import EPT, LinearInfo, eptp_problems, translate_gpa, walk_ept
from vtx.paging.formats import EPT_VIOLATION_QUALIFICATION
from vtx.paging.guest import Access, AccessKind, PagingFeatures, PagingState
from vtx.paging.memory import HostPhysAddr, PhysicalMemory
from vtx.paging.outcomes import EptMisconfig, EptViolation, Outcome, Reference, Translated

WB = 6 << 3
UX = 1 << 10
STATE = PagingState(cr0=0x80010011, cr3=pb.G_PML4, cr4=0x20, efer=0xD00)
FEATURES = PagingFeatures(46, True)


def run(*, data_leaf: int = 7 | WB, table_leaf: int = 7 | WB, guest_leaf: int = pb.GUEST_FLAGS,
        kind: AccessKind = AccessKind.READ, user: bool = False, nmi: bool = False, ad: bool = False,
        mbec: bool = False, sss: bool = False, state: PagingState = STATE, ss: bool = False,
        asynchronous: bool = False, upper_ept: int = 7, tertiary: int = 0, **cap: bool) -> Outcome:
    mem = pb.guest_4level(PhysicalMemory(), through_ept=True, leaf=guest_leaf)
    mem = pb.full_ept(mem, leaf=table_leaf, data_leaf=data_leaf, upper=upper_ept | (UX if mbec else 0))
    e = pb.ept(ad=ad, mbec=mbec, sss=sss, c=pb.caps(**cap), tertiary=tertiary)
    access = Access(kind, user=user, nmi_unblocking=nmi, shadow_stack=ss, asynchronous=asynchronous)
    return walk2d.translate(state, FEATURES, mem, pb.LA, access, ept=e)


def qual(out: Outcome) -> int:
    assert isinstance(out, EptViolation), out
    return out.qualification


# ------------------------------------------------------------------ EPTP


@pytest.mark.parametrize(("rule", "bad", "good", "cap"), [
    ("eptp.memory_type", pb.EPT_ROOT | 0x18 | 1, pb.EPT_ROOT | 0x18 | 6, {}),
    ("eptp.memory_type", pb.EPT_ROOT | 0x18 | 0, pb.EPT_ROOT | 0x18 | 6, {"memtype_uc": False}),
    ("eptp.walk_length", pb.EPT_ROOT | 0x10 | 6, pb.EPT_ROOT | 0x18 | 6, {}),
    ("eptp.walk_length", pb.EPT_ROOT | 0x20 | 6, pb.EPT_ROOT | 0x18 | 6, {"page_walk_5": False}),
    ("eptp.accessed_dirty", pb.EPT_ROOT | 0x58 | 6, pb.EPT_ROOT | 0x18 | 6, {"accessed_dirty": False}),
    ("eptp.supervisor_shadow_stack", pb.EPT_ROOT | 0x98 | 6, pb.EPT_ROOT | 0x18 | 6,
     {"supervisor_shadow_stack": False}),
    ("eptp.reserved_bits", pb.EPT_ROOT | 0x100 | 0x18 | 6, pb.EPT_ROOT | 0x18 | 6, {}),
    ("eptp.reserved_bits", (1 << 50) | 0x18 | 6, (1 << 45) | 0x18 | 6, {}),
])
def test_eptp_check_rejects_and_accepts(rule: str, bad: int, good: int, cap: dict[str, bool]) -> None:
    c = pb.caps(**cap).overlay({"MAXPHYADDR": 46})
    assert rule in [r.id for r, _ in eptp_problems(bad, c)]
    assert eptp_problems(good, c) == []


def test_every_eptp_check_is_catalogued_and_tested() -> None:
    tested = {"eptp.memory_type", "eptp.walk_length", "eptp.accessed_dirty", "eptp.supervisor_shadow_stack",
              "eptp.reserved_bits"}
    assert set(EPT.eptp_checks.keys()) == tested


def test_invalid_eptp_is_bad_input_naming_the_rule() -> None:
    with pytest.raises(InputError, match=r"eptp\.walk_length"):
        pb.ept_from_eptp(pb.EPT_ROOT | 6, pb.caps())


def test_ep4ta_is_eptp_bits_51_to_12() -> None:
    e = pb.ept(ad=True)
    assert e.ep4ta == pb.EPT_ROOT and e.eptp != e.ep4ta


# ------------------------------------------------------------------ misconfigurations


def _walk(entry_at: int, value: int, **cap: bool) -> str | None:
    """The misconfiguration (if any) of walking gpa 0 with the entry at depth ``entry_at``
    replaced by ``value`` (other entries valid)."""
    mem = pb.ept_map(PhysicalMemory(), 0)
    addr = {4: pb.EPT_ROOT, 3: pb.EPT_ROOT + 0x1000, 2: pb.EPT_ROOT + 0x2000, 1: pb.EPT_ROOT + 0x3000}[entry_at]
    mem = mem.write_int(HostPhysAddr(addr), 8, value)
    maxphy = cap.pop("maxphy", 46)
    c = pb.caps(**cap).overlay({"MAXPHYADDR": maxphy})
    w = walk_ept(pb.ept_from_eptp(pb.eptp(), c), mem, 0, [])
    return getattr(w, "misconfiguration", None)


NEXT = {4: pb.EPT_ROOT + 0x1000, 3: pb.EPT_ROOT + 0x2000, 2: pb.EPT_ROOT + 0x3000, 1: pb.HOST_OFFSET}

MISCONFIGS: list[tuple[str, int, int, int, dict[str, Any]]] = [
    ("ept.write_without_read", 1, NEXT[1] | 2 | WB, NEXT[1] | 3 | WB, {}),
    ("ept.write_without_read", 4, NEXT[4] | 6, NEXT[4] | 7, {}),
    ("ept.execute_only_unsupported", 1, NEXT[1] | 4 | WB, NEXT[1] | 5 | WB, {"execute_only": False}),
    ("ept.reserved_bit", 4, NEXT[4] | 7 | (1 << 3), NEXT[4] | 7, {}),
    ("ept.reserved_bit", 2, 0x20_0000 | 0x80 | 7 | WB | (1 << 12), 0x20_0000 | 0x80 | 7 | WB, {}),
    ("ept.reserved_bit", 3, 0x4000_0000 | 0x80 | 7 | WB | (1 << 29), 0x4000_0000 | 0x80 | 7 | WB, {}),
    ("ept.page_size_unsupported", 2, 0x20_0000 | 0x80 | 7 | WB, NEXT[2] | 7, {"pde_2mb": False}),
    ("ept.page_size_unsupported", 3, 0x4000_0000 | 0x80 | 7 | WB, NEXT[3] | 7, {"pdpte_1gb": False}),
    ("ept.page_size_unsupported", 4, NEXT[4] | 0x80 | 7, NEXT[4] | 7, {}),
    ("ept.address_beyond_maxphyaddr", 1, (1 << 40) | 7 | WB, (1 << 38) | 7 | WB, {"maxphy": 39}),
    ("ept.address_beyond_maxphyaddr", 3, (1 << 45) | 7, NEXT[3] | 7, {"maxphy": 45}),
    ("ept.memory_type_reserved", 1, NEXT[1] | 7 | (2 << 3), NEXT[1] | 7 | (0 << 3), {}),
    ("ept.memory_type_reserved", 1, NEXT[1] | 7 | (3 << 3), NEXT[1] | 7 | (1 << 3), {}),
    ("ept.memory_type_reserved", 2, 0x20_0000 | 0x80 | 7 | (7 << 3), 0x20_0000 | 0x80 | 7 | (5 << 3), {}),
]


@pytest.mark.parametrize(("rule", "depth", "bad", "good", "cap"), MISCONFIGS)
def test_misconfiguration_condition(rule: str, depth: int, bad: int, good: int, cap: dict[str, Any]) -> None:
    assert _walk(depth, bad, **dict(cap)) == rule
    assert _walk(depth, good, **dict(cap)) is None


def test_every_misconfiguration_rule_is_catalogued_and_tested() -> None:
    assert {m[0] for m in MISCONFIGS} == set(EPT.misconfigurations.keys())


def test_misconfiguration_exit_reports_the_gpa_and_not_a_qualification() -> None:
    out = run(data_leaf=2 | WB)
    assert isinstance(out, EptMisconfig) and out.gpa == pb.DATA_GPA + (pb.LA & 0xFFF)


def test_not_present_entry_is_a_violation_before_a_misconfiguration_below() -> None:
    # the PML4E is not present; whatever lies below is never read
    assert _walk(4, 0) is None
    mem = pb.ept_map(PhysicalMemory(), 0).write_int(HostPhysAddr(pb.EPT_ROOT), 8, 0)
    out = translate_gpa(pb.ept(), mem, 0, AccessKind.READ)
    assert isinstance(out, EptViolation) and len(out.references) == 1


def test_misconfiguration_takes_priority_over_a_permission_violation() -> None:
    # write to a page whose PTE is write-only: misconfiguration, not a violation
    assert isinstance(run(data_leaf=2 | WB, kind=AccessKind.WRITE), EptMisconfig)


# ------------------------------------------------------------------ exit qualification

NX_STATE = PagingState(cr0=0x80010011, cr3=pb.G_PML4, cr4=0x20, efer=0xD00)
XD_LEAF = pb.GUEST_FLAGS | (1 << 63)
QUAL_CASES: dict[str, tuple[Callable[[], Outcome], Callable[[], Outcome]]] = {
    "read": (lambda: run(data_leaf=4 | WB), lambda: run(data_leaf=5 | WB, kind=AccessKind.WRITE)),
    "write": (lambda: run(data_leaf=5 | WB, kind=AccessKind.WRITE), lambda: run(data_leaf=4 | WB)),
    "fetch": (lambda: run(data_leaf=3 | WB, kind=AccessKind.FETCH), lambda: run(data_leaf=4 | WB)),
    "readable": (lambda: run(data_leaf=1 | WB, kind=AccessKind.WRITE), lambda: run(data_leaf=4 | WB,
                                                                                  kind=AccessKind.WRITE)),
    "writable": (lambda: run(data_leaf=3 | WB, kind=AccessKind.FETCH), lambda: run(data_leaf=1 | WB,
                                                                                  kind=AccessKind.FETCH)),
    "executable": (lambda: run(data_leaf=5 | WB, kind=AccessKind.WRITE), lambda: run(data_leaf=1 | WB,
                                                                                    kind=AccessKind.WRITE)),
    "user_executable": (lambda: run(data_leaf=1 | (1 << 10) | WB, kind=AccessKind.WRITE, mbec=True),
                        lambda: run(data_leaf=1 | WB, kind=AccessKind.WRITE, mbec=True)),
    "gla_valid": (lambda: run(data_leaf=4 | WB),
                  lambda: translate_gpa(pb.ept(), pb.full_ept(PhysicalMemory(), data_leaf=4 | WB), pb.DATA_GPA,
                                        AccessKind.READ)),
    "final_translation": (lambda: run(data_leaf=4 | WB), lambda: run(table_leaf=4 | WB)),
    "user_mode_address": (lambda: run(data_leaf=4 | WB, user=True),
                          lambda: run(data_leaf=4 | WB, guest_leaf=pb.GUEST_FLAGS & ~4)),
    "read_write_page": (lambda: run(data_leaf=4 | WB), lambda: run(data_leaf=4 | WB, guest_leaf=pb.GUEST_FLAGS & ~2)),
    "execute_disable_page": (lambda: run(data_leaf=4 | WB, guest_leaf=XD_LEAF, state=NX_STATE),
                             lambda: run(data_leaf=4 | WB, guest_leaf=pb.GUEST_FLAGS, state=NX_STATE)),
    "nmi_unblocking": (lambda: run(data_leaf=4 | WB, nmi=True), lambda: run(data_leaf=4 | WB)),
    "supervisor_shadow_stack": (lambda: run(data_leaf=4 | WB | (1 << 60), sss=True),
                                lambda: run(data_leaf=4 | WB, sss=True)),
    "shadow_stack": (lambda: run(data_leaf=5 | WB, kind=AccessKind.WRITE, ss=True, guest_leaf=SS_PAGE),
                     lambda: run(data_leaf=5 | WB, kind=AccessKind.WRITE)),
    "asynchronous": (lambda: run(data_leaf=4 | WB, asynchronous=True), lambda: run(data_leaf=4 | WB)),
    "guest_paging_verification": (lambda: run(data_leaf=7 | WB | VGP, tertiary=pb.GUEST_PAGING_VERIFICATION),
                                  lambda: run(data_leaf=4 | WB | VGP, tertiary=pb.GUEST_PAGING_VERIFICATION)),
}
VGP, PW = 1 << 57, 1 << 58
SS_PAGE = 0x61
"""A supervisor shadow-stack page: P, A, D with R/W = 0 and U/S = 0 (SDM Vol. 3A §5.6.1)."""
NOT_MODELLED: set[str] = set()
"""Qualification bits vtx never sets (none)."""


@pytest.mark.parametrize("name", sorted(QUAL_CASES))
def test_qualification_bit_set_and_clear(name: str) -> None:
    bit = EPT_VIOLATION_QUALIFICATION[name].mask
    with_bit, without_bit = QUAL_CASES[name]
    assert qual(with_bit()) & bit
    assert not qual(without_bit()) & bit


def test_every_qualification_bit_is_tested_or_never_set() -> None:
    assert set(QUAL_CASES) | NOT_MODELLED == set(EPT_VIOLATION_QUALIFICATION.keys())
    every = 0
    for with_bit, without_bit in QUAL_CASES.values():
        every |= qual(with_bit()) | qual(without_bit())
    for name in NOT_MODELLED:
        assert not every & EPT_VIOLATION_QUALIFICATION[name].mask


def test_advanced_information_needs_the_capability() -> None:
    bits = sum(EPT_VIOLATION_QUALIFICATION[n].mask for n in ("user_mode_address", "read_write_page"))
    assert qual(run(data_leaf=4 | WB, user=True)) & bits == bits
    assert qual(run(data_leaf=4 | WB, user=True, advanced_exit_info=False)) & bits == 0


def test_paging_structure_access_with_ept_ad_sets_both_read_and_write() -> None:
    # the guest PT page is mapped read-only; with EPT A/D the walk's access is a write
    q = qual(run(table_leaf=1 | WB, ad=True))
    both = EPT_VIOLATION_QUALIFICATION["read"].mask | EPT_VIOLATION_QUALIFICATION["write"].mask
    assert q & both == both and not q & EPT_VIOLATION_QUALIFICATION["final_translation"].mask
    assert isinstance(run(table_leaf=1 | WB, ad=False), Translated)


def test_guest_ad_update_is_a_write_needing_ept_write_permission() -> None:
    # the guest PTE has A = 0: setting it writes the read-only guest page table
    out = run(table_leaf=1 | WB, guest_leaf=0x7)
    q = qual(out)
    assert q & EPT_VIOLATION_QUALIFICATION["write"].mask and not q & EPT_VIOLATION_QUALIFICATION["read"].mask
    assert isinstance(out, EptViolation) and out.gpa == pb.G_PT + ((pb.LA >> 12) & 511) * 8


def test_mode_based_execute_uses_bit_10_for_user_mode_addresses() -> None:
    user_only = 1 | (1 << 10) | WB
    assert isinstance(run(data_leaf=user_only, kind=AccessKind.FETCH, mbec=True), Translated)
    assert isinstance(run(data_leaf=user_only, kind=AccessKind.FETCH, mbec=True,
                          guest_leaf=pb.GUEST_FLAGS & ~4), EptViolation)
    assert isinstance(run(data_leaf=5 | WB, kind=AccessKind.FETCH, mbec=True), EptViolation)
    # without the control bit 10 is ignored
    assert isinstance(run(data_leaf=5 | WB, kind=AccessKind.FETCH), Translated)


# ------------------------------------------------------------------ accessed and dirty flags


def _ept_entries(out: Outcome) -> list[Reference]:
    return [r for r in out.references if r.space.value == "ept"]


def test_ept_ad_flags_set_only_when_enabled() -> None:
    for ad in (True, False):
        out = run(kind=AccessKind.WRITE, ad=ad)
        assert isinstance(out, Translated)
        values = [out.memory.read_int(HostPhysAddr(r.host_address), 8) for r in _ept_entries(out)]
        assert all(v & (1 << 8) for v in values) is ad
        leaf = values[-1]
        assert bool(leaf & (1 << 9)) is ad


def test_ept_dirty_flag_only_on_writes_and_guest_table_pages() -> None:
    out = run(kind=AccessKind.READ, ad=True)
    assert isinstance(out, Translated)
    data_pte = _ept_entries(out)[-1]
    table_pte = _ept_entries(out)[3]
    assert not out.memory.read_int(HostPhysAddr(data_pte.host_address), 8) & (1 << 9)
    # guest paging-structure accesses are writes with EPT A/D: their EPT PTE is dirty
    assert out.memory.read_int(HostPhysAddr(table_pte.host_address), 8) & (1 << 9)


def test_translate_gpa_without_linear_address() -> None:
    out = translate_gpa(pb.ept(), pb.full_ept(PhysicalMemory()), pb.DATA_GPA + 5, AccessKind.READ,
                        linear=LinearInfo(0x1005, final=True))
    assert isinstance(out, Translated) and out.hpa == pb.DATA_GPA + 5 + pb.HOST_OFFSET and out.gla == 0x1005
    assert out.memory_type == "WB" and out.ignore_pat is False


def test_gpa_beyond_a_4_level_walk_is_a_violation() -> None:
    out = translate_gpa(pb.ept(), pb.full_ept(PhysicalMemory()), 1 << 48, AccessKind.READ)
    assert isinstance(out, EptViolation) and out.references == ()


# ------------------------------------------------------------------ shadow-stack accesses and EPT


def test_supervisor_shadow_stack_control_lets_shadow_stack_writes_through_a_read_only_sss_page() -> None:
    sss_page = 1 | WB | (1 << 60)  # readable, not writable, supervisor shadow stack
    assert isinstance(run(data_leaf=sss_page, kind=AccessKind.WRITE, ss=True, guest_leaf=SS_PAGE, sss=True),
                      Translated)
    # without EPTP bit 7 a shadow-stack write is a data write: the page is not writable
    q = qual(run(data_leaf=sss_page, kind=AccessKind.WRITE, ss=True, guest_leaf=SS_PAGE))
    assert q & EPT_VIOLATION_QUALIFICATION["shadow_stack"].mask and q & EPT_VIOLATION_QUALIFICATION["write"].mask
    # without bit 60 in the entry that maps the page
    q = qual(run(data_leaf=3 | WB, kind=AccessKind.WRITE, ss=True, guest_leaf=SS_PAGE, sss=True))
    assert not q & EPT_VIOLATION_QUALIFICATION["supervisor_shadow_stack"].mask
    # an EPT entry above the one that maps the page must allow writes
    assert isinstance(run(data_leaf=sss_page, kind=AccessKind.WRITE, ss=True, guest_leaf=SS_PAGE, sss=True,
                          upper_ept=5), EptViolation)
    # a data write to the same page is not let through
    assert isinstance(run(data_leaf=sss_page, kind=AccessKind.WRITE, guest_leaf=pb.GUEST_FLAGS, sss=True),
                      EptViolation)


def test_user_shadow_stack_accesses_follow_the_data_rules_under_sss() -> None:
    user_ss_page = SS_PAGE | 4
    sss_page = 1 | WB | (1 << 60)
    assert isinstance(run(data_leaf=sss_page, kind=AccessKind.WRITE, ss=True, user=True, guest_leaf=user_ss_page,
                          sss=True), EptViolation)
    assert isinstance(run(data_leaf=3 | WB, kind=AccessKind.WRITE, ss=True, user=True, guest_leaf=user_ss_page,
                          sss=True), Translated)


def test_shadow_stack_bit_is_for_the_access_not_the_guest_walk() -> None:
    # the guest PT page is not readable: the violation is on a paging-structure read
    q = qual(run(table_leaf=4 | WB, kind=AccessKind.WRITE, ss=True, guest_leaf=SS_PAGE))
    assert not q & EPT_VIOLATION_QUALIFICATION["shadow_stack"].mask
    assert not q & EPT_VIOLATION_QUALIFICATION["final_translation"].mask


def test_asynchronous_bit_also_for_guest_paging_structure_accesses() -> None:
    q = qual(run(table_leaf=4 | WB, asynchronous=True))
    assert q & EPT_VIOLATION_QUALIFICATION["asynchronous"].mask
    out = translate_gpa(pb.ept(), pb.full_ept(PhysicalMemory(), data_leaf=4 | WB), pb.DATA_GPA, AccessKind.READ,
                        asynchronous=True)
    assert qual(out) & EPT_VIOLATION_QUALIFICATION["asynchronous"].mask


# ------------------------------------------------------------------ EPT paging-write control, guest-paging verification


def test_guest_paging_verification_needs_paging_write_access_on_every_guest_table_page() -> None:
    gpv = pb.GUEST_PAGING_VERIFICATION
    out = run(data_leaf=7 | WB | VGP, tertiary=gpv)
    q = qual(out)
    assert q & EPT_VIOLATION_QUALIFICATION["final_translation"].mask and q & EPT_VIOLATION_QUALIFICATION["read"].mask
    assert isinstance(out, EptViolation) and out.gpa == pb.DATA_GPA + (pb.LA & 0xFFF)
    assert isinstance(run(data_leaf=7 | WB | VGP, table_leaf=7 | WB | PW, tertiary=gpv), Translated)
    assert isinstance(run(data_leaf=7 | WB | VGP), Translated)  # the control is 0: bit 57 is ignored
    assert isinstance(run(data_leaf=7 | WB, tertiary=gpv), Translated)  # the page does not ask for verification


def test_paging_write_control_lets_guest_ad_updates_through_read_only_tables() -> None:
    # the guest PTE has A = 0: setting it writes a guest table whose EPT page is read-only
    assert isinstance(run(table_leaf=1 | WB | PW, guest_leaf=0x7), EptViolation)
    assert isinstance(run(table_leaf=1 | WB | PW, guest_leaf=0x7, tertiary=pb.PAGING_WRITE), Translated)
    assert isinstance(run(table_leaf=1 | WB, guest_leaf=0x7, tertiary=pb.PAGING_WRITE), EptViolation)
    # with EPT A/D flags every guest paging-structure access is a write: PW lets it through too
    assert isinstance(run(table_leaf=1 | WB | PW, ad=True, tertiary=pb.PAGING_WRITE), Translated)
    assert isinstance(run(table_leaf=1 | WB | PW, ad=True), EptViolation)
