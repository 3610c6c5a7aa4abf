"""The fast paths of VM-entry checking, VMREAD/VMWRITE and the capability look-ups equal the readable
ones: applicability gates (checks skipped while the control their catalogue row applies under has the
other value), incremental re-evaluation after field writes, the precomputed VMREAD/VMWRITE table and
the memoized Capabilities answers."""

from __future__ import annotations

import contextlib
import random

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtx import spec
from vtx.bits import mask
from vtx.errors import InputError, NotEvaluable
from vtx.paging.ept import EPT, EPTP_FIELDS, _ept_from_eptp, ept_from_eptp
from vtx.spec import VMCS_FIELDS, VmcsField
from vtx.vmx.capabilities import Capabilities, load_preset
from vtx.vmx.entry import (  # the fast paths under test
    REGISTRY,
    EntryContext,
    EntryEvaluation,
    Gate,
    _applicable,
    _gate_slots,
    _gates_hold,
    _plan,
    _stale_checks,
    evaluate_every_check,
    evaluate_vm_entry,
    evaluate_vm_entry_incremental,
    gates,
)
from vtx.vmx.entry.applicability import condition_of, conditions
from vtx.vmx.entry.catalogue import ENTRY_CHECKS
from vtx.vmx.templates import TEMPLATES, build_template
from vtx.vmx.vmcs import _ACCESS, Vmcs, _access, _lookup, vmread, vmwrite

PRESETS = ["skylake_client", "max", "penryn_server"]
MAX = load_preset("max")
WRITABLE = [f for f in VMCS_FIELDS if not f.is_read_only]
CONTROL_FIELDS = [cf.vmcs_field for cf in spec.CONTROL_FIELDS]
CONTEXTS = [EntryContext(), EntryContext(instruction="vmresume"), EntryContext(in_smm=True),
            EntryContext(vmm_ia32e_mode=False)]


def _template(caps: Capabilities, name: str) -> Vmcs:
    try:
        return build_template(name, caps)
    except Exception:  # a template the preset cannot run (real-mode without EPT): the long-mode one
        return build_template("long-mode", caps)


@st.composite
def writes(draw: st.DrawFn) -> tuple[VmcsField, int]:
    """One VMWRITE-like change: a random value, or one bit of the field flipped (so that control bits,
    and with them the gates, toggle often); the value fits the field."""
    field = draw(st.sampled_from(CONTROL_FIELDS) | st.sampled_from(WRITABLE))
    if draw(st.booleans()):
        return field, -1 - draw(st.integers(0, field.bits - 1))  # decoded in _apply: flip that bit
    return field, draw(st.integers(0, mask(field.bits)))


def _apply(vmcs: Vmcs, write: tuple[VmcsField, int]) -> Vmcs:
    field, value = write
    if value < 0:
        value = vmcs.get(field) ^ (1 << (-1 - value))
    return vmcs.set(field, value)


scenarios = st.tuples(st.sampled_from(PRESETS), st.sampled_from(TEMPLATES), st.sampled_from(CONTEXTS),
                      st.lists(writes(), min_size=1, max_size=8))


# ----------------------------------------------------------------------------- applicability gates


def test_gates_are_read_from_the_catalogue() -> None:
    rows = {r.id: r for r in ENTRY_CHECKS}
    ept = [g for r in ENTRY_CHECKS if r.applies_if == "the 'enable EPT' control is 1" for g in gates(r)]
    assert ept and all(g.flag.field.name == "SECONDARY_VM_EXEC_CONTROL" and g.value for g in ept)
    assert all(g.flag.activator_field is not None for g in ept)  # a secondary control: activated
    host32 = [r for r in ENTRY_CHECKS if r.applies_if == "the 'host address-space size' VM-exit control is 0"]
    assert host32 and all([g.value for g in gates(r)] == [False] for r in host32)
    both = [r for r in ENTRY_CHECKS if r.applies_if.startswith("the 'load FRED' VM-entry control is 1 and the")]
    assert both and all(len(gates(r)) == 2 for r in both)
    assert gates(rows["controls.pin_based.reserved_bits"]) == ()  # "always"
    assert sum(len(gates(r)) for r in ENTRY_CHECKS) > 100


