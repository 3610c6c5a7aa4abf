"""VM entry: the checks VMLAUNCH and VMRESUME make after their basic checks, as one interface.

SDM Vol. 3C chapter 28 "VM Entries": checks on the VMX controls and host-state area fail with
VMfailValid(7) or (8) — they "may be performed in any order", so either error is possible when
both groups have violations; checks on guest state and PDPTEs fail as a VM exit with reason 33
and a qualification (§28.3; 2 for a PDPTE, 3 for NMI injection, 4 for the VMCS link pointer);
loading MSRs fails with reason 34 and the 1-based index of the failing entry (§28.4).

Each check is a function registered with :func:`entry_check` under the id of its row in
``spec/vmx/entry_checks.toml`` (:data:`~vtx.vmx.entry.catalogue.ENTRY_CHECKS`), which supplies
its group, failure, citation and the fields it reads. :func:`evaluate_vm_entry` runs every
registered check and reports every violation; the outcome is that of the first failing class in
vtx's documented order — controls (7), host state (8), guest state (33), MSR loading (34) — and
the other outcomes a processor may produce are listed too. The basic checks (#UD, #GP,
VMfailInvalid, VMfailValid 4, 5 and 26) are the instruction's own (:mod:`vtx.vmx.instructions`).

Two shortcuts keep the evaluation fast without changing its verdict (both are tested against
:func:`evaluate_every_check`, which runs every check): a check whose row applies only under a VMX
control setting (its :func:`gates`, read from ``applies_if``) is skipped while the VMCS does not have
that setting; and after VMWRITEs, :func:`evaluate_vm_entry_incremental` (or
:class:`EntryEvaluation`) re-runs only the checks whose catalogue ``fields`` include a changed field.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping

import attrs

from vtx import spec
from vtx.conditions import ControlAllowed
from vtx.errors import NotEvaluable, SpecError
from vtx.outcomes import VmEntryFailed, VmFailValid
from vtx.paging.memory import HostPhysAddr, PhysicalMemory
from vtx.typecheck import checked
from vtx.vmx.capabilities import Capabilities
from vtx.vmx.entry.catalogue import ENTRY_CHECKS, EntryCheckSpec
from vtx.vmx.entry.common import ControlFlag, control_flag
from vtx.vmx.operation import LogicalProcessor, MemoryReader, Region, region_header
from vtx.vmx.vmcs import Vmcs, slot

FAILURE_ORDER = ("vmfail_valid_7", "vmfail_valid_8", "vmfail_valid_16", "vmfail_valid_17", "vmfail_valid_18",
                 "vmfail_valid_25", "exit_33", "exit_34")
"""The failures the registered checks produce, in vtx's order: the first one with a violation
decides the outcome. The VMfailValid class (7, 8, and 16, 17, 18, 25 for entries that return from
SMM) may come in any order on real processors."""
ANY_ORDER = frozenset(f for f in FAILURE_ORDER if f.startswith("vmfail_valid_"))
_VMFAIL_ERRORS = {"vmfail_valid_7": "ENTRY_INVALID_CONTROL_FIELD", "vmfail_valid_8": "ENTRY_INVALID_HOST_STATE_FIELD",
                  "vmfail_valid_16": "ENTRY_INVALID_EXECUTIVE_VMCS_POINTER",
                  "vmfail_valid_17": "ENTRY_NONLAUNCHED_EXECUTIVE_VMCS",
                  "vmfail_valid_18": "ENTRY_EXECUTIVE_VMCS_POINTER_NOT_VMXON_POINTER",
                  "vmfail_valid_25": "ENTRY_INVALID_VM_EXECUTION_CONTROL_FIELDS_IN_EXECUTIVE_VMCS"}


@attrs.frozen
class EntryContext:
    """What a check may read besides the VMCS and the capabilities: the processor state that is
    not in the VMCS, and physical memory (the MSR-load area, the region the VMCS link pointer
    references, PDPTEs, the virtual-APIC page)."""

    instruction: str = "vmlaunch"
    vmm_ia32e_mode: bool = True
    in_smm: bool = False
    in_smx: bool = False
    vmxon_pointer: int | None = None
    current_vmcs: int | None = None
    regions: Mapping[int, Region] = attrs.field(factory=dict)
    memory: MemoryReader = attrs.field(factory=PhysicalMemory)

    @classmethod
    def from_processor(cls, state: LogicalProcessor, instruction: str) -> EntryContext:
        """The context of ``instruction`` executed by ``state``."""
        return cls(instruction=instruction, vmm_ia32e_mode=state.is_ia32e_mode, in_smm=state.in_smm,
                   in_smx=state.in_smx, vmxon_pointer=state.vmxon_pointer,
                   current_vmcs=state.current_vmcs if state.has_current_vmcs else None,
                   regions=state.regions, memory=state.memory)

    @checked
    def read_int(self, address: int, size: int) -> int:
        """``size`` bytes of physical memory at ``address``, little-endian."""
        return self.memory.read_int(HostPhysAddr(address), size)

    @checked
    def region_header(self, address: int) -> int:
        """The first 32 bits of the region at ``address`` (revision identifier and bit 31)."""
        return region_header(self.regions, self.memory, address)


_DEFAULT_CONTEXT = EntryContext()
"""The context of an evaluation given none (a frozen value, so one instance serves every call)."""


@attrs.frozen
class Finding:
    """A violation message with the exit qualification it reports, for checks whose qualification
    depends on the input (MSR loading: the 1-based index of the failing MSR-load entry)."""

    message: str
    qualification: int


@attrs.frozen
class Violation:
    """One violated check: its catalogue row, a message a person understands, and (for VM-entry
    failures) the exit qualification."""

    check: EntryCheckSpec
    message: str
    qualification: int | None = None

    @property
    def check_id(self) -> str:
        return self.check.id

    @property
    def group(self) -> str:
        return self.check.group


EntryOutcome = VmFailValid | VmEntryFailed


@attrs.frozen
class EntryVerdict:
    """Every violation, the outcome of the first failing class, and every other possible outcome."""

    violations: tuple[Violation, ...]
    outcome: EntryOutcome | None
    possible_outcomes: tuple[EntryOutcome, ...] = ()
    not_evaluable: tuple[str, ...] = ()

    @property
    def succeeds(self) -> bool:
        """True only when every check ran and none was violated."""
        return self.outcome is None and not self.not_evaluable


CheckFn = Callable[[Vmcs, Capabilities, "EntryContext"], Iterator["str | Finding"]]
"""A check yields one message (or :class:`Finding`) per violation, none when it passes; it
raises :class:`~vtx.errors.NotEvaluable` when the capability profile cannot decide it."""


@attrs.frozen
class RegisteredCheck:
    spec: EntryCheckSpec
    fn: CheckFn


REGISTRY: dict[str, RegisteredCheck] = {}


def entry_check(check_id: str) -> Callable[[CheckFn], CheckFn]:
    """Register the implementation of catalogue row ``check_id``."""
    row = ENTRY_CHECKS.get(check_id)
    if row is None:
        raise SpecError("entry_check", check_id, "no such row in spec/vmx/entry_checks.toml")
    if row.failure not in FAILURE_ORDER:
        raise SpecError("entry_check", check_id, f"failure {row.failure} is the instruction's, not a check's")

    def register(fn: CheckFn) -> CheckFn:
        if check_id in REGISTRY:
            raise SpecError("entry_check", check_id, "registered twice")
        REGISTRY[check_id] = RegisteredCheck(row, fn)
        return fn

    return register


def _violation(row: EntryCheckSpec, found: str | Finding) -> Violation:
    if isinstance(found, Finding):
        return Violation(row, found.message, found.qualification)
    qualification = row.qualification if isinstance(row.qualification, int) else None
    return Violation(row, found, qualification if row.failure.startswith("exit_") else None)


def _outcome(v: Violation) -> EntryOutcome:
    row = v.check
    if row.failure in _VMFAIL_ERRORS:
        return VmFailValid(spec.get_error(_VMFAIL_ERRORS[row.failure]))
    reason = "INVALID_STATE" if row.failure == "exit_33" else "MSR_LOAD_FAIL"
    return VmEntryFailed(spec.get_exit_reason(reason), v.qualification or 0)


def _run(check: RegisteredCheck, vmcs: Vmcs, caps: Capabilities, ctx: EntryContext, *, violations: list[Violation],
         unknown: list[str]) -> None:
    """Run one check, appending its violations, or the reason it cannot be decided."""
    try:
        for found in check.fn(vmcs, caps, ctx):
            violations.append(_violation(check.spec, found))
    except NotEvaluable as e:
        unknown.append(f"{check.spec.id}{_UNKNOWN_SEPARATOR}{e}")


_UNKNOWN_SEPARATOR = ": "
"""Between the check id and the reason in :attr:`EntryVerdict.not_evaluable` (ids never contain it)."""


@checked
def evaluate_every_check(vmcs: Vmcs, caps: Capabilities, context: EntryContext | None = None) -> EntryVerdict:
    """Run every registered check, applicable or not; the reference :func:`evaluate_vm_entry` equals."""
    ctx = context or EntryContext()
    violations: list[Violation] = []
    unknown: list[str] = []
    for check in REGISTRY.values():
        _run(check, vmcs, caps, ctx, violations=violations, unknown=unknown)
    return _verdict(violations, unknown)


@checked
def evaluate_vm_entry(vmcs: Vmcs, caps: Capabilities, context: EntryContext | None = None) -> EntryVerdict:
    """Run every registered check that applies; report all violations and the outcomes they can produce.

    A check whose catalogue row applies only under a VMX control setting (:func:`gates`) is skipped
    while the VMCS does not have that setting: it cannot be violated then."""
    ctx = _DEFAULT_CONTEXT if context is None else context
    violations: list[Violation] = []
    unknown: list[str] = []
    for row, fn in _applicable(vmcs, ctx):
        try:  # _run, inlined: this loop is the hot path of every VM entry
            for found in fn(vmcs, caps, ctx):
                violations.append(_violation(row, found))
        except NotEvaluable as e:
            unknown.append(f"{row.id}{_UNKNOWN_SEPARATOR}{e}")
    return _verdict(violations, unknown)


def _verdict(violations: list[Violation], unknown: list[str]) -> EntryVerdict:
    """The verdict of these violations (in registry order): the outcome of the first failing class."""
    if not violations:
        return EntryVerdict((), None, (), tuple(unknown))
    failing = [f for f in FAILURE_ORDER if any(v.check.failure == f for v in violations)]
    if not failing:
        return EntryVerdict(tuple(violations), None, (), tuple(unknown))
    first = failing[0]
    if first in ANY_ORDER:
        possible = [_outcome(next(v for v in violations if v.check.failure == f)) for f in failing if f in ANY_ORDER]
    else:
        possible = list(dict.fromkeys(_outcome(v) for v in violations if v.check.failure == first))
    outcome = next(_outcome(v) for v in violations if v.check.failure == first)
    return EntryVerdict(tuple(violations), outcome, tuple(possible), tuple(unknown))


# ----------------------------------------------------------------------------- control fields

_RESERVED_BITS_ID = {"pin": "controls.pin_based.reserved_bits", "proc": "controls.primary_proc_based.reserved_bits",
                     "proc2": "controls.secondary_proc_based.reserved_bits",
                     "proc3": "controls.tertiary_proc_based.reserved_bits", "exit": "controls.exit.reserved_bits",
                     "exit2": "controls.exit.secondary_reserved_bits", "entry": "controls.entry.reserved_bits"}


def _register_reserved_bit_check(cf: spec.ControlField) -> None:
    """Reserved bits of a control field are set as its capability MSR requires (Appendix A). The
    secondary, tertiary and secondary VM-exit controls are checked only when the VMCS activates
    them (the "activate secondary controls" / "activate tertiary controls" bits)."""
    gates = tuple((spec.CONTROL_FIELDS[t.field].vmcs_field, spec.get_control(t.field, t.control).mask)
                  for t in cf.enabled_by.terms if isinstance(t, ControlAllowed))
    field, key = cf.vmcs_field, cf.key

    def check(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
        if gates and not any(vmcs.get(activator) & bit for activator, bit in gates):
            return
        value = vmcs.get(field)
        a0, a1 = caps.allowed_settings(key)
        if a0 is None or a1 is None:
            raise NotEvaluable(cf.vmcs_field.name, "reserved bits", f"the profile lacks {caps.control_msr(cf.key)}")
        if value & a0 != a0:
            yield (f"{cf.vmcs_field.name} = {value:#x} clears bits {a0 & ~value:#x} that "
                   f"{caps.control_msr(cf.key)} requires to be 1")
        if value & ~a1:
            yield (f"{cf.vmcs_field.name} = {value:#x} sets bits {value & ~a1:#x} that "
                   f"{caps.control_msr(cf.key)} does not allow")

    entry_check(_RESERVED_BITS_ID[cf.key])(check)


for _cf in spec.CONTROL_FIELDS:
    _register_reserved_bit_check(_cf)

# The check modules register their checks on import, in the SDM's order.
from vtx.vmx.entry import (  # noqa: E402
    exec_controls,
    exit_entry_controls,
    guest_non_register,
    guest_segments,
    guest_state,
    host_state,
    msr_load,
    smm,
)
from vtx.vmx.entry.applicability import (  # noqa: E402
    Condition,
    ConditionSlots,
    condition_slots,
    conditions,
    conditions_holding,
)

# ----------------------------------------------------------------------------- applicability gates

_CONTROL_TERM = re.compile(r"(?:the )?'(?P<title>[^']+)' (?:(?P<kind>VM-entry|VM-exit|secondary VM-exit) )?"
                           r"(?:control )?is (?P<value>[01])")
_TERM_FIELDS = {"VM-entry": ("entry",), "VM-exit": ("exit",), "secondary VM-exit": ("exit2",),
                None: ("pin", "proc", "proc2", "proc3")}
"""Which control fields a control named in ``applies_if`` may belong to: "the 'X' VM-entry control" is a
VM-entry control, an unqualified "the 'X' control" a VM-execution control."""


@attrs.frozen
class Gate:
    """A conjunct of a catalogue row's ``applies_if`` that sets one VMX control ("the 'enable EPT'
    control is 1"): while the control, as VM entry applies it (a secondary control counts only while
    its field is activated), has the other value, the rule does not apply and cannot be violated."""

    flag: ControlFlag
    value: bool

    @checked
    def holds(self, vmcs: Vmcs) -> bool:
        """Whether ``vmcs`` gives the control the value the rule applies under."""
        return self.flag.on(vmcs) is self.value

    def fields(self) -> tuple[str, ...]:
        """The VMCS fields the gate reads: the control's field and the field of its activator."""
        activator = () if self.flag.activator_field is None else (self.flag.activator_field.name,)
        return (self.flag.field.name, *activator)


