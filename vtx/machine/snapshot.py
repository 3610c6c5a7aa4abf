"""Encapsulation and hardware independence: a whole VM saved as a value, restored on another machine.

A :class:`VmImage` is what a hypervisor needs to run a VM again elsewhere: for each vCPU the
contents of its VMCS *as fields* (name -> value) — never the VMCS region's bytes, whose format and
revision identifier belong to one processor implementation (SDM Vol. 3C §26.2 "Format of the VMCS
Region"; software reads and writes a VMCS only through VMREAD / VMWRITE, §26.11.2) — and where its
program is; the guest-physical pages the guest has; the device state the designs keep; and the
capabilities the VM needs (:class:`Requirement`).

The launch state is not carried: a restored VMCS is new, hence clear, and must be entered with
VMLAUNCH (§26.11.3 "Initializing a VMCS"). Fields that hold host-physical addresses or host-side
tags (``spec/machine/snapshot.toml``), the host-state area and the root of the EPT pointer are
taken from the target hypervisor's own VMCS: nothing the guest can see is adjusted.
"""

from __future__ import annotations

import base64
import enum
import json
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from vtx import guest_ops as g
from vtx.errors import InputError, NotEvaluable
from vtx.fileio import atomic_write, read_bytes, sha256
from vtx.machine import model
from vtx.machine.designs import get_design
from vtx.machine.designs.base import DesignBase, ept_levels
from vtx.machine.executor import interrupt, run
from vtx.machine.memory_map import backing_hpa, map_backed
from vtx.machine.model import Event, Machine, ProgramStep, Trace, Vm
from vtx.machine.scenario import vm_record
from vtx.paging.ept import EPTP_FIELDS
from vtx.paging.formats import EPT, PAGE_OFFSET_BITS, PAGE_SIZE
from vtx.paging.guest import AccessKind
from vtx.paging.memory import HostPhysAddr, PhysicalMemory
from vtx.spec import CAPABILITY_MSRS, CONTROL_FIELDS, CONTROLS, VMCS_FIELDS, _Table, get_control, reg_bit
from vtx.typecheck import checked
from vtx.vmx.capabilities import Capabilities
from vtx.vmx.entry.common import fixed_bit_problems, is_unrestricted_guest
from vtx.vmx.entry.guest_non_register import _ACTIVITY_CAPABILITY
from vtx.vmx.operation import VmxMode
from vtx.vmx.vmcs import Vmcs

FORMAT_VERSION = 1
"""The version of the snapshot file format this vtx writes (and the newest it reads)."""
MAGIC = b"VTXSNAP\n"
"""The first eight bytes of every snapshot file."""

_TABLE = _Table("machine/snapshot.toml")
HOST_OWNED: frozenset[str] = frozenset(r["name"] for r in _TABLE.rows("host_owned"))
"""Fields whose value a restore takes from the target hypervisor (``spec/machine/snapshot.toml``)."""
for _r in _TABLE.rows("host_owned"):
    VMCS_FIELDS[_r["name"]]
    _TABLE.cite("host_owned", _r)
_EPTP = VMCS_FIELDS["EPT_POINTER"]
_ROOT = EPTP_FIELDS["root"].mask
_EPT_CAP = "IA32_VMX_EPT_VPID_CAP"
_MISC = "IA32_VMX_MISC"
_CONTROL_NAMES = {(c.field, c.bit): c.name for c in CONTROLS}
_ENABLE_EPT = get_control("proc2", "enable_ept").mask
_KINDS = ("hvm", "pv")
"""The VM kinds a snapshot holds: those that run in VMX non-root operation under a VMCS."""
PAUSE_STEPS = 10_000
"""How long :func:`pause_vm` lets the service VM take to answer a paused VM's ring requests."""
_RESTORED_TYPES = frozenset({"guest", "control"})
"""Field types a restore takes from the image (host-state fields come from the target, VM-exit
information fields are not restored)."""


class IncompatibleHost(InputError):  # noqa: N818 - names the outcome the caller sees
    """The target machine lacks capabilities the VM needs; ``missing`` lists each one."""

    def __init__(self, vm: str, target: str, missing: Sequence[str]) -> None:
        self.missing = tuple(missing)
        listing = "; ".join(self.missing)
        super().__init__(f"vm {vm!r}", f"target {target!r}", f"the target lacks {len(self.missing)} capabilities the "
                         f"VM needs: {listing}")


# ------------------------------------------------------------------ requirements


def _bit_of(msr: str, bitfield: str) -> int:
    return CAPABILITY_MSRS[msr].bitfields[bitfield].bits.lo


