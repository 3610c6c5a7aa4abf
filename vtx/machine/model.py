"""The machine the reference executor runs, and its trace, as frozen values.

A :class:`Machine` is host-physical memory, the VMCS and VMXON regions (by physical address, shared
by every logical processor as memory is), one :class:`~vtx.vmx.operation.LogicalProcessor` per
processor, the VMs with their vCPUs, and the scheduler's random state. Guest programs are
sequences of guest operations of :mod:`vtx.guest_ops`, plus :class:`LinearAccess` for a load,
store or fetch at a guest linear address (the executor translates it through the 2D walk and
hands the exit rules the :class:`~vtx.guest_ops.MemoryAccess` it produced).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from vtx.guest_ops import GuestOp
from vtx.machine.layout import LAYOUT, Layout
from vtx.paging.guest import AccessKind
from vtx.paging.memory import PhysicalMemory
from vtx.typecheck import checked
from vtx.vmx.capabilities import Capabilities
from vtx.vmx.operation import LogicalProcessor, Region


@attrs.frozen
class LinearAccess:
    """A guest load, store or fetch of ``size`` bytes at guest linear address ``gva`` (``value``
    is what a store writes)."""

    kind: ClassVar[str] = "linear_access"
    gva: int
    access: AccessKind = AccessKind.READ
    size: int = 8
    value: int = 0
    from_rax: bool = False
    """A store of the vCPU's RAX (what its last load read) instead of ``value``."""


@attrs.frozen
class MapPage:
    """A classic PV guest kernel maps linear page ``gva`` to a frame: its pseudo-physical frame
    ``pfn`` (the kernel looks the machine frame up in its physical-to-machine table) or, with
    ``machine``, the machine frame ``frame`` as written (what a buggy or hostile kernel could
    write). The PTE write is an mmu_update hypercall the hypervisor validates."""

    kind: ClassVar[str] = "map_page"
    gva: int
    frame: int
    machine: bool = False
    writable: bool = True


ProgramStep = GuestOp | LinearAccess | MapPage


@attrs.frozen
class Vcpu:
    """A virtual processor: its VMCS region, its program and where it is.

    ``pc`` indexes the next program step; ``pending_vector`` is an interrupt the hypervisor will
    inject at the next VM entry (for a classic PV vCPU: an event upcall at the next resume);
    ``yielded`` means its last exit gave the processor up (HLT, a host interrupt), so the
    scheduler picks again; ``waiting`` means it is blocked until an event wakes it (a PV frontend
    waiting for its backend's response); ``rax`` is what its last load read; ``failed`` names a
    VM-entry failure that stopped it. ``pml_addr`` is the host-physical page of its
    page-modification log (None: no PML); ``paused`` means the hypervisor stopped scheduling it
    (a VM being saved or migrated)."""

    vm: int
    index: int
    vmcs_addr: int
    program: tuple[ProgramStep, ...]
    pc: int = 0
    pending_vector: int | None = None
    yielded: bool = False
    failed: str | None = None
    waiting: bool = False
    rax: int = 0
    pml_addr: int | None = None
    paused: bool = False

    @property
    def done(self) -> bool:
        return self.pc >= len(self.program) or self.failed is not None or self.paused

    @property
    def name(self) -> str:
        return f"{self.vm}.{self.index}"


@attrs.frozen
class Vm:
    """A virtual machine: its EPT (root and next free table page, host-physical), the host-physical
    base of its backed guest memory, which guest-physical pages EPT maps so far, and the pages it
    granted to the service VM. ``kind`` is ``hvm`` (devices are trapped), ``pv`` (paravirtual
    drivers: a shared ring and VMCALL hypercalls), ``pv_classic`` (a classic Xen PV guest: no
    VMCS, no EPT; ``cr3`` is the machine address of its top-level page table and ``page_tables``
    the machine frames the hypervisor validated as its page tables) or ``service`` (dom0).
    ``bitmaps`` is the host-physical base of the VM's MSR bitmap and I/O bitmaps A and B (0:
    none); ``requests`` are the frontend vCPUs (vm, vcpu) whose ring requests the service VM has
    been told of and not yet answered, oldest first. ``logged`` holds the guest-physical page
    numbers the hypervisor drained from full page-modification logs and has not yet collected."""

    index: int
    name: str
    kind: str
    vcpus: tuple[Vcpu, ...]
    memory_bytes: int
    backing: int
    ept_root: int
    ept_next: int
    mapped: frozenset[int] = frozenset()
    granted: frozenset[int] = frozenset()
    cr3: int = 0
    page_tables: frozenset[int] = frozenset()
    bitmaps: int = 0
    requests: tuple[tuple[int, int], ...] = ()
    logged: frozenset[int] = frozenset()

    @checked
    def is_backed(self, gpa: int) -> bool:
        return 0 <= gpa < self.memory_bytes


