"""The hybrid design (Xen): the hypervisor handles processor and memory; device I/O goes to a
privileged service VM, dom0, whose vCPU the executor runs like any other.

* HVM guests reach their devices by trapping (port I/O, MMIO): the hypervisor forwards an I/O
  request to dom0's device model (priced as a dom0 round trip, not simulated).
* PV-driver guests (``pv``, in VMX non-root operation) and classic PV guests (``pv_classic``,
  ring 3 of root operation, :mod:`vtx.machine.designs.pv`) put a request on a shared ring in a
  page they grant to dom0 when they are created (the grant is an EPT mapping in dom0's address
  space) and notify: VMCALL, or for a classic PV guest the event-channel hypercall. The
  hypervisor then sends an event to dom0 (a virtual interrupt injected at dom0's next VM entry)
  and gives its vCPU the backend's work; the frontend waits. dom0's backend reads the request
  through its grant mapping (a guest access through dom0's own EPT), writes the response into the
  ring and notifies back with VMCALL; the hypervisor wakes the frontend with an event and the
  frontend reads the response.
"""

from __future__ import annotations

import attrs

from vtx import guest_ops as g
from vtx.errors import SpecError
from vtx.machine.cost import DOM0, PV_HYPERCALL, PV_TRAP
from vtx.machine.designs.base import DesignBase, Handling, device_action, ept_levels
from vtx.machine.designs.pv import PV_KIND, PvStep, build_direct_paging, mmu_update, op_name, pv_op
from vtx.machine.layout import Layout
from vtx.machine.memory_map import backing_hpa, ept_map
from vtx.machine.model import LinearAccess, Machine, MapPage, ProgramStep, Vcpu, Vm
from vtx.paging.formats import PAGE_OFFSET_BITS, PAGE_SIZE
from vtx.paging.guest import AccessKind
from vtx.spec import _load
from vtx.typecheck import checked
from vtx.vmx.exits.info import ExitInfo

SERVICE_VM = "dom0"
SERVICE_KIND = "service"
RING_KINDS = frozenset({"pv", PV_KIND})
"""The guest kinds that talk to dom0 through a shared ring."""
_VMCALL = g.Instruction("vmcall", length=next(len(r["opcode"]) for r in _load("machine/encodings.toml")["instruction"]
                                               if r["mnemonic"] == "vmcall"))


