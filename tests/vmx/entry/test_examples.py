"""The search for failing examples of the VM-entry checks (vtx.vmx.entry.examples): every example it
produces fails with exactly its check (or, when it lists others, its check decides the outcome), and
every check without one says why."""

from __future__ import annotations

import pytest

from vtx import spec
from vtx.vmx.entry import REGISTRY, EntryContext, evaluate_vm_entry, gates
from vtx.vmx.entry.catalogue import ENTRY_CHECKS
from vtx.vmx.entry.examples import (
    BUDGET,
    CONTEXTS,
    SEARCHED_PROCESSOR_TERMS,
    Change,
    Example,
    ExampleFinder,
    NoExample,
    apply,
    candidates,
    decides,
    merged,
    nearest,
)
from vtx.vmx.instructions import BASIC_CHECKS
from vtx.vmx.templates import TEMPLATES

FEWEST_EXAMPLES = 175
"""The search found 176 examples when this test was written; fewer is a regression."""


@pytest.fixture(scope="module")
def finder() -> ExampleFinder:
    return ExampleFinder()


@pytest.fixture(scope="module")
def answers(finder: ExampleFinder) -> dict[str, Example | NoExample]:
    return {row.id: finder.example(row.id) for row in ENTRY_CHECKS}


def test_candidates_are_distinct_and_exclude_the_current_value() -> None:
    values = list(candidates(0b0110, 4))
    assert values == [0, 0b1111, 0b0001, 0b0010, 0b0100, 0b1000, 0b0111, 0b1110]
    assert 0b0110 not in values
    assert list(candidates(0, 1)) == [1]


def test_nearest_values_change_the_fewest_bits_first() -> None:
    values = nearest(0b0110, 4)
    assert sorted(values) == sorted(candidates(0b0110, 4))
    assert [(v ^ 0b0110).bit_count() for v in values] == [1, 1, 1, 1, 2, 2, 3, 3]
    assert values == [0b0010, 0b0100, 0b0111, 0b1110, 0b0000, 0b1111, 0b0001, 0b1000]


def test_merged_keeps_one_change_per_field_and_drops_round_trips() -> None:
    a, b = spec.VMCS_FIELDS["GUEST_RIP"], spec.VMCS_FIELDS["GUEST_RSP"]
    changes = (Change(a, 1, 2), Change(b, 0, 5), Change(a, 2, 3), Change(b, 5, 0))
    assert merged(changes) == (Change(a, 1, 3),)


def test_every_base_passes_every_check(finder: ExampleFinder) -> None:
    assert [b.template for b in finder.bases[:len(TEMPLATES)]] == list(TEMPLATES)
    assert finder.bases[-1].features
    for base in finder.bases:
        assert evaluate_vm_entry(base.vmcs, finder.caps, base.context).succeeds, base.label


def test_other_contexts_only_break_the_checks_that_read_them(finder: ExampleFinder) -> None:
    for starts in finder.starts[1:]:
        for base, _ in starts:
            verdict = evaluate_vm_entry(base.vmcs, finder.caps, base.context)
            assert all(SEARCHED_PROCESSOR_TERMS & set(v.check.processor) for v in verdict.violations), base.label


def test_every_example_fails_with_its_check(answers: dict[str, Example | NoExample], finder: ExampleFinder) -> None:
    examples = [a for a in answers.values() if isinstance(a, Example)]
    assert len(examples) >= FEWEST_EXAMPLES
    for ex in examples:
        verdict = evaluate_vm_entry(ex.vmcs, ex.base.caps, ex.base.context)
        found = [v.check_id for v in verdict.violations]
        assert decides(verdict, ex.check_id), (ex.check_id, found)
        assert set(found) == {ex.check_id, *ex.others}, (ex.check_id, found)
        assert ex.message == next(v.message for v in verdict.violations if v.check_id == ex.check_id)
        assert ex.outcome == verdict.outcome
        assert all(c.after != c.before for c in ex.changes)
        assert len({c.field.name for c in ex.changes}) == len(ex.changes)


def test_most_examples_are_exact(answers: dict[str, Example | NoExample]) -> None:
    examples = [a for a in answers.values() if isinstance(a, Example)]
    assert sum(ex.exact for ex in examples) >= len(examples) - 8


def test_every_check_without_an_example_says_why(answers: dict[str, Example | NoExample]) -> None:
    for check_id, answer in answers.items():
        if isinstance(answer, NoExample):
            assert answer.check_id == check_id and len(answer.reason) > 20


def test_basic_checks_are_pseudocode_branches(answers: dict[str, Example | NoExample]) -> None:
    for check_id in BASIC_CHECKS:
        answer = answers[check_id]
        assert isinstance(answer, NoExample)
        assert "pseudocode" in answer.reason and BASIC_CHECKS[check_id].split(":")[0] in answer.reason


def test_rules_of_smm_say_they_read_processor_state(answers: dict[str, Example | NoExample]) -> None:
    answer = answers["smm.executive_vmcs.alignment"]
    assert isinstance(answer, NoExample) and "in_smm" in answer.reason


def test_a_gated_check_is_enabled_first(answers: dict[str, Example | NoExample]) -> None:
    """'use I/O bitmaps' is 0 in every template: the example sets it, then misaligns a bitmap."""
    ex = answers["controls.io_bitmaps.alignment"]
    assert isinstance(ex, Example) and ex.exact and len(ex.changes) >= 2
    assert all(g.holds(ex.vmcs) for g in gates(ENTRY_CHECKS[ex.check_id]))
    assert ex.changes[-1].field.name in ("IO_BITMAP_A", "IO_BITMAP_B")


def test_a_precondition_makes_the_rule_apply(answers: dict[str, Example | NoExample], finder: ExampleFinder) -> None:
    """An MSR-store area is checked only when its count is not 0: the example sets the count first,
    and the VMCS with only that change passes."""
    ex = answers["controls.exit.msr_store.alignment"]
    assert isinstance(ex, Example) and ex.exact
    names = [c.field.name for c in ex.changes]
    assert names == ["VM_EXIT_MSR_STORE_COUNT", "VM_EXIT_MSR_STORE_ADDR"]
    assert evaluate_vm_entry(apply(ex.base.vmcs, ex.changes[:1]), finder.caps).succeeds


def test_a_32_bit_host_is_entered_from_a_vmm_outside_ia32e_mode(answers: dict[str, Example | NoExample]) -> None:
    ex = answers["host.selectors.ss_nonnull"]
    assert isinstance(ex, Example)
    assert ex.base.context == CONTEXTS[1][1] == EntryContext(vmm_ia32e_mode=False)


def test_a_check_of_a_missing_capability_is_shown_on_a_processor_without_it(
        answers: dict[str, Example | NoExample]) -> None:
    """Bit 4 of the interruptibility state (blocking by enclave) needs SGX, which max has."""
    ex = answers["guest.interruptibility.enclave_needs_sgx"]
    assert isinstance(ex, Example) and ex.exact and ex.base.caps.name != "max"
    assert ex.base.caps.facts.get("CPUID_SGX") in (0, False)


def test_every_registered_check_is_searched(answers: dict[str, Example | NoExample]) -> None:
    assert set(answers) == {row.id for row in ENTRY_CHECKS} and set(REGISTRY) <= set(answers)
    searched = [a for a in answers.values() if isinstance(a, NoExample) and "evaluations tried" in a.reason]
    tried = [int(a.reason.rsplit("(", 1)[1].split()[0]) for a in searched]
    assert all(0 < n <= len(CONTEXTS) * BUDGET for n in tried)
