"""Minimal failing examples of the VM-entry checks, searched from the catalogue.

For a check of ``spec/vmx/entry_checks.toml``, :class:`ExampleFinder` looks for a VMCS that fails
that check: a template of :mod:`vtx.vmx.templates` (under the ``max`` preset, which allows every
feature) changed in as few fields as possible. The search is derived from the catalogue row, never
written per check. It changes only the fields a row reads (its ``fields``), the controls its
``applies_if`` names (:func:`vtx.vmx.entry.gates`) and, to *repair* what a change breaks besides
the check, the fields of the checks that change violates. In order, it tries:

1. one change of a field the row reads;
2. *enabling* the row — setting the controls it applies under (with the control that activates
   their field) — then repairing, change by change, what that breaks (e.g. 'process posted
   interrupts' needs 'external-interrupt exiting'), then one change of a field the row reads;
3. one change of a field the row reads that breaks the check *and* others, then repairing the
   others while the check stays broken;
4. a *precondition*: a change of a field the row reads that keeps the VMCS valid (an MSR-store
   count of 1, the valid bit of the interruption-information field), then one more change;
5. one change of the long-mode template under each other preset with VMX — a processor that lacks
   a capability the rule needs (SGX, RTM) — within a small budget.

Stages 1-4 run on every template, first entered by a VMM in IA-32e mode, then by one outside it
(:data:`CONTEXTS`; the rules of a 32-bit host need it). The values tried for a field are 0, all
ones, each single bit and the current value with one bit flipped (:func:`candidates`), those that
change the fewest bits first (:func:`nearest`). An example is *exact* when
:func:`~vtx.vmx.entry.evaluate_vm_entry` of the final VMCS reports that check and no other;
failing that, the search accepts one where the check is the first violation of the failure class
that decides the outcome, and lists the others. A check without an example gets a
:class:`NoExample` whose reason is derived from its row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import attrs

from vtx import spec
from vtx.bits import mask
from vtx.spec import VmcsField
from vtx.typecheck import checked
from vtx.vmx.capabilities import Capabilities, load_preset, preset_names
from vtx.vmx.entry import (
    FAILURE_ORDER,
    REGISTRY,
    EntryContext,
    EntryEvaluation,
    EntryOutcome,
    EntryVerdict,
    Gate,
    evaluate_vm_entry,
    gates,
)
from vtx.vmx.entry.catalogue import ENTRY_CHECKS, EntryCheckSpec
from vtx.vmx.instructions import BASIC_CHECKS
from vtx.vmx.templates import FEATURE_FIELDS, TEMPLATES, build_template
from vtx.vmx.vmcs import Vmcs

PRESET = "max"
"""The capability preset of the search: it allows every control, so every gate can be enabled."""
CONTEXTS: tuple[tuple[str, EntryContext], ...] = (
    ("", EntryContext()),
    ("entered by a VMM outside IA-32e mode", EntryContext(vmm_ia32e_mode=False)),
)
"""The processor states a template is entered from (outside SMM, no memory), most usual first."""
SEARCHED_PROCESSOR_TERMS = frozenset({"vmm_ia32e_mode"})
"""The processor terms of the catalogue (``processor``) that :data:`CONTEXTS` vary."""
REPAIR_ROUNDS = 4
"""How many changes a repair may make."""
REPAIRED_BREAKS = 4
"""How many changes that break the check with others stage 3 tries to repair, per template."""
BUDGET = 4000
"""VM-entry evaluations the search may spend on one check (and one context) before giving up."""
OUTSIDE_BUDGET = 1000
"""The budget, per context, for a rule that also reads what the search does not vary (memory, SMM, ...)."""
OTHER_PRESET_BUDGET = 300
"""VM-entry evaluations the last stage may spend on one check, under all the other presets together."""


@attrs.frozen
class Base:
    """A starting VMCS: a template, the secondary features turned on in it, and the processor
    state VM entry is executed in."""

    template: str
    features: tuple[str, ...]
    vmcs: Vmcs
    caps: Capabilities
    context: EntryContext
    context_label: str

    @property
    def label(self) -> str:
        parts = [f"the {self.template} template"]
        if self.features:
            parts.append("with every secondary feature")
        if self.context_label:
            parts.append(self.context_label)
        return " ".join(parts)


@attrs.frozen
class Change:
    """Field ``field`` set from ``before`` to ``after``."""

    field: VmcsField
    before: int
    after: int

    def __str__(self) -> str:
        return f"{self.field.name}: {self.before:#x} → {self.after:#x}"


@attrs.frozen
class Example:
    """Applying ``changes`` in order to ``base`` makes ``check_id`` fail; ``others`` are the other
    checks the result violates (empty for an exact example), ``message`` the check's report and
    ``outcome`` the outcome of the VM entry, which the check decides."""

    check_id: str
    base: Base
    changes: tuple[Change, ...]
    message: str
    outcome: EntryOutcome | None
    others: tuple[str, ...]

    @property
    def exact(self) -> bool:
        return not self.others

    @property
    def vmcs(self) -> Vmcs:
        """The failing VMCS."""
        return apply(self.base.vmcs, self.changes)


@attrs.frozen
class NoExample:
    """Why the search found no example for ``check_id``."""

    check_id: str
    reason: str


Found = Example | NoExample


@checked
def apply(vmcs: Vmcs, changes: tuple[Change, ...]) -> Vmcs:
    """``vmcs`` with ``changes`` applied in order."""
    for c in changes:
        vmcs = vmcs.set(c.field, c.after)
    return vmcs


@checked
def merged(changes: tuple[Change, ...]) -> tuple[Change, ...]:
    """``changes`` with the changes of each field made one (from its first value to its last), in the
    order the fields were first changed; a field that ends where it began is left out."""
    first: dict[str, Change] = {}
    last: dict[str, int] = {}
    for c in changes:
        first.setdefault(c.field.name, c)
        last[c.field.name] = c.after
    return tuple(Change(c.field, c.before, last[name]) for name, c in first.items() if last[name] != c.before)


@checked
def candidates(before: int, bits: int) -> Iterator[int]:
    """The values tried for a field of ``bits`` bits holding ``before``, simplest first."""
    seen = {before}
    values = [0, mask(bits), *(1 << i for i in range(bits)), *(before ^ 1 << i for i in range(bits))]
    for v in values:
        if v not in seen:
            seen.add(v)
            yield v


def nearest(before: int, bits: int) -> list[int]:
    """:func:`candidates`, those that change the fewest bits of ``before`` first (stable)."""
    return sorted(candidates(before, bits), key=lambda v: (v ^ before).bit_count())


@checked
def bases(caps: Capabilities, context: EntryContext = CONTEXTS[0][1], context_label: str = "") -> tuple[Base, ...]:
    """Every template, then ``long-mode`` with every secondary feature ``caps`` allows (for the
    checks that apply only when a feature is on), entered in ``context``."""
    features = tuple(f for f in FEATURE_FIELDS if caps.allows("proc2", f))
    plain = [(t, (), build_template(t, caps)) for t in TEMPLATES]
    every = ("long-mode", features, build_template("long-mode", caps, features=features))
    return tuple(Base(t, fs, vmcs, caps, context, context_label) for t, fs, vmcs in (*plain, every))


@checked
def decides(verdict: EntryVerdict, check_id: str) -> bool:
    """Whether ``check_id`` is the first violation of the failure class that decides the outcome."""
    failing = next((f for f in FAILURE_ORDER if any(v.check.failure == f for v in verdict.violations)), None)
    first = next((v for v in verdict.violations if v.check.failure == failing), None)
    return first is not None and first.check_id == check_id and not verdict.not_evaluable


@checked
def gate_settings(gate: Gate) -> tuple[tuple[VmcsField, int, bool], ...]:
    """The (field, bit, value) settings that make ``gate`` hold: its control and, for a control to be
    1, the control that activates its field."""
    flag = gate.flag
    activator = ((flag.activator_field, flag.activator, True),) if gate.value and flag.activator_field else ()
    return (*activator, (flag.field, flag.mask, gate.value))


def _features(caps: Capabilities) -> int:
    """How many features ``caps`` reports: allowed-1 control bits and true CPUID facts."""
    controls = sum(bin(caps.allowed1(cf.key) or 0).count("1") for cf in spec.CONTROL_FIELDS)
    return controls + sum(1 for v in caps.facts.values() if v is True or v == 1)


class _OutOfBudgetError(Exception):
    """The search of one check spent its evaluations."""


Step = tuple[tuple[Change, ...], EntryEvaluation]
"""Changes made so far, and the evaluation of the VMCS they give."""


class _Search:
    """The search for one row in one context."""

    def __init__(self, caps: Capabilities, row: EntryCheckSpec, budget: int = BUDGET) -> None:
        self.caps = caps
        self.row = row
        self.gates = gates(row)
        self.budget = budget
        self.spent = 0
        self.fields = self.writable(row.fields)
        self.fallback: tuple[Base, Step] | None = None
        self.context_mattered = False
        """Whether a check that reads a processor term of :data:`CONTEXTS` was violated on the way."""

    def writable(self, names: tuple[str, ...]) -> tuple[VmcsField, ...]:
        fields = (spec.VMCS_FIELDS[n] for n in dict.fromkeys(names))
        return tuple(f for f in fields if not f.is_read_only and self.caps.field_exists(f))

    def update(self, ev: EntryEvaluation, vmcs: Vmcs) -> EntryEvaluation:
        self.spent += 1
        if self.spent > self.budget:
            raise _OutOfBudgetError
        after = ev.update(vmcs)
        if not self.context_mattered:
            self.context_mattered = any(SEARCHED_PROCESSOR_TERMS.intersection(v.check.processor)
                                        for v in after.verdict.violations)
        return after

    def moves(self, step: Step, fields: tuple[VmcsField, ...]) -> Iterator[Step]:
        """Every single-field change of ``fields`` after ``step``."""
        changes, ev = step
        for field in fields:
            before = ev.vmcs.get(field)
            for value in nearest(before, field.bits):
                yield (*changes, Change(field, before, value)), self.update(ev, ev.vmcs.set(field, value))

    # -- what a verdict says about the row

    def ids(self, ev: EntryEvaluation) -> set[str]:
        return {v.check_id for v in ev.verdict.violations}

    def others(self, ev: EntryEvaluation) -> int:
        """How many violations (and undecided checks) are not the row's."""
        return (sum(v.check_id != self.row.id for v in ev.verdict.violations) + len(ev.verdict.not_evaluable))

    def exact(self, ev: EntryEvaluation) -> bool:
        return self.ids(ev) == {self.row.id} and not ev.verdict.not_evaluable

    def valid(self, ev: EntryEvaluation) -> bool:
        return not ev.verdict.violations and not ev.verdict.not_evaluable

    def note(self, base: Base, step: Step) -> None:
        """Keep ``step`` as the fallback if the row decides its outcome and it has fewer others."""
        ev = step[1]
        if decides(ev.verdict, self.row.id) and (self.fallback is None
                                                 or self.others(ev) < self.others(self.fallback[1][1])):
            self.fallback = (base, step)

    # -- the stages

    def breaking(self, base: Base, step: Step) -> Step | None:
        """The first single-field change of the row's fields after which only this check fails. While
        the row's gates do not hold, a check cannot fail (:func:`~vtx.vmx.entry.evaluate_vm_entry`
        skips it), so only the fields of the gates are tried."""
        fields = self.fields
        if not all(g.holds(step[1].vmcs) for g in self.gates):
            gate_fields = {name for g in self.gates for name in g.fields()}
            fields = tuple(f for f in fields if f.name in gate_fields)
        for after in self.moves(step, fields):
            if self.exact(after[1]):
                return after
            self.note(base, after)
        return None

    def repair(self, step: Step, keep: Callable[[EntryEvaluation], bool]) -> Step | None:
        """Changes of the fields of the violated checks other than the row's, each leaving fewer such
        violations and ``keep`` true, until none is left; None if it gets stuck."""
        for _ in range(REPAIR_ROUNDS):
            ev = step[1]
            count = self.others(ev)
            if count == 0:
                return step
            names = tuple(f for v in ev.verdict.violations if v.check_id != self.row.id for f in v.check.fields)
            better = next((s for s in self.moves(step, self.writable(names))
                           if self.others(s[1]) < count and keep(s[1])), None)
            if better is None:
                return None
            step = better
        return step if self.others(step[1]) == 0 else None

    def enable(self, step: Step) -> Step | None:
        """Set the controls of the row's gates and repair what that breaks; None if it cannot."""
        changes, ev = step
        vmcs = ev.vmcs
        for gate in self.gates:
            for field, bit, on in gate_settings(gate):
                before = vmcs.get(field)
                after = before | bit if on else before & ~bit
                if after != before:
                    changes = (*changes, Change(field, before, after))
                    vmcs = vmcs.set(field, after)
        if not changes:
            return None
        return self.repair((changes, self.update(ev, vmcs)), lambda e: all(g.holds(e.vmcs) for g in self.gates))

    def break_and_repair(self, base: Base, step: Step) -> Step | None:
        """A change that breaks the check with others, then a repair of the others."""
        broken = [s for s in self.moves(step, self.fields) if self.row.id in self.ids(s[1])]
        broken.sort(key=lambda s: self.others(s[1]))
        for s in broken[:REPAIRED_BREAKS]:
            self.note(base, s)
            fixed = self.repair(s, lambda e: self.row.id in self.ids(e))
            if fixed is not None:
                return fixed
        return None

    def run(self, starts: list[tuple[Base, EntryEvaluation]]) -> tuple[Base, Step] | None:
        for base, ev in starts:  # 1. one change
            hit = self.breaking(base, ((), ev))
            if hit is not None:
                return base, hit
        enabled: list[tuple[Base, Step]] = []
        for base, ev in starts:  # 2. enable the row's controls, then one change
            if not all(g.holds(base.vmcs) for g in self.gates):
                ready = self.enable(((), ev))
                if ready is None:
                    continue
                if self.exact(ready[1]):
                    return base, ready
                enabled.append((base, ready))
                hit = self.breaking(base, ready)
                if hit is not None:
                    return base, hit
        ready_starts = [*enabled, *((b, ((), ev)) for b, ev in starts if all(g.holds(b.vmcs) for g in self.gates))]
        for base, step in ready_starts:  # 3. break with others, repair them
            hit = self.break_and_repair(base, step)
            if hit is not None:
                return base, hit
        for base, step in ready_starts:  # 4. a precondition, then one change
            for pre in self.moves(step, self.fields):
                if self.valid(pre[1]):
                    hit = self.breaking(base, pre)
                    if hit is not None:
                        return base, hit
        return None

    def repaired_fallback(self) -> tuple[Base, Step] | None:
        """The fallback with its other violations repaired, if that works (else as it is)."""
        if self.fallback is None:
            return None
        base, step = self.fallback
        fixed = self.repair(step, lambda e: decides(e.verdict, self.row.id))
        return (base, fixed) if fixed is not None else self.fallback


