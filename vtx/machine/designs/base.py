"""The design protocol and what the three designs share.

Every design builds the same VMCS (the long-mode template with EPT and a VPID per VM, HLT
exiting, unconditional I/O exiting, external-interrupt exiting, no MSR bitmaps so every RDMSR /
WRMSR exits, and RFLAGS.IF = 1 so interrupts can be injected) and does the same thing about each
exit (:meth:`DesignBase.action`): what differs between the organisations is *where* an exit is
handled (:meth:`DesignBase.route`) and which extra world switches that costs.
"""

from __future__ import annotations

import abc
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import attrs

from vtx.errors import InputError
from vtx.guest_ops import GuestOp
from vtx.machine.memory_map import install_guest_paging
from vtx.paging.ept import EPTP_FIELDS, EptLevel, ept_from_eptp
from vtx.spec import VMCS_FIELDS, get_control, reg_bit
from vtx.vmx.capabilities import Capabilities
from vtx.vmx.exits.info import ExitInfo
from vtx.vmx.templates import build_template
from vtx.vmx.vmcs import Vmcs

if TYPE_CHECKING:
    from vtx.machine.layout import Layout
    from vtx.machine.model import Machine, Vcpu, Vm

_RFLAGS_IF = reg_bit("RFLAGS", "IF").mask
_ROOT = EPTP_FIELDS["root"].mask
EXITING_CONTROLS = (("proc", "hlt_exiting"), ("proc", "unconditional_io_exiting"),
                    ("pin", "external_interrupt_exiting"))
"""The exiting controls every design sets on top of the template (SDM Vol. 3C §26.6.1, §26.6.2)."""
FEATURES = ("enable_ept", "enable_vpid")

VcpuRef = tuple[int, int]


@attrs.frozen
class Handling:
    """What the hypervisor did about one exit: who handled it (``kernel``, ``user``,
    ``hypervisor``, ``dom0``), the ``action``, the world switches beyond the VM exit and entry
    (names of ``spec/machine/costs.toml`` rows), whether the instruction completed (``advance``:
    RIP moves past it), whether the vCPU gives up the processor (``yield_cpu``), an interrupt
    vector to inject at the next entry, a guest-physical page to back in EPT, and a note."""

    handler: str
    action: str
    switches: tuple[str, ...] = ()
    advance: bool = False
    yield_cpu: bool = False
    inject: int | None = None
    map_gpa: int | None = None
    stop: bool = False
    note: str = ""


class Design(Protocol):
    name: str
    organisation: str

    def create_vm(self, machine: Machine, vm: Vm, layout: Layout) -> Machine: ...

    def build_vmcs(self, caps: Capabilities, vm: Vm, vcpu: Vcpu) -> Vmcs: ...

    def handle_exit(self, machine: Machine, vcpu: Vcpu, info: ExitInfo, op: GuestOp) -> Handling: ...

    def schedule(self, rng: random.Random, lp: int, candidates: Sequence[VcpuRef], machine: Machine) -> VcpuRef: ...

    def io_grants(self, vm: Vm) -> frozenset[int]: ...

    def msr_grants(self, vm: Vm) -> frozenset[int]: ...


def ept_levels(caps: Capabilities, vmcs: Vmcs) -> tuple[EptLevel, ...]:
    """The EPT levels the VMCS's EPTP selects on this processor."""
    return ept_from_eptp(vmcs.get(VMCS_FIELDS["EPT_POINTER"]), caps,
                         secondary_controls=vmcs.get(VMCS_FIELDS["SECONDARY_VM_EXEC_CONTROL"])).levels


# the exits every design emulates and completes (RIP advances)
_EMULATED = frozenset({"CPUID", "MSR_READ", "MSR_WRITE", "IO_INSTRUCTION", "VMCALL", "RDTSC", "RDTSCP",
                       "RDPMC", "INVD", "WBINVD", "XSETBV", "CR_ACCESS", "DR_ACCESS"})


