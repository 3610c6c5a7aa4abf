"""The build-time search for failing examples of the VM-entry checks (docs/_ext/vtxdocs_examples.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from vtx.vmx.entry import evaluate_vm_entry
from vtx.vmx.templates import TEMPLATES

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "docs" / "_ext"))

from vtxdocs_examples import ExampleFinder, candidates


@pytest.fixture(scope="module")
def finder() -> ExampleFinder:
    return ExampleFinder()


def test_candidates_are_distinct_and_exclude_the_current_value() -> None:
    values = list(candidates(0b0110, 4))
    assert values == [0, 0b1111, 0b0001, 0b0010, 0b0100, 0b1000, 0b0111, 0b1110]
    assert len(set(values)) == len(values)
    assert 0b0110 not in values
    assert list(candidates(0, 1)) == [1]


def test_every_base_passes_every_check(finder: ExampleFinder) -> None:
    assert [b.template for b in finder.bases[:len(TEMPLATES)]] == list(TEMPLATES)
    assert finder.bases[-1].features
    for base in finder.bases:
        verdict = evaluate_vm_entry(base.vmcs, finder.caps)
        assert verdict.succeeds, (base.label, verdict.violations)


@pytest.mark.parametrize(("check_id", "field"), [
    ("guest.cr0.fixed_bits", "GUEST_CR0"),
    ("host.cr0.fixed_bits", "HOST_CR0"),
    ("controls.pin_based.reserved_bits", "PIN_BASED_VM_EXEC_CONTROL"),
])
def test_example_changes_one_field_and_fails_only_that_check(finder: ExampleFinder, check_id: str,
                                                             field: str) -> None:
    ex = finder.example(check_id)
    assert ex is not None
    assert ex.field.name == field and ex.value != ex.before == ex.base.vmcs.get(ex.field)
    verdict = evaluate_vm_entry(ex.base.vmcs.set(ex.field, ex.value), finder.caps)
    assert [v.check_id for v in verdict.violations] == [check_id]
    assert verdict.violations[0].message == ex.message and ex.others == ()
    assert verdict.outcome == ex.outcome


@pytest.mark.parametrize("check_id", ["basic.cpl", "basic.vmlaunch_clear"])
def test_checks_of_processor_state_have_no_single_field_example(finder: ExampleFinder, check_id: str) -> None:
    assert finder.example(check_id) is None
