"""Who owns which host-physical page of a machine, and what each VM's EPT maps.

A VM's *partition* is the host range that backs its guest memory ([backing, backing +
memory_bytes)). The hypervisor owns the VMXON regions, the VMCS regions, every EPT
paging-structure table (the allocation area of each VM and every table a walk can read), and the
I/O and MSR bitmaps each VMCS references (SDM Vol. 3C §26.6.4 "I/O-Bitmap Addresses", §26.6.9
"MSR-Bitmap Address"). A *grant* is a page of one VM's partition that the design shares with
another (Xen-style: a PV guest's ring page, mapped in dom0's EPT), recorded with both parties and
the permissions the design gives. Devices are emulated (no DMA): no IOMMU is modelled, so nothing
but EPT reaches host memory on a guest's behalf.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

import attrs

from vtx.errors import VtxError
from vtx.invariants.mappings import EptMapping, EptView, PageTableView, ept_view, page_table_view
from vtx.machine.designs import get_design
from vtx.machine.designs.pv import paging_state
from vtx.machine.memory_map import LEAF_BITS, backing_hpa
from vtx.machine.model import Machine, Vm
from vtx.paging.ept import Ept, R, W, X
from vtx.paging.formats import PAGE_OFFSET_BITS, PAGE_SIZE
from vtx.paging.guest import CompiledMode, PagingFeatures, compile_for
from vtx.spec import VMCS_FIELDS, get_control
from vtx.typecheck import checked
from vtx.vmx.eptp import ept_in_force
from vtx.vmx.exits.rules import is_set
from vtx.vmx.operation import VmxonRegion
from vtx.vmx.vmcs import Vmcs

_F = VMCS_FIELDS
ENABLE_EPT = get_control("proc2", "enable_ept")
USE_IO_BITMAPS = get_control("proc", "use_io_bitmaps")
USE_MSR_BITMAPS = get_control("proc", "use_msr_bitmaps")
PV_CLASSIC = "pv_classic"
"""The kind of a classic Xen PV guest: no VMCS, no EPT; its own page tables, validated by the hypervisor."""
DEFAULT_GRANT_PERMISSIONS = LEAF_BITS & (R | W | X)
"""The permissions of a grant when the design names none: those of the mapping the executor
writes for a grant (:data:`vtx.machine.memory_map.LEAF_BITS`, read/write/execute)."""


@attrs.frozen
class Partition:
    """The host-physical range [``base``, ``base + size``) backing VM ``vm``'s guest memory."""

    vm: str
    base: int
    size: int

    @property
    def end(self) -> int:
        return self.base + self.size

    @property
    def pages(self) -> range:
        """Its 4-KByte host page numbers."""
        return range(self.base >> PAGE_OFFSET_BITS, (self.end + PAGE_SIZE - 1) >> PAGE_OFFSET_BITS)

    @checked
    def contains(self, hpa: int, size: int = 1) -> bool:
        return self.base <= hpa and hpa + size <= self.end


@attrs.frozen
class Grant:
    """Page ``gpa`` of ``owner`` (host page ``hpa``) shared with ``grantee`` with ``permissions``
    (EPT bits 2:0)."""

    owner: str
    grantee: str
    gpa: int
    hpa: int
    permissions: int


@attrs.frozen
class HypervisorRegion:
    """Host range [``base``, ``base + size``) of a hypervisor structure: ``kind`` is ``vmxon``,
    ``vmcs``, ``ept_table``, ``io_bitmap``, ``msr_bitmap`` or ``pml`` (a page-modification log);
    ``owner`` says whose it is."""

    kind: str
    base: int
    size: int
    owner: str

    @property
    def end(self) -> int:
        return self.base + self.size


@attrs.frozen
class VcpuContext:
    """One vCPU as the invariants see it: its VM, name, VMCS address and VMCS (None if the VMCS
    region is missing), and the EPT that VMCS selects (None: EPT disabled or unusable)."""

    vm: str
    name: str
    vmcs_addr: int
    vmcs: Vmcs | None
    ept: Ept | None
    ept_problem: str = ""


