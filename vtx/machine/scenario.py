"""Scenarios: a machine, a capability preset, hypervisor designs, VMs and their guest programs,
read from TOML (the format is documented in docs/executor.rst).

A bad file is an :class:`~vtx.errors.InputError` naming the key (``vm[1].workload``), the value
and the rule; ``vtx run`` turns it into exit status 2.
"""

from __future__ import annotations

import random
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from vtx import guest_ops as g
from vtx.errors import InputError
from vtx.inputs import in_file, key_path, read_text, shown
from vtx.machine.designs import DESIGNS, get_design
from vtx.machine.designs.base import VMX_KINDS
from vtx.machine.layout import LAYOUT, Layout
from vtx.machine.model import LinearAccess, Machine, MapPage, ProgramStep, Vcpu, Vm
from vtx.outcomes import VmSucceed
from vtx.paging.formats import PAGE_OFFSET_BITS, PAGE_SIZE
from vtx.paging.guest import AccessKind
from vtx.paging.memory import PhysicalMemory
from vtx.spec import SPEC_DIR, _Table
from vtx.typecheck import checked
from vtx.vmx import instructions as ins
from vtx.vmx.capabilities import Capabilities, load_preset, preset_names
from vtx.vmx.operation import LogicalProcessor, VmxonRegion
from vtx.vmx.vmcs import Vmcs

DEFAULT_SCENARIO = SPEC_DIR / "machine" / "default_scenario.toml"
MIB = 1 << 20

_ENC = _Table("machine/encodings.toml")
LENGTHS: Mapping[str, int] = {r["mnemonic"]: len(r["opcode"]) for r in _ENC.rows("instruction")}
for _r in _ENC.rows("instruction"):
    _ENC.cite("instruction", _r)

KINDS = ("hvm", "pv", "pv_classic")
RING_KINDS = ("pv", "pv_classic")
"""Guests with paravirtual drivers: their device requests go on a shared ring."""
WORKLOADS = ("compute", "io", "memory", "mixed")
TOP_KEYS = {"seed", "steps", "profile", "logical_processors", "design", "designs", "tick", "vm"}
VM_KEYS = {"name", "vcpus", "kind", "memory_mib", "workload", "length", "program"}
SIMPLE_OPS = ("cpuid", "hlt", "pause", "rdtsc", "vmcall", "wbinvd")
MEMORY_OPS = {"load": AccessKind.READ, "store": AccessKind.WRITE, "fetch": AccessKind.FETCH}
OPS = (*SIMPLE_OPS, "rdmsr", "wrmsr", "in", "out", *MEMORY_OPS, "mmio_read", "mmio_write", "ring_notify", "map")
ACCESS_BYTES = 8
MAX_STEPS = 1_000_000
"""The most scheduler steps a scenario may ask for (a run's length is bounded by its input)."""


@attrs.frozen
class VmSpec:
    name: str
    vcpus: int
    kind: str
    memory_bytes: int
    programs: tuple[tuple[ProgramStep, ...], ...]


@attrs.frozen
class Scenario:
    seed: int
    steps: int
    caps: Capabilities
    logical_processors: int
    designs: tuple[str, ...]
    tick: float
    vms: tuple[VmSpec, ...]


# ------------------------------------------------------------------ parsing


def _int(data: Mapping[str, Any], key: str, where: str, *, default: int | None = None, low: int = 0,
         high: int | None = None) -> int:
    value = data.get(key, default)
    if value is None:
        raise InputError(f"{where}{key}", "missing", "required key")
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        bound = f"{low} to {high}" if high is not None else f">= {low}"
        raise InputError(f"{where}{key}", shown(value), f"must be an integer {bound}")
    return value


def _str(data: Mapping[str, Any], key: str, where: str, choices: tuple[str, ...], default: str | None = None) -> str:
    value = data.get(key, default)
    if value not in choices:
        raise InputError(f"{where}{key}", shown(value), f"must be one of {', '.join(choices)}")
    return str(value)