def test_gate_fields_are_catalogue_fields_of_their_check() -> None:
    """A gate reads only fields its row lists, so incremental evaluation re-runs the check when it opens."""
    for row in ENTRY_CHECKS:
        for gate in gates(row):
            assert set(gate.fields()) <= set(row.fields), (row.id, gate.fields())


@given(scenarios)
def test_fast_gate_test_equals_gate_holds(scenario: tuple[str, str, EntryContext, list[tuple[VmcsField, int]]]) -> None:
    preset, template, _, changes = scenario
    vmcs = _template(load_preset(preset), template)
    for change in changes:
        vmcs = _apply(vmcs, change)
    for check in REGISTRY.values():
        row_gates = gates(check.spec)
        assert _gates_hold(vmcs.values, _gate_slots(row_gates)) == all(g.holds(vmcs) for g in row_gates)


@given(scenarios)
def test_skipping_inapplicable_checks_changes_no_verdict(
        scenario: tuple[str, str, EntryContext, list[tuple[VmcsField, int]]]) -> None:
    """A check whose gate is closed neither reports a violation nor raises NotEvaluable."""
    preset, template, ctx, changes = scenario
    caps = load_preset(preset)
    vmcs = _template(caps, template)
    for change in changes:
        vmcs = _apply(vmcs, change)
        assert evaluate_vm_entry(vmcs, caps, ctx) == evaluate_every_check(vmcs, caps, ctx)


GATED = sorted(check_id for check_id, check in REGISTRY.items() if gates(check.spec))


def _close(vmcs: Vmcs, gate: Gate) -> Vmcs:
    """``vmcs`` with ``gate``'s control set to the value under which its rule does not apply."""
    flag = gate.flag
    if gate.value:
        return vmcs.set(flag.field, vmcs.get(flag.field) & ~flag.mask)
    if flag.activator_field is not None:
        vmcs = vmcs.set(flag.activator_field, vmcs.get(flag.activator_field) | flag.activator)
    return vmcs.set(flag.field, vmcs.get(flag.field) | flag.mask)


@given(st.sampled_from(GATED), st.sampled_from(PRESETS), st.sampled_from(CONTEXTS), st.data())
def test_a_check_whose_gate_is_closed_reports_nothing(check_id: str, preset: str, ctx: EntryContext,
                                                      data: st.DataObject) -> None:
    """Whatever the other fields it reads hold, a check reports no violation and raises no NotEvaluable
    while one of its gates is closed: skipping it then is sound."""
    check = REGISTRY[check_id]
    caps = load_preset(preset)
    vmcs = build_template("long-mode", caps)
    for name in check.spec.fields:
        field = VMCS_FIELDS[name]
        vmcs = vmcs.set(field, data.draw(st.just(vmcs.get(field)) | st.integers(0, mask(field.bits)), label=name))
    gate = data.draw(st.sampled_from(gates(check.spec)))
    vmcs = _close(vmcs, gate)
    assert not gate.holds(vmcs)
    assert list(check.fn(vmcs, caps, ctx)) == []


def test_closed_gate_skips_a_violating_check_only_when_it_cannot_be_violated() -> None:
    caps = load_preset("skylake_client")
    vmcs = build_template("long-mode", caps)
    entry = VMCS_FIELDS["VM_ENTRY_CONTROLS"]
    load_debug = spec.get_control("entry", "load_debug_controls").mask
    bad = vmcs.set(VMCS_FIELDS["GUEST_IA32_DEBUGCTL"], mask(64)).set(entry, vmcs.get(entry) | load_debug)
    flagged = {v.check_id for v in evaluate_vm_entry(bad, caps).violations}
    assert "guest.debugctl.reserved_bits" in flagged
    off = bad.set(entry, bad.get(entry) & ~load_debug)
    assert "guest.debugctl.reserved_bits" not in {v.check_id for v in evaluate_vm_entry(off, caps).violations}
    assert evaluate_vm_entry(off, caps) == evaluate_every_check(off, caps)


# ----------------------------------------------------------------------------- field and processor-state conditions


