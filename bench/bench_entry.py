"""VM-entry checks: a full evaluation of a valid 64-bit template."""

from __future__ import annotations

from bench.harness import Result, measure
from vtx.vmx.capabilities import load_preset
from vtx.vmx.entry import evaluate_vm_entry
from vtx.vmx.templates import build_template


def run() -> list[Result]:
    caps = load_preset("skylake_client")
    vmcs = build_template("long-mode", caps)
    assert evaluate_vm_entry(vmcs, caps).succeeds
    return [measure("evaluate_vm_entry (long-mode template)", lambda: evaluate_vm_entry(vmcs, caps), inner=200,
                    target_per_second=20_000)]