@attrs.frozen
class Requirement:
    """One capability a VM needs: ``kind`` ``control`` (the 1-setting of a control bit: ``name``
    is ``field.control``, ``value`` the bit), ``ept`` (an IA32_VMX_EPT_VPID_CAP bit its EPTP uses:
    ``name`` the bitfield), ``cr`` (its guest CR0 / CR4 ``value`` allowed in VMX operation:
    ``name`` the register, ``exempt`` the bits unrestricted guest frees), ``field`` (a VMCS field
    it uses exists), ``activity`` (its activity state: ``name`` the IA32_VMX_MISC bitfield) or
    ``maxphyaddr`` (``value`` physical-address bits at least). ``text`` says it for people."""

    kind: str
    name: str
    text: str
    value: int = 0
    exempt: int = 0

    def problems(self, caps: Capabilities) -> list[str]:
        """What ``caps`` lacks of this requirement ([] when it is met)."""
        try:
            return self._problems(caps)
        except NotEvaluable as e:
            return [f"{self.text}: not evaluable ({e.rule})"]

    def _problems(self, caps: Capabilities) -> list[str]:
        if self.kind == "control":
            key = self.name.split(".", 1)[0]
            a1 = caps.allowed1(key)
            ok = a1 is not None and bool(a1 >> self.value & 1)
            return [] if ok else [self.text.replace(CONTROL_FIELDS[key].msr.name, caps.control_msr(key))]
        if self.kind == "ept":
            return [] if caps.msr_field(_EPT_CAP, self.name) else [self.text]
        if self.kind == "cr":
            field = VMCS_FIELDS[f"GUEST_{self.name}"]
            return [f"{self.text}: {p}" for p in fixed_bit_problems(field, self.name, self.value, caps, self.exempt)]
        if self.kind == "field":
            return [] if caps.field_exists(VMCS_FIELDS[self.name]) else [self.text]
        if self.kind == "activity":
            return [] if caps.msr_field(_MISC, self.name) else [self.text]
        if self.kind == "maxphyaddr":
            width = caps.fact("MAXPHYADDR")
            return [] if width is not None and width >= self.value else [f"{self.text} (the target has {width})"]
        raise InputError("requirement.kind", self.kind, "unknown requirement kind")


@checked
def compute_requirements(vcpu_fields: Sequence[Mapping[str, int]], memory_bytes: int) -> tuple[Requirement, ...]:
    """The capabilities a VM whose vCPUs' VMCSs hold ``vcpu_fields`` needs: every control bit set
    (SDM Vol. 3D §A.3-A.5: allowed-1 settings), the EPTP's memory type, walk length, A/D and
    shadow-stack bits (§A.10), its guest CR0 / CR4 (§A.7, §A.8), the conditional VMCS fields it
    uses (§26.11.2: VMREAD / VMWRITE of an unsupported field fail), a non-active activity state
    (§A.6) and the physical-address width its memory needs."""
    out: dict[tuple[str, str, int], Requirement] = {}

    def need(r: Requirement) -> None:
        out.setdefault((r.kind, r.name, r.value), r)

    for fields in vcpu_fields:
        for cf in CONTROL_FIELDS:
            value = fields.get(cf.vmcs_field.name, 0)
            for bit in range(cf.width):
                if value >> bit & 1:
                    name = _CONTROL_NAMES.get((cf.key, bit), f"reserved bit {bit}")
                    need(Requirement("control", f"{cf.key}.{name}", f"{cf.title}: {name} ({cf.msr.name} allowed-1 "
                                     f"bit {bit})", bit))
        if fields.get("SECONDARY_VM_EXEC_CONTROL", 0) & _ENABLE_EPT:
            for cap in _eptp_capabilities(fields.get("EPT_POINTER", 0)):
                title = CAPABILITY_MSRS[_EPT_CAP].bitfields[cap].title
                need(Requirement("ept", cap, f"EPT: {title} ({_EPT_CAP} bit {_bit_of(_EPT_CAP, cap)})"))
        vmcs = Vmcs().with_fields({k: v for k, v in fields.items()
                                   if k in ("CPU_BASED_VM_EXEC_CONTROL", "SECONDARY_VM_EXEC_CONTROL")})
        exempt = _cr0_exempt() if is_unrestricted_guest(vmcs) else 0
        for reg in ("CR0", "CR4"):
            value = fields.get(f"GUEST_{reg}", 0)
            need(Requirement("cr", reg, f"guest {reg} = {value:#x} allowed in VMX operation (IA32_VMX_{reg}_FIXED0/1)",
                             value, exempt if reg == "CR0" else 0))
        for name in sorted(fields):
            f = VMCS_FIELDS[name]
            if str(f.exists) != "always" and f.type.value in _RESTORED_TYPES and name not in HOST_OWNED:
                need(Requirement("field", name, f"VMCS field {name} ({f.title}) exists ({f.exists})"))
        state = fields.get("GUEST_ACTIVITY_STATE", 0)
        if state in _ACTIVITY_CAPABILITY:
            cap = _ACTIVITY_CAPABILITY[state]
            need(Requirement("activity", cap, f"activity state {state} ({_MISC} bit {_bit_of(_MISC, cap)})"))
    bits = max(1, (memory_bytes - 1).bit_length())
    need(Requirement("maxphyaddr", "MAXPHYADDR", f"physical-address width of at least {bits} bits "
                     "(CPUID.80000008H:EAX[7:0])", bits))
    return tuple(out.values())


def _cr0_exempt() -> int:
    """Guest CR0.PE and PG: free of the fixed bits when "unrestricted guest" is 1 (§28.3.1.1)."""
    return reg_bit("CR0", "PE").mask | reg_bit("CR0", "PG").mask