def test_conditions_are_read_from_the_catalogue() -> None:
    rows = {r.id: r for r in ENTRY_CHECKS}
    (valid,) = conditions(rows["controls.entry.event_injection.type"])
    assert valid.field is not None and valid.field.name == "VM_ENTRY_INTR_INFO_FIELD" and not valid.holds_if_equal
    assert conditions(rows["guest.segments.ldtr_type"])[0].fields() == ("GUEST_LDTR_AR_BYTES",)
    assert [c.processor for c in conditions(rows["smm.executive_vmcs.alignment"])] == [("in_smm",)]
    assert conditions(rows["guest.vmcs_link.alignment"]) == conditions(rows["guest.vmcs_link.address_width"])
    assert conditions(rows["guest.segments.cs_db"])  # "... (RFLAGS.VM is 0) and the 'IA-32e mode guest' ..."
    assert conditions(rows["controls.pin_based.reserved_bits"]) == ()  # "always"
    # two wordings of one condition are one condition
    assert condition_of("LDTR is usable") == condition_of("LDTR is usable (bit 16 of its access rights is 0)")
    assert sum(len(conditions(r)) for r in ENTRY_CHECKS) > 60


def test_condition_fields_and_processor_terms_are_catalogue_ones_of_their_check() -> None:
    """A condition reads only fields and processor state its row lists: incremental evaluation re-runs the
    check when the condition becomes true, and a change of context re-runs everything."""
    for row in ENTRY_CHECKS:
        for condition in conditions(row):
            assert set(condition.fields()) <= set(row.fields), (row.id, condition)
            assert set(condition.processor) <= set(row.processor) | {"in_smm", "vmm_ia32e_mode"}, (row.id, condition)


CONDITION_FIELDS = sorted({n for r in ENTRY_CHECKS for c in conditions(r) for n in c.fields()})


@st.composite
def condition_inputs(draw: st.DrawFn) -> tuple[Vmcs, EntryContext]:
    """A template with the fields the conditions read drawn from values that make them true or false
    (0, all ones, one bit, or the template's own value)."""
    caps = load_preset(draw(st.sampled_from(PRESETS)))
    vmcs = _template(caps, draw(st.sampled_from(TEMPLATES)))
    for name in CONDITION_FIELDS:
        field = VMCS_FIELDS[name]
        value = draw(st.sampled_from([vmcs.get(field), 0, mask(field.bits)])
                     | st.integers(0, field.bits - 1).map(lambda b: 1 << b) | st.integers(0, mask(field.bits)))
        vmcs = vmcs.set(field, value)
    return vmcs, draw(st.sampled_from(CONTEXTS))


@given(condition_inputs())
def test_fast_condition_test_equals_condition_holds(inputs: tuple[Vmcs, EntryContext]) -> None:
    vmcs, ctx = inputs
    plan = _plan()
    bits = plan.condition_values(vmcs, ctx)
    assert [bool(bits >> n & 1) for n in range(len(plan.conditions))] == [c.holds(vmcs, ctx) for c in plan.conditions]


@given(condition_inputs())
def test_memoized_applicable_checks_equal_the_gates_and_conditions(inputs: tuple[Vmcs, EntryContext]) -> None:
    vmcs, ctx = inputs
    for _ in range(2):  # the first call may fill the memo, the second reads it
        expected = [(r.spec, r.fn) for r in REGISTRY.values() if all(g.holds(vmcs) for g in gates(r.spec))
                    and all(c.holds(vmcs, ctx) for c in conditions(r.spec))]
        assert list(_applicable(vmcs, ctx)) == expected


CONDITIONED = sorted(check_id for check_id, check in REGISTRY.items() if conditions(check.spec))


