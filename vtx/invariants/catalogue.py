"""The isolation invariants a hypervisor design must keep, stated once, and the violation record
every checker reports.

Each :class:`Invariant` has a stable name, a precise statement, how vtx establishes it over all
inputs (``z3``: a symbolic proof over every guest-physical address / port / MSR of a concrete
machine, plus inductive steps per exit handler; ``hypothesis``: property-based and differential
runs, for statements about all future programs), and the architectural rules it rests on.
"""

from __future__ import annotations

import attrs

from vtx.typecheck import checked


@attrs.frozen
class Invariant:
    """One invariant: ``name``, ``statement``, ``kind`` (``z3`` or ``hypothesis``), ``citation``."""

    name: str
    statement: str
    kind: str
    citation: str


@attrs.frozen
class Violation:
    """A concrete breach of ``invariant``: a readable ``message``, the VM it concerns (None: the
    machine as a whole), the guest-physical and host-physical address involved if any, and
    ``detail`` (the rule, the entry, the other party)."""

    invariant: str
    message: str
    vm: str | None = None
    gpa: int | None = None
    hpa: int | None = None
    detail: str = ""

    def __str__(self) -> str:
        where = " ".join(f"{k}={v}" for k, v in (("vm", self.vm), ("gpa", _hex(self.gpa)), ("hpa", _hex(self.hpa)))
                         if v is not None)
        return f"{self.invariant}: {self.message}" + (f" [{where}]" if where else "") + \
            (f" ({self.detail})" if self.detail else "")


def _hex(value: int | None) -> str | None:
    return None if value is None else f"{value:#x}"


_EPT = 'SDM Vol. 3C §30.3.2 "EPT Translation Mechanism"'
_TLB = 'SDM Vol. 3C §30.4 "Caching Translation Information"'
_NPT = 'APM Vol. 2 §15.25 "Nested Paging"'

INVARIANTS: tuple[Invariant, ...] = (
    Invariant(
        "partitioning",
        "Host-physical pages and vCPUs assigned to VMs are disjoint and within the machine's capacity "
        "(below 2^MAXPHYADDR; each vCPU has its own VMCS region); every EPT leaf of VM i (a 2-MByte or "
        "1-GByte page counting as its whole range) maps into VM i's partition or into a page the design "
        "explicitly shares, recorded with both parties and the permissions.",
        "z3", f"{_EPT}; {_NPT}"),
    Invariant(
        "isolation",
        "For every guest-physical address and access type (read, write, fetch), translation through VM "
        "i's EPT either faults or reaches VM i's partition or a page granted to it with that permission; "
        "no guest maps hypervisor memory (EPT paging structures, VMCS and VMXON regions, MSR and I/O "
        "bitmaps); no access event of a trace touches a host address outside the accessing VM's reach.",
        "z3", f'{_EPT}; SDM Vol. 3C §30.3.3.2 "EPT Violations"; {_NPT}'),
    Invariant(
        "tlb_isolation",
        "No cached translation created for one VM serves another: with EPT, combined mappings are tagged "
        "by VPID, PCID and EP4TA, so two VMs may share a VPID only if their EP4TAs differ; without EPT "
        "linear mappings are tagged by VPID and PCID only, so VMs need distinct VPIDs (or VPIDs disabled, "
        "which flushes VPID 0000H on every VM entry and exit); on AMD the ASID is the only tag, so VMs "
        "need distinct ASIDs.",
        "z3", f'{_TLB}; APM Vol. 2 §15.16 "TLB Control"'),
    Invariant(
        "io_msr_grants",
        "Every I/O port and MSR a guest reaches without a VM exit (as the exit rules decide from the "
        "VM-execution controls and the I/O and MSR bitmaps) is one the design grants that VM.",
        "z3", 'SDM Vol. 3C §26.6.4 "I/O-Bitmap Addresses"; §26.6.9 "MSR-Bitmap Address"; '
              '§27.1.3 "Instructions That Cause VM Exits Conditionally"'),
    Invariant(
        "encapsulation",
        "A VM's whole state is its snapshot: restoring a saved VM gives a VM observationally equal to the "
        "original (same results for every guest program run afterwards).",
        "hypothesis", 'SDM Vol. 3C §26.11 "Software Use of Virtual-Machine Control Structures"'),
    Invariant(
        "hardware_independence",
        "A VM restored on a host with a different layout (other host-physical placement of its memory, "
        "EPT tables and VMCS) behaves observationally the same as on the original host.",
        "hypothesis", 'SDM Vol. 3C §26.11 "Software Use of Virtual-Machine Control Structures"'),
)
"""The invariants, by name in :data:`INVARIANT_NAMES` order."""

INVARIANT_NAMES = tuple(i.name for i in INVARIANTS)


@checked
def get_invariant(name: str) -> Invariant:
    return next(i for i in INVARIANTS if i.name == name)