class Hybrid(DesignBase):
    name = "hybrid"
    organisation = "hybrid (Xen): hypervisor for CPU and memory, service VM (dom0) for devices"

    # -------------------------------------------------------------- building

    @checked
    def create_vm(self, machine: Machine, vm: Vm, layout: Layout) -> Machine:
        """As every design (or, for a classic PV guest, its direct-paging tables and no EPT), plus
        for a ring guest: dom0 (created on first use) and the grant of the guest's ring page,
        mapped into dom0's EPT."""
        self.check_kind(vm)
        if vm.kind == PV_KIND:
            memory, vm = build_direct_paging(machine.memory, vm, layout.pv_cr3)
            machine = attrs.evolve(machine, memory=memory).with_vm(vm)
        else:
            machine = super().create_vm(machine, vm, layout)
        if vm.kind not in RING_KINDS:
            return machine
        return self.map_grant(self.service_vm(machine, layout), vm.index, layout)

    @checked
    def service_vm(self, machine: Machine, layout: Layout) -> Machine:
        """The machine with dom0: one vCPU with an empty program (it idles until an event gives
        it work), its own memory, identity paging, EPT, bitmaps and VMCS."""
        if machine.service is not None:
            return machine
        index = len(machine.vms)
        vcpu = Vcpu(index, 0, layout.service_vmcs, ())
        dom0 = Vm(index, SERVICE_VM, SERVICE_KIND, (vcpu,), layout.service_bytes, layout.service_backing,
                  layout.service_ept, layout.service_ept + PAGE_SIZE)
        machine = super().create_vm(attrs.evolve(machine, service=dom0), dom0, layout)
        assert machine.service is not None
        vmcs = self.build_vmcs(machine.caps, machine.service, vcpu)
        return attrs.evolve(machine, regions={**machine.regions, vcpu.vmcs_addr: vmcs})

    @checked
    def map_grant(self, machine: Machine, index: int, layout: Layout) -> Machine:
        """Guest ``index`` grants its ring page to dom0; dom0 maps it at its grant slot."""
        service = machine.service
        assert service is not None
        vm = machine.vm(index)
        levels = ept_levels(machine.caps, self.build_vmcs(machine.caps, service, service.vcpus[0]))
        memory, service = ept_map(machine.memory, service, levels, layout.grant_slot(index),
                                  backing_hpa(vm, layout.ring_gpa))
        vm = attrs.evolve(vm, granted=vm.granted | {layout.ring_gpa >> PAGE_OFFSET_BITS})
        return attrs.evolve(machine, memory=memory, service=service).with_vm(vm)

    @checked
    def unmap_grant(self, machine: Machine, index: int) -> Machine:
        """dom0 unmaps guest ``index``'s grant: the EPT entry of its grant slot becomes not present."""
        service = machine.service
        assert service is not None
        slot = machine.layout.grant_slot(index)
        levels = ept_levels(machine.caps, self.build_vmcs(machine.caps, service, service.vcpus[0]))
        memory, service = ept_map(machine.memory, service, levels, slot, 0, leaf_bits=0)
        service = attrs.evolve(service, mapped=service.mapped - {slot >> PAGE_OFFSET_BITS})
        return attrs.evolve(machine, memory=memory, service=service)

    # -------------------------------------------------------------- exits

    def route(self, vm: Vm, info: ExitInfo, action: str) -> tuple[str, tuple[str, ...]]:
        if device_action(action, info) and vm.kind != SERVICE_KIND:
            return "dom0", (DOM0,)
        return "hypervisor", ()

    @checked
    def handle_exit(self, machine: Machine, vcpu: Vcpu, info: ExitInfo, op: g.GuestOp) -> Handling:
        vm = machine.vm(vcpu.vm)
        reason = info.reason.name
        if vm.kind == SERVICE_KIND and reason == "VMCALL":
            return self.respond(machine)
        gpa = info.guest_physical_address
        if vm.kind == SERVICE_KIND and reason == "EPT_VIOLATION" and gpa is not None and not vm.is_backed(gpa):
            return Handling("hypervisor", "grant_fault", stop=True,
                            note=f"dom0 touched guest-physical {gpa:#x}: no grant is mapped there")
        if vm.kind == "pv" and reason == "VMCALL":
            return self.notify(machine, vcpu)
        return super().handle_exit(machine, vcpu, info, op)

    @checked
    def notify(self, machine: Machine, vcpu: Vcpu, switches: tuple[str, ...] = ()) -> Handling:
        """A frontend's notify: an event to dom0 (its vCPU gets the backend's work for this request
        and a virtual interrupt at its next entry); the frontend waits for the response."""
        service = machine.service
        if service is None:
            raise SpecError("hybrid design", machine.vm(vcpu.vm).name, "a ring guest needs the service VM")
        layout = machine.layout
        slot = layout.grant_slot(vcpu.vm)
        work: tuple[ProgramStep, ...] = (
            LinearAccess(slot + layout.ring_request, AccessKind.READ, layout.ring_entry_bytes),
            LinearAccess(slot + layout.ring_response, AccessKind.WRITE, layout.ring_entry_bytes, from_rax=True),
            _VMCALL)
        backend = service.vcpus[0]
        backend = attrs.evolve(backend, program=backend.program + work, pending_vector=layout.event_vector)
        service = attrs.evolve(service, vcpus=(backend,), requests=(*service.requests, (vcpu.vm, vcpu.index)))
        return Handling("hypervisor", "ring_notify", switches, advance=True, yield_cpu=True, wait=True,
                        machine=machine.with_vm(service), note=f"event to {service.name}: a request on the ring")

    @checked
    def respond(self, machine: Machine) -> Handling:
        """dom0's notify back: the oldest waiting frontend is woken with an event."""
        service = machine.service
        assert service is not None
        if not service.requests:
            return Handling("hypervisor", "event_send", advance=True, yield_cpu=True, note="no frontend is waiting")
        (vm, index), rest = service.requests[0], service.requests[1:]
        machine = machine.with_vm(attrs.evolve(service, requests=rest))
        front = machine.vcpu(vm, index)
        machine = machine.with_vcpu(attrs.evolve(front, waiting=False, pending_vector=machine.layout.event_vector))
        return Handling("hypervisor", "event_send", advance=True, yield_cpu=True, machine=machine,
                        note=f"response event to {machine.vm(vm).name}.{index}")

    # -------------------------------------------------------------- classic PV guests

    @checked
    def pv_step(self, machine: Machine, vcpu: Vcpu, step: ProgramStep) -> PvStep:
        """What a classic PV vCPU's operation does (``[[pv_op]]`` of spec/machine/designs.toml):
        runs natively, traps to the hypervisor which emulates it, or is a hypercall."""
        op = pv_op(step)
        name = op_name(step)
        if op is None:
            return PvStep("trap", name, Handling("hypervisor", "stop", (PV_TRAP,), stop=True,
                                                 note=f"{name} has no classic PV form"))
        if op.mechanism == "native":
            return PvStep("native", name)
        if op.mechanism == "trap":
            return PvStep("trap", name, Handling("hypervisor", "emulate", (PV_TRAP,), advance=True), vector=op.vector)
        if op.hypercall == "sched_op":
            more = vcpu.pc + 1 < len(vcpu.program)
            return PvStep("hypercall", name, Handling(
                "hypervisor", "block", (PV_HYPERCALL,), advance=True, yield_cpu=True,
                inject=machine.wakeup_vector if more else None,
                note="SCHEDOP_block: wake with an event" if more else "vCPU finished"), hypercall=op.hypercall)
        if op.hypercall == "event_channel_op":
            return PvStep("hypercall", name, self.notify(machine, vcpu, (PV_HYPERCALL,)), hypercall=op.hypercall)
        assert op.hypercall == "mmu_update" and isinstance(step, MapPage)
        vm = machine.vm(vcpu.vm)
        out = mmu_update(machine.memory, vm, step)
        note = (f"refused: {out.refused}" if out.refused else
                f"PTE {out.pte:#x} maps {step.gva:#x} to frame {out.frame:#x}")
        return PvStep("hypercall", name, Handling(
            "hypervisor", "mmu_update_refused" if out.refused else "mmu_update", (PV_HYPERCALL,), advance=True,
            machine=attrs.evolve(machine, memory=out.memory), note=note), hypercall=op.hypercall)
