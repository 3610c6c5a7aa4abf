"""Inductive steps: for each exit-handler action of a design, the invariants hold after handling
if they held before, for a VM of any size at any host placement (the proof is symbolic in the
VM's backing base and size, the guest-physical address and the whole EPT).

The abstract state is Hyperkernel's shape: the translation leaves of a VM as a z3 array from guest
page number to the entry that maps it (its EPT at 4-KByte granularity, SDM Vol. 3C §30.3.2 "EPT
Translation Mechanism"; for a classic PV guest, its validated page tables), the VM's partition
[B, B + S), another VM's partition and a hypervisor range. The lemmas are quantified over guest
pages in the hypothesis only (the negated goal is skolemized):

* ``ept_in_partition``: every present leaf maps a host page inside [B, B + S);
* ``hypervisor_unmapped``: no present leaf maps the hypervisor range;
* ``other_vm_unmapped``: no present leaf maps the other VM's partition.

Each action's effect is encoded beside its concrete implementation (:data:`EFFECTS`); a test
checks that the ``map`` effect agrees with the executor on runs, and that every traced action is
listed. Table allocation (``ept_next``) is outside the step: the concrete checkers bound it (the
tables are hypervisor regions, never in a partition).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import z3

from vtx.machine.designs import get_design
from vtx.machine.designs.pv import KERNEL_RO, KERNEL_RW
from vtx.machine.memory_map import LEAF_BITS
from vtx.paging.ept import R, W, X
from vtx.paging.formats import EPT, PAGE_OFFSET_BITS, PAGE_SIZE
from vtx.proofs.encoding import ADDRESS, bv, nonzero
from vtx.proofs.result import ProofResult
from vtx.typecheck import checked

PAGE_NUMBER = ADDRESS - PAGE_OFFSET_BITS
_PAGE_MASK = EPT.levels[-1].page.mask if EPT.levels[-1].page is not None else 0
_PRESENT = R | W | X
CAPACITY = (_PAGE_MASK | (PAGE_SIZE - 1)) + 1
"""The first host address an EPT leaf cannot name (2^52): every range lies below it."""


@attrs.frozen
class State:
    """The symbolic state one step reads and writes."""

    ept: Any
    base: Any
    size: Any
    other_base: Any
    other_size: Any
    hyp_base: Any
    hyp_size: Any


def fresh_state(tag: str) -> State:
    bv64 = z3.BitVecSort(ADDRESS)
    return State(z3.Array(f"ept_{tag}", z3.BitVecSort(PAGE_NUMBER), bv64),
                 *(z3.BitVec(f"{n}_{tag}", ADDRESS) for n in ("base", "size", "other_base", "other_size",
                                                            "hyp_base", "hyp_size")))


Effect = Callable[[State, Any], tuple[Any, State]]
"""(state, gpa) -> (precondition of the action, state after it)."""


def no_ept_change(s: State, gpa: Any) -> tuple[Any, State]:
    return z3.BoolVal(True), s


@checked
def map_backed(s: State, gpa: Any) -> tuple[Any, State]:
    """The ``map`` action (:meth:`DesignBase.action` on an EPT violation at a backed address,
    carried out by :func:`vtx.machine.memory_map.map_backed`): writes one 4-KByte leaf mapping the
    page of ``gpa`` to ``backing + gpa`` with :data:`~vtx.machine.memory_map.LEAF_BITS`."""
    backed = z3.ULT(gpa, s.size)  # Vm.is_backed
    leaf = ((s.base + gpa) & bv(_PAGE_MASK)) | bv(LEAF_BITS)
    return backed, attrs.evolve(s, ept=z3.Store(s.ept, z3.Extract(ADDRESS - 1, PAGE_OFFSET_BITS, gpa), leaf))


@checked
def mmu_update(s: State, gva: Any) -> tuple[Any, State]:
    """A classic PV guest's validated mmu_update (:func:`vtx.machine.designs.pv.mmu_update`): the
    PTE of ``gva`` now maps machine frame ``frame``, which must be one of the domain's pages
    (:func:`~vtx.machine.designs.pv.owns`); "ept" is the guest's page-table leaves here."""
    frame = z3.BitVec("frame", PAGE_NUMBER)
    writable = z3.Bool("writable")
    address = z3.Concat(frame, bv(0, PAGE_OFFSET_BITS))
    owned = z3.And(z3.UGE(address, s.base), z3.ULT(address - s.base, s.size))
    leaf = address | z3.If(writable, bv(KERNEL_RW), bv(KERNEL_RO))
    return owned, attrs.evolve(s, ept=z3.Store(s.ept, z3.Extract(ADDRESS - 1, PAGE_OFFSET_BITS, gva), leaf))


