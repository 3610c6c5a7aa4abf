"""The hosted design (KVM + QEMU): a kernel module handles CPUID, HLT, MSRs, VMCALL and EPT faults
on backed memory; port I/O and MMIO exits go to a user-space device model (one kernel/user round
trip each)."""

from __future__ import annotations

from vtx.machine.cost import KERNEL_USER
from vtx.machine.designs.base import DesignBase, device_action
from vtx.machine.model import Vm
from vtx.vmx.exits.info import ExitInfo


class Hosted(DesignBase):
    name = "hosted"
    organisation = "hosted (KVM + QEMU): kernel module plus user-space device model"

    def route(self, vm: Vm, info: ExitInfo, action: str) -> tuple[str, tuple[str, ...]]:
        if device_action(action, info):
            return "user", (KERNEL_USER,)
        return "kernel", ()