def _eptp_capabilities(eptp: int) -> list[str]:
    """The IA32_VMX_EPT_VPID_CAP bitfields an EPTP value uses (its memory type, walk length, and
    the A/D and supervisor shadow-stack bits when set; SDM Vol. 3C §26.6.11)."""
    caps = []
    t = EPT.memory_types.get(EPTP_FIELDS["memory_type"].bits.get(eptp))
    if t is not None and t.eptp_capability is not None:
        caps.append(t.eptp_capability)
    encoded = EPTP_FIELDS["walk_length"].bits.get(eptp)
    walk = next((w for w in EPT.walk_lengths if w.encoded == encoded), None)
    if walk is not None:
        caps.append(walk.capability)
    for bit in ("accessed_dirty", "supervisor_shadow_stack"):
        if eptp & EPTP_FIELDS[bit].mask:
            caps.append(bit)
    return caps


# ------------------------------------------------------------------ the image


@attrs.frozen
class VcpuImage:
    """One vCPU: its VMCS as fields (non-zero ones; every other field is 0), its program and
    where it is in it (``pc``), the interrupt pending injection, whether it had given up the
    processor, its failure if any, whether it waits for a device response, and RAX."""

    index: int
    fields: Mapping[str, int]
    program: tuple[ProgramStep, ...]
    pc: int = 0
    pending_vector: int | None = None
    yielded: bool = False
    failed: str | None = None
    waiting: bool = False
    rax: int = 0


@attrs.frozen
class DeviceState:
    """What the designs keep per VM about its devices: the guest-physical page numbers it granted
    to the service VM (its PV ring). Ring requests are never in flight in an image: pausing waits
    until the service VM has answered them (:func:`pause_vm`)."""

    granted: frozenset[int] = frozenset()


@attrs.frozen
class VmImage:
    """A saved VM (see the module docstring); ``memory`` maps guest-physical page numbers to the
    page's bytes, for exactly the pages the guest has (those its EPT maps); ``source`` names the
    capability profile and design it was saved from (informational)."""

    format_version: int
    name: str
    kind: str
    memory_bytes: int
    vcpus: tuple[VcpuImage, ...]
    memory: Mapping[int, bytes] = attrs.field(repr=False)
    devices: DeviceState
    requirements: tuple[Requirement, ...]
    source: str = ""


# ------------------------------------------------------------------ pausing


@checked
def vm_index(machine: Machine, name_or_index: str | int) -> int:
    """The index of a guest VM given by name or index; InputError naming the known VMs otherwise."""
    for vm in machine.vms:
        if name_or_index in (vm.name, vm.index):
            return vm.index
    known = ", ".join(vm.name for vm in machine.vms)
    raise InputError("vm", repr(name_or_index), f"no such VM (known: {known})")


@checked
def running_on(machine: Machine, vm: int) -> list[int]:
    """The processors on which a vCPU of VM ``vm`` is in VMX non-root operation."""
    return [i for i, ref in enumerate(machine.running)
            if ref is not None and ref[0] == vm and machine.lps[i].mode is VmxMode.NON_ROOT]


def _guest_vm(machine: Machine, vm: int) -> Vm:
    """Guest VM ``vm``; InputError if the machine has no such guest VM."""
    if not 0 <= vm < len(machine.vms):
        raise InputError("vm", repr(vm), f"no such VM: the machine has {len(machine.vms)}")
    return machine.vms[vm]


def in_flight(machine: Machine, vm: int) -> bool:
    """Whether the service VM has ring requests of VM ``vm`` not yet answered."""
    return machine.service is not None and any(v == vm for v, _ in machine.service.requests)


@checked
def pause_vm(machine: Machine, vm: int, *, max_steps: int = PAUSE_STEPS) -> tuple[Machine, Trace]:
    """Stop scheduling VM ``vm`` and interrupt every processor running one of its vCPUs, so that
    each exits to the hypervisor; then let the machine run (the VM stays paused) until the service
    VM has answered the VM's ring requests, so no device I/O is in flight. How a hypervisor
    quiesces a VM before reading its state; InputError if the requests stay unanswered."""
    target = _guest_vm(machine, vm)
    machine = machine.with_vm(attrs.evolve(target, vcpus=tuple(attrs.evolve(v, paused=True) for v in target.vcpus)))
    events: list[Event] = []
    for i in running_on(machine, vm):
        machine, kicked = interrupt(machine, i)
        events += kicked
    for _ in range(max_steps):
        if not in_flight(machine, vm):
            break
        machine, ran = run(machine, 1)
        events += ran
    if in_flight(machine, vm):
        raise InputError(f"vm {target.name!r}", "ring requests in flight",
                         f"the service VM did not answer them within {max_steps} steps")
    return machine, tuple(events)


@checked
def resume_vm(machine: Machine, vm: int) -> Machine:
    """Schedule VM ``vm`` again."""
    target = _guest_vm(machine, vm)
    return machine.with_vm(attrs.evolve(target, vcpus=tuple(attrs.evolve(v, paused=False) for v in target.vcpus)))


