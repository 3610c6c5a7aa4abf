"""The isolation invariants of a hypervisor design as executable predicates over machine states
and traces (``docs/invariants.rst`` states them; :mod:`vtx.proofs` proves the z3 ones for every
guest-physical address, port and MSR).

``check_all(machine, trace)`` returns every :class:`Violation`; ``()`` means the machine keeps
partitioning, isolation, TLB isolation and the I/O / MSR grants. Encapsulation and hardware
independence speak of all future programs and are checked by property-based and differential runs.
"""

from __future__ import annotations

from vtx.invariants.catalogue import INVARIANT_NAMES, INVARIANTS, Invariant, Violation, get_invariant
from vtx.invariants.isolation import TlbTag, check_isolation, open_msrs, open_ports, tlb_conflict
from vtx.invariants.mappings import EptMapping, EptView, ept_view
from vtx.invariants.ownership import (
    Grant,
    HypervisorRegion,
    Ownership,
    Partition,
    VcpuContext,
    VmContext,
    ownership,
    vm_contexts,
)
from vtx.invariants.partitioning import check_partitioning
from vtx.machine.model import Machine, Trace
from vtx.typecheck import checked


@checked
def check_all(machine: Machine, trace: Trace = ()) -> tuple[Violation, ...]:
    """Every violation of partitioning, isolation, TLB isolation and I/O / MSR grants."""
    own = ownership(machine)
    return check_partitioning(machine, own) + check_isolation(machine, trace, own)


__all__ = ["INVARIANTS", "INVARIANT_NAMES", "EptMapping", "EptView", "Grant", "HypervisorRegion", "Invariant",
           "Ownership", "Partition", "TlbTag", "VcpuContext", "Violation", "VmContext", "check_all",
           "check_isolation", "check_partitioning", "ept_view", "get_invariant", "open_msrs", "open_ports",
           "ownership", "tlb_conflict", "vm_contexts"]