@given(st.sampled_from(CONDITIONED), st.sampled_from(PRESETS), st.data())
def test_a_check_whose_condition_is_false_reports_nothing(check_id: str, preset: str, data: st.DataObject) -> None:
    """Whatever the other fields it reads hold, a check reports no violation and raises no NotEvaluable
    while one of its conditions is false: skipping it then is sound."""
    check = REGISTRY[check_id]
    caps = load_preset(preset)
    condition = data.draw(st.sampled_from(conditions(check.spec)))
    # a context in which the condition is false, if the context decides it, else any
    ctx = data.draw(st.sampled_from([c for c in CONTEXTS if condition.context is None
                                     or getattr(c, condition.context[0]) is not condition.context[1]] or CONTEXTS))
    vmcs = build_template("long-mode", caps)
    for name in check.spec.fields:
        field = VMCS_FIELDS[name]
        vmcs = vmcs.set(field, data.draw(st.just(vmcs.get(field)) | st.integers(0, mask(field.bits)), label=name))
    if condition.field is not None and condition.holds(vmcs, ctx):  # make it false through its field
        value = vmcs.get(condition.field)
        false_value = (value & ~condition.mask | condition.equal if condition.holds_if_equal is False
                       else value ^ (condition.mask & ~(condition.mask - 1)))  # flip the lowest bit of the mask
        vmcs = vmcs.set(condition.field, false_value & mask(condition.field.bits))
    assert not condition.holds(vmcs, ctx)
    assert list(check.fn(vmcs, caps, ctx)) == []


# ----------------------------------------------------------------------------- incremental evaluation

CATALOGUE_GAPS: dict[str, str] = {}  # checks whose catalogue field list misses a field they read (none)
"""Rows of spec/vmx/entry_checks.toml whose ``fields`` omit a field their check reads (the check skips
itself for a VM entry that returns from SMM: in SMM with 'entry to SMM' 0), found by the audit below.
Incremental evaluation trusts ``fields``, so it can miss a change of that field for that check; the
row needs the field added (and ``processor = ["in_smm"]``)."""


def _reads(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext, check_id: str) -> set[str]:
    """The fields of ``vmcs`` that check ``check_id`` reads (through Vmcs.get)."""
    read: set[str] = set()
    original = Vmcs.get

    def get(self: Vmcs, field: VmcsField) -> int:
        if self is vmcs:
            read.add(field.name)
        return original(self, field)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Vmcs, "get", get)
        with contextlib.suppress(NotEvaluable):
            list(REGISTRY[check_id].fn(vmcs, caps, ctx))
    return read


def test_every_check_reads_only_its_catalogue_fields() -> None:
    """The premise of incremental evaluation, audited on random VMCSes (control bits flipped often): a
    check reads no field its row does not list, except the known gaps (to be fixed in the catalogue)."""
    rng = random.Random(1)
    gaps: dict[str, set[str]] = {}
    for preset in ("skylake_client", "max"):
        caps = load_preset(preset)
        for template in TEMPLATES:
            base = _template(caps, template)
            for _ in range(4):
                vmcs = base
                for _ in range(rng.randint(0, 12)):
                    field = rng.choice(CONTROL_FIELDS if rng.random() < 0.5 else WRITABLE)
                    vmcs = vmcs.set(field, vmcs.get(field) ^ 1 << rng.randrange(field.bits))
                for ctx in CONTEXTS:
                    for check_id, check in REGISTRY.items():
                        extra = _reads(vmcs, caps, ctx, check_id) - set(check.spec.fields)
                        if extra:
                            gaps.setdefault(check_id, set()).update(extra)
    assert all(extra <= {CATALOGUE_GAPS.get(check_id)} for check_id, extra in gaps.items()), gaps


def test_incremental_evaluation_sees_entry_to_smm() -> None:
    caps, ctx = load_preset("skylake_client"), EntryContext(in_smm=True)
    vmcs = build_template("long-mode", caps)
    save_timer = spec.get_control("exit", "save_vmx_preemption_timer_value").mask
    exits = vmcs.set(VMCS_FIELDS["VM_EXIT_CONTROLS"], vmcs.get(VMCS_FIELDS["VM_EXIT_CONTROLS"]) | save_timer)
    verdict = evaluate_vm_entry(exits, caps, ctx)
    entry = VMCS_FIELDS["VM_ENTRY_CONTROLS"]
    to_smm = exits.set(entry, exits.get(entry) | spec.get_control("entry", "entry_to_smm").mask)
    assert evaluate_vm_entry_incremental(exits, verdict, to_smm, caps, ctx) == evaluate_vm_entry(to_smm, caps, ctx)