# ------------------------------------------------------------------ save


@checked
def save_vm(machine: Machine, vm: int) -> VmImage:
    """The image of guest VM ``vm``, which must not be running (:func:`pause_vm` first): each
    vCPU's VMCS read field by field, the backed pages its EPT maps, its device state."""
    target = _guest_vm(machine, vm)
    if target.kind not in _KINDS:
        raise InputError(f"vm {target.name!r}", target.kind, "only VMs in VMX non-root operation (hvm, pv) have a "
                         "VMCS to save")
    busy = running_on(machine, vm)
    if busy:
        raise InputError(f"vm {target.name!r}", f"running on processor {busy[0]}",
                         "a running VM's state is in flight: pause it first (pause_vm)")
    vcpus = []
    for v in target.vcpus:
        vmcs = machine.regions[v.vmcs_addr]
        assert isinstance(vmcs, Vmcs)
        vcpus.append(VcpuImage(v.index, vmcs.nonzero_fields(), v.program, v.pc, v.pending_vector, v.yielded, v.failed,
                               v.waiting, v.rax))
    memory = {page: machine.memory.read(HostPhysAddr(backing_hpa(target, page << PAGE_OFFSET_BITS)), PAGE_SIZE)
              for page in sorted(target.mapped)}
    if in_flight(machine, vm):
        raise InputError(f"vm {target.name!r}", "ring requests in flight", "pause it first (pause_vm waits for "
                         "the service VM's answers)")
    return VmImage(FORMAT_VERSION, target.name, target.kind, target.memory_bytes, tuple(vcpus), memory,
                   DeviceState(target.granted),
                   compute_requirements([v.fields for v in vcpus], target.memory_bytes),
                   f"{machine.caps.name} / {machine.design}")


# ------------------------------------------------------------------ restore


@checked
def missing_capabilities(image: VmImage, caps: Capabilities) -> tuple[str, ...]:
    """Each capability ``image``'s VM needs that ``caps`` lacks: its requirements not met, and
    every control bit the VM keeps 0 that the target forces to 1 (allowed-0 setting 1). () when
    the VM can run there."""
    missing: list[str] = []
    for r in image.requirements:
        missing += r.problems(caps)
    for cf in CONTROL_FIELDS:
        a0 = caps.allowed0(cf.key)
        if a0 is None:
            continue
        for v in image.vcpus:
            forced = a0 & ~v.fields.get(cf.vmcs_field.name, 0)
            for bit in range(cf.width):
                if forced >> bit & 1:
                    name = _CONTROL_NAMES.get((cf.key, bit), f"reserved bit {bit}")
                    missing.append(f"{cf.title}: {name} = 0 ({caps.control_msr(cf.key)} allowed-0 bit {bit} is 1)")
    return tuple(dict.fromkeys(missing))


def _free_slots(machine: Machine, count: int) -> int:
    """The first of ``count`` consecutive VMCS (and PML) slots of the layout that nothing uses."""
    layout = machine.layout
    used = set(machine.regions) | {v.vmcs_addr for vm in machine.all_vms for v in vm.vcpus}
    n = 0
    while any(layout.vmcs_region(n + k) in used for k in range(count)):
        n += 1
    if n + count > layout.max_vcpus:
        raise InputError("layout", f"{n + count} vCPUs", f"at most {layout.max_vcpus} vCPUs fit the host layout")
    return n


def _make_room(machine: Machine, index: int) -> Machine:
    """Move the service VM (which follows the guest VMs) one index up so that guest VM ``index``
    fits: its vCPUs' references, its bitmap pages (rewritten at the slot of its new index) and the
    host-owned fields of its VMCS (VPID, bitmap addresses), as the hypervisor would VMWRITE them."""
    service = machine.service
    if service is None or service.index != index:
        return machine
    new = index + 1
    moved = attrs.evolve(service, index=new, vcpus=tuple(attrs.evolve(v, vm=new) for v in service.vcpus))
    running = tuple((new, r[1]) if r is not None and r[0] == index else r for r in machine.running)
    machine = attrs.evolve(machine, service=moved, running=running)
    design = get_design(machine.design)
    if isinstance(design, DesignBase) and service.bitmaps:
        machine = design.install_bitmaps(machine, moved, machine.layout)
    moved = machine.vm(new)
    regions = dict(machine.regions)
    for vcpu in moved.vcpus:
        current = regions[vcpu.vmcs_addr]
        assert isinstance(current, Vmcs)
        base = design.build_vmcs(machine.caps, moved, vcpu)
        regions[vcpu.vmcs_addr] = current.with_fields({name: base[name] for name in sorted(HOST_OWNED)})
    return attrs.evolve(machine, regions=regions)