def gates(row: EntryCheckSpec) -> tuple[Gate, ...]:
    """The control settings ``row`` applies under, read from its ``applies_if``: every conjunct (the
    text split at " and ", unless it has an " or ") that names exactly one VMX control and a value.
    Other conjuncts (and every "or") are left to the check itself; ignoring them is sound."""
    if " or " in row.applies_if:
        return ()
    found = []
    for term in row.applies_if.split(" and "):
        m = _CONTROL_TERM.fullmatch(term)
        if m is None:
            continue
        title = m["title"].lower()
        named = [c for c in spec.CONTROLS if c.field in _TERM_FIELDS[m["kind"]] and c.title.lower() == title]
        if len(named) == 1:
            found.append(Gate(control_flag(named[0].field, named[0].name), m["value"] == "1"))
    return tuple(found)


GateSlots = tuple[tuple[int, int, int, int, int, int, bool], ...]
"""A check's gates for :func:`_gates_hold`: (activator group, index, mask, control group, index, mask,
value) each, positions in :attr:`Vmcs.values` (activator mask 0 for a field that always exists)."""


def _gate_slots(row_gates: Iterable[Gate]) -> GateSlots:
    out = []
    for gate in row_gates:
        flag = gate.flag
        act_g, act_i = slot(flag.activator_field) if flag.activator_field is not None else (0, 0)
        out.append((act_g, act_i, flag.activator, *slot(flag.field), flag.mask, gate.value))
    return tuple(out)