class ExampleFinder:
    """Searches lazily and remembers every answer."""

    def __init__(self, preset: str = PRESET) -> None:
        self.preset = preset
        self.caps = load_preset(preset)
        self.starts = [[(b, EntryEvaluation.of(b.vmcs, self.caps, context)) for b in bases(self.caps, context, label)]
                       for label, context in CONTEXTS]
        self._answers: dict[str, Found] = {}
        self._others: list[tuple[Base, EntryEvaluation]] | None = None
        self.spent = 0
        """VM-entry evaluations spent so far."""

    def other_starts(self) -> list[tuple[Base, EntryEvaluation]]:
        """The long-mode template under every other preset with VMX, the processors with the fewest
        features first (they lack the most), built on first use."""
        if self._others is None:
            presets = [load_preset(name) for name in preset_names() if name != self.preset]
            presets = [caps for caps in presets if caps.facts.get("CPUID_VMX")]
            presets.sort(key=_features)
            self._others = []
            for caps in presets:
                base = Base("long-mode", (), build_template("long-mode", caps), caps, CONTEXTS[0][1], "")
                self._others.append((base, EntryEvaluation.of(base.vmcs, caps, base.context)))
        return self._others

    @property
    def bases(self) -> tuple[Base, ...]:
        """The starting VMCSs of the first context."""
        return tuple(b for b, _ in self.starts[0])

    @checked
    def example(self, check_id: str) -> Found:
        """The example for ``check_id``, or why there is none."""
        if check_id not in self._answers:
            self._answers[check_id] = self._find(ENTRY_CHECKS[check_id])
        return self._answers[check_id]

    def _find(self, row: EntryCheckSpec) -> Found:
        if row.id in BASIC_CHECKS:
            branch = BASIC_CHECKS[row.id].split(":")[0]
            return NoExample(row.id, f"a branch of the VMLAUNCH / VMRESUME pseudocode (vtx.vmx.instructions.{branch}) "
                                     f"that reads processor state ({', '.join(row.processor)}), not the VMCS")
        if row.id not in REGISTRY:
            return NoExample(row.id, "no registered implementation")
        blocked = self.blocked_gates(row)
        if blocked:
            return NoExample(row.id, f"it applies only under {', '.join(repr(g.flag.title) for g in blocked)}, "
                                     f"which the {self.preset} preset does not allow")
        fallback: tuple[Base, Step] | None = None
        spent = 0
        budget = OUTSIDE_BUDGET if self._outside(row) else BUDGET
        for starts in self.starts:
            search = _Search(self.caps, row, budget)
            try:
                hit = search.run(starts)
            except _OutOfBudgetError:
                hit = None
            spent += search.spent
            self.spent += search.spent
            if hit is None:
                search.spent = 0  # the repair of the fallback has a budget of its own
                try:
                    hit = search.repaired_fallback()
                except _OutOfBudgetError:
                    hit = search.fallback
                self.spent += search.spent
            if hit is not None and search.exact(hit[1][1]):
                return self._example(row, *hit)
            fallback = fallback or hit
            if not search.context_mattered:
                break
        other = self._other_presets(row)
        if other is not None:
            return self._example(row, *other)
        if fallback is not None:
            return self._example(row, *fallback)
        return NoExample(row.id, self._reason(row, spent))

    def _other_presets(self, row: EntryCheckSpec) -> tuple[Base, Step] | None:
        """One change of the long-mode template under another preset (a processor that lacks a
        capability the rule needs, say) after which only this check fails."""
        budget = OTHER_PRESET_BUDGET
        for base, ev in self.other_starts():
            search = _Search(base.caps, row, budget)
            try:
                hit = search.breaking(base, ((), ev))
            except _OutOfBudgetError:
                hit = None
            self.spent += search.spent
            budget -= search.spent
            if hit is not None:
                return base, hit
            if budget <= 0:
                break
        return None

    @checked
    def blocked_gates(self, row: EntryCheckSpec) -> list[Gate]:
        """The gates of ``row`` that need a control setting the preset does not allow."""
        out = []
        for gate in gates(row):
            for field, bit, on in gate_settings(gate):
                key = next(c.key for c in spec.CONTROL_FIELDS if c.vmcs_field == field)
                allowed = self.caps.allowed1(key) if on else ~(self.caps.allowed0(key) or 0)
                if allowed is None or not allowed & bit:
                    out.append(gate)
                    break
        return out

    def _example(self, row: EntryCheckSpec, base: Base, step: Step) -> Example:
        """The example, verified by a full (not incremental) evaluation."""
        changes = merged(step[0])
        verdict = evaluate_vm_entry(apply(base.vmcs, changes), base.caps, base.context)
        if not decides(verdict, row.id):
            raise AssertionError(f"{row.id}: the example fails {[v.check_id for v in verdict.violations]} first")
        hit = next(v for v in verdict.violations if v.check_id == row.id)
        others = tuple(dict.fromkeys(v.check_id for v in verdict.violations if v.check_id != row.id))
        return Example(row.id, base, changes, hit.message, verdict.outcome, others)

    @staticmethod
    def _outside(row: EntryCheckSpec) -> list[str]:
        """What the row reads that the search does not vary."""
        unsearched = [p for p in row.processor if p not in SEARCHED_PROCESSOR_TERMS]
        outside = [f"processor state ({', '.join(unsearched)})"] if unsearched else []
        return outside + ([f"memory ({', '.join(row.memory)})"] if row.memory else [])

    def _reason(self, row: EntryCheckSpec, spent: int) -> str:
        outside = self._outside(row)
        if outside:
            return (f"it reads {' and '.join(outside)}, which the search does not vary: it enters templates "
                    f"outside SMM, with no current VMCS other than the template, and an empty memory")
        return (f"no change of the fields it reads ({', '.join(row.fields)}), alone or after enabling its controls, "
                f"a precondition or a repair, makes it fail first ({spent} VM-entry evaluations tried)")