@checked
def restore_vm(machine: Machine, image: VmImage) -> Machine:
    """``machine`` with ``image``'s VM added: its VM record, EPT area, backing and VMCS regions
    allocated from the machine's layout; the design's own creation of the VM (guest paging, device
    set-up); EPT mappings for exactly the guest-physical pages the image holds, holding the image's
    bytes; each vCPU's VMCS re-created as fields — the image's guest-state and control fields, the
    target's host-state fields, host-owned fields and EPT root — clear, so its first entry is a
    VMLAUNCH. IncompatibleHost lists every capability the VM needs that the machine lacks."""
    missing = missing_capabilities(image, machine.caps)
    if missing:
        raise IncompatibleHost(image.name, machine.caps.name, missing)
    if any(vm.name == image.name for vm in machine.vms):
        raise InputError(f"vm {image.name!r}", "name taken", "the target already has a VM of that name (clone it "
                         "under another name)")
    layout = machine.layout
    if image.memory_bytes > layout.backing_stride:
        raise InputError(f"vm {image.name!r}", f"{image.memory_bytes} bytes",
                         f"the target layout backs at most {layout.backing_stride} bytes per VM")
    index = len(machine.vms)
    if index >= layout.max_vms:
        raise InputError("layout", f"{index + 1} VMs", f"at most {layout.max_vms} VMs fit the host layout")
    design = get_design(machine.design)
    machine = _make_room(machine, index)
    vm = vm_record(index, image.name, image.kind, image.memory_bytes, tuple(v.program for v in image.vcpus),
                   layout=layout, first=_free_slots(machine, len(image.vcpus)))
    vm = attrs.evolve(vm, vcpus=tuple(attrs.evolve(vc, pc=v.pc, pending_vector=v.pending_vector, yielded=v.yielded,
                                                   failed=v.failed, waiting=v.waiting, rax=v.rax)
                                      for vc, v in zip(vm.vcpus, image.vcpus, strict=True)))
    machine = attrs.evolve(machine, vms=(*machine.vms, vm))
    machine = design.create_vm(machine, vm, layout)
    vm = machine.vms[index]
    extra = sorted(vm.mapped - set(image.memory))
    if extra:
        raise InputError(f"vm {image.name!r}", f"guest page {extra[0]:#x}", "the target design maps this page when it "
                         "creates the VM but the image does not hold it")
    vmcs0 = design.build_vmcs(machine.caps, vm, vm.vcpus[0])
    memory = machine.memory
    levels = ept_levels(machine.caps, _restored_vmcs(vmcs0, image.vcpus[0]))
    for page in sorted(set(image.memory) - vm.mapped):
        memory, vm = map_backed(memory, vm, levels, page << PAGE_OFFSET_BITS)
    pages = {backing_hpa(vm, page << PAGE_OFFSET_BITS) >> PAGE_OFFSET_BITS: data for page, data in image.memory.items()}
    memory = PhysicalMemory({**memory.pages, **pages})
    vm = attrs.evolve(vm, granted=vm.granted | image.devices.granted)
    machine = attrs.evolve(machine, memory=memory).with_vm(vm)
    regions = dict(machine.regions)
    for vcpu, saved in zip(vm.vcpus, image.vcpus, strict=True):
        regions[vcpu.vmcs_addr] = _restored_vmcs(design.build_vmcs(machine.caps, vm, vcpu), saved)
    return attrs.evolve(machine, regions=regions)


def _restored_vmcs(base: Vmcs, saved: VcpuImage) -> Vmcs:
    """A new (clear) VMCS: the target hypervisor's host-state and host-owned fields from ``base``,
    the image's guest-state and control fields, and the image's EPTP with the target's root."""
    fields: dict[str, int] = {}
    for f in VMCS_FIELDS:
        if f.type.value == "host" or f.name in HOST_OWNED:
            fields[f.name] = base.get(f)
    for name, value in saved.fields.items():
        f = VMCS_FIELDS[name]
        if f.type.value in _RESTORED_TYPES and name not in HOST_OWNED:
            fields[name] = value
    fields["EPT_POINTER"] = (saved.fields.get("EPT_POINTER", 0) & ~_ROOT) | (base.get(_EPTP) & _ROOT)
    return Vmcs(revision_id=base.revision_id).with_fields(fields)


@checked
def clone_vm(machine: Machine, vm: int, name: str) -> Machine:
    """``machine`` with a copy of VM ``vm`` (paused, then saved) restored under ``name``: same
    memory, vCPU state and program position; its own backing, EPT, VMCSs and VPID."""
    if not name:
        raise InputError("name", repr(name), "a clone needs a non-empty name")
    paused, _ = pause_vm(machine, vm)
    image = attrs.evolve(save_vm(paused, vm), name=name)
    restored = restore_vm(paused, image)
    was_paused = all(v.paused for v in machine.vms[vm].vcpus)
    out = restored if was_paused else resume_vm(restored, vm)
    return resume_vm(out, len(out.vms) - 1)


# ------------------------------------------------------------------ the snapshot file


def _encode(value: Any) -> Any:
    """JSON form of a program step's value: attrs classes by class name, enums by class and value."""
    if attrs.has(type(value)):
        return {"$class": type(value).__name__,
                **{a.name: _encode(getattr(value, a.name)) for a in attrs.fields(type(value)) if a.init}}
    if isinstance(value, enum.Enum):
        return {"$enum": type(value).__name__, "value": value.value}
    if isinstance(value, tuple | list):
        return [_encode(v) for v in value]
    if isinstance(value, frozenset):
        return {"$set": sorted(_encode(v) for v in value)}
    return value


