"""The design protocol and what the three designs share.

Every design builds its VMCS from the long-mode template with EPT and a VPID per VM and
RFLAGS.IF = 1 (so interrupts can be injected), plus the VM-execution controls its real
counterpart sets (``spec/machine/designs.toml``: HLT and external-interrupt exiting everywhere;
unconditional I/O exiting or I/O bitmaps; MSR bitmaps or none), with the MSR and I/O bitmaps
written to host memory at the VM's ``bitmaps`` pages. Every design does the same thing about
each exit (:meth:`DesignBase.action`): what differs between the organisations is *where* an exit
is handled (:meth:`DesignBase.route`) and which extra world switches that costs.
"""

from __future__ import annotations

import abc
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import attrs

from vtx.errors import InputError, SpecError
from vtx.guest_ops import GuestOp
from vtx.machine.designs.choices import CHOICES, DesignChoices, io_bitmaps, msr_bitmap
from vtx.machine.memory_map import install_guest_paging
from vtx.paging.ept import EPTP_FIELDS, EptLevel
from vtx.paging.formats import PAGE_SIZE
from vtx.paging.memory import HostPhysAddr
from vtx.spec import CONTROL_FIELDS, get_control, reg_bit
from vtx.typecheck import checked
from vtx.vmx.capabilities import Capabilities
from vtx.vmx.eptp import ept_in_force
from vtx.vmx.exits.causes import PML_ENTRIES
from vtx.vmx.exits.info import ExitInfo
from vtx.vmx.templates import build_template
from vtx.vmx.vmcs import Vmcs

if TYPE_CHECKING:
    from vtx.machine.designs.pv import PvStep
    from vtx.machine.layout import Layout
    from vtx.machine.model import Machine, ProgramStep, Vcpu, Vm

_RFLAGS_IF = reg_bit("RFLAGS", "IF").mask
_ROOT = EPTP_FIELDS["root"].mask
_EPT_AD = EPTP_FIELDS["accessed_dirty"].mask
_CONTROL_FIELD = {cf.key: cf.vmcs_field.name for cf in CONTROL_FIELDS}
_MSR_BITMAPS = get_control("proc", "use_msr_bitmaps")
_IO_BITMAPS = get_control("proc", "use_io_bitmaps")
EXITING_CONTROLS = tuple(dict.fromkeys((c.field, c.name) for d in CHOICES.values() for c in d.controls))
"""Every VM-execution control some design sets on top of the template (SDM Vol. 3C §26.6.1
"Pin-Based VM-Execution Controls", §26.6.2 "Processor-Based VM-Execution Controls"): a capability
profile that allows them all runs every design."""
FEATURES = ("enable_ept", "enable_vpid")
BITMAP_PAGES = ("MSR_BITMAP", "IO_BITMAP_A", "IO_BITMAP_B")
"""The order of a VM's bitmap pages from its ``bitmaps`` address."""

VcpuRef = tuple[int, int]


@attrs.frozen
class Handling:
    """What the hypervisor did about one exit: who handled it (``kernel``, ``user``,
    ``hypervisor``, ``dom0``), the ``action``, the world switches beyond the VM exit and entry
    (names of ``spec/machine/costs.toml`` rows), whether the instruction completed (``advance``:
    RIP moves past it), whether the vCPU gives up the processor (``yield_cpu``) and waits for an
    event before it runs again (``wait``), an interrupt vector to inject at the next entry, a
    guest-physical page to back in EPT, and a note. ``machine`` is the machine after what the
    handler did beyond this vCPU (memory it wrote, other vCPUs it woke or gave work), None if
    nothing."""

    handler: str
    action: str
    switches: tuple[str, ...] = ()
    advance: bool = False
    yield_cpu: bool = False
    inject: int | None = None
    map_gpa: int | None = None
    stop: bool = False
    note: str = ""
    wait: bool = False
    machine: Machine | None = attrs.field(default=None, eq=False, repr=False)


class Design(Protocol):
    name: str
    organisation: str

    @property
    def kinds(self) -> tuple[str, ...]: ...

    def create_vm(self, machine: Machine, vm: Vm, layout: Layout) -> Machine: ...

    def build_vmcs(self, caps: Capabilities, vm: Vm, vcpu: Vcpu) -> Vmcs: ...

    def handle_exit(self, machine: Machine, vcpu: Vcpu, info: ExitInfo, op: GuestOp) -> Handling: ...

    def schedule(self, rng: random.Random, lp: int, candidates: Sequence[VcpuRef], machine: Machine) -> VcpuRef: ...

    def io_grants(self, vm: Vm) -> frozenset[int]: ...

    def msr_grants(self, vm: Vm) -> frozenset[int]: ...

    def pv_step(self, machine: Machine, vcpu: Vcpu, step: ProgramStep) -> PvStep: ...