EFFECTS: Mapping[str, Effect] = {
    "map": map_backed, "mmu_update": mmu_update,
    **{action: no_ept_change for action in (
        "host_interrupt", "halt", "mmio", "emulate", "stop", "pml_drain", "grant_fault", "ring_notify", "event_send",
        "block", "bounce", "mmu_update_refused")},
}
"""Every action a reference design's exit handler (or classic PV trap / hypercall handler) takes,
and its effect on the VM's translation leaves: its EPT, or a classic PV guest's page tables."""

_COMMON = ("host_interrupt", "halt", "map", "mmio", "emulate", "stop", "pml_drain")
DESIGN_ACTIONS: Mapping[str, tuple[str, ...]] = {
    "hosted": _COMMON,
    "bare_metal": _COMMON,
    "hybrid": (*_COMMON, "grant_fault", "ring_notify", "event_send", "block", "bounce", "mmu_update",
               "mmu_update_refused"),
}
"""The actions each design's handlers take (a test checks every traced action is listed)."""


def _in(hpa: Any, base: Any, size: Any) -> Any:
    return z3.And(z3.UGE(hpa, base), z3.ULT(hpa - base, size))


def _leaf_hpa(entry: Any) -> Any:
    return entry & bv(_PAGE_MASK)


def _present(entry: Any) -> Any:
    return nonzero(entry & bv(_PRESENT))


def _forall_leaves(s: State, body: Callable[[Any], Any]) -> Any:
    p = z3.BitVec("p", PAGE_NUMBER)
    entry = z3.Select(s.ept, p)
    return z3.ForAll([p], z3.Implies(_present(entry), body(_leaf_hpa(entry))), patterns=[entry])


def _exists_leaf(s: State, body: Callable[[Any], Any], name: str) -> tuple[Any, Any]:
    p = z3.BitVec(name, PAGE_NUMBER)
    entry = z3.Select(s.ept, p)
    return p, z3.And(_present(entry), body(_leaf_hpa(entry)))


def _layout(s: State) -> Any:
    """Ranges are non-empty, page-aligned, below :data:`CAPACITY` (so they do not wrap), and
    pairwise disjoint."""
    def disjoint(a: Any, n: Any, b: Any, m: Any) -> Any:
        return z3.Or(z3.ULE(a + n, b), z3.ULE(b + m, a))
    ranges = ((s.base, s.size), (s.other_base, s.other_size), (s.hyp_base, s.hyp_size))
    fits = [z3.And(z3.UGT(n, bv(0)), z3.ULE(n, bv(CAPACITY)), z3.ULE(a, bv(CAPACITY) - n),
                   (a & bv(PAGE_SIZE - 1)) == bv(0),
                   (n & bv(PAGE_SIZE - 1)) == bv(0)) for a, n in ranges]
    return z3.And(*fits, disjoint(s.base, s.size, s.other_base, s.other_size),
                  disjoint(s.base, s.size, s.hyp_base, s.hyp_size),
                  disjoint(s.other_base, s.other_size, s.hyp_base, s.hyp_size))


LEMMAS: Mapping[str, Callable[[State, Any], Any]] = {
    "ept_in_partition": lambda s, hpa: _in(hpa, s.base, s.size),
    "hypervisor_unmapped": lambda s, hpa: z3.Not(_in(hpa, s.hyp_base, s.hyp_size)),
    "other_vm_unmapped": lambda s, hpa: z3.Not(_in(hpa, s.other_base, s.other_size)),
}


def _invariant(s: State, lemma: str) -> Any:
    """The layout and ``lemma`` on every leaf (each lemma is inductive on its own)."""
    return z3.And(_layout(s), _forall_leaves(s, lambda hpa: LEMMAS[lemma](s, hpa)))


