"""Proof results and the query runner: one z3 query per named conjunct, with a timeout; ``unknown``
counts as failure; a satisfiable negated conjunct is narrowed to its smallest satisfiable case."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import z3

from vtx.typecheck import checked

TIMEOUT_MS = 60_000
"""Per-query z3 timeout."""


@attrs.frozen
class ProofResult:
    """The verdict on one invariant for one design: ``proved`` (every conjunct's negation is
    unsat), ``refuted`` (``counterexample`` says where, ``replayed`` whether the concrete
    executor / walker confirmed it) or ``unknown`` (timeout or incomplete encoding);
    ``non_vacuous``: every conjunct's hypotheses are satisfiable (some address does translate,
    some port does exit, ...)."""

    invariant: str
    design: str
    verdict: str
    seconds: float
    counterexample: str | None = None
    replayed: bool = False
    non_vacuous: bool = False
    conjuncts: int = 0

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class Case:
    """One way a conjunct can fail: a name and the z3 formula of that failure."""

    name: str
    formula: Any


@attrs.frozen
class Conjunct:
    """A named proof obligation: it holds iff every case is unsat. ``witness`` is satisfiable iff
    the hypotheses are not vacuous; ``explain`` turns a model of a failing case into a readable
    counterexample and says whether a concrete replay confirmed it."""

    name: str
    cases: tuple[Case, ...]
    witness: Any
    explain: Callable[[Case, Any], tuple[str, bool]]
    failure: Any = None
    """The disjunction of the cases, if a smaller equivalent formula is at hand."""


@attrs.frozen
class Outcome:
    verdict: str
    counterexample: str | None
    replayed: bool
    non_vacuous: bool


def _check(formula: Any, timeout_ms: int) -> tuple[Any, Any]:
    solver = z3.Then("simplify", "solve-eqs", "smt").solver()
    solver.set("timeout", timeout_ms)
    solver.add(formula)
    result = solver.check()
    return result, solver.model() if result == z3.sat else solver.reason_unknown()


def prove_conjunct(c: Conjunct, timeout_ms: int = TIMEOUT_MS) -> Outcome:
    """Prove ``c``: first all its cases at once, then, if that is satisfiable, each case alone
    (in the order given: narrowest first) to report the smallest failing one."""
    witness, _ = _check(c.witness, timeout_ms)
    non_vacuous = witness == z3.sat
    failure = c.failure if c.failure is not None else z3.Or([case.formula for case in c.cases])
    result, info = _check(failure if c.cases else z3.BoolVal(False), timeout_ms)
    if result == z3.unsat:
        return Outcome("proved", None, False, non_vacuous)
    if result == z3.unknown:
        return Outcome("unknown", f"{c.name}: z3 unknown ({info})", False, non_vacuous)
    for case in c.cases:
        r, model = _check(case.formula, timeout_ms)
        if r == z3.sat:
            text, replayed = c.explain(case, model)
            return Outcome("refuted", f"{c.name} [{case.name}]: {text}", replayed, non_vacuous)
    text, replayed = c.explain(c.cases[0], info)
    return Outcome("refuted", f"{c.name}: {text}", replayed, non_vacuous)


@checked
def prove_all(invariant: str, design: str, conjuncts: Sequence[Conjunct], timeout_ms: int = TIMEOUT_MS) -> ProofResult:
    """The verdict on ``invariant``: the first conjunct that is refuted or unknown decides it."""
    start = time.perf_counter()
    non_vacuous = True
    for c in conjuncts:
        out = prove_conjunct(c, timeout_ms)
        non_vacuous = non_vacuous and out.non_vacuous
        if out.verdict != "proved":
            return ProofResult(invariant, design, out.verdict, time.perf_counter() - start, out.counterexample,
                               out.replayed, out.non_vacuous, len(conjuncts))
    return ProofResult(invariant, design, "proved", time.perf_counter() - start, None, False,
                       non_vacuous and bool(conjuncts), len(conjuncts))