def _gates_hold(values: tuple[tuple[int, ...], ...], gate_slots: GateSlots) -> bool:
    """:meth:`Gate.holds` for every gate, on the VMCS values directly (tested equal to it)."""
    for act_g, act_i, act_mask, g, i, bit, value in gate_slots:
        on = bool(values[g][i] & bit) and (not act_mask or bool(values[act_g][act_i] & act_mask))
        if on is not value:
            return False
    return True


@attrs.frozen
class PlannedCheck:
    """A registered check with what its catalogue row applies under: its gates (as :data:`GateSlots`) and
    the positions of its field and processor-state conditions in :data:`Plan`'s condition list."""

    check: RegisteredCheck
    gate_slots: GateSlots
    condition_bits: int

    def applies(self, values: tuple[tuple[int, ...], ...], condition_values: int) -> bool:
        """Whether every gate holds and every condition is true (``condition_values``: bit n is condition n)."""
        if self.condition_bits & ~condition_values:
            return False
        return not self.gate_slots or _gates_hold(values, self.gate_slots)


@attrs.frozen
class Plan:
    """The registered checks in registry order with their gates and conditions, and every distinct
    condition they name."""

    checks: tuple[PlannedCheck, ...]
    conditions: tuple[Condition, ...]
    condition_slots: tuple[ConditionSlots, ...]

    @classmethod
    def of(cls, registry: tuple[RegisteredCheck, ...]) -> Plan:
        distinct = tuple(dict.fromkeys(c for r in registry for c in conditions(r.spec)))
        position = {c: n for n, c in enumerate(distinct)}
        checks = tuple(PlannedCheck(r, _gate_slots(gates(r.spec)), sum(1 << position[c] for c in conditions(r.spec)))
                       for r in registry)
        return cls(checks, distinct, tuple(map(condition_slots, distinct)))

    def condition_values(self, vmcs: Vmcs, ctx: EntryContext) -> int:
        """Bit n set if condition n holds."""
        return conditions_holding(self.condition_slots, vmcs, ctx)


