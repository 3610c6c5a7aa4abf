"""Isolation, TLB isolation and I/O / MSR grants as predicates on a concrete machine and trace
(statements in :data:`vtx.invariants.catalogue.INVARIANTS`).

* Memory: every host address a guest can reach through its EPT (any leaf: each present, well-formed
  leaf allows some access) lies in its partition or a page granted to it with that permission, and
  no leaf touches hypervisor memory; every ``access`` event of a trace stays inside the accessing
  VM's reach (SDM Vol. 3C §30.3.3.2 "EPT Violations").
* TLB: cached translations are tagged (SDM Vol. 3C §30.4 "Caching Translation Information"):
  linear mappings (EPT off) by VPID and PCID, combined mappings (EPT on) by VPID, PCID and EP4TA;
  while EPT is in use no linear mapping is used and without it no combined one (§30.4.2 "Creating
  and Using Cached Translation Information"); with "enable VPID" = 0 every VM entry and exit
  invalidates VPID 0000H (§30.4.3.1), so nothing crosses VMs. AMD tags by ASID alone (APM Vol. 2 §15.16 "TLB Control").
* I/O and MSRs: the ports and MSRs a guest reaches without a VM exit, as the exit rules decide them
  (:func:`vtx.vmx.exits.rules.io_bitmap_exits`, :func:`~vtx.vmx.exits.rules.msr_bitmap_exits`),
  are among the design's grants.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import attrs

from vtx.invariants.catalogue import Violation
from vtx.invariants.mappings import page_range
from vtx.invariants.ownership import USE_IO_BITMAPS, USE_MSR_BITMAPS, Ownership, VcpuContext, ownership
from vtx.invariants.partitioning import leaf_problem, rights
from vtx.machine.designs import get_design
from vtx.machine.model import Machine, Trace
from vtx.paging.ept import EPTP_FIELDS, R, W, X
from vtx.paging.memory import HostPhysAddr, PhysicalMemory
from vtx.spec import VMCS_FIELDS, get_control
from vtx.typecheck import checked
from vtx.vmx.exits import causes
from vtx.vmx.exits.rules import io_bitmap_exits, is_set, msr_bitmap_exits
from vtx.vmx.vmcs import Vmcs

NAME, TLB, GRANTS = "isolation", "tlb_isolation", "io_msr_grants"
_F = VMCS_FIELDS
ENABLE_VPID = get_control("proc2", "enable_vpid")
UNCONDITIONAL_IO = get_control("proc", "unconditional_io_exiting")
PORTS = range(causes.IO_BITMAP_A.lo, causes.IO_BITMAP_B.hi + 1)
_ACCESS_RIGHT = {"read": R, "write": W, "fetch": X}


# ------------------------------------------------------------------ memory


@checked
def memory_violations(own: Ownership) -> list[Violation]:
    """Leaves (EPT, or a classic PV guest's page tables) reaching outside the VM's partition and
    grants, or touching hypervisor memory; a classic PV page-table frame mapped writable."""
    out = []
    for ctx in own.vms:
        for c in ctx.vcpus:
            if c.vmcs is not None and c.ept is None:
                out.append(Violation(NAME, f"vCPU {c.name} can reach every host address (no usable EPT)", ctx.name,
                                     None, None, c.ept_problem))
        for leaf in ctx.leaves():
            if ctx.classic_pv and leaf.permissions & W and ctx.vm.page_tables.intersection(
                    page_range(leaf.hpa, leaf.size)):
                out.append(Violation(NAME, f"{ctx.name} maps one of its page-table frames writable: it could forge "
                                     "mappings the hypervisor never validated", ctx.name, leaf.gpa, leaf.hpa,
                                     f"{leaf.level} {leaf.entry:#x}"))
            problem = leaf_problem(own, ctx.name, leaf)
            if problem is not None:
                out.append(Violation(NAME, f"{ctx.name} can reach host memory outside its partition: {problem}",
                                     ctx.name, leaf.gpa, leaf.hpa, f"{rights(leaf.permissions)}"))
            if own.hypervisor_overlaps(leaf.hpa, leaf.size):
                seen: set[tuple[str, str]] = set()
                for r in own.hypervisor_in(leaf.hpa, leaf.size):
                    if (r.kind, r.owner) in seen:
                        continue
                    seen.add((r.kind, r.owner))
                    hpa = max(r.base, leaf.hpa)
                    out.append(Violation(NAME, f"{ctx.name} maps the hypervisor's {r.kind} of {r.owner}",
                                         ctx.name, leaf.gpa + hpa - leaf.hpa, hpa,
                                         f"{leaf.level} {leaf.entry:#x}, {rights(leaf.permissions)}"))
    return out


@checked
def trace_violations(own: Ownership, trace: Trace) -> list[Violation]:
    """``access`` events of ``trace`` whose host bytes lie outside the VM's partition and grants."""
    out = []
    for e in trace:
        if e.kind != "access" or e.vm is None:
            continue
        hpa, gpa = int(e.get("hpa")), int(e.get("gpa"))
        size = int(getattr(e.op, "size", 1) or 1)
        part = own.partition(e.vm)
        if part is not None and part.contains(hpa, size):
            continue
        right = _ACCESS_RIGHT.get(str(e.get("access")), R)
        if any(g.hpa <= hpa and hpa + size <= g.hpa + (1 << 12) and g.permissions & right for g in own.grants_to(e.vm)):
            continue
        whose = ", ".join(o for o in own.owners(hpa, size) if o != e.vm) or "unassigned memory"
        out.append(Violation(NAME, f"step {e.step}: {e.vcpu} {e.get('access')} reached host memory of {whose}",
                             e.vm, gpa, hpa, f"{size} bytes"))
    return out


# ------------------------------------------------------------------ TLB tags


@attrs.frozen
class TlbTag:
    """The tags a vCPU's cached translations carry. ``vendor`` ``intel``: ``tag`` is the VPID
    (``tagged`` = "enable VPID"), ``ep4ta`` the EPT PML4/PML5 table address (None: EPT off);
    ``amd``: ``tag`` is the ASID (always tagged; nested paging does not add a tag)."""

    vm: str
    vcpu: str
    vendor: str
    tag: int
    tagged: bool = True
    ep4ta: int | None = None


@checked
def tlb_conflict(a: TlbTag, b: TlbTag) -> str | None:
    """Why a translation cached for ``a`` could serve ``b`` (None: it cannot), for vCPUs of different VMs."""
    if a.vm == b.vm:
        return None
    if a.vendor == "amd" or b.vendor == "amd":
        if a.tag == b.tag:
            return f"ASID {a.tag} shared: on AMD the ASID is the only tag of a cached translation"
        return None
    if not (a.tagged and b.tagged) or a.tag != b.tag:
        return None  # distinct VPIDs, or VPID 0000H flushed on every VM entry and exit
    if a.ep4ta is None and b.ep4ta is None:
        return f"VPID {a.tag} shared without EPT: linear mappings are tagged by VPID and PCID only"
    if a.ep4ta is not None and a.ep4ta == b.ep4ta:
        return f"VPID {a.tag} and EP4TA {a.ep4ta:#x} shared: combined mappings carry the same tags"
    return None


@checked
def vcpu_tag(c: VcpuContext) -> TlbTag | None:
    if c.vmcs is None:
        return None
    vpid = c.vmcs.get(_F["VIRTUAL_PROCESSOR_ID"])
    ep4ta = EPTP_FIELDS["root"].bits.mask & c.ept.eptp if c.ept is not None else None
    return TlbTag(c.vm, c.name, "intel", vpid, is_set(c.vmcs, ENABLE_VPID), ep4ta)


@checked
def tlb_violations(tags: Iterable[TlbTag]) -> list[Violation]:
    out = []
    listed = list(tags)
    for i, a in enumerate(listed):
        for b in listed[i + 1:]:
            why = tlb_conflict(a, b)
            if why is not None:
                out.append(Violation(TLB, f"{a.vcpu} and {b.vcpu} can share cached translations", a.vm, None, None,
                                     why))
    return out


# ------------------------------------------------------------------ I/O ports and MSRs


@functools.lru_cache(maxsize=64)
def _open_ports(use_bitmaps: bool, unconditional: bool, bitmap_a: bytes, bitmap_b: bytes) -> frozenset[int]:
    if not use_bitmaps:
        return frozenset() if unconditional else frozenset(PORTS)
    memory = PhysicalMemory.from_pages({0: bitmap_a, 1: bitmap_b})
    vmcs = Vmcs.from_fields({"IO_BITMAP_A": 0, "IO_BITMAP_B": 1 << 12})
    return frozenset(p for p in PORTS if not io_bitmap_exits(vmcs, memory, p, 1))


@functools.lru_cache(maxsize=64)
def _open_msrs(bitmap: bytes) -> tuple[frozenset[int], frozenset[int]]:
    memory = PhysicalMemory.from_pages({0: bitmap})
    vmcs = Vmcs.from_fields({"MSR_BITMAP": 0})
    msrs = [m for rng in (causes.MSR_LOW, causes.MSR_HIGH) for m in range(rng.lo, rng.hi + 1)]
    return (frozenset(m for m in msrs if not msr_bitmap_exits(vmcs, memory, m, False)),
            frozenset(m for m in msrs if not msr_bitmap_exits(vmcs, memory, m, True)))


def _page(memory: PhysicalMemory, address: int) -> bytes:
    return memory.read(HostPhysAddr(address), 1 << 12)


@checked
def open_ports(vmcs: Vmcs, memory: PhysicalMemory) -> frozenset[int]:
    """The I/O ports a 1-byte IN / OUT reaches without a VM exit under ``vmcs`` (§27.1.3)."""
    use = is_set(vmcs, USE_IO_BITMAPS)
    a = _page(memory, vmcs.get(_F["IO_BITMAP_A"])) if use else b""
    b = _page(memory, vmcs.get(_F["IO_BITMAP_B"])) if use else b""
    return _open_ports(use, is_set(vmcs, UNCONDITIONAL_IO), a, b)


@checked
def open_msrs(vmcs: Vmcs, memory: PhysicalMemory) -> tuple[frozenset[int], frozenset[int]]:
    """The MSRs RDMSR and WRMSR reach without a VM exit under ``vmcs`` (§26.6.9): (read, write)."""
    if not is_set(vmcs, USE_MSR_BITMAPS):
        return frozenset(), frozenset()
    return _open_msrs(_page(memory, vmcs.get(_F["MSR_BITMAP"])))


@checked
def grant_violations(machine: Machine, own: Ownership) -> list[Violation]:
    design = get_design(machine.design)
    out = []
    for ctx in own.vms:
        io, msrs = design.io_grants(ctx.vm), design.msr_grants(ctx.vm)
        for c in ctx.vcpus:
            if c.vmcs is None:
                continue
            ports = sorted(open_ports(c.vmcs, machine.memory) - io)
            if ports:
                shown = ", ".join(f"{p:#x}" for p in ports[:8]) + (" ..." if len(ports) > 8 else "")
                out.append(Violation(GRANTS, f"{c.name} reaches {len(ports)} I/O port(s) the design does not grant",
                                     ctx.name, None, None, f"ports {shown}"))
            reads, writes = open_msrs(c.vmcs, machine.memory)
            for verb, opened in (("reads", reads), ("writes", writes)):
                extra = sorted(opened - msrs)
                if extra:
                    shown = ", ".join(f"{m:#x}" for m in extra[:8]) + (" ..." if len(extra) > 8 else "")
                    out.append(Violation(GRANTS, f"{c.name} {verb} {len(extra)} MSR(s) without exiting that the "
                                         "design does not grant", ctx.name, None, None, f"MSRs {shown}"))
    return out


# ------------------------------------------------------------------ the predicate


@checked
def check_isolation(machine: Machine, trace: Trace = (), own: Ownership | None = None) -> tuple[Violation, ...]:
    """Every isolation, TLB-isolation and I/O / MSR-grant violation of ``machine`` and ``trace``."""
    own = ownership(machine) if own is None else own
    tags = [t for ctx in own.vms for c in ctx.vcpus if (t := vcpu_tag(c)) is not None]
    return tuple(memory_violations(own) + trace_violations(own, trace) + tlb_violations(tags)
                 + grant_violations(machine, own))
