"""The bare-metal design (ESX): the hypervisor handles every exit itself, devices included, and
prefers to keep a vCPU on the processor where its VMCS is already active."""

from __future__ import annotations

from vtx.machine.designs.base import DesignBase
from vtx.machine.model import Vm
from vtx.vmx.exits.info import ExitInfo


class BareMetal(DesignBase):
    name = "bare_metal"
    organisation = "bare-metal (ESX): one hypervisor handles everything"
    affinity = True

    def route(self, vm: Vm, info: ExitInfo, action: str) -> tuple[str, tuple[str, ...]]:
        return "hypervisor", ()