def _unknown(data: Mapping[str, Any], known: set[str], where: str) -> None:
    extra = sorted(set(data) - known)
    if extra:
        raise InputError(key_path(where.rstrip("."), extra[0]), "?", f"unknown key (known: {', '.join(sorted(known))})")


def _instruction(mnemonic: str) -> g.Instruction:
    return g.Instruction(mnemonic, length=LENGTHS[mnemonic])


@checked
def parse_op(item: object, where: str, layout: Layout, kind: str) -> tuple[ProgramStep, ...]:
    """One program item: ``{op = "cpuid"}``, ``{op = "out", port = 0x3f8, size = 1}``,
    ``{op = "store", gva = 0x300000, value = 7}``, ``{op = "mmio_write", offset = 0}``,
    ``{op = "ring_notify", value = 1}`` (PV guests: a ring store, a VMCALL and a load of the
    response), ``{op = "map", gva = 0x300000, pfn = 0x200}`` (classic PV guests: an mmu_update)..."""
    if not isinstance(item, dict):
        raise InputError(where, shown(item), "must be a table with an op key")
    op = _str(item, "op", f"{where}.", OPS)
    known = {"op"}
    steps: tuple[ProgramStep, ...]
    if op in SIMPLE_OPS:
        steps = (_instruction(op),)
    elif op in ("rdmsr", "wrmsr"):
        known |= {"msr", "value"}
        msr = _int(item, "msr", f"{where}.", high=(1 << 32) - 1)
        steps = ((g.Rdmsr(msr, length=LENGTHS[op]) if op == "rdmsr" else
                  g.Wrmsr(msr, _int(item, "value", f"{where}.", default=0, high=(1 << 64) - 1), length=LENGTHS[op])),)
    elif op in ("in", "out"):
        known |= {"port", "size"}
        port = _int(item, "port", f"{where}.", default=layout.device_port, high=(1 << 16) - 1)
        size = _int(item, "size", f"{where}.", default=1, low=1, high=4)
        if size == 3:
            raise InputError(f"{where}.size", size, "must be 1, 2 or 4")
        steps = (g.Io(port, size, input=op == "in", length=LENGTHS[op]),)
    elif op in MEMORY_OPS:
        known |= {"gva", "value", "size"}
        steps = (LinearAccess(_int(item, "gva", f"{where}.", high=(1 << 64) - 1), MEMORY_OPS[op],
                              _int(item, "size", f"{where}.", default=ACCESS_BYTES, low=1, high=ACCESS_BYTES),
                              _int(item, "value", f"{where}.", default=0, high=(1 << 64) - 1)),)
    elif op in ("mmio_read", "mmio_write"):
        known |= {"offset", "value"}
        offset = _int(item, "offset", f"{where}.", default=0, high=PAGE_SIZE - ACCESS_BYTES)
        access = AccessKind.WRITE if op == "mmio_write" else AccessKind.READ
        steps = (LinearAccess(layout.mmio_gpa + offset, access, ACCESS_BYTES,
                              _int(item, "value", f"{where}.", default=0, high=(1 << 64) - 1)),)
    elif op == "map":
        known |= {"gva", "pfn", "mfn", "writable"}
        if kind != "pv_classic":
            raise InputError(f"{where}.op", op, "map needs a classic PV guest (kind = \"pv_classic\"); others write "
                             "their page tables with stores")
        if ("pfn" in item) == ("mfn" in item):
            raise InputError(f"{where}.pfn", "with mfn" if "pfn" in item else "missing", "give pfn or mfn, not both")
        frame = "mfn" if "mfn" in item else "pfn"
        writable = item.get("writable", True)
        if not isinstance(writable, bool):
            raise InputError(f"{where}.writable", shown(writable), "must be true or false")
        number = _int(item, frame, f"{where}.", high=((1 << 64) - 1) >> PAGE_OFFSET_BITS)
        steps = (MapPage(_int(item, "gva", f"{where}.", high=(1 << 64) - 1), number, machine=frame == "mfn",
                         writable=writable),)
    else:
        known |= {"value"}
        if kind not in RING_KINDS:
            raise InputError(f"{where}.op", op, "ring_notify needs a PV guest (kind = \"pv\" or \"pv_classic\")")
        steps = (LinearAccess(layout.ring_gpa + layout.ring_request, AccessKind.WRITE, layout.ring_entry_bytes,
                              _int(item, "value", f"{where}.", default=1, high=(1 << 64) - 1)),
                 _instruction("vmcall"),
                 LinearAccess(layout.ring_gpa + layout.ring_response, AccessKind.READ, layout.ring_entry_bytes))
    _unknown(item, known, f"{where}.")
    return steps


