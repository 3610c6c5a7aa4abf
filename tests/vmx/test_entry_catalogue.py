"""The VM-entry check catalogue and the registry of implementations."""

from __future__ import annotations

import collections

from vtx import spec
from vtx.vmx.entry import FAILURE_ORDER, REGISTRY
from vtx.vmx.entry.catalogue import ENTRY_CHECKS
from vtx.vmx.instructions import BASIC_CHECKS


def test_catalogue_rows_are_well_formed() -> None:
    assert len(ENTRY_CHECKS) >= 198  # the researched checklist's rule count; the catalogue splits some
    for row in ENTRY_CHECKS:
        assert row.statement and row.citation.title
        assert row.fields or row.processor or row.failure in ("ud", "gp", "vmfail_invalid")
        if row.failure == "exit_33":
            assert row.qualification in (0, 2, 3, 4)
        if row.citation.document is spec.SDM:
            assert row.citation.section.startswith(("28.", "32.", "33."))


def test_every_registered_check_implements_a_catalogue_row_of_a_check_failure() -> None:
    for check_id, registered in REGISTRY.items():
        assert ENTRY_CHECKS[check_id] is registered.spec
        assert registered.spec.failure in FAILURE_ORDER


def test_pdpte_and_link_pointer_rows_carry_their_qualifications() -> None:
    by_group = collections.defaultdict(set)
    for row in ENTRY_CHECKS:
        by_group[row.group].add(row.qualification)
    assert by_group["guest_pdptes"] == {2}
    assert 4 in by_group["guest_non_register"]


def test_every_catalogue_row_is_implemented_once() -> None:
    """Each row is either a registered check or a basic check of the VMLAUNCH / VMRESUME
    pseudocode (vtx.vmx.instructions.BASIC_CHECKS), never both, never neither."""
    registered, basic = set(REGISTRY), set(BASIC_CHECKS)
    assert not registered & basic
    assert registered | basic == set(ENTRY_CHECKS.keys())
