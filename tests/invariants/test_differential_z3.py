"""The z3 encoding of EPT (vtx.proofs.encoding), the concrete walker (vtx.paging.ept) and the
range analysis (vtx.invariants.mappings.ept_view) agree on hypothesis-generated EPT hierarchies,
in both directions: every guest-physical address the walker translates, z3 translates to the same
host address with the same permissions, and every address z3 finds translating (or faulting) the
walker does too; z3-found counterexamples replay."""

from __future__ import annotations

from typing import Any

import z3
from hypothesis import given, settings
from hypothesis import strategies as st

from vtx.invariants.mappings import EptView, ept_view
from vtx.paging.ept import (
    EPTP_FIELDS,
    PS,
    UX,
    Ept,
    EptWalk,
    LinearInfo,
    R,
    W,
    X,
    ept_from_eptp,
    translate_gpa,
    walk_ept,
)
from vtx.paging.formats import EPT, PAGE_SIZE
from vtx.paging.guest import AccessKind
from vtx.paging.memory import HostPhysAddr, PhysicalMemory
from vtx.paging.outcomes import Translated
from vtx.proofs.encoding import ACCESS_CODES, SymbolicEpt, SymbolicWalk, allows, encode_ept, in_range, walk
from vtx.spec import get_control
from vtx.vmx.capabilities import load_preset

TABLES = tuple(0x10_0000 + n * PAGE_SIZE for n in range(5))
INDEXES = (0, 1, 2, 511)
MBEC = get_control("proc2", "mode_based_execute_control_for_ept").mask
PRESETS = ("skylake_client", "ivybridge_client", "max")
_WB = next(t.value for t in EPT.memory_types if t.name == "WB")


@st.composite
def hierarchies(draw: st.DrawFn) -> tuple[Ept, PhysicalMemory]:
    """An EPT (preset, walk length, MBEC) and memory with one table per level (TABLES[d] at depth
    d) whose entries reference the next level's table (or, now and then, another table: aliasing
    and loops), map 4-KByte / 2-MByte / 1-GByte pages, or are not present or misconfigured
    (write without read, execute-only, reserved bits, reserved memory types)."""
    caps = load_preset(draw(st.sampled_from(PRESETS)))
    five = draw(st.booleans()) and bool(caps.msr_field("IA32_VMX_EPT_VPID_CAP", "page_walk_5"))
    eptp = (EPTP_FIELDS["memory_type"].bits.put(0, _WB) | EPTP_FIELDS["walk_length"].bits.put(0, 4 if five else 3)
            | TABLES[0])
    ept = ept_from_eptp(eptp, caps, secondary_controls=MBEC if draw(st.booleans()) else 0)
    good = st.sampled_from([R | W | X, R | W | X, R, R | X, R | W, R | UX])
    bad = st.sampled_from([X, W, W | X, 0, UX])
    noise = st.sampled_from([1 << 8, 1 << 9, 2 << 3, 7 << 3, 1 << 6, 1 << 13, 1 << 40, 1 << 51, 1 << 62])
    writes = []
    for depth, lv in enumerate(ept.levels):
        table = TABLES[depth]
        for index in draw(st.lists(st.sampled_from(INDEXES), min_size=1, max_size=3, unique=True)):
            kind = draw(st.sampled_from(["table", "table", "table", "leaf", "other"]))
            last = depth == len(ept.levels) - 1
            if kind == "table" and not last:
                entry = TABLES[depth + 1] | draw(good)
            elif kind in {"table", "leaf"}:
                size = lv.page_size
                frame = draw(st.integers(0, 7)) * size + 0x4000_0000 // size * size
                entry = frame | (0 if last else PS) | _WB << 3 | draw(good)
            else:
                entry = draw(st.sampled_from(TABLES)) | draw(st.sampled_from([PS, 0])) | draw(good | bad)
            if draw(st.integers(0, 3)) == 0:
                entry |= draw(noise)
            if draw(st.integers(0, 5)) == 0:
                entry = (entry & ~0b111) | draw(bad)
            writes.append((HostPhysAddr(table + index * 8), entry.to_bytes(8, "little")))
    return ept, PhysicalMemory.from_writes(writes)


def addresses(ept: Ept) -> st.SearchStrategy[int]:
    """Guest-physical addresses whose indexes hit the written entries often."""
    levels = ept.levels
    return st.tuples(*(st.sampled_from(INDEXES) for _ in levels), st.integers(0, PAGE_SIZE - 1)).map(
        lambda t: sum(i << lv.shift for i, lv in zip(t, levels, strict=False)) | t[-1])


