"""VM-entry checks: a full evaluation of a valid 64-bit template (every check whose catalogue row applies:
its VMX-control gates and field / processor-state conditions hold), the same with every registered check
run (the reference the full evaluation is tested equal to), and incremental re-evaluations after one
VMWRITE (only the checks whose catalogue fields include the written field run again)."""

from __future__ import annotations

from bench.harness import Result, measure
from vtx.spec import VMCS_FIELDS, get_control
from vtx.vmx.capabilities import load_preset
from vtx.vmx.entry import evaluate_every_check, evaluate_vm_entry, evaluate_vm_entry_incremental
from vtx.vmx.templates import build_template


def run() -> list[Result]:
    caps = load_preset("skylake_client")
    vmcs = build_template("long-mode", caps)
    verdict = evaluate_vm_entry(vmcs, caps)
    assert verdict.succeeds
    rip, entry = VMCS_FIELDS["GUEST_RIP"], VMCS_FIELDS["VM_ENTRY_CONTROLS"]
    rip_written = vmcs.set(rip, vmcs.get(rip) + 0x10)
    # 'load debug controls' toggled: every check that reads the VM-entry controls runs again
    entry_written = vmcs.set(entry, vmcs.get(entry) ^ get_control("entry", "load_debug_controls").mask)
    for new in (rip_written, entry_written):
        assert evaluate_vm_entry_incremental(vmcs, verdict, new, caps) == evaluate_vm_entry(new, caps)
    return [
        measure("evaluate_vm_entry (long-mode template)", lambda: evaluate_vm_entry(vmcs, caps), inner=200,
                target_per_second=20_000),
        measure("evaluate_every_check (long-mode template, no gating)", lambda: evaluate_every_check(vmcs, caps),
                inner=100),
        measure("evaluate_vm_entry_incremental (GUEST_RIP written)",
                lambda: evaluate_vm_entry_incremental(vmcs, verdict, rip_written, caps), inner=2_000,
                target_per_second=20_000),
        measure("evaluate_vm_entry_incremental (VM_ENTRY_CONTROLS written)",
                lambda: evaluate_vm_entry_incremental(vmcs, verdict, entry_written, caps), inner=500),
    ]