@attrs.frozen
class VmContext:
    """A VM (the service VM included) with its vCPUs, what each distinct EPT maps, and for a
    classic PV guest (no EPT) what its hypervisor-validated page tables map (linear to machine)."""

    vm: Vm
    vcpus: tuple[VcpuContext, ...]
    views: tuple[EptView, ...]
    page_table_view: PageTableView | None = None

    @property
    def name(self) -> str:
        return self.vm.name

    @property
    def classic_pv(self) -> bool:
        return self.vm.kind == PV_CLASSIC

    @property
    def page_tables(self) -> tuple[EptMapping, ...]:
        return self.page_table_view.leaves if self.page_table_view is not None else ()

    def leaves(self) -> Iterator[EptMapping]:
        """Every translation the VM's guest can use: its EPT leaves, or its page-table leaves."""
        for view in self.views:
            yield from view.leaves
        yield from self.page_tables


@checked
@attrs.frozen
class Ownership:
    """The owners of host memory: partitions per VM, hypervisor regions, grants, vCPUs; and
    ``capacity`` (2^MAXPHYADDR, the first address beyond host-physical memory)."""

    partitions: tuple[Partition, ...]
    hypervisor: tuple[HypervisorRegion, ...]
    grants: tuple[Grant, ...]
    vms: tuple[VmContext, ...]
    capacity: int
    _starts: tuple[int, ...] = attrs.field(init=False, repr=False, eq=False)
    _merged: tuple[tuple[int, int], ...] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        merged: list[list[int]] = []
        for r in sorted(self.hypervisor, key=lambda r: r.base):
            if merged and r.base <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], r.end)
            else:
                merged.append([r.base, r.end])
        object.__setattr__(self, "_merged", tuple((a, b) for a, b in merged))
        object.__setattr__(self, "_starts", tuple(a for a, _ in merged))

    def partition(self, vm: str) -> Partition | None:
        return next((p for p in self.partitions if p.vm == vm), None)

    def grants_to(self, vm: str) -> tuple[Grant, ...]:
        return tuple(g for g in self.grants if g.grantee == vm)

    @checked
    def hypervisor_overlaps(self, base: int, size: int) -> bool:
        """Whether host range [``base``, ``base + size``) touches hypervisor memory."""
        i = bisect.bisect_right(self._starts, base + size - 1) - 1
        return i >= 0 and self._merged[i][1] > base

    def hypervisor_in(self, base: int, size: int) -> Iterator[HypervisorRegion]:
        """The hypervisor regions host range [``base``, ``base + size``) touches."""
        return (r for r in self.hypervisor if r.base < base + size and base < r.end)

    def owners(self, base: int, size: int) -> list[str]:
        """Who owns any of host range [``base``, ``base + size``): VM names and ``hypervisor <kind>``."""
        out = [p.vm for p in self.partitions if p.base < base + size and base < p.end and p.size]
        out += [f"hypervisor {r.kind} of {r.owner}" for r in self.hypervisor_in(base, size)]
        return list(dict.fromkeys(out))


# ------------------------------------------------------------------ building


@checked
def all_vms(machine: Machine) -> tuple[Vm, ...]:
    """The guest VMs and the service VM, if any."""
    return machine.vms + ((machine.service,) if machine.service is not None else ())


def _ept_of(machine: Machine, vmcs: Vmcs) -> tuple[Ept | None, str]:
    if not is_set(vmcs, ENABLE_EPT):
        return None, "EPT disabled: guest-physical addresses are host-physical"
    try:
        return ept_in_force(vmcs, machine.caps), ""
    except VtxError as e:  # an EPTP VM entry would reject: no translation happens through it
        return None, f"EPTP unusable: {e}"


def _pv_paging(machine: Machine, vm: Vm) -> CompiledMode | None:
    """The paging mode the processor walks a classic PV guest's tables with."""
    return compile_for(paging_state(vm), PagingFeatures.from_capabilities(machine.caps))