@given(scenarios)
def test_incremental_evaluation_equals_full_evaluation(
        scenario: tuple[str, str, EntryContext, list[tuple[VmcsField, int]]]) -> None:
    preset, template, ctx, changes = scenario
    caps = load_preset(preset)
    vmcs = _template(caps, template)
    verdict = evaluate_vm_entry(vmcs, caps, ctx)
    evaluation = EntryEvaluation.of(vmcs, caps, ctx)
    for change in changes:
        new = _apply(vmcs, change)
        verdict = evaluate_vm_entry_incremental(vmcs, verdict, new, caps, ctx)
        evaluation = evaluation.update(new)
        full = evaluate_vm_entry(new, caps, ctx)
        assert verdict == full
        assert evaluation.verdict == full
        vmcs = new


def test_only_checks_that_read_a_changed_field_are_stale() -> None:
    vmcs = build_template("long-mode", MAX)
    rip = VMCS_FIELDS["GUEST_RIP"]
    stale = _stale_checks(vmcs, vmcs.set(rip, 0x2000))
    assert stale is not None and stale
    readers = {check_id for n, check_id in enumerate(REGISTRY) if n in stale}
    assert readers == {r.id for r in ENTRY_CHECKS if "GUEST_RIP" in r.fields and r.id in REGISTRY}
    assert _stale_checks(vmcs, vmcs.set(rip, vmcs.get(rip))) == set()
    other = attrs.evolve(vmcs, revision_id=vmcs.revision_id ^ 1)
    assert _stale_checks(vmcs, other) is None  # the header changed: everything is stale


def test_unchanged_vmcs_returns_the_previous_verdict() -> None:
    vmcs = build_template("long-mode", MAX)
    verdict = evaluate_vm_entry(vmcs, MAX)
    assert evaluate_vm_entry_incremental(vmcs, verdict, vmcs, MAX) is verdict


def test_capability_or_context_change_reevaluates_everything() -> None:
    """The same VMCS under other capabilities or another context: every check runs again."""
    vmcs = build_template("long-mode", MAX)
    evaluation = EntryEvaluation.of(vmcs, MAX)
    assert evaluation.verdict.succeeds
    rip = VMCS_FIELDS["GUEST_RIP"]
    lacking = Capabilities.from_msrs({}, name="bare")  # nothing known: checks become not evaluable
    changed = evaluation.update(vmcs.set(rip, 0x2000), caps=lacking)
    assert changed.verdict == evaluate_vm_entry(vmcs.set(rip, 0x2000), lacking)
    assert changed.verdict.not_evaluable
    smm = EntryContext(in_smm=True)
    in_smm = evaluation.update(vmcs, context=smm)
    assert in_smm.verdict == evaluate_vm_entry(vmcs, MAX, smm)
    assert in_smm.verdict != evaluation.verdict


def test_incremental_keeps_violations_in_registry_order() -> None:
    vmcs = build_template("long-mode", MAX)
    verdict = evaluate_vm_entry(vmcs, MAX)
    for name in ("HOST_RIP", "GUEST_CR0", "GUEST_RIP", "HOST_CR4"):
        new = vmcs.set(VMCS_FIELDS[name], mask(VMCS_FIELDS[name].bits))
        verdict = evaluate_vm_entry_incremental(vmcs, verdict, new, MAX)
        vmcs = new
    full = evaluate_vm_entry(vmcs, MAX)
    assert len({v.check_id for v in full.violations}) >= 3 and verdict == full


# ----------------------------------------------------------------------------- VMREAD / VMWRITE / Vmcs.set

ENCODINGS = sorted({*_ACCESS, 0x7FFF, 0x2FFF, 1 << 32 | 0x681E, 0xFFFF_FFFF})