@attrs.frozen
class StepResult:
    action: str
    lemma: str
    verdict: str
    counterexample: str | None
    non_vacuous: bool


def _solve(timeout_ms: int, *formulas: Any) -> tuple[Any, Any]:
    solver = z3.Solver()
    solver.set("timeout", timeout_ms)
    solver.add(*formulas)
    result = solver.check()
    return result, solver.model() if result == z3.sat else solver.reason_unknown()


def prove_step(action: str, effect: Effect, lemma: str, timeout_ms: int = 20_000) -> StepResult:
    """Inv(s) ∧ pre(action) ∧ s' = effect(s) ⇒ lemma(s'), for every state and guest-physical address.

    Split as Serval splits a program counter: the page the action writes (first without the
    quantified hypothesis, which that page rarely needs; with it if that is not enough) and every
    other page (where the hypothesis applies)."""
    s = fresh_state("s")
    gpa = z3.BitVec("gpa", ADDRESS)
    pre, after = effect(s, gpa)
    written = z3.Extract(ADDRESS - 1, PAGE_OFFSET_BITS, gpa)
    full = z3.And(_invariant(s, lemma), pre)
    page, broken = _exists_leaf(after, lambda hpa: z3.Not(LEMMAS[lemma](s, hpa)), "q")
    vacuity, _ = _solve(timeout_ms, full, _present(z3.Select(s.ept, z3.BitVec("witness", PAGE_NUMBER))))
    non_vacuous = vacuity == z3.sat
    if after.ept is s.ept:  # EPT unchanged: one query
        result, info = _solve(timeout_ms, full, broken)
    else:
        result, info = _solve(timeout_ms, _layout(s), pre, broken, page == written)
        if result != z3.unsat:
            result, info = _solve(timeout_ms, full, broken, page == written)
        if result == z3.unsat:
            result, info = _solve(timeout_ms, full, broken, page != written)
    if result == z3.unsat:
        return StepResult(action, lemma, "proved", None, non_vacuous)
    if result == z3.unknown:
        return StepResult(action, lemma, "unknown", f"z3 unknown ({info})", non_vacuous)
    m = info

    def num(t: Any) -> int:
        return int(m.eval(t, model_completion=True).as_long())

    entry = num(z3.Select(after.ept, page))
    text = (f"after {action} at gpa {num(gpa):#x} (VM backed at {num(s.base):#x}, {num(s.size):#x} bytes): "
            f"guest page {num(page):#x} maps host {_leaf_hpa_int(entry):#x}, breaking {lemma}")
    return StepResult(action, lemma, "refuted", text, non_vacuous)


@functools.lru_cache(maxsize=256)
def _step(effect: Effect, lemma: str, timeout_ms: int) -> StepResult:
    """:func:`prove_step`, once per (effect, lemma): actions with the same effect (and the same
    action in several designs) share their queries."""
    return prove_step(getattr(effect, "__name__", "action"), effect, lemma, timeout_ms)


def _leaf_hpa_int(entry: int) -> int:
    return entry & _PAGE_MASK


def prove_handlers(design_name: str, *, effects: Mapping[str, Effect] | None = None,
                   timeout_ms: int = 20_000) -> tuple[ProofResult, ...]:
    """The inductive step of every (action of ``design_name``'s handlers × lemma), one
    :class:`ProofResult` per action (invariant ``handler:<action>``). ``effects`` overrides
    :data:`EFFECTS` (to check a seeded bug)."""
    get_design(design_name)
    table = {**EFFECTS, **(effects or {})}
    out = []
    for action in DESIGN_ACTIONS.get(design_name, tuple(EFFECTS)):
        start = time.perf_counter()
        steps = [attrs.evolve(_step(table[action], lemma, timeout_ms), action=action) for lemma in LEMMAS]
        failed = next((r for r in steps if r.verdict != "proved"), None)
        verdict = "proved" if failed is None else failed.verdict
        out.append(ProofResult(f"handler:{action}", design_name, verdict, time.perf_counter() - start,
                               None if failed is None else f"{failed.lemma}: {failed.counterexample}",
                               False, all(r.non_vacuous for r in steps), len(steps)))
    return tuple(out)