def evaluate(term: Any, gpa: z3.BitVecRef, value: int) -> Any:
    return z3.simplify(z3.substitute(term, (gpa, z3.BitVecVal(value, gpa.size()))))


def encoded(ept: Ept, memory: PhysicalMemory) -> tuple[EptView, SymbolicEpt, z3.BitVecRef, SymbolicWalk]:
    view = ept_view(ept, memory)
    enc = encode_ept(view, memory)
    gpa = z3.BitVec("gpa", enc.address_bits)
    return view, enc, gpa, walk(enc, gpa)


def covering(view: EptView, gpa: int) -> tuple[int, int] | None:
    leaf = next((m for m in view.leaves if m.gpa <= gpa < m.gpa + m.size), None)
    return None if leaf is None else (leaf.hpa + gpa - leaf.gpa, leaf.permissions)


@given(st.data())
def test_walker_translations_are_z3_translations(data: st.DataObject) -> None:
    ept, memory = data.draw(hierarchies())
    view, _, gpa, w = encoded(ept, memory)
    for g in data.draw(st.lists(addresses(ept), min_size=1, max_size=6)):
        concrete = walk_ept(ept, memory, g, [])
        assert z3.is_true(evaluate(w.covered, gpa, g))
        translated = z3.is_true(evaluate(w.translated, gpa, g))
        assert translated == isinstance(concrete, EptWalk)
        assert covering(view, g) == ((concrete.hpa, concrete.permissions) if isinstance(concrete, EptWalk) else None)
        if isinstance(concrete, EptWalk):
            assert evaluate(w.hpa, gpa, g).as_long() == concrete.hpa
            assert evaluate(w.permissions, gpa, g).as_long() == concrete.permissions
            for kind, code in ACCESS_CODES.items():
                user = data.draw(st.booleans())
                out = translate_gpa(ept, memory, g, kind, linear=LinearInfo(0, True, user=user))
                allowed = evaluate(allows(ept, w.permissions, z3.BitVecVal(code, 2), z3.BoolVal(user)), gpa, g)
                assert z3.is_true(allowed) == isinstance(out, Translated), (kind, user)


def _models(formula: Any, gpa: z3.BitVecRef, count: int) -> list[int]:
    solver = z3.Solver()
    solver.add(formula)
    out = []
    while len(out) < count and solver.check() == z3.sat:
        value = solver.model().eval(gpa, model_completion=True).as_long()
        out.append(value)
        solver.add(gpa != value)
    return out


Z3_EXAMPLES = settings(max_examples=min(settings.default.max_examples, 30))
"""The z3-model tests solve several queries per example: fewer examples under the bounded profiles."""


@Z3_EXAMPLES
@given(hierarchies())
def test_z3_translations_and_faults_are_walker_ones(hierarchy: tuple[Ept, PhysicalMemory]) -> None:
    ept, memory = hierarchy
    view, _, gpa, w = encoded(ept, memory)
    assert z3.Solver().check(z3.Not(w.covered)) == z3.unsat  # the encoding holds every table a walk reads
    for g in _models(w.translated, gpa, 3):
        concrete = walk_ept(ept, memory, g, [])
        assert isinstance(concrete, EptWalk)
        assert concrete.hpa == z3.simplify(z3.substitute(w.hpa, (gpa, z3.BitVecVal(g, gpa.size())))).as_long()
    for g in _models(z3.Not(w.translated), gpa, 2):
        assert not isinstance(walk_ept(ept, memory, g, []), EptWalk)
    assert bool(view.leaves) == bool(_models(w.translated, gpa, 1))


@Z3_EXAMPLES
@given(hierarchies())
def test_z3_counterexamples_replay_on_the_walker(hierarchy: tuple[Ept, PhysicalMemory]) -> None:
    """A partition [2 MiB, 3 MiB): z3's address translating outside it does so concretely."""
    ept, memory = hierarchy
    _, _, gpa, w = encoded(ept, memory)
    base, size = 0x20_0000, 0x10_0000
    for g in _models(z3.And(w.translated, z3.Not(in_range(w.hpa, base, size))), gpa, 2):
        concrete = translate_gpa(ept, memory, g, AccessKind.READ)
        walked = walk_ept(ept, memory, g, [])
        assert isinstance(walked, EptWalk) and not base <= walked.hpa < base + size
        if isinstance(concrete, Translated):
            assert concrete.hpa == walked.hpa