_plan_cache: dict[int, Plan] = {}


def _plan() -> Plan:
    """The registered checks in order, each with its gates (rebuilt if the registry grew)."""
    plan = _plan_cache.get(len(REGISTRY))
    if plan is None:
        plan = _plan_cache[len(REGISTRY)] = Plan.of(tuple(REGISTRY.values()))
    return plan


Applicable = tuple[tuple[EntryCheckSpec, CheckFn], ...]


@attrs.frozen
class _ApplicableMemo:
    """Which checks apply is a pure function of the few control fields the gates read (the VM-execution,
    VM-exit and VM-entry controls) and of the truth of the conditions: the answer for each combination
    is kept (up to :data:`_MEMO_LIMIT` of them), so a VM entry tests no gate unless its controls are new."""

    plan: Plan
    gate_slots: tuple[tuple[int, int], ...]
    known: dict[tuple[int, ...], Applicable] = attrs.field(factory=dict)

    @classmethod
    def of(cls, plan: Plan) -> _ApplicableMemo:
        read = {(g, i) for p in plan.checks for act_g, act_i, act_mask, g, i, _, _ in p.gate_slots
                for g, i in ((g, i), (act_g, act_i) if act_mask else (g, i))}
        return cls(plan, tuple(sorted(read)))

    def applicable(self, vmcs: Vmcs, ctx: EntryContext) -> Applicable:
        values = vmcs.values
        condition_values = self.plan.condition_values(vmcs, ctx)
        key = (condition_values, *[values[g][i] for g, i in self.gate_slots])
        found = self.known.get(key)
        if found is None:
            if len(self.known) >= _MEMO_LIMIT:
                self.known.clear()
            found = self.known[key] = tuple((p.check.spec, p.check.fn) for p in self.plan.checks
                                            if p.applies(values, condition_values))
        return found


