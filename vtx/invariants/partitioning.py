"""Partitioning as a predicate on a concrete machine (the statement is in
:data:`vtx.invariants.catalogue.INVARIANTS`).

Host pages assigned to VMs are disjoint from each other and from the hypervisor's, and lie below
2^MAXPHYADDR; each vCPU has its own VMCS region; every EPT leaf of VM i (a 2-MByte or 1-GByte page
counting as its whole range, SDM Vol. 3C §30.3.2 "EPT Translation Mechanism") maps into VM i's
partition or into a page granted to VM i, with no more permissions than the grant gives.
"""

from __future__ import annotations

from vtx.invariants.catalogue import Violation
from vtx.invariants.mappings import EptMapping
from vtx.invariants.ownership import Ownership, VmContext, ownership
from vtx.machine.model import Machine
from vtx.paging.ept import R, W, X
from vtx.paging.formats import PAGE_SIZE
from vtx.typecheck import checked

NAME = "partitioning"
_RWX = R | W | X


@checked
def rights(permissions: int) -> str:
    """``rwx`` notation of EPT permission bits 2:0."""
    return "".join(c if permissions & b else "-" for c, b in (("r", R), ("w", W), ("x", X)))


@checked
def leaf_problem(own: Ownership, vm: str, leaf: EptMapping) -> str | None:
    """Why ``leaf`` of VM ``vm`` breaks partitioning (None: it maps VM ``vm``'s partition, or a
    4-KByte page granted to ``vm`` with no more permissions than the grant)."""
    part = own.partition(vm)
    if part is not None and part.contains(leaf.hpa, leaf.size):
        return None
    grant = next((g for g in own.grants_to(vm) if g.hpa == leaf.hpa), None)
    if grant is not None and leaf.size == PAGE_SIZE:
        extra = leaf.permissions & _RWX & ~grant.permissions
        if not extra:
            return None
        return (f"maps {grant.owner}'s granted page with {rights(leaf.permissions)} but the grant gives "
                f"{rights(grant.permissions)}")
    owners = [o for o in own.owners(leaf.hpa, leaf.size) if o != vm]
    whose = ", ".join(owners) if owners else "no VM (unassigned memory)"
    if part is not None and part.base < leaf.hpa_end and leaf.hpa < part.end:
        return f"{leaf.level} leaf spills over the partition boundary into {whose}"
    return f"{leaf.level} leaf maps memory of {whose}"


def _layout(own: Ownership) -> list[Violation]:
    out = []
    parts = sorted((p for p in own.partitions if p.size), key=lambda p: p.base)
    for n, b in enumerate(parts):
        for a in parts[:n]:  # sorted by base: a overlaps b iff it ends above b's base
            if b.base < a.end:
                out.append(Violation(NAME, f"partitions of {a.vm} and {b.vm} overlap", a.vm, None, b.base,
                                     f"{a.vm} [{a.base:#x}, {a.end:#x}), {b.vm} [{b.base:#x}, {b.end:#x})"))
    for p in parts:
        if p.end > own.capacity:
            out.append(Violation(NAME, f"partition of {p.vm} lies beyond the physical-address width", p.vm, None,
                                 p.end - 1, f"capacity {own.capacity:#x}"))
        for r in own.hypervisor_in(p.base, p.size):
            out.append(Violation(NAME, f"partition of {p.vm} contains the hypervisor's {r.kind} of {r.owner}", p.vm,
                                 None, max(r.base, p.base), f"{r.kind} [{r.base:#x}, {r.end:#x})"))
    return out


def _vcpus(own: Ownership) -> list[Violation]:
    out = []
    seen: dict[int, str] = {}
    for ctx in own.vms:
        for c in ctx.vcpus:
            if c.vmcs_addr in seen:
                out.append(Violation(NAME, f"vCPUs {seen[c.vmcs_addr]} and {c.name} share a VMCS region", ctx.name,
                                     None, c.vmcs_addr))
            seen.setdefault(c.vmcs_addr, c.name)
            if c.vmcs is None and not ctx.classic_pv:
                out.append(Violation(NAME, f"vCPU {c.name} has no VMCS region", ctx.name, None, c.vmcs_addr))
            if c.vmcs_addr + PAGE_SIZE > own.capacity:
                out.append(Violation(NAME, f"VMCS of {c.name} lies beyond the physical-address width", ctx.name,
                                     None, c.vmcs_addr))
    return out


@checked
def leaf_violations(own: Ownership, ctx: VmContext) -> list[Violation]:
    """Partitioning violations of VM ``ctx``'s EPT leaves (and of a vCPU without EPT)."""
    out = []
    for c in ctx.vcpus:
        if c.vmcs is not None and c.ept is None:
            out.append(Violation(NAME, f"vCPU {c.name} runs without a usable EPT: it reaches all host memory",
                                 ctx.name, None, None, c.ept_problem))
    what = "page tables" if ctx.classic_pv else "EPT"
    for leaf in ctx.leaves():
        problem = leaf_problem(own, ctx.name, leaf)
        if problem is not None:
            out.append(Violation(NAME, f"{what} of {ctx.name} {problem}", ctx.name, leaf.gpa, leaf.hpa,
                                 f"{leaf.level} {leaf.entry:#x} at {leaf.entry_hpa:#x}, {leaf.size:#x} bytes, "
                                 f"{rights(leaf.permissions)}"))
    return out


@checked
def check_partitioning(machine: Machine, own: Ownership | None = None) -> tuple[Violation, ...]:
    """Every partitioning violation of ``machine`` (``own``: its :func:`ownership`, if computed)."""
    own = ownership(machine) if own is None else own
    out = _layout(own) + _vcpus(own)
    for ctx in own.vms:
        out += leaf_violations(own, ctx)
    return tuple(out)
