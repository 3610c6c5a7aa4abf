"""The hybrid design (Xen): the hypervisor handles processor and memory exits; device I/O goes to
a privileged service VM (dom0). HVM guests reach their devices by trapping (port I/O, MMIO: the
hypervisor forwards an I/O request to dom0's device model); PV-driver guests put requests on a
shared ring in a page they explicitly grant to dom0 and notify with a VMCALL hypercall, and
dom0's backend reads the request through its grant mapping (an EPT mapping in dom0's address
space that exists only for granted pages)."""

from __future__ import annotations

import attrs

from vtx.guest_ops import GuestOp
from vtx.machine.cost import DOM0
from vtx.machine.designs.base import DesignBase, Handling, device_action, ept_levels
from vtx.machine.layout import Layout
from vtx.machine.memory_map import backing_hpa, ept_map
from vtx.machine.model import Machine, Vcpu, Vm
from vtx.paging.ept import ept_from_eptp
from vtx.paging.ept import translate_gpa as ept_translate
from vtx.paging.formats import PAGE_OFFSET_BITS, PAGE_SIZE
from vtx.paging.guest import AccessKind
from vtx.paging.memory import HostPhysAddr
from vtx.paging.outcomes import Translated
from vtx.spec import VMCS_FIELDS
from vtx.vmx.exits.info import ExitInfo

SERVICE_VM = "dom0"
RING_ENTRY_BYTES = 8
"""A ring request as this model writes it: one 8-byte word at the start of the granted page."""


class Hybrid(DesignBase):
    name = "hybrid"
    organisation = "hybrid (Xen): hypervisor for CPU and memory, service VM (dom0) for devices"

    def create_vm(self, machine: Machine, vm: Vm, layout: Layout) -> Machine:
        """As every design, plus for a PV guest: grant its ring page to dom0 (created on first use)
        and map the grant into dom0's EPT."""
        machine = super().create_vm(machine, vm, layout)
        vm = machine.vms[vm.index]
        if vm.kind != "pv":
            return machine
        service = machine.service or Vm(-1, SERVICE_VM, "service", (), 0, 0, layout.service_ept,
                                         layout.service_ept + PAGE_SIZE)
        vmcs = self.build_vmcs(machine.caps, service, vm.vcpus[0])
        grant_gpa = layout.grant_gpa + len(service.mapped) * PAGE_SIZE
        memory, service = ept_map(machine.memory, service, ept_levels(machine.caps, vmcs), grant_gpa,
                                  backing_hpa(vm, layout.ring_gpa))
        vm = attrs.evolve(vm, granted=vm.granted | {layout.ring_gpa >> PAGE_OFFSET_BITS})
        return attrs.evolve(machine, memory=memory, service=service).with_vm(vm)

    def route(self, vm: Vm, info: ExitInfo, action: str) -> tuple[str, tuple[str, ...]]:
        if device_action(action, info):
            return "dom0", (DOM0,)
        return "hypervisor", ()

    def handle_exit(self, machine: Machine, vcpu: Vcpu, info: ExitInfo, op: GuestOp) -> Handling:
        vm = machine.vms[vcpu.vm]
        if info.reason.name != "VMCALL" or vm.kind != "pv":
            return super().handle_exit(machine, vcpu, info, op)
        return attrs.evolve(self._ring_request(machine, vm), advance=True, switches=(DOM0,))

    def _ring_request(self, machine: Machine, vm: Vm) -> Handling:
        """dom0's backend reads the request through its grant mapping of ``vm``'s ring page."""
        service = machine.service
        grant = None
        if service is not None:
            vmcs = self.build_vmcs(machine.caps, service, vm.vcpus[0])
            ept = ept_from_eptp(vmcs["EPT_POINTER"], machine.caps,
                                secondary_controls=vmcs.get(VMCS_FIELDS["SECONDARY_VM_EXEC_CONTROL"]))
            for page in sorted(service.mapped):
                out = ept_translate(ept, machine.memory, page << PAGE_OFFSET_BITS, AccessKind.READ)
                if isinstance(out, Translated) and out.hpa - vm.backing >> PAGE_OFFSET_BITS in vm.granted:
                    grant = out
        if grant is None:
            return Handling("dom0", "ring_fault", note=f"{vm.name} granted no ring page to dom0")
        request = machine.memory.read_int(HostPhysAddr(grant.hpa), RING_ENTRY_BYTES)
        return Handling("dom0", "ring", note=f"dom0 read request {request:#x} through grant gpa {grant.gpa:#x}")