_MEMO_LIMIT = 4096
_memo_cache: dict[int, _ApplicableMemo] = {}


def _applicable(vmcs: Vmcs, ctx: EntryContext) -> Applicable:
    """The (catalogue row, function) of each registered check that applies to ``vmcs`` entered in ``ctx``, in
    registry order: those of ``[p for p in _plan().checks if p.applies(...)]`` (tested equal), from a memo."""
    memo = _memo_cache.get(len(REGISTRY))
    if memo is None:
        memo = _memo_cache[len(REGISTRY)] = _ApplicableMemo.of(_plan())
    return memo.applicable(vmcs, ctx)


# ----------------------------------------------------------------------------- incremental evaluation

_VMCS_HEADER = tuple(a.name for a in attrs.fields(Vmcs) if a.name != "values")
_vmcs_header = operator.attrgetter(*_VMCS_HEADER)


@functools.cache
def _dependents(registry_size: int) -> tuple[dict[str, int], dict[tuple[int, int], frozenset[int]]]:
    """Each check's position in the registry, and for each field slot the positions of the checks that
    read the field (its catalogue ``fields`` and the fields of its gates)."""
    position = {check_id: n for n, check_id in enumerate(REGISTRY)}
    readers: dict[tuple[int, int], set[int]] = {}
    for n, check in enumerate(REGISTRY.values()):
        names = {*check.spec.fields, *(f for g in gates(check.spec) for f in g.fields()),
                 *(f for c in conditions(check.spec) for f in c.fields())}
        for name in names:
            readers.setdefault(slot(spec.VMCS_FIELDS[name]), set()).add(n)
    return position, {s: frozenset(ns) for s, ns in readers.items()}