@checked
def workload(name: str, kind: str, length: int, memory_bytes: int, *, rng: random.Random,
             layout: Layout) -> tuple[ProgramStep, ...]:
    """A generated program of about ``length`` operations: ``compute`` (CPUID, RDTSC, PAUSE,
    loads and stores on a few data pages), ``io`` (device port I/O and MMIO, or ring requests for
    a PV guest), ``memory`` (stores and loads over many pages: EPT faults on first touch),
    ``mixed`` (all of them, MSR accesses too). Data lives in the upper half of guest memory."""
    data_pages = max(1, memory_bytes // 2 // PAGE_SIZE)
    base = memory_bytes // 2

    def page(spread: int) -> int:
        return base + rng.randrange(min(spread, data_pages)) * PAGE_SIZE + rng.randrange(PAGE_SIZE // 8) * 8

    def device() -> list[dict[str, Any]]:
        if kind in RING_KINDS:
            return [{"op": "ring_notify", "value": rng.randrange(1 << 16) + 1}]
        return [rng.choice([{"op": "out"}, {"op": "in"}, {"op": "mmio_write", "value": rng.randrange(256)},
                            {"op": "mmio_read"}])]

    def compute() -> list[dict[str, Any]]:
        return [rng.choice([{"op": "cpuid"}, {"op": "rdtsc"}, {"op": "pause"},
                            {"op": "store", "gva": page(4), "value": rng.randrange(1 << 32)},
                            {"op": "load", "gva": page(4)}])]

    def memory() -> list[dict[str, Any]]:
        op = rng.choice(["store", "load"])
        return [{"op": op, "gva": page(data_pages), **({"value": rng.randrange(1 << 32)} if op == "store" else {})}]

    def msr() -> list[dict[str, Any]]:
        return [rng.choice([{"op": "rdmsr", "msr": layout.msr},
                            {"op": "wrmsr", "msr": layout.msr, "value": rng.randrange(1 << 32)}])]

    makers = {"compute": [compute], "io": [device, device, compute], "memory": [memory, memory, compute],
              "mixed": [compute, device, memory, msr]}[name]
    items: list[dict[str, Any]] = []
    while len(items) < length:
        items += rng.choice(makers)()
        if rng.random() < 1 / 8:
            items.append({"op": "hlt"})
    steps: tuple[ProgramStep, ...] = ()
    for n, item in enumerate(items):
        steps += parse_op(item, f"workload {name} item {n}", layout, kind)
    return steps


@checked
def parse_scenario(data: Mapping[str, Any], layout: Layout = LAYOUT) -> Scenario:
    """The scenario of a decoded TOML document."""
    _unknown(data, TOP_KEYS, "")
    seed = _int(data, "seed", "", default=0)
    steps = _int(data, "steps", "", default=1000, low=1, high=MAX_STEPS)
    profile = data.get("profile", "skylake_client")
    if profile not in preset_names():
        raise InputError("profile", shown(profile), f"known presets: {', '.join(preset_names())}")
    caps = load_preset(str(profile))
    lps = _int(data, "logical_processors", "", default=1, low=1, high=64)
    if "design" in data and "designs" in data:
        raise InputError("design", "with designs", "give design (one) or designs (a list)")
    if "designs" in data:
        raw = data["designs"]
        if not isinstance(raw, list) or not raw:
            raise InputError("designs", shown(raw), "must be a non-empty list of design names")
        designs = tuple(_str({f"designs[{n}]": d}, f"designs[{n}]", "", tuple(DESIGNS)) for n, d in enumerate(raw))
    else:
        designs = (_str(data, "design", "", tuple(DESIGNS), "hosted"),)
    tick = data.get("tick", 0.05)
    if not isinstance(tick, int | float) or isinstance(tick, bool) or not 0 <= tick < 1:
        raise InputError("tick", shown(tick), "must be a probability in [0, 1)")
    raw_vms = data.get("vm")
    if not isinstance(raw_vms, list) or not raw_vms:
        raise InputError("vm", shown(raw_vms), "must be a non-empty array of [[vm]] tables")
    if len(raw_vms) > layout.max_vms:
        raise InputError("vm", f"{len(raw_vms)} tables", f"at most {layout.max_vms} VMs fit the host layout")
    names: set[str] = set()
    vms = [_parse_vm(n, v, names, seed, layout) for n, v in enumerate(raw_vms)]
    for n, vm in enumerate(vms):
        for d in designs:
            if vm.kind not in DESIGNS[d].kinds:
                raise InputError(f"vm[{n}].kind", shown(vm.kind), f"the {d} design runs only "
                                 f"{', '.join(DESIGNS[d].kinds)} guests")
    total = sum(v.vcpus for v in vms)
    if total > layout.max_vcpus:
        raise InputError("vm", f"{total} vCPUs", f"at most {layout.max_vcpus} vCPUs fit the host layout")
    return Scenario(seed, steps, caps, lps, designs, float(tick), tuple(vms))


def _parse_vm(n: int, v: object, names: set[str], seed: int, layout: Layout) -> VmSpec:
    """The ``[[vm]]`` table number ``n`` (``names`` collects the names seen, which must be unique)."""
    where = f"vm[{n}]."
    if not isinstance(v, dict):
        raise InputError(f"vm[{n}]", shown(v), "must be a table")
    _unknown(v, VM_KEYS, where)
    name = v.get("name", f"vm{n}")
    if not isinstance(name, str) or not name or name in names:
        raise InputError(f"{where}name", shown(name), "must be a unique non-empty string")
    names.add(name)
    kind = _str(v, "kind", where, KINDS, "hvm")
    vcpus = _int(v, "vcpus", where, default=1, low=1, high=16)
    mib = _int(v, "memory_mib", where, default=4, low=1, high=min(layout.backing_stride, layout.mmio_gpa) // MIB)
    memory_bytes = mib * MIB
    if "program" in v and "workload" in v:
        raise InputError(f"{where}program", "with workload", "give a program or a workload, not both")
    if "program" in v:
        if not isinstance(v["program"], list):
            raise InputError(f"{where}program", shown(v["program"]), "must be an array of op tables")
        program: tuple[ProgramStep, ...] = ()
        for k, item in enumerate(v["program"]):
            program += parse_op(item, f"{where}program[{k}]", layout, kind)
        return VmSpec(name, vcpus, kind, memory_bytes, (_ending(program),) * vcpus)
    wl = _str(v, "workload", where, WORKLOADS, "mixed")
    length = _int(v, "length", where, default=20, low=1, high=10_000)
    programs = tuple(_ending(workload(wl, kind, length, memory_bytes, rng=random.Random(f"{seed}/{name}/{c}"),
                                      layout=layout)) for c in range(vcpus))
    return VmSpec(name, vcpus, kind, memory_bytes, programs)


def _ending(program: tuple[ProgramStep, ...]) -> tuple[ProgramStep, ...]:
    """Every program ends with HLT: the vCPU's last exit tells the hypervisor it is finished."""
    last = program[-1] if program else None
    if isinstance(last, g.Instruction) and last.mnemonic == "hlt":
        return program
    return (*program, _instruction("hlt"))


@checked
def load_scenario(path: Path) -> Scenario:
    """The scenario in TOML file ``path``; InputError naming the file for unreadable or invalid TOML."""
    text = read_text(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InputError(str(path), "not TOML", str(e)) from e
    except RecursionError as e:
        raise InputError(str(path), "not TOML", "arrays and tables are nested too deeply to read") from e
    with in_file(path):
        return parse_scenario(data)


# ------------------------------------------------------------------ building the machine


def boot_machine(caps: Capabilities, design_name: str, *, logical_processors: int, seed: int, tick: float,
                 layout: Layout = LAYOUT) -> Machine:
    """A machine with no VMs yet: each logical processor in VMX root operation (VMXON done), the
    scheduler seeded with ``seed``, the hypervisor ``design_name`` placing things by ``layout``."""
    get_design(design_name)
    rev = caps.msr_field("IA32_VMX_BASIC", "vmcs_revision_id")
    if rev is None:
        raise InputError(f"capabilities {caps.name!r}", "IA32_VMX_BASIC", "the executor needs the VMCS revision")
    regions: dict[int, Any] = {}
    lps = []
    for i in range(logical_processors):
        address = layout.vmxon_region(i)
        regions[address] = VmxonRegion(rev)
        lp, outcome = ins.vmxon(LogicalProcessor(regions=regions), caps, address)
        if not isinstance(outcome, VmSucceed):
            raise InputError(f"capabilities {caps.name!r}", str(outcome), "VMXON must succeed on every processor")
        lps.append(attrs.evolve(lp, regions={}))
    return Machine(caps, design_name, PhysicalMemory(), regions, tuple(lps), (None,) * len(lps), {}, (),
                   random.Random(seed).getstate(), tick, layout.tick_vector, layout.wakeup_vector, layout=layout)


@checked
def vm_record(index: int, name: str, kind: str, memory_bytes: int, programs: tuple[tuple[ProgramStep, ...], ...],
              *, layout: Layout, first: int) -> Vm:
    """VM ``index`` placed by ``layout``: its EPT area and backing, and one vCPU per program whose
    VMCS region and page-modification log are the ``first``-th, ``first + 1``-th... of the layout."""
    vcpus = tuple(Vcpu(index, c, layout.vmcs_region(first + c), program, pml_addr=layout.pml_page(first + c))
                  for c, program in enumerate(programs))
    ept_root = layout.ept + index * layout.ept_stride
    return Vm(index, name, kind, vcpus, memory_bytes, layout.backing + index * layout.backing_stride, ept_root,
              ept_root + PAGE_SIZE)


@checked
def build_machine(scenario: Scenario, design_name: str, layout: Layout = LAYOUT) -> Machine:
    """The machine of ``scenario`` under design ``design_name``: each logical processor in VMX
    root operation (VMXON done), each VM created by the design (EPT, guest paging, grants) and
    each vCPU's VMCS built and in memory (clear), the scheduler seeded with the scenario's seed."""
    caps = scenario.caps
    design = get_design(design_name)
    machine = boot_machine(caps, design_name, logical_processors=scenario.logical_processors, seed=scenario.seed,
                           tick=scenario.tick, layout=layout)
    vms = []
    n = 0
    for index, spec in enumerate(scenario.vms):
        vms.append(vm_record(index, spec.name, spec.kind, spec.memory_bytes, spec.programs, layout=layout, first=n))
        n += len(spec.programs)
    machine = attrs.evolve(machine, vms=tuple(vms))
    for vm in machine.vms:
        machine = design.create_vm(machine, vm, layout)
    regions = dict(machine.regions)
    for vm in machine.vms:
        for vcpu in vm.vcpus if vm.kind in VMX_KINDS else ():
            vmcs: Vmcs = design.build_vmcs(caps, vm, vcpu)
            regions[vcpu.vmcs_addr] = vmcs
    return attrs.evolve(machine, regions=regions)