def _is_step_class(cls: object) -> bool:
    """A guest operation class: an attrs class whose ``kind`` is a class-level string."""
    return isinstance(cls, type) and attrs.has(cls) and isinstance(getattr(cls, "kind", None), str)


def _classes() -> dict[str, type]:
    """The classes a program may hold: the guest operations (with their operand classes) and the
    executor's own program steps (LinearAccess, MapPage)."""
    out = {cls.__name__: cls for cls in vars(g).values() if isinstance(cls, type) and attrs.has(cls)}
    out.update({cls.__name__: cls for cls in vars(model).values() if _is_step_class(cls)})
    return out


_CLASSES = _classes()
_ENUMS: dict[str, type[enum.Enum]] = {"AccessKind": AccessKind}
_ENUMS.update({cls.__name__: cls for cls in vars(g).values() if isinstance(cls, type) and issubclass(cls, enum.Enum)})


def _decode(value: Any, where: str) -> Any:
    if isinstance(value, list):
        return tuple(_decode(v, where) for v in value)
    if not isinstance(value, dict):
        return value
    if "$enum" in value:
        cls = _ENUMS.get(value["$enum"])
        if cls is None:
            raise InputError(where, value["$enum"], f"unknown enumeration (known: {', '.join(_ENUMS)})")
        try:
            return cls(value.get("value"))
        except ValueError as e:
            raise InputError(where, repr(value.get("value"))[:40], f"not a {cls.__name__}") from e
    if "$set" in value:
        items = value["$set"]
        if not isinstance(items, list):
            raise InputError(where, repr(items)[:40], "a set is a list")
        return frozenset(_decode(v, where) for v in items)
    name = value.get("$class")
    cls = _CLASSES.get(str(name))
    if cls is None:
        raise InputError(where, repr(name), "unknown guest operation class")
    try:
        return cls(**{k: _decode(v, where) for k, v in value.items() if k != "$class"})
    except (TypeError, ValueError) as e:
        raise InputError(where, repr(name), f"not a valid {name}: {e}") from e


_ZERO_PAGE = bytes(PAGE_SIZE)


def _check_types(value: Any, where: str) -> None:
    """Every attribute of a decoded guest operation has a type its annotation allows (integers
    unsigned 64-bit), recursively: a snapshot cannot smuggle a string where an address belongs."""
    hints = typing.get_type_hints(type(value))
    for a in attrs.fields(type(value)):
        if not a.init:
            continue
        v = getattr(value, a.name)
        allowed = tuple(t for t in (typing.get_args(hints[a.name]) or (hints[a.name],)) if isinstance(t, type))
        if allowed and not isinstance(v, allowed):
            raise InputError(f"{where}.{a.name}", repr(v)[:40], f"must be {' or '.join(t.__name__ for t in allowed)}")
        if isinstance(v, int) and not isinstance(v, bool) and not 0 <= v <= _U64:
            raise InputError(f"{where}.{a.name}", v, "must be an unsigned 64-bit integer")
        if attrs.has(type(v)):
            _check_types(v, f"{where}.{a.name}")


def image_to_json(image: VmImage) -> dict[str, Any]:
    """The JSON payload of a snapshot file (documented in docs/executor.rst)."""
    return {
        "format_version": image.format_version,
        "vm": {"name": image.name, "kind": image.kind, "memory_bytes": image.memory_bytes, "source": image.source},
        "requirements": [attrs.asdict(r) for r in image.requirements],
        "vcpus": [{"index": v.index, "pc": v.pc, "pending_vector": v.pending_vector, "yielded": v.yielded,
                   "failed": v.failed, "waiting": v.waiting, "rax": v.rax, "fields": dict(v.fields),
                   "program": [_encode(s) for s in v.program]} for v in image.vcpus],
        "memory": {"page_size": PAGE_SIZE,
                   "pages": [[n, None if data == _ZERO_PAGE else base64.b64encode(data).decode()]
                             for n, data in sorted(image.memory.items())]},
        "devices": {"granted": sorted(image.devices.granted)},
    }


