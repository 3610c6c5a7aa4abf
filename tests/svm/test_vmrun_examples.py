"""The search for failing examples of the VMRUN checks (vtx.svm.examples): every example fails with
exactly its check, and every check without one says why."""

from __future__ import annotations

import pytest

from vtx.svm.checks import SvmState
from vtx.svm.examples import STATE_REGISTERS, SvmExample, SvmExampleFinder, SvmFound, SvmNoExample
from vtx.svm.spec import PROCESSOR_TERMS, VMRUN_CHECKS
from vtx.svm.vmcb import Vmcb
from vtx.svm.vmrun import vmrun
from vtx.vmx.capabilities import load_preset

FEWEST_EXAMPLES = 24
"""The search found 24 examples when this test was written; fewer is a regression."""


@pytest.fixture(scope="module")
def finder() -> SvmExampleFinder:
    return SvmExampleFinder()


@pytest.fixture(scope="module")
def answers(finder: SvmExampleFinder) -> dict[str, SvmFound]:
    return {row.id: finder.example(row.id) for row in VMRUN_CHECKS}


def replay(finder: SvmExampleFinder, ex: SvmExample) -> tuple[SvmState, Vmcb]:
    """The processor state and VMCB of an example, each change applied to the value it says it changes."""
    state, vmcb = SvmState(), finder.templates[ex.template]
    for c in ex.changes:
        if c.name.startswith("host "):
            register = c.name.removeprefix("host ")
            assert state.register(register) == c.before
            state = state.with_registers(**{register: c.after})
        else:
            assert vmcb[c.name] == c.before
            vmcb = vmcb.with_fields({c.name: c.after})
    return state, vmcb


def test_the_state_registers_are_processor_terms() -> None:
    assert set(STATE_REGISTERS) < set(PROCESSOR_TERMS)


def test_every_template_enters(finder: SvmExampleFinder) -> None:
    for name, vmcb in finder.templates.items():
        assert vmrun(SvmState(), finder.caps, vmcb).succeeds, name


def test_every_example_fails_with_exactly_its_check(answers: dict[str, SvmFound], finder: SvmExampleFinder) -> None:
    examples = [a for a in answers.values() if isinstance(a, SvmExample)]
    assert len(examples) >= FEWEST_EXAMPLES
    for ex in examples:
        state, vmcb = replay(finder, ex)
        result = vmrun(state, load_preset(ex.preset), vmcb)
        assert [v.check_id for v in result.violations] == [ex.check_id] * len(result.violations) != []
        assert result.violations[0].message == ex.message and result.outcome == ex.outcome


def test_every_check_without_an_example_says_why(answers: dict[str, SvmFound]) -> None:
    missing = {k: a for k, a in answers.items() if isinstance(a, SvmNoExample)}
    assert all(len(a.reason) > 20 for a in missing.values())
    assert "nested virtualization" in missing["instruction.intercepted"].reason


def test_an_instruction_check_changes_a_host_register(answers: dict[str, SvmFound]) -> None:
    ex = answers["instruction.cpl"]
    assert isinstance(ex, SvmExample)
    assert [c.name for c in ex.changes] == ["host cpl"] and str(ex.outcome) == "#GP(0)"


def test_a_capability_check_fails_under_a_preset_without_the_capability(answers: dict[str, SvmFound]) -> None:
    ex = answers["instruction.svm_supported"]
    assert isinstance(ex, SvmExample) and ex.changes == () and str(ex.outcome) == "#UD"
    assert load_preset(ex.preset).facts.get("CPUID_SVM") in (0, False)