def dirty_logging(caps: Capabilities) -> bool:
    """Whether the processor can log guest-physical writes: EPT accessed / dirty flags
    (IA32_VMX_EPT_VPID_CAP bit 21) and the "enable PML" control (PML logs only when EPTP bit 6 is 1,
    SDM Vol. 3C §30.3.6 "Page-Modification Logging")."""
    return bool(caps.msr_field("IA32_VMX_EPT_VPID_CAP", "accessed_dirty") and caps.allows("proc2", "enable_pml"))


@checked
def ept_levels(caps: Capabilities, vmcs: Vmcs) -> tuple[EptLevel, ...]:
    """The EPT levels the VMCS's EPTP selects on this processor."""
    return ept_in_force(vmcs, caps).levels


VMX_KINDS = frozenset({"hvm", "pv", "service"})
"""The VM kinds that run in VMX non-root operation under a VMCS."""

# the exits every design emulates and completes (RIP advances)
_EMULATED = frozenset({"CPUID", "MSR_READ", "MSR_WRITE", "IO_INSTRUCTION", "VMCALL", "RDTSC", "RDTSCP",
                       "RDPMC", "INVD", "WBINVD", "XSETBV", "CR_ACCESS", "DR_ACCESS"})


class DesignBase(abc.ABC):
    """The shared parts: VMCS, VM creation, the action for each exit, scheduling."""

    name = "base"
    organisation = ""
    affinity = False
    """Prefer a vCPU whose VMCS is already active on the processor (fewer migrations)."""

    @property
    def choices(self) -> DesignChoices:
        """This design's row of ``spec/machine/designs.toml``."""
        return CHOICES[self.name]

    @property
    def kinds(self) -> tuple[str, ...]:
        """The VM kinds the design runs."""
        return self.choices.kinds

    def build_vmcs(self, caps: Capabilities, vm: Vm, vcpu: Vcpu) -> Vmcs:
        """The long-mode template with EPT rooted at the VM's tables, VPID = VM index + 1 (VPID 0 is
        the host's, §28.2.1.1), the design's VM-execution controls, the VM's bitmap pages where those
        controls use them (§26.6.4 "I/O-Bitmap Addresses", §26.6.9 "MSR-Bitmap Address") and RFLAGS.IF = 1;
        where the processor allows them, EPT accessed and dirty flags (EPTP bit 6, SDM Vol. 3C
        §30.3.4 "Accessed and Dirty Flags for EPT") and page-modification logging into the vCPU's
        log page, index at the top entry (§30.3.6 "Page-Modification Logging"): the dirty tracking
        live migration uses."""
        pml = vcpu.pml_addr is not None and dirty_logging(caps)
        vmcs = build_template("long-mode", caps, features=(*FEATURES, "enable_pml") if pml else FEATURES)
        fields: dict[str, int] = {}
        for control in self.choices.controls:
            if not caps.allows(control.field, control.name):
                raise InputError(f"capabilities {caps.name!r}", control.name,
                                 f"the {self.name} design needs this control")
            vmcs_field = _CONTROL_FIELD[control.field]
            fields[vmcs_field] = fields.get(vmcs_field, vmcs[vmcs_field]) | control.mask
        if _MSR_BITMAPS in self.choices.controls:
            fields["MSR_BITMAP"] = vm.bitmaps
        if _IO_BITMAPS in self.choices.controls:
            fields["IO_BITMAP_A"] = vm.bitmaps + PAGE_SIZE
            fields["IO_BITMAP_B"] = vm.bitmaps + 2 * PAGE_SIZE
        fields["EPT_POINTER"] = (vmcs["EPT_POINTER"] & ~_ROOT) | vm.ept_root
        if caps.msr_field("IA32_VMX_EPT_VPID_CAP", "accessed_dirty"):
            fields["EPT_POINTER"] |= _EPT_AD
        if pml and vcpu.pml_addr is not None:
            fields.update(PML_ADDRESS=vcpu.pml_addr, GUEST_PML_INDEX=PML_ENTRIES - 1)
        fields["VIRTUAL_PROCESSOR_ID"] = vm.index + 1
        fields["GUEST_RFLAGS"] = vmcs["GUEST_RFLAGS"] | _RFLAGS_IF
        return vmcs.with_fields(fields)

    def check_kind(self, vm: Vm) -> None:
        """InputError naming the scenario key when the design does not run VMs of ``vm.kind``."""
        if vm.kind not in self.kinds and vm.kind != "service":
            raise InputError(f"vm[{vm.index}].kind", repr(vm.kind),
                             f"the {self.name} design runs {', '.join(self.kinds)} guests")

    def install_bitmaps(self, machine: Machine, vm: Vm, layout: Layout) -> Machine:
        """Write the VM's MSR bitmap and I/O bitmaps A and B (all ones but what the design passes
        through) at ``layout.bitmap_pages(vm.index)`` and record the address in the VM."""
        base = layout.bitmap_pages(vm.index)
        pages = (msr_bitmap(self.choices.msrs), *io_bitmaps(self.choices.ports))
        memory = machine.memory
        for n, page in enumerate(pages):
            memory = memory.write(HostPhysAddr(base + n * PAGE_SIZE), page)
        return attrs.evolve(machine, memory=memory).with_vm(attrs.evolve(vm, bitmaps=base))

    def create_vm(self, machine: Machine, vm: Vm, layout: Layout) -> Machine:
        """Write the VM's bitmaps, install the guest's identity paging at the template's guest CR3
        and map its pages in EPT."""
        self.check_kind(vm)
        machine = self.install_bitmaps(machine, vm, layout)
        vm = machine.vm(vm.index)
        vmcs = self.build_vmcs(machine.caps, vm, vm.vcpus[0])
        memory, vm = install_guest_paging(machine.memory, vm, ept_levels(machine.caps, vmcs),
                                          vmcs["GUEST_CR3"], layout.identity_bytes)
        return attrs.evolve(machine, memory=memory).with_vm(vm)

    # -------------------------------------------------------------- grants

    def io_grants(self, vm: Vm) -> frozenset[int]:
        """The I/O ports the design lets ``vm`` reach without a VM exit: those its I/O bitmaps
        clear (SDM Vol. 3C §26.6.4); none under unconditional I/O exiting (§26.6.2) or for a VM
        that runs outside VMX non-root operation (a classic PV guest's IN / OUT fault to the
        hypervisor)."""
        return self.choices.ports if vm.kind in VMX_KINDS else frozenset()

    def msr_grants(self, vm: Vm) -> frozenset[int]:
        """The MSRs ``vm`` may read or write without a VM exit: those whose read or write bit its
        MSR bitmap clears (§26.6.9 "MSR-Bitmap Address"); none without MSR bitmaps or for a VM that
        runs outside VMX non-root operation."""
        return frozenset(m.index for m in self.choices.msrs) if vm.kind in VMX_KINDS else frozenset()

    # -------------------------------------------------------------- exits

    @abc.abstractmethod
    def route(self, vm: Vm, info: ExitInfo, action: str) -> tuple[str, tuple[str, ...]]:
        """Who handles an exit with ``action``, and the extra world switches it costs (each
        design says: that is what distinguishes the VMM organisations)."""

    def action(self, machine: Machine, vcpu: Vcpu, info: ExitInfo) -> Handling:
        """What is done about the exit, whoever does it (SDM Vol. 3C §29.1 "Architectural State
        Before a VM Exit": a fault-like exit leaves RIP at the instruction, so an emulated
        instruction completes only when the handler advances RIP by the VM-exit instruction length)."""
        vm = machine.vm(vcpu.vm)
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
        if reason == "PML_FULL":
            return Handling("", "pml_drain", note="drain the full page-modification log")
        if reason in _EMULATED:
            return Handling("", "emulate", advance=True)
        return Handling("", "stop", stop=True, note=f"{reason}: the design stops the vCPU")

    def pv_step(self, machine: Machine, vcpu: Vcpu, step: ProgramStep) -> PvStep:
        """A classic PV vCPU's operation: only a design that runs ``pv_classic`` guests has them."""
        raise SpecError(f"{self.name} design", machine.vm(vcpu.vm).name, "this design runs no classic PV guests")

    def handle_exit(self, machine: Machine, vcpu: Vcpu, info: ExitInfo, op: GuestOp) -> Handling:
        handling = self.action(machine, vcpu, info)
        handler, switches = self.route(machine.vm(vcpu.vm), info, handling.action)
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


__all__ = ["BITMAP_PAGES", "EXITING_CONTROLS", "FEATURES", "VMX_KINDS", "Design", "DesignBase", "Handling", "VcpuRef",
           "device_action", "ept_levels"]