class DesignBase(abc.ABC):
    """The shared parts: VMCS, VM creation, the action for each exit, scheduling."""

    name = "base"
    organisation = ""
    affinity = False
    """Prefer a vCPU whose VMCS is already active on the processor (fewer migrations)."""

    def build_vmcs(self, caps: Capabilities, vm: Vm, vcpu: Vcpu) -> Vmcs:
        """The long-mode template with EPT rooted at the VM's tables, VPID = VM index + 1 (VPID 0 is
        the host's, §28.2.1.1), the exiting controls of :data:`EXITING_CONTROLS` and RFLAGS.IF = 1."""
        vmcs = build_template("long-mode", caps, features=FEATURES)
        fields: dict[str, int] = {}
        for field, name in EXITING_CONTROLS:
            if not caps.allows(field, name):
                raise InputError(f"capabilities {caps.name!r}", name, f"the {self.name} design needs this control")
            control = get_control(field, name)
            vmcs_field = {"proc": "CPU_BASED_VM_EXEC_CONTROL", "pin": "PIN_BASED_VM_EXEC_CONTROL"}[field]
            fields[vmcs_field] = fields.get(vmcs_field, vmcs[vmcs_field]) | control.mask
        fields["EPT_POINTER"] = (vmcs["EPT_POINTER"] & ~_ROOT) | vm.ept_root
        fields["VIRTUAL_PROCESSOR_ID"] = vm.index + 1
        fields["GUEST_RFLAGS"] = vmcs["GUEST_RFLAGS"] | _RFLAGS_IF
        return vmcs.with_fields(fields)

    def create_vm(self, machine: Machine, vm: Vm, layout: Layout) -> Machine:
        """Install the guest's identity paging at the template's guest CR3 and map its pages in EPT."""
        vmcs = self.build_vmcs(machine.caps, vm, vm.vcpus[0])
        memory, vm = install_guest_paging(machine.memory, vm, ept_levels(machine.caps, vmcs),
                                          vmcs["GUEST_CR3"], layout.identity_bytes)
        return attrs.evolve(machine, memory=memory).with_vm(vm)

    # -------------------------------------------------------------- grants

    def io_grants(self, vm: Vm) -> frozenset[int]:
        """The I/O ports the design lets ``vm`` reach without a VM exit (none: unconditional I/O
        exiting, SDM Vol. 3C §26.6.2 "Processor-Based VM-Execution Controls")."""
        return frozenset()

    def msr_grants(self, vm: Vm) -> frozenset[int]:
        """The MSRs ``vm`` may read or write without a VM exit (none: without MSR bitmaps every
        RDMSR / WRMSR exits, §26.6.9 "MSR-Bitmap Address")."""
        return frozenset()

    # -------------------------------------------------------------- exits

    @abc.abstractmethod
    def route(self, vm: Vm, info: ExitInfo, action: str) -> tuple[str, tuple[str, ...]]:
        """Who handles an exit with ``action``, and the extra world switches it costs (each
        design says: that is what distinguishes the VMM organisations)."""

    def action(self, machine: Machine, vcpu: Vcpu, info: ExitInfo) -> Handling:
        """What is done about the exit, whoever does it (SDM Vol. 3C §29.1 "Architectural State
        Before a VM Exit": a fault-like exit leaves RIP at the instruction, so an emulated
        instruction completes only when the handler advances RIP by the VM-exit instruction length)."""
        vm = machine.vms[vcpu.vm]
        reason = info.reason.name
        if reason == "EXTERNAL_INTERRUPT":
            return Handling("", "host_interrupt", yield_cpu=True, note="host timer tick: preempt")
        if reason == "HLT":
            more = vcpu.pc + 1 < len(vcpu.program)
            return Handling("", "halt", advance=True, yield_cpu=True,
                            inject=machine.wakeup_vector if more else None,
                            note="wake with an interrupt" if more else "vCPU finished")
        if reason == "EPT_VIOLATION" and info.guest_physical_address is not None:
            gpa = info.guest_physical_address
            if vm.is_backed(gpa):
                return Handling("", "map", map_gpa=gpa, note=f"back guest page {gpa >> 12:#x}")
            return Handling("", "mmio", advance=True, note=f"emulate device access at {gpa:#x}")
        if reason in _EMULATED:
            return Handling("", "emulate", advance=True)
        return Handling("", "stop", stop=True, note=f"{reason}: the design stops the vCPU")

    def handle_exit(self, machine: Machine, vcpu: Vcpu, info: ExitInfo, op: GuestOp) -> Handling:
        handling = self.action(machine, vcpu, info)
        handler, switches = self.route(machine.vms[vcpu.vm], info, handling.action)
        return attrs.evolve(handling, handler=handler, switches=handling.switches + switches)

    # -------------------------------------------------------------- scheduling

    def schedule(self, rng: random.Random, lp: int, candidates: Sequence[VcpuRef], machine: Machine) -> VcpuRef:
        """A uniformly random runnable vCPU (with ``affinity``, among those already active here if any)."""
        if self.affinity:
            here = [c for c in candidates if machine.active.get(machine.vcpu(*c).vmcs_addr) == lp]
            if here:
                return here[rng.randrange(len(here))]
        return candidates[rng.randrange(len(candidates))]


def device_action(action: str, info: ExitInfo) -> bool:
    """Whether the exit is a device access (port I/O or MMIO)."""
    return action == "mmio" or (action == "emulate" and info.reason.name == "IO_INSTRUCTION")


__all__ = ["Design", "DesignBase", "Handling", "VcpuRef", "device_action", "ept_levels"]