def _stale_checks(previous: Vmcs, vmcs: Vmcs) -> set[int] | None:
    """The positions of the checks that read a field whose value differs between ``previous`` and
    ``vmcs``; None if the region header differs (then every check is stale)."""
    if _vmcs_header(previous) != _vmcs_header(vmcs):
        return None
    readers = _dependents(len(REGISTRY))[1]
    stale: set[int] = set()
    for g, (old, new) in enumerate(zip(previous.values, vmcs.values, strict=True)):
        if old is new or old == new:  # a write copies only its own group
            continue
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            if a != b:
                stale |= readers.get((g, i), frozenset())
    return stale


@checked
def evaluate_vm_entry_incremental(previous_vmcs: Vmcs, previous_verdict: EntryVerdict, vmcs: Vmcs,
                                  caps: Capabilities, context: EntryContext | None = None) -> EntryVerdict:
    """:func:`evaluate_vm_entry` of ``vmcs``, given ``previous_verdict`` = ``evaluate_vm_entry(previous_vmcs,
    caps, context)`` under the SAME capabilities and context: only the checks whose catalogue fields
    include a field that changed run again; the other checks keep their previous violations and reasons.
    (A check reads only its catalogue fields, the capabilities and the context.) Use
    :class:`EntryEvaluation` to have a change of capabilities or context re-run everything."""
    ctx = _DEFAULT_CONTEXT if context is None else context
    return _reevaluate(previous_vmcs, previous_verdict, vmcs, caps, ctx, also_stale=frozenset())


_CONTEXT_MEMORY = ("regions", "memory")
"""The parts of an :class:`EntryContext` that are memory: a check whose catalogue row lists no ``memory``
term does not read them (audited in tests/vmx/test_entry_incremental.py)."""
_CONTEXT_STATE = tuple(a.name for a in attrs.fields(EntryContext) if a.name not in _CONTEXT_MEMORY)


@functools.cache
def _memory_readers(registry_size: int) -> frozenset[int]:
    """The positions of the checks whose rows read memory (a non-empty catalogue ``memory``)."""
    return frozenset(n for n, check in enumerate(REGISTRY.values()) if check.spec.memory)


def _context_change(old: EntryContext, new: EntryContext) -> frozenset[int] | None:
    """The checks a change of context makes stale: none for the same context, the memory readers when only
    the memory or the regions differ (compared by identity: they are not searched for the change), None
    (every check) when the processor state differs."""
    if old is new:
        return frozenset()
    if any(getattr(old, name) != getattr(new, name) for name in _CONTEXT_STATE):
        return None
    if all(getattr(old, name) is getattr(new, name) for name in _CONTEXT_MEMORY):
        return frozenset()
    return _memory_readers(len(REGISTRY))


