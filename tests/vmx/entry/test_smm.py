"""VM entries that return from SMM (dual-monitor treatment): executive-VMCS pointer checks,
the executive VMCS's execution controls, and the limits of a return to VMX root operation."""

from __future__ import annotations

import attrs
import pytest

from vtx.outcomes import VmEntryFailed, VmFailValid
from vtx.spec import get_control
from vtx.vmx.capabilities import load_preset
from vtx.vmx.entry import EntryContext, EntryVerdict, evaluate_vm_entry
from vtx.vmx.entry.guest_non_register import NMI, OTHER_EVENT, PENDING_MTF, WAIT_FOR_SIPI
from vtx.vmx.templates import build_template
from vtx.vmx.vmcs import LaunchState, Vmcs

SKYLAKE = load_preset("skylake_client")
VMXON, CURRENT, EXECUTIVE = 0x1000, 0x2000, 0x3000
TEMPLATE = build_template("long-mode", SKYLAKE)
LAUNCHED_EXECUTIVE = attrs.evolve(TEMPLATE, launch_state=LaunchState.LAUNCHED)
DEACTIVATE = get_control("entry", "deactivate_dual_monitor_treatment").mask
ENTRY_TO_SMM = get_control("entry", "entry_to_smm").mask
VALID = 1 << 31
NMI_VECTOR = 2


def run(fields: dict[str, int], *, executive: Vmcs | None = LAUNCHED_EXECUTIVE, in_smm: bool = True) -> EntryVerdict:
    regions = {EXECUTIVE: executive} if executive is not None else {}
    ctx = EntryContext(in_smm=in_smm, vmxon_pointer=VMXON, current_vmcs=CURRENT, regions=regions)
    return evaluate_vm_entry(TEMPLATE.with_fields({"EXECUTIVE_VMCS_POINTER": EXECUTIVE, **fields}), SKYLAKE, ctx)


def ids(v: EntryVerdict) -> set[str]:
    return {x.check_id for x in v.violations}


def error(v: EntryVerdict) -> int | None:
    return v.outcome.error.number if isinstance(v.outcome, VmFailValid) else None


def test_a_valid_return_from_smm_passes() -> None:
    assert run({}).succeeds


@pytest.mark.parametrize(("fields", "executive", "check_id", "number"), [
    ({"EXECUTIVE_VMCS_POINTER": EXECUTIVE + 8}, LAUNCHED_EXECUTIVE, "smm.executive_vmcs.alignment", 16),
    ({"EXECUTIVE_VMCS_POINTER": 1 << 40}, LAUNCHED_EXECUTIVE, "smm.executive_vmcs.address_width", 16),
    ({}, attrs.evolve(LAUNCHED_EXECUTIVE, revision_id=5), "smm.executive_vmcs.revision_id", 16),
    ({}, TEMPLATE, "smm.executive_vmcs.launched", 17),
    ({"VM_ENTRY_CONTROLS": TEMPLATE["VM_ENTRY_CONTROLS"] | DEACTIVATE}, LAUNCHED_EXECUTIVE,
     "smm.executive_vmcs.deactivate_needs_vmxon_pointer", 18),
    ({}, LAUNCHED_EXECUTIVE.with_fields({"PIN_BASED_VM_EXEC_CONTROL": 0}), "smm.executive_vmcs.execution_controls", 25),
])
def test_each_executive_vmcs_check(fields: dict[str, int], executive: Vmcs, check_id: str, number: int) -> None:
    v = run(fields, executive=executive)
    assert check_id in ids(v), v.violations
    assert ids(v) <= {check_id, "smm.executive_vmcs.address_width", "smm.executive_vmcs.revision_id",
                      "smm.executive_vmcs.launched", "smm.executive_vmcs.execution_controls"}
    possible = [o.error.number for o in v.possible_outcomes if isinstance(o, VmFailValid)]
    assert error(v) in possible and number in possible


def test_alignment_alone_reports_error_16() -> None:
    v = run({"EXECUTIVE_VMCS_POINTER": EXECUTIVE + 8})
    assert "smm.executive_vmcs.alignment" in ids(v) and error(v) == 16


def test_checks_do_not_apply_outside_smm_or_when_entering_smm() -> None:
    assert run({}, executive=TEMPLATE, in_smm=False).succeeds
    v = run({"VM_ENTRY_CONTROLS": TEMPLATE["VM_ENTRY_CONTROLS"] | ENTRY_TO_SMM}, executive=TEMPLATE)
    assert not ids(v) & {"smm.executive_vmcs.launched", "smm.executive_vmcs.execution_controls"}


def test_return_to_root_operation_may_inject_only_a_pending_mtf_exit() -> None:
    mtf = VALID | OTHER_EVENT << 8 | PENDING_MTF
    to_root = {"EXECUTIVE_VMCS_POINTER": VMXON}
    ok = run({**to_root, "VM_ENTRY_INTR_INFO_FIELD": mtf}, executive=None)
    assert "smm.entry_controls.root_return_injection" not in ids(ok)
    bad = run({**to_root, "VM_ENTRY_INTR_INFO_FIELD": VALID | NMI << 8 | NMI_VECTOR}, executive=None)
    assert "smm.entry_controls.root_return_injection" in ids(bad)


def test_return_to_root_operation_may_not_wait_for_sipi() -> None:
    to_root = {"EXECUTIVE_VMCS_POINTER": VMXON}
    v = run({**to_root, "GUEST_ACTIVITY_STATE": WAIT_FOR_SIPI}, executive=None)
    assert "smm.guest.root_return_activity" in ids(v)
    assert "smm.guest.root_return_activity" not in ids(run(to_root, executive=None))
    assert isinstance(v.outcome, VmEntryFailed | VmFailValid)