def _get(data: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """``data[key]`` if it is of ``kind`` (a bool is not an int); InputError naming the key otherwise."""
    value = data.get(key) if isinstance(data, Mapping) else None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise InputError(f"{where}{key}", repr(value)[:60], f"missing or not a {getattr(kind, '__name__', kind)}")
    return value


def _int(data: Any, key: str, where: str, low: int, high: int, *, optional: bool = False) -> Any:
    """``data[key]``, an integer in [low, high] (or None when ``optional`` and absent / null)."""
    value = data.get(key) if isinstance(data, Mapping) else None
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InputError(f"{where}{key}", repr(value)[:40], f"must be an integer {low} to {high}")
    return value


_U64 = (1 << 64) - 1
_REQUIREMENT_KEYS = {a.name: a.type for a in attrs.fields(Requirement)}


def _vcpu_from_json(raw: Any, n: int, where: str) -> VcpuImage:
    at = f"{where}: vcpus[{n}]."
    _int(raw, "index", at, n, n)
    fields = _get(raw, "fields", dict, at)
    for name, value in fields.items():
        field = VMCS_FIELDS.get(name)
        if field is None or not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << field.bits:
            raise InputError(f"{at}fields.{name}", repr(value)[:40], "not a VMCS field name with a value that fits it")
    program = tuple(_decode(s, f"{at}program[{k}]") for k, s in enumerate(_get(raw, "program", list, at)))
    for k, step in enumerate(program):
        if not _is_step_class(type(step)):
            raise InputError(f"{at}program[{k}]", repr(step)[:40], "not a guest operation")
        _check_types(step, f"{at}program[{k}]")
    failed = raw.get("failed")
    if failed is not None and not isinstance(failed, str):
        raise InputError(f"{at}failed", repr(failed)[:40], "must be a string or null")
    for key in ("yielded", "waiting"):
        if not isinstance(raw.get(key, False), bool):
            raise InputError(f"{at}{key}", repr(raw.get(key))[:40], "must be true or false")
    return VcpuImage(n, dict(fields), program, _int(raw, "pc", at, 0, len(program)),
                     _int(raw, "pending_vector", at, 0, 255, optional=True), raw.get("yielded", False), failed,
                     raw.get("waiting", False), _int(raw, "rax", at, 0, _U64))


def _pages_from_json(mem: Any, memory_bytes: int, where: str) -> dict[int, bytes]:
    _int(mem, "page_size", f"{where}: memory.", PAGE_SIZE, PAGE_SIZE)
    pages: dict[int, bytes] = {}
    last = memory_bytes // PAGE_SIZE - 1
    for k, item in enumerate(_get(mem, "pages", list, f"{where}: memory.")):
        at = f"{where}: memory.pages[{k}]"
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], int) and 0 <= item[0] <= last
                and (item[1] is None or isinstance(item[1], str))):
            raise InputError(at, repr(item)[:40], f"must be [page number 0 to {last}, base64 text or null]")
        try:
            data = _ZERO_PAGE if item[1] is None else base64.b64decode(item[1], validate=True)
        except ValueError as e:
            raise InputError(at, "page bytes", f"not base64: {e}") from e
        if len(data) != PAGE_SIZE:
            raise InputError(at, f"{len(data)} bytes", f"a page is {PAGE_SIZE} bytes")
        pages[item[0]] = data
    return pages


def _requirement_from_json(raw: Any, k: int, where: str) -> Requirement:
    at = f"{where}: requirements[{k}]"
    if not isinstance(raw, dict) or not set(raw) <= set(_REQUIREMENT_KEYS) or not {"kind", "name", "text"} <= set(raw):
        raise InputError(at, repr(raw)[:60], f"must be an object with keys {', '.join(_REQUIREMENT_KEYS)}")
    for key in ("kind", "name", "text"):
        _get(raw, key, str, f"{at}.")
    for key in ("value", "exempt"):
        if key in raw:
            _int(raw, key, f"{at}.", 0, _U64)
    return Requirement(**raw)


def image_from_json(data: Any, where: str, version: int = FORMAT_VERSION) -> VmImage:
    """The image of a snapshot payload (of header format ``version``); InputError naming the key
    for anything malformed."""
    if not isinstance(data, dict):
        raise InputError(where, type(data).__name__, "the payload must be a JSON object")
    _int(data, "format_version", f"{where}: ", version, version)
    vm = _get(data, "vm", dict, f"{where}: ")
    name = _get(vm, "name", str, f"{where}: vm.")
    kind = vm.get("kind")
    if kind not in _KINDS:
        raise InputError(f"{where}: vm.kind", repr(kind)[:40], f"must be one of {', '.join(_KINDS)}")
    memory_bytes = _int(vm, "memory_bytes", f"{where}: vm.", PAGE_SIZE, _U64)
    if memory_bytes % PAGE_SIZE:
        raise InputError(f"{where}: vm.memory_bytes", memory_bytes, f"must be a multiple of {PAGE_SIZE}")
    raw_vcpus = _get(data, "vcpus", list, f"{where}: ")
    if not raw_vcpus:
        raise InputError(f"{where}: vcpus", "[]", "a VM has at least one vCPU")
    vcpus = tuple(_vcpu_from_json(raw, n, where) for n, raw in enumerate(raw_vcpus))
    pages = _pages_from_json(_get(data, "memory", dict, f"{where}: "), memory_bytes, where)
    devices = _get(data, "devices", dict, f"{where}: ")
    granted = _get(devices, "granted", list, f"{where}: devices.")
    if not all(isinstance(p, int) and not isinstance(p, bool) and p in pages for p in granted):
        raise InputError(f"{where}: devices.granted", repr(granted)[:40], "must list pages the image holds")
    requirements = tuple(_requirement_from_json(r, k, where)
                         for k, r in enumerate(_get(data, "requirements", list, f"{where}: ")))
    if requirements != compute_requirements([v.fields for v in vcpus], memory_bytes):
        raise InputError(f"{where}: requirements", f"{len(requirements)} listed",
                         "do not match the capabilities the VMCS fields in the file need")
    source = vm.get("source", "")
    return VmImage(version, name, str(kind), memory_bytes, vcpus, pages, DeviceState(frozenset(granted)),
                   requirements, source if isinstance(source, str) else "")