def _reevaluate(previous_vmcs: Vmcs, previous_verdict: EntryVerdict, vmcs: Vmcs, caps: Capabilities,
                ctx: EntryContext, *, also_stale: frozenset[int]) -> EntryVerdict:
    """:func:`evaluate_vm_entry_incremental`, with the checks ``also_stale`` re-run too."""
    stale = _stale_checks(previous_vmcs, vmcs)
    if stale is None:
        return evaluate_vm_entry(vmcs, caps, ctx)
    stale |= also_stale
    if not stale:
        return previous_verdict
    position = _dependents(len(REGISTRY))[0]
    violations = [v for v in previous_verdict.violations if position[v.check.id] not in stale]
    unknown = [u for u in previous_verdict.not_evaluable
               if position[u.partition(_UNKNOWN_SEPARATOR)[0]] not in stale]
    new_violations: list[Violation] = []
    new_unknown: list[str] = []
    plan = _plan()
    values, condition_values = vmcs.values, plan.condition_values(vmcs, ctx)
    for n in sorted(stale):
        planned = plan.checks[n]
        if planned.applies(values, condition_values):
            _run(planned.check, vmcs, caps, ctx, violations=new_violations, unknown=new_unknown)
    if new_violations:  # back into registry order; sorted() is stable, so each check keeps its own order
        violations = sorted(violations + new_violations, key=lambda v: position[v.check.id])
    if new_unknown:
        unknown = sorted(unknown + new_unknown, key=lambda u: position[u.partition(_UNKNOWN_SEPARATOR)[0]])
    return _verdict(violations, unknown)


@attrs.frozen
class EntryEvaluation:
    """A VMCS with its VM-entry verdict under given capabilities and context, to re-check cheaply after
    VMWRITEs: :meth:`update` re-runs only the checks that read a changed field (and the checks that read
    memory when the context's memory or regions are other objects), and every check when the capabilities
    or the processor state change."""

    vmcs: Vmcs
    caps: Capabilities
    context: EntryContext
    verdict: EntryVerdict

    @classmethod
    def of(cls, vmcs: Vmcs, caps: Capabilities, context: EntryContext | None = None) -> EntryEvaluation:
        """A full evaluation of ``vmcs``."""
        ctx = _DEFAULT_CONTEXT if context is None else context
        return cls(vmcs, caps, ctx, evaluate_vm_entry(vmcs, caps, ctx))

    def update(self, vmcs: Vmcs, caps: Capabilities | None = None,
               context: EntryContext | None = None) -> EntryEvaluation:
        """The evaluation of ``vmcs`` under ``caps`` and ``context`` (default: this one's)."""
        caps = self.caps if caps is None else caps
        ctx = self.context if context is None else context
        also_stale = _context_change(self.context, ctx) if caps is self.caps or caps == self.caps else None
        if also_stale is None:
            verdict = evaluate_vm_entry(vmcs, caps, ctx)
        else:
            verdict = _reevaluate(self.vmcs, self.verdict, vmcs, caps, ctx, also_stale=also_stale)
        return EntryEvaluation(vmcs, caps, ctx, verdict)


_RECENT_LIMIT = 256
_recent: dict[Hashable, EntryEvaluation] = {}


@checked
def evaluate_vm_entry_after(key: Hashable, vmcs: Vmcs, caps: Capabilities, context: EntryContext) -> EntryVerdict:
    """:func:`evaluate_vm_entry` of ``vmcs``, computed from the last evaluation made under ``key`` (VMLAUNCH
    and VMRESUME use the VMCS's address) by :meth:`EntryEvaluation.update`: after a VM exit and the VMWRITEs
    of its handling only the checks that read a changed field run again. The verdict is the full
    evaluation's whatever evaluation ``key`` last named (tested equal)."""
    last = _recent.get(key)
    evaluation = EntryEvaluation.of(vmcs, caps, context) if last is None else last.update(vmcs, caps, context)
    if last is None and len(_recent) >= _RECENT_LIMIT:
        _recent.clear()
    _recent[key] = evaluation
    return evaluation.verdict


__all__ = ["FAILURE_ORDER", "REGISTRY", "EntryContext", "EntryEvaluation", "EntryVerdict", "Finding", "Gate",
           "Violation", "entry_check", "evaluate_every_check", "evaluate_vm_entry", "evaluate_vm_entry_after",
           "evaluate_vm_entry_incremental",
           "exec_controls", "exit_entry_controls", "guest_non_register", "guest_segments",
           "guest_state", "host_state", "msr_load", "smm"]