@pytest.mark.parametrize("preset", [*PRESETS, "bare"])
def test_access_table_equals_lookup(preset: str) -> None:
    caps = Capabilities.from_msrs({}, name="bare") if preset == "bare" else load_preset(preset)
    for encoding in ENCODINGS:
        for operand_bits in (32, 64):
            try:
                expected = _lookup(caps, encoding, operand_bits)
            except NotEvaluable as e:
                with pytest.raises(NotEvaluable) as got:
                    _access(caps, encoding, operand_bits)
                assert str(got.value) == str(e)
                continue
            access = _access(caps, encoding, operand_bits)
            assert (None if access is None else (access.field, access.high)) == expected, hex(encoding)


@given(st.sampled_from(sorted(_ACCESS)), st.integers(0, mask(64)), st.sampled_from([32, 64]))
def test_vmwrite_then_vmread_agree_with_the_field_rules(encoding: int, value: int, operand_bits: int) -> None:
    """VMWRITE truncates to the field (a high access replaces bits 63:32); VMREAD zero-extends."""
    vmcs = build_template("long-mode", MAX)
    access = _ACCESS[encoding]
    before = vmcs.get(access.field)
    new, outcome = vmwrite(vmcs, MAX, encoding, value, operand_bits=operand_bits)
    assert outcome.__class__.__name__ == "VmSucceed"
    source = value & mask(operand_bits)
    expected = (source & mask(32)) << 32 | before & mask(32) if access.high else source & mask(access.field.bits)
    assert new.get(access.field) == expected
    read = vmread(new, MAX, encoding, operand_bits=operand_bits)
    assert read.value == ((expected >> 32) if access.high else expected) & mask(operand_bits)
    untouched = [f for f in VMCS_FIELDS if f is not access.field]
    assert all(new.get(f) == vmcs.get(f) for f in untouched)


@given(st.sampled_from(list(VMCS_FIELDS)), st.integers(0, mask(64)))
def test_set_fast_path_equals_with_fields(field: VmcsField, value: int) -> None:
    value &= mask(field.bits)
    vmcs = build_template("long-mode", MAX)
    assert vmcs.set(field, value) == vmcs.with_fields({field.name: hex(value)})


# ----------------------------------------------------------------------------- Capabilities memos


@pytest.mark.parametrize("preset", PRESETS)
def test_memoized_capability_answers_equal_computed_ones(preset: str) -> None:
    fresh = load_preset(preset)
    caps = Capabilities(fresh.name, fresh.msrs, fresh.cpuid, fresh.facts)  # no memo yet
    for _ in range(2):  # first call fills the memo, second reads it
        for cf in spec.CONTROL_FIELDS:
            assert caps.allowed0(cf.key) == caps._allowed0(cf.key)
            assert caps.allowed1(cf.key) == caps._allowed1(cf.key)
        for msr in spec.CAPABILITY_MSRS:
            for bitfield in msr.bitfields:
                assert caps.msr_field(msr.name, bitfield.name) == caps._msr_field(msr.name, bitfield.name)


def test_memoized_ept_equals_computed_ept() -> None:
    """ept_from_eptp is computed once per capabilities value, EPTP and secondary controls."""
    caps = load_preset("skylake_client")
    write_back = next(t.value for t in EPT.memory_types if t.name == "WB")
    four_levels = next(w.encoded for w in EPT.walk_lengths if w.length == 4)
    eptp = (EPTP_FIELDS["root"].bits.put(0, 0x5000 >> 12) | EPTP_FIELDS["memory_type"].bits.put(0, write_back)
            | EPTP_FIELDS["walk_length"].bits.put(0, four_levels))
    first = ept_from_eptp(eptp, caps)
    assert first == _ept_from_eptp(eptp, caps, 0, 0)
    assert ept_from_eptp(eptp, caps) is first
    mbec = spec.get_control("proc2", "mode_based_execute_control_for_ept").mask
    assert ept_from_eptp(eptp, caps, secondary_controls=mbec) == _ept_from_eptp(eptp, caps, mbec, 0)
    assert ept_from_eptp(eptp, caps, secondary_controls=mbec) != first
    other = load_preset("max")
    assert ept_from_eptp(eptp, other) == _ept_from_eptp(eptp, other, 0, 0)
    with pytest.raises(InputError, match="eptp"):
        ept_from_eptp(eptp & ~EPTP_FIELDS["walk_length"].mask, caps)  # a 1-level walk: invalid, never memoized
