"""Checks on the VM-exit and VM-entry control fields (vtx/vmx/entry/exit_entry_controls.py).

Every check has an input that breaks exactly that check — a template under a preset that allows
what the input needs, with a few fields changed — and the nearest input that passes it. Checks that
depend on a capability are tried under a profile that allows the value and one that does not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs
import pytest

from vtx import spec
from vtx.errors import NotEvaluable
from vtx.outcomes import VmFailValid
from vtx.spec import CAPABILITY_MSRS, get_control, reg_bit
from vtx.vmx.capabilities import Capabilities, load_preset
from vtx.vmx.entry import REGISTRY, EntryContext, EntryVerdict, evaluate_vm_entry
from vtx.vmx.entry.catalogue import ENTRY_CHECKS
from vtx.vmx.entry.exit_entry_controls import (
    CR4_FRED,
    ENTRY_MSR_LOAD,
    EXIT_MSR_LOAD,
    EXIT_MSR_STORE,
    FORMATS,
    MsrArea,
)
from vtx.vmx.templates import PAGE_TABLES, build_template
from vtx.vmx.vmcs import Vmcs

CONTROL_FIELD_ERROR = VmFailValid(spec.get_error("ENTRY_INVALID_CONTROL_FIELD"))
GROUPS = ("exit_controls", "entry_controls")
ALREADY_REGISTERED = {"controls.exit.reserved_bits", "controls.exit.secondary_reserved_bits",
                      "controls.entry.reserved_bits"}


def _without_mtf(caps: Capabilities) -> Capabilities:
    """``caps`` without the 1-setting of 'monitor trap flag' (in both processor-based control MSRs)."""
    allowed1 = CAPABILITY_MSRS["IA32_VMX_PROCBASED_CTLS"].field("allowed1")
    mtf = get_control("proc", "monitor_trap_flag").mask
    overlay = {}
    for msr in ("IA32_VMX_PROCBASED_CTLS", "IA32_VMX_TRUE_PROCBASED_CTLS"):
        raw = caps.msr(msr)
        assert raw is not None
        overlay[msr] = allowed1.put(raw, allowed1.get(raw) & ~mtf)
    return caps.overlay(overlay, name=f"{caps.name}_without_mtf")


PROFILES: Mapping[str, Capabilities] = {
    name: load_preset(name) for name in ("skylake_client", "ivybridge_client", "raptorlake_client", "penryn_server",
                                         "max")
} | {"max_without_mtf": _without_mtf(load_preset("max"))}

# ----------------------------------------------------------------------------- input builders

INFO = "VM_ENTRY_INTR_INFO_FIELD"
ERROR_CODE = "VM_ENTRY_EXCEPTION_ERROR_CODE"
LENGTH = "VM_ENTRY_INSTRUCTION_LEN"
_VALID = reg_bit("VM_ENTRY_INTERRUPTION_INFO", "VALID").mask
_VECTOR = reg_bit("VM_ENTRY_INTERRUPTION_INFO", "VECTOR").bits
_TYPE = reg_bit("VM_ENTRY_INTERRUPTION_INFO", "TYPE").bits
_DELIVER = reg_bit("VM_ENTRY_INTERRUPTION_INFO", "DELIVER_ERROR_CODE").mask
NESTED = reg_bit("VM_ENTRY_INTERRUPTION_INFO", "NESTED_EXCEPTION").mask
RESERVED_BIT = 1 << reg_bit("VM_ENTRY_INTERRUPTION_INFO", "RESERVED_30_14").bits.lo
ERROR_CODE_RESERVED = reg_bit("VM_ENTRY_EXCEPTION_ERROR_CODE", "RESERVED").bits
MAX_LENGTH = FORMATS.max_instruction_length
SAVE_TIMER = get_control("exit", "save_vmx_preemption_timer_value").mask
ACTIVATE_TIMER = get_control("pin", "activate_vmx_preemption_timer").mask
ENTRY_TO_SMM = get_control("entry", "entry_to_smm").mask
DEACTIVATE_DUAL_MONITOR = get_control("entry", "deactivate_dual_monitor_treatment").mask
SMI_BLOCKING = reg_bit("VMCS_INTERRUPTIBILITY", "BLOCKING_BY_SMI").mask
EXTERNAL_VECTOR = 0x80  # any vector of an external or software interrupt (32-255)


def vector(mnemonic: str) -> int:
    """The vector of an exception by mnemonic (``"GP"`` -> 13)."""
    return next(v for v, name in FORMATS.exception_names.items() if name == mnemonic)


def other_event(name: str) -> int:
    return next(v for v, n in FORMATS.other_events.items() if n == name)


def info(type_name: str, vector_: int, *, deliver: bool = False, extra: int = 0) -> int:
    """A valid VM-entry interruption-information value."""
    value = _VECTOR.put(_TYPE.put(_VALID, FORMATS.types[type_name].value), vector_)
    return value | (_DELIVER if deliver else 0) | extra


@attrs.frozen
class Case:
    """A template under a profile, with fields overwritten (``fields``) or bits OR-ed in (``bits``)."""

    profile: str
    fields: Mapping[str, int] = attrs.field(factory=dict)
    bits: Mapping[str, int] = attrs.field(factory=dict)
    template: str = "long-mode"
    in_smm: bool = False

    def vmcs(self) -> Vmcs:
        base = build_template(self.template, PROFILES[self.profile])
        return base.with_fields({**{f: base[f] | b for f, b in self.bits.items()}, **self.fields})

    def verdict(self) -> EntryVerdict:
        return evaluate_vm_entry(self.vmcs(), PROFILES[self.profile], EntryContext(in_smm=self.in_smm))


def hardware_exception(mnemonic: str, *, deliver: bool, profile: str = "skylake_client", template: str = "long-mode",
                       extra: int = 0) -> Case:
    return Case(profile, {INFO: info("hardware_exception", vector(mnemonic), deliver=deliver, extra=extra)},
                template=template)


def external_interrupt(profile: str, *, deliver: bool = False, extra: int = 0) -> Case:
    """An injected external interrupt, into a guest with RFLAGS.IF = 1 as a guest-state rule requires."""
    return Case(profile, {INFO: info("external_interrupt", EXTERNAL_VECTOR, deliver=deliver, extra=extra)},
                bits={"GUEST_RFLAGS": reg_bit("RFLAGS", "IF").mask})


FRED_GUEST = {"GUEST_CR4": CR4_FRED}  # with the long-mode template's 'IA-32e mode guest'


def fred_event(name: str, profile: str, *, length: int = 0, fred_guest: bool = True) -> Case:
    return Case(profile, {INFO: info("other_event", other_event(name)), LENGTH: length},
                bits=FRED_GUEST if fred_guest else {})


# ----------------------------------------------------------------------------- rejects / accepts tables

# (check id, input breaking it, every check id the input violates) — the last is the check alone
# unless another catalogue row restates part of the same rule (noted per row).
REJECTS: list[tuple[str, Case, frozenset[str]]] = [
    ("controls.exit.save_preemption_timer", Case("skylake_client", bits={"VM_EXIT_CONTROLS": SAVE_TIMER}),
     frozenset()),
    ("controls.entry.event_injection.type", Case("skylake_client", {INFO: info("reserved", 0)}), frozenset()),
    # Without MTF, a pending MTF VM exit also breaks other_event_vector ("vector 0 additionally requires MTF").
    ("controls.entry.event_injection.type",
     Case("penryn_server", {INFO: info("other_event", other_event("pending_mtf_vm_exit"))}),
     frozenset({"controls.entry.event_injection.other_event_vector"})),
    ("controls.entry.event_injection.type", fred_event("syscall", "max_without_mtf", fred_guest=False),
     frozenset({"controls.entry.event_injection.other_event_vector"})),
    ("controls.entry.event_injection.nmi_vector", Case("skylake_client", {INFO: info("nmi", vector("BP"))}),
     frozenset()),
    ("controls.entry.event_injection.hardware_exception_vector",
     Case("skylake_client", {INFO: info("hardware_exception", FORMATS.exception_vectors.hi + 1)}), frozenset()),
    ("controls.entry.event_injection.other_event_vector",
     Case("skylake_client", {INFO: info("other_event", max(FORMATS.other_events) + 1)}), frozenset()),
    ("controls.entry.event_injection.other_event_vector", fred_event("syscall", "max", fred_guest=False),
     frozenset()),
    ("controls.entry.event_injection.other_event_vector",
     fred_event("sysenter", "skylake_client", fred_guest=False), frozenset()),
    ("controls.entry.event_injection.error_code_required", hardware_exception("GP", deliver=False), frozenset()),
    ("controls.entry.event_injection.error_code_required", hardware_exception("CP", deliver=False), frozenset()),
    ("controls.entry.event_injection.error_code_forbidden", hardware_exception("UD", deliver=True), frozenset()),
    ("controls.entry.event_injection.error_code_forbidden",
     hardware_exception("GP", deliver=True, template="real-mode"), frozenset()),
    ("controls.entry.event_injection.error_code_forbidden",
     hardware_exception("GP", deliver=True, template="real-mode", profile="raptorlake_client"), frozenset()),
    ("controls.entry.event_injection.error_code_forbidden",
     external_interrupt("raptorlake_client", deliver=True), frozenset()),
    ("controls.entry.event_injection.reserved_bits",
     external_interrupt("skylake_client", extra=RESERVED_BIT), frozenset()),
    ("controls.entry.event_injection.reserved_bits",
     hardware_exception("GP", deliver=True, extra=NESTED), frozenset()),
    ("controls.entry.event_injection.nested_exception_type",
     external_interrupt("max", extra=NESTED), frozenset()),
    ("controls.entry.event_injection.error_code_reserved_bits",
     Case("skylake_client", {INFO: info("hardware_exception", vector("GP"), deliver=True),
                             ERROR_CODE: 1 << ERROR_CODE_RESERVED.lo}), frozenset()),
    ("controls.entry.event_injection.instruction_length",
     Case("skylake_client", {INFO: info("software_interrupt", EXTERNAL_VECTOR), LENGTH: MAX_LENGTH + 1}),
     frozenset()),
    ("controls.entry.event_injection.instruction_length",
     Case("ivybridge_client", {INFO: info("software_exception", vector("BP")), LENGTH: 0}), frozenset()),
    ("controls.entry.event_injection.instruction_length",
     Case("ivybridge_client", {INFO: info("privileged_software_exception", vector("DB")), LENGTH: 0}), frozenset()),
    ("controls.entry.event_injection.fred_instruction_length", fred_event("syscall", "max", length=MAX_LENGTH + 1),
     frozenset()),
    ("controls.entry.smm_controls_outside_smm", Case("skylake_client", bits={"VM_ENTRY_CONTROLS":
                                                                             DEACTIVATE_DUAL_MONITOR}), frozenset()),
    # In SMM (so that only the exclusivity rule applies), with SMI blocking as 'entry to SMM' requires.
    ("controls.entry.smm_controls_exclusive",
     Case("skylake_client", bits={"VM_ENTRY_CONTROLS": ENTRY_TO_SMM | DEACTIVATE_DUAL_MONITOR,
                                  "GUEST_INTERRUPTIBILITY_INFO": SMI_BLOCKING}, in_smm=True), frozenset()),
]

ACCEPTS: list[tuple[str, Case]] = [
    ("controls.exit.save_preemption_timer",
     Case("skylake_client", bits={"VM_EXIT_CONTROLS": SAVE_TIMER, "PIN_BASED_VM_EXEC_CONTROL": ACTIVATE_TIMER})),
    ("controls.entry.event_injection.type",
     Case("skylake_client", {INFO: info("other_event", other_event("pending_mtf_vm_exit"))})),
    ("controls.entry.event_injection.type", fred_event("syscall", "max_without_mtf")),
    ("controls.entry.event_injection.type", Case("penryn_server", {INFO: info("nmi", vector("NMI"))})),
    ("controls.entry.event_injection.nmi_vector", Case("skylake_client", {INFO: info("nmi", vector("NMI"))})),
    ("controls.entry.event_injection.hardware_exception_vector",
     Case("skylake_client", {INFO: info("hardware_exception", FORMATS.exception_vectors.hi)})),
    ("controls.entry.event_injection.other_event_vector",
     Case("skylake_client", {INFO: info("other_event", other_event("pending_mtf_vm_exit"))})),
    ("controls.entry.event_injection.other_event_vector", fred_event("syscall", "max")),
    ("controls.entry.event_injection.other_event_vector", fred_event("sysenter", "max")),
    ("controls.entry.event_injection.error_code_required", hardware_exception("GP", deliver=True)),
    ("controls.entry.event_injection.error_code_required",
     hardware_exception("GP", deliver=False, profile="raptorlake_client")),
    ("controls.entry.event_injection.error_code_required",
     hardware_exception("GP", deliver=False, template="real-mode")),
    ("controls.entry.event_injection.error_code_forbidden", hardware_exception("UD", deliver=False)),
    ("controls.entry.event_injection.error_code_forbidden",
     hardware_exception("UD", deliver=True, profile="raptorlake_client")),
    ("controls.entry.event_injection.error_code_forbidden", hardware_exception("AC", deliver=True)),
    ("controls.entry.event_injection.reserved_bits", hardware_exception("GP", deliver=True, profile="max",
                                                                        extra=NESTED)),
    ("controls.entry.event_injection.reserved_bits", Case("skylake_client", {INFO: RESERVED_BIT})),  # not valid
    ("controls.entry.event_injection.nested_exception_type", hardware_exception("GP", deliver=True, profile="max",
                                                                                extra=NESTED)),
    # Without IA32_VMX_BASIC[58] bit 13 is reserved (reserved_bits), not a misplaced nested exception.
    ("controls.entry.event_injection.nested_exception_type", external_interrupt("skylake_client", extra=NESTED)),
    ("controls.entry.event_injection.error_code_reserved_bits",
     Case("skylake_client", {INFO: info("hardware_exception", vector("GP"), deliver=True),
                             ERROR_CODE: reg_bit("VM_ENTRY_EXCEPTION_ERROR_CODE", "ERROR_CODE").mask})),
    ("controls.entry.event_injection.error_code_reserved_bits",  # no error code delivered: the field is unused
     Case("skylake_client", {INFO: info("hardware_exception", vector("UD")), ERROR_CODE: ERROR_CODE_RESERVED.mask})),
    ("controls.entry.event_injection.instruction_length",
     Case("skylake_client", {INFO: info("software_interrupt", EXTERNAL_VECTOR), LENGTH: MAX_LENGTH})),
    ("controls.entry.event_injection.instruction_length",
     Case("skylake_client", {INFO: info("software_exception", vector("BP")), LENGTH: 0})),
    ("controls.entry.event_injection.fred_instruction_length", fred_event("syscall", "max", length=MAX_LENGTH)),
    # Without FRED the vector itself is invalid (other_event_vector); the length is not checked.
    ("controls.entry.event_injection.fred_instruction_length",
     fred_event("syscall", "skylake_client", length=MAX_LENGTH + 1, fred_guest=False)),
    ("controls.entry.smm_controls_outside_smm",
     Case("skylake_client", bits={"VM_ENTRY_CONTROLS": DEACTIVATE_DUAL_MONITOR}, in_smm=True)),
    ("controls.entry.smm_controls_exclusive",
     Case("skylake_client", bits={"VM_ENTRY_CONTROLS": DEACTIVATE_DUAL_MONITOR}, in_smm=True)),
]

# Every MSR area has the same three rules; each is tried under Ivy Bridge (MAXPHYADDR 36) and
# Skylake (MAXPHYADDR 39).
AREAS: Mapping[str, MsrArea] = {"controls.exit.msr_store": EXIT_MSR_STORE, "controls.exit.msr_load": EXIT_MSR_LOAD,
                                "controls.entry.msr_load": ENTRY_MSR_LOAD}
IVYBRIDGE_WIDTH = 36
ENTRY_BYTES = FORMATS.msr_entry_bytes


def area_case(area: MsrArea, profile: str, address: int, count: int) -> Case:
    return Case(profile, {area.address.name: address, area.count.name: count})


for _prefix, _area in AREAS.items():
    REJECTS += [
        (f"{_prefix}.alignment", area_case(_area, "skylake_client", PAGE_TABLES + ENTRY_BYTES // 2, 1), frozenset()),
        # An address beyond the width puts the last byte beyond it too.
        (f"{_prefix}.address_width", area_case(_area, "ivybridge_client", 1 << IVYBRIDGE_WIDTH, 1),
         frozenset({f"{_prefix}.last_byte"})),
        (f"{_prefix}.last_byte", area_case(_area, "ivybridge_client", (1 << IVYBRIDGE_WIDTH) - ENTRY_BYTES, 2),
         frozenset()),
    ]
    ACCEPTS += [
        (f"{_prefix}.alignment", area_case(_area, "skylake_client", PAGE_TABLES + ENTRY_BYTES, 1)),
        (f"{_prefix}.alignment", area_case(_area, "skylake_client", PAGE_TABLES + ENTRY_BYTES // 2, 0)),
        (f"{_prefix}.address_width", area_case(_area, "skylake_client", 1 << IVYBRIDGE_WIDTH, 1)),
        (f"{_prefix}.address_width", area_case(_area, "ivybridge_client", 1 << IVYBRIDGE_WIDTH, 0)),
        (f"{_prefix}.last_byte", area_case(_area, "ivybridge_client", (1 << IVYBRIDGE_WIDTH) - ENTRY_BYTES, 1)),
        (f"{_prefix}.last_byte", area_case(_area, "skylake_client", (1 << IVYBRIDGE_WIDTH) - ENTRY_BYTES, 2)),
    ]


def _ids(cases: Sequence[tuple[str, Case, frozenset[str]] | tuple[str, Case]]) -> list[str]:
    return [f"{c[0]}-{c[1].profile}-{i}" for i, c in enumerate(cases)]


# ----------------------------------------------------------------------------- tests


def test_every_check_of_the_groups_is_registered_and_tested() -> None:
    rows = {r.id for r in ENTRY_CHECKS if r.group in GROUPS} - ALREADY_REGISTERED
    assert rows <= set(REGISTRY)
    assert {c[0] for c in REJECTS} == rows
    assert {c[0] for c in ACCEPTS} == rows


@pytest.mark.parametrize(("check_id", "case", "also"), REJECTS, ids=_ids(REJECTS))
def test_rejects_input_breaking_this_check(check_id: str, case: Case, also: frozenset[str]) -> None:
    verdict = case.verdict()
    assert {v.check_id for v in verdict.violations} == {check_id} | also
    assert verdict.outcome == CONTROL_FIELD_ERROR
    assert not any(u.startswith(check_id + ":") for u in verdict.not_evaluable)
    message = next(v.message for v in verdict.violations if v.check_id == check_id)
    assert any(f in message for f in case.fields.keys() | case.bits.keys())


@pytest.mark.parametrize(("check_id", "case"), ACCEPTS, ids=_ids(ACCEPTS))
def test_accepts_nearest_valid_input(check_id: str, case: Case) -> None:
    verdict = case.verdict()
    assert check_id not in {v.check_id for v in verdict.violations}
    assert not any(u.startswith(check_id + ":") for u in verdict.not_evaluable)


@pytest.mark.parametrize(("control", "title"), [(ENTRY_TO_SMM, "Entry to SMM"),
                                                (DEACTIVATE_DUAL_MONITOR, "Deactivate dual-monitor treatment")])
def test_smm_controls_outside_smm_names_each_control(control: int, title: str) -> None:
    # 'entry to SMM' outside SMM also breaks a guest-state rule on SMI blocking whichever way it is
    # set, so only this check's messages are compared here.
    verdict = Case("skylake_client", bits={"VM_ENTRY_CONTROLS": control}).verdict()
    messages = [v.message for v in verdict.violations if v.check_id == "controls.entry.smm_controls_outside_smm"]
    assert len(messages) == 1
    assert title in messages[0]
    assert verdict.outcome == CONTROL_FIELD_ERROR


def test_save_preemption_timer_is_skipped_on_return_from_smm() -> None:
    returning = Case("skylake_client", bits={"VM_EXIT_CONTROLS": SAVE_TIMER}, in_smm=True)
    entering_smm = attrs.evolve(returning, bits={**returning.bits, "VM_ENTRY_CONTROLS": ENTRY_TO_SMM})
    check = "controls.exit.save_preemption_timer"
    assert check not in {v.check_id for v in returning.verdict().violations}
    assert check in {v.check_id for v in entering_smm.verdict().violations}


def _without(caps: Capabilities, msr: str) -> Capabilities:
    return attrs.evolve(caps, name=f"{caps.name}_without_{msr}", msrs={k: v for k, v in caps.msrs.items() if k != msr})


@pytest.mark.parametrize(("check_id", "case", "missing"), [
    ("controls.entry.event_injection.instruction_length",
     Case("skylake_client", {INFO: info("software_interrupt", EXTERNAL_VECTOR), LENGTH: 0}), "IA32_VMX_MISC"),
    ("controls.entry.event_injection.error_code_required", hardware_exception("GP", deliver=False), "IA32_VMX_BASIC"),
    ("controls.entry.event_injection.reserved_bits", hardware_exception("GP", deliver=True, extra=NESTED),
     "IA32_VMX_BASIC"),
])
def test_not_evaluable_without_the_capability_msr(check_id: str, case: Case, missing: str) -> None:
    caps = _without(PROFILES[case.profile], missing)
    with pytest.raises(NotEvaluable):
        list(REGISTRY[check_id].fn(case.vmcs(), caps, EntryContext()))
