"""The seeded-bug catalogue of :mod:`vtx.invariants.mutations`: every bug is caught by at least one
check, every check passes the correct design, and z3 refutes (with a replayed counterexample)
every bug its proofs cover."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vtx.invariants import check_all
from vtx.invariants import mutations as mu
from vtx.machine.executor import run


@pytest.fixture(scope="module")
def report() -> mu.MutationReport:
    return mu.mutation_score()


def test_the_catalogue_has_at_least_twelve_documented_bugs() -> None:
    names = [m.name for m in mu.MUTATIONS]
    assert len(names) >= 12 and len(set(names)) == len(names)
    for m in mu.MUTATIONS:
        assert len(m.bug) > 40, m.name
        assert m.checks and set(m.checks) <= set(mu.CHECKS), m.name
        assert (m.mutate is None) == (m.checks[0] != "invariants"), m.name


def test_the_issue_s_named_bugs_are_seeded() -> None:
    names = {m.name for m in mu.MUTATIONS}
    assert {"overlapping_ept", "ept_leaf_maps_ept_table", "large_page_spills", "writable_vmcs_mapping",
            "shared_vpid_without_ept", "shared_asid_amd", "io_bitmap_zeroed", "msr_bitmap_passes_apic_base",
            "missed_invept", "snapshot_omits_field", "ept_maps_msr_bitmap"} <= names


def test_every_machine_mutation_changes_the_machine() -> None:
    for m in mu.MUTATIONS:
        if m.mutate is not None:
            base = mu.base_machine(m.design)
            assert m.mutate(base) != base, m.name


def test_the_mutation_score_is_100_percent(report: mu.MutationReport) -> None:
    missed = [o.mutation.name for o in report.outcomes if not o.caught_by]
    assert missed == [] and report.score == 1.0


def test_no_check_flags_the_correct_design(report: mu.MutationReport) -> None:
    alarms = {o.mutation.name: o.false_alarms for o in report.outcomes if o.false_alarms}
    assert alarms == {}


def test_z3_refutes_every_bug_it_covers_with_a_replayed_counterexample(report: mu.MutationReport) -> None:
    refuted, covered = report.z3_score
    assert covered >= 12 and refuted == covered
    for o in report.outcomes:
        if o.z3 == "yes":
            z3 = next(r for r in o.mutant if r.check == "z3")
            assert any("refuted, replayed" in f for f in z3.findings)


def test_the_adversarial_guest_escapes_on_the_memory_bugs(report: mu.MutationReport) -> None:
    """The hostile guest's own accesses leave the partition wherever a leaf it reaches does."""
    by_name = {o.mutation.name: o for o in report.outcomes}
    for name in ("overlapping_ept", "large_page_spills", "writable_vmcs_mapping", "ept_maps_msr_bitmap",
                 "io_bitmap_zeroed", "msr_bitmap_passes_apic_base"):
        assert "adversarial" in by_name[name].caught_by, name


def test_the_results_file_is_written_atomically_and_reads_back(report: mu.MutationReport, tmp_path: Path) -> None:
    path = tmp_path / "mutations.json"
    mu.write_results(report, path)
    data = json.loads(path.read_text())
    assert data["score"] == 1.0 and data["mutations"] == len(mu.MUTATIONS)
    assert [o["mutation"] for o in data["outcomes"]] == [m.name for m in mu.MUTATIONS]
    assert not list(tmp_path.glob("*.tmp*"))


def test_the_tlb_bug_needs_the_missing_invept() -> None:
    case = mu._tlb_case(mu.base_machine("hosted"))
    reached, current = mu.remap_page(case, invept=False)
    assert reached - current  # the stale page
    assert mu.remap_page(case, invept=True)[0] == current


def test_distinct_asids_do_not_conflict() -> None:
    assert mu.asid_tags((1, 2, 3)) == []
    assert len(mu.asid_tags((1, 1, 2))) == 1


def test_the_base_machine_keeps_every_invariant_while_running() -> None:
    for design in ("hosted", "bare_metal", "hybrid"):
        machine, trace = run(mu.base_machine(design), 200)
        assert check_all(machine, trace) == ()