@checked
def encode_snapshot(image: VmImage) -> bytes:
    """The bytes of a snapshot file: the magic, a header line ``version=N sha256=HEX bytes=LEN``
    and the JSON payload the checksum covers."""
    payload = json.dumps(image_to_json(image), separators=(",", ":"), sort_keys=True).encode()
    header = f"version={FORMAT_VERSION} sha256={sha256(payload)} bytes={len(payload)}\n".encode()
    return MAGIC + header + payload


@checked
def decode_snapshot(blob: bytes, where: str) -> VmImage:
    """The image in a snapshot file's bytes; InputError naming ``where`` and the problem for a
    wrong magic, a malformed header, a future version, a truncated or corrupted payload."""
    if not blob.startswith(MAGIC):
        raise InputError(where, repr(blob[:len(MAGIC)]), f"not a vtx snapshot (wrong magic; expected {MAGIC!r})")
    end = blob.find(b"\n", len(MAGIC))
    header = blob[len(MAGIC):end].decode("ascii", "replace") if end >= 0 else ""
    try:
        items = dict(part.split("=", 1) for part in header.split(" "))
        version, digest, length = int(items["version"]), items["sha256"], int(items["bytes"])
    except (KeyError, ValueError) as e:
        raise InputError(where, repr(header[:80]), "malformed header (expected version=N sha256=HEX bytes=LEN)") from e
    if version > FORMAT_VERSION:
        raise InputError(where, f"format version {version}", f"newer than this vtx reads (up to {FORMAT_VERSION})")
    if version < 1:
        raise InputError(where, f"format version {version}", "no such format version")
    payload = blob[end + 1:]
    if len(payload) < length:
        raise InputError(where, f"{len(payload)} of {length} payload bytes", "truncated")
    if len(payload) > length:
        raise InputError(where, f"{len(payload) - length} bytes after the payload", "trailing data")
    if sha256(payload) != digest:
        raise InputError(where, f"sha256 {sha256(payload)[:16]}...", f"corrupted: the header says {digest[:16]}...")
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(where, "payload", f"not JSON: {e}") from e
    return image_from_json(data, where, version)


@checked
def write_snapshot(path: Path | str, image: VmImage) -> None:
    """Write ``image`` to ``path`` atomically (:func:`vtx.fileio.atomic_write`): a reader sees the
    old file or the new one, never a mixture."""
    atomic_write(path, encode_snapshot(image))


@checked
def read_snapshot(path: Path | str) -> VmImage:
    """The image in snapshot file ``path``; InputError naming the file and the problem."""
    return decode_snapshot(read_bytes(path), str(path))


# ------------------------------------------------------------------ what the guest sees


@checked
def guest_visible(trace: Trace, vm_name: str) -> tuple[tuple[int, tuple[Any, ...]], ...]:
    """The part of ``trace`` VM ``vm_name``'s guest can observe, per vCPU (by index): in order, each
    memory access it made (kind, GVA, GPA, size, value read or written), each operation that
    completed without an exit, each operation a handler completed for it (the exit's operation,
    when the handler advanced RIP), each exception delivered to it and each interrupt injected.
    Host-physical addresses, processors, steps, exits that only resume the guest (EPT faults on
    first touch, host interrupts, log-full exits), VMCS transfers and costs are the host's."""
    per: dict[int, list[Any]] = {}
    pending: dict[str, Event] = {}
    prefix = f"{vm_name}."
    for e in trace:
        if e.vcpu is None or not e.vcpu.startswith(prefix) or e.vm != vm_name:
            continue
        rest = e.vcpu[len(prefix):]
        if not rest.isdigit():
            continue
        out = per.setdefault(int(rest), [])
        if e.kind == "access":
            out.append(("access", e.get("access"), e.get("gva"), e.get("gpa"), e.get("size"), e.get("value")))
        elif e.kind == "executed":
            out.append(("executed", e.op))
        elif e.kind == "guest_fault":
            out.append(("fault", e.get("vector")))
        elif e.kind == "inject":
            out.append(("inject", e.get("vector")))
        elif e.kind == "exit":
            pending[e.vcpu] = e
        elif e.kind == "handled" and e.get("advance") and e.vcpu in pending:
            out.append(("completed", pending.pop(e.vcpu).op))
    return tuple((k, tuple(v)) for k, v in sorted(per.items()))


__all__ = ["FORMAT_VERSION", "HOST_OWNED", "MAGIC", "DeviceState", "IncompatibleHost", "Requirement", "VcpuImage",
           "VmImage", "clone_vm", "compute_requirements", "decode_snapshot", "encode_snapshot", "guest_visible",
           "missing_capabilities", "pause_vm", "read_snapshot", "restore_vm", "resume_vm", "running_on", "save_vm",
           "vm_index", "write_snapshot"]
