"""VMCS writes and reads: the copy-on-write cost of a frozen VMCS."""

from __future__ import annotations

from bench.harness import Result, measure
from vtx.spec import VMCS_FIELDS
from vtx.vmx.capabilities import load_preset
from vtx.vmx.vmcs import Vmcs, vmread, vmwrite


def run() -> list[Result]:
    caps = load_preset("max")
    vmcs = Vmcs.from_fields({"GUEST_RIP": 0x1000, "GUEST_CR0": 0x80000031})
    rip = VMCS_FIELDS["GUEST_RIP"]
    enc = rip.encoding
    return [
        measure("Vmcs.set (one field)", lambda: vmcs.set(rip, 0x2000)),
        measure("Vmcs.get (one field)", lambda: vmcs.get(rip)),
        measure("vmwrite (64-bit operand)", lambda: vmwrite(vmcs, caps, enc, 0x2000), target_per_second=500_000),
        measure("vmread (64-bit operand)", lambda: vmread(vmcs, caps, enc)),
    ]