@checked
def vm_contexts(machine: Machine) -> tuple[VmContext, ...]:
    """Each VM with its vCPUs' VMCSs and EPT views. A service VM without vCPUs (its EPT exists for
    grant mappings) is viewed through the VMCS the design builds for it."""
    out = []
    any_vcpu = next((v for vm in machine.vms for v in vm.vcpus), None)
    for vm in all_vms(machine):
        vcpus = []
        for v in vm.vcpus:
            if vm.kind == PV_CLASSIC:
                vcpus.append(VcpuContext(vm.name, f"{vm.name}.{v.index}", v.vmcs_addr, None, None,
                                         "no VMCS: classic PV"))
                continue
            region = machine.regions.get(v.vmcs_addr)
            vmcs = region if isinstance(region, Vmcs) else None
            ept, problem = _ept_of(machine, vmcs) if vmcs is not None else (None, "no VMCS region")
            vcpus.append(VcpuContext(vm.name, f"{vm.name}.{v.index}", v.vmcs_addr, vmcs, ept, problem))
        epts = {c.ept.eptp: c.ept for c in vcpus if c.ept is not None}
        if not vm.vcpus and any_vcpu is not None:
            ept, _ = _ept_of(machine, get_design(machine.design).build_vmcs(machine.caps, vm, any_vcpu))
            if ept is not None:
                epts[ept.eptp] = ept
        views = tuple(ept_view(e, machine.memory) for e in epts.values())
        if vm.kind == PV_CLASSIC:
            compiled = _pv_paging(machine, vm)
            pt = page_table_view(compiled, vm.cr3, machine.memory) if compiled is not None else None
            out.append(VmContext(vm, tuple(vcpus), (), pt))
        else:
            out.append(VmContext(vm, tuple(vcpus), views))
    return tuple(out)


def _bitmaps(vmcs: Vmcs, owner: str) -> list[HypervisorRegion]:
    out = []
    if is_set(vmcs, USE_IO_BITMAPS):
        out += [HypervisorRegion("io_bitmap", vmcs.get(_F[f]), PAGE_SIZE, owner)
                for f in ("IO_BITMAP_A", "IO_BITMAP_B")]
    if is_set(vmcs, USE_MSR_BITMAPS):
        out.append(HypervisorRegion("msr_bitmap", vmcs.get(_F["MSR_BITMAP"]), PAGE_SIZE, owner))
    return out


@checked
def ownership(machine: Machine, contexts: tuple[VmContext, ...] | None = None) -> Ownership:
    """The owners of ``machine``'s host memory (``contexts``: :func:`vm_contexts`, if computed)."""
    contexts = vm_contexts(machine) if contexts is None else contexts
    design = get_design(machine.design)
    grant_perms = int(getattr(design, "grant_permissions", DEFAULT_GRANT_PERMISSIONS))
    partitions = tuple(Partition(vm.name, vm.backing, vm.memory_bytes) for vm in all_vms(machine) if vm.memory_bytes)
    hyp: list[HypervisorRegion] = []
    for address, region in sorted(machine.regions.items()):
        kind = "vmxon" if isinstance(region, VmxonRegion) else "vmcs"
        owner = next((f"{vm.name}.{v.index}" for vm in all_vms(machine) for v in vm.vcpus if v.vmcs_addr == address),
                     "a logical processor" if kind == "vmxon" else "no vCPU")
        hyp.append(HypervisorRegion(kind, address, PAGE_SIZE, owner))
    for ctx in contexts:
        if ctx.vm.ept_next > ctx.vm.ept_root:
            hyp.append(HypervisorRegion("ept_table", ctx.vm.ept_root, ctx.vm.ept_next - ctx.vm.ept_root, ctx.name))
        for view in ctx.views:
            hyp += [HypervisorRegion("ept_table", t, PAGE_SIZE, ctx.name) for t in view.tables]
        for c in ctx.vcpus:
            if c.vmcs is not None:
                hyp += _bitmaps(c.vmcs, c.name)
        for v in ctx.vm.vcpus:
            if v.pml_addr is not None:  # the page-modification log (SDM Vol. 3C §30.3.6)
                hyp.append(HypervisorRegion("pml", v.pml_addr, PAGE_SIZE, f"{ctx.name}.{v.index}"))
    grantee = machine.service.name if machine.service is not None else "service VM"
    grants = tuple(Grant(vm.name, grantee, page << PAGE_OFFSET_BITS, backing_hpa(vm, page << PAGE_OFFSET_BITS),
                         grant_perms)
                   for vm in machine.vms for page in sorted(vm.granted))
    return Ownership(partitions, tuple(dict.fromkeys(hyp)), grants, contexts,
                     1 << machine.caps.require_fact("MAXPHYADDR"))