@attrs.frozen
class Machine:
    """Everything the executor advances. ``running[i]`` is the (vm, vcpu) whose VMCS is current on
    logical processor ``i`` (None if none); ``active`` maps each VMCS address that is active on a
    processor to that processor (SDM Vol. 3C §26.11.1 "Software Use of Virtual-Machine Control
    Structures": a VMCS is active on at most one logical processor). ``tick`` is the chance per
    step that the host timer interrupts a running guest (``tick_vector``); ``wakeup_vector`` is
    what a design injects into a halted vCPU. ``service`` is the hybrid design's service VM
    (dom0, whose index is ``len(vms)``), None otherwise: its vCPU is scheduled like the others.
    ``layout`` says where the hypervisor places regions, tables and guest memory in host-physical
    memory (restoring a VM allocates from it)."""

    caps: Capabilities
    design: str
    memory: PhysicalMemory
    regions: Mapping[int, Region]
    lps: tuple[LogicalProcessor, ...]
    running: tuple[tuple[int, int] | None, ...]
    active: Mapping[int, int]
    vms: tuple[Vm, ...]
    rng_state: tuple[Any, ...]
    tick: float
    tick_vector: int
    wakeup_vector: int
    step: int = 0
    service: Vm | None = None
    layout: Layout = LAYOUT

    def vm(self, index: int) -> Vm:
        """VM ``index``: a guest VM, or the service VM (index ``len(vms)``)."""
        if self.service is not None and index == self.service.index:
            return self.service
        return self.vms[index]

    @property
    def all_vms(self) -> tuple[Vm, ...]:
        """The guest VMs and the service VM, if any."""
        return self.vms if self.service is None else (*self.vms, self.service)

    def vcpu(self, vm: int, index: int) -> Vcpu:
        return self.vm(vm).vcpus[index]

    def with_vcpu(self, vcpu: Vcpu) -> Machine:
        vm = self.vm(vcpu.vm)
        vcpus = (*vm.vcpus[:vcpu.index], vcpu, *vm.vcpus[vcpu.index + 1:])
        return self.with_vm(attrs.evolve(vm, vcpus=vcpus))

    def with_vm(self, vm: Vm) -> Machine:
        if self.service is not None and vm.index == self.service.index:
            return attrs.evolve(self, service=vm)
        return attrs.evolve(self, vms=(*self.vms[:vm.index], vm, *self.vms[vm.index + 1:]))

    def with_lp(self, index: int, lp: LogicalProcessor) -> Machine:
        """The machine with processor ``index`` replaced; its regions become the machine's."""
        lps = (*self.lps[:index], lp, *self.lps[index + 1:])
        return attrs.evolve(self, lps=lps, regions=lp.regions)

    def processor(self, index: int) -> LogicalProcessor:
        """Processor ``index`` seeing the machine's regions and memory."""
        return self.lps[index].replace(regions=self.regions, memory=self.memory)

    @property
    def all_done(self) -> bool:
        return all(v.done for vm in self.all_vms for v in vm.vcpus)


HEX_KEYS = frozenset({"address", "gva", "gpa", "hpa", "qualification", "vector"})
"""Detail keys shown in hexadecimal."""


@attrs.frozen
class Event:
    """One trace record: ``step``, ``kind`` (``vmx``, ``entry``, ``exit``, ``handled``, ``access``,
    ``executed``, ``guest_fault``, ``inject``, ``migrate``; for classic PV guests ``pv_enter``,
    ``native``, ``direct_access``, ``trap``, ``hypercall``), the processor, VM and vCPU it
    concerns, and ``detail`` (JSON-ready key/value pairs). ``op``, ``vmcs`` and ``decision`` keep
    the guest operation, the VMCS in force and the exit rules' decision for the checkers; they are
    not part of the JSON form."""

    step: int
    kind: str
    lp: int | None = None
    vm: str | None = None
    vcpu: str | None = None
    detail: tuple[tuple[str, Any], ...] = ()
    op: Any = attrs.field(default=None, eq=False, repr=False)
    vmcs: Any = attrs.field(default=None, eq=False, repr=False)
    context: Any = attrs.field(default=None, eq=False, repr=False)
    decision: Any = attrs.field(default=None, eq=False, repr=False)

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.detail).get(key, default)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"step": self.step, "kind": self.kind}
        for key, value in (("lp", self.lp), ("vm", self.vm), ("vcpu", self.vcpu)):
            if value is not None:
                out[key] = value
        out.update(self.detail)
        return out

    def __str__(self) -> str:
        where = " ".join(f"{k}={v}" for k, v in (("lp", self.lp), ("vcpu", self.vcpu)) if v is not None)
        rest = " ".join(f"{k}={hex(v) if k in HEX_KEYS else v}" for k, v in self.detail)
        return f"{self.step:6} {self.kind:11} {where:16} {rest}"


Trace = tuple[Event, ...]
