"""VM entry: the checks VMLAUNCH and VMRESUME make after their basic checks, as one interface.

SDM Vol. 3C chapter 28 "VM Entries": checks on the VMX controls and host-state area fail with
VMfailValid(7) or (8) — they "may be performed in any order", so either error is possible when
both groups have violations; checks on guest state and PDPTEs fail as a VM exit with reason 33
and a qualification (§28.3; 2 for a PDPTE, 3 for NMI injection, 4 for the VMCS link pointer);
loading MSRs fails with reason 34 and the 1-based index of the failing entry (§28.4).

Each check is a function registered with :func:`entry_check` under the id of its row in
``spec/vmx/entry_checks.toml`` (:data:`~vtx.vmx.entry.catalogue.ENTRY_CHECKS`), which supplies
its group, failure, citation and the fields it reads. :func:`evaluate_vm_entry` runs every
registered check and reports every violation; the outcome is that of the first failing class in
vtx's documented order — controls (7), host state (8), guest state (33), MSR loading (34) — and
the other outcomes a processor may produce are listed too. The basic checks (#UD, #GP,
VMfailInvalid, VMfailValid 4, 5 and 26) are the instruction's own (:mod:`vtx.vmx.instructions`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import attrs

from vtx import spec
from vtx.conditions import ControlAllowed
from vtx.errors import NotEvaluable, SpecError
from vtx.outcomes import VmEntryFailed, VmFailValid
from vtx.paging.memory import HostPhysAddr, PhysicalMemory
from vtx.vmx.capabilities import Capabilities
from vtx.vmx.entry.catalogue import ENTRY_CHECKS, EntryCheckSpec
from vtx.vmx.operation import LogicalProcessor, MemoryReader, Region, region_header
from vtx.vmx.vmcs import Vmcs

FAILURE_ORDER = ("vmfail_valid_7", "vmfail_valid_8", "vmfail_valid_16", "vmfail_valid_17", "vmfail_valid_18",
                 "vmfail_valid_25", "exit_33", "exit_34")
"""The failures the registered checks produce, in vtx's order: the first one with a violation
decides the outcome. The VMfailValid class (7, 8, and 16, 17, 18, 25 for entries that return from
SMM) may come in any order on real processors."""
ANY_ORDER = frozenset(f for f in FAILURE_ORDER if f.startswith("vmfail_valid_"))
_VMFAIL_ERRORS = {"vmfail_valid_7": "ENTRY_INVALID_CONTROL_FIELD", "vmfail_valid_8": "ENTRY_INVALID_HOST_STATE_FIELD",
                  "vmfail_valid_16": "ENTRY_INVALID_EXECUTIVE_VMCS_POINTER",
                  "vmfail_valid_17": "ENTRY_NONLAUNCHED_EXECUTIVE_VMCS",
                  "vmfail_valid_18": "ENTRY_EXECUTIVE_VMCS_POINTER_NOT_VMXON_POINTER",
                  "vmfail_valid_25": "ENTRY_INVALID_VM_EXECUTION_CONTROL_FIELDS_IN_EXECUTIVE_VMCS"}


@attrs.frozen
class EntryContext:
    """What a check may read besides the VMCS and the capabilities: the processor state that is
    not in the VMCS, and physical memory (the MSR-load area, the region the VMCS link pointer
    references, PDPTEs, the virtual-APIC page)."""

    instruction: str = "vmlaunch"
    vmm_ia32e_mode: bool = True
    in_smm: bool = False
    in_smx: bool = False
    vmxon_pointer: int | None = None
    current_vmcs: int | None = None
    regions: Mapping[int, Region] = attrs.field(factory=dict)
    memory: MemoryReader = attrs.field(factory=PhysicalMemory)

    @classmethod
    def from_processor(cls, state: LogicalProcessor, instruction: str) -> EntryContext:
        """The context of ``instruction`` executed by ``state``."""
        return cls(instruction=instruction, vmm_ia32e_mode=state.is_ia32e_mode, in_smm=state.in_smm,
                   in_smx=state.in_smx, vmxon_pointer=state.vmxon_pointer,
                   current_vmcs=state.current_vmcs if state.has_current_vmcs else None,
                   regions=state.regions, memory=state.memory)

    def read_int(self, address: int, size: int) -> int:
        """``size`` bytes of physical memory at ``address``, little-endian."""
        return self.memory.read_int(HostPhysAddr(address), size)

    def region_header(self, address: int) -> int:
        """The first 32 bits of the region at ``address`` (revision identifier and bit 31)."""
        return region_header(self.regions, self.memory, address)


@attrs.frozen
class Finding:
    """A violation message with the exit qualification it reports, for checks whose qualification
    depends on the input (MSR loading: the 1-based index of the failing MSR-load entry)."""

    message: str
    qualification: int


@attrs.frozen
class Violation:
    """One violated check: its catalogue row, a message a person understands, and (for VM-entry
    failures) the exit qualification."""

    check: EntryCheckSpec
    message: str
    qualification: int | None = None

    @property
    def check_id(self) -> str:
        return self.check.id

    @property
    def group(self) -> str:
        return self.check.group


EntryOutcome = VmFailValid | VmEntryFailed


@attrs.frozen
class EntryVerdict:
    """Every violation, the outcome of the first failing class, and every other possible outcome."""

    violations: tuple[Violation, ...]
    outcome: EntryOutcome | None
    possible_outcomes: tuple[EntryOutcome, ...] = ()
    not_evaluable: tuple[str, ...] = ()

    @property
    def succeeds(self) -> bool:
        """True only when every check ran and none was violated."""
        return self.outcome is None and not self.not_evaluable


CheckFn = Callable[[Vmcs, Capabilities, "EntryContext"], Iterator["str | Finding"]]
"""A check yields one message (or :class:`Finding`) per violation, none when it passes; it
raises :class:`~vtx.errors.NotEvaluable` when the capability profile cannot decide it."""


@attrs.frozen
class RegisteredCheck:
    spec: EntryCheckSpec
    fn: CheckFn


REGISTRY: dict[str, RegisteredCheck] = {}


def entry_check(check_id: str) -> Callable[[CheckFn], CheckFn]:
    """Register the implementation of catalogue row ``check_id``."""
    row = ENTRY_CHECKS.get(check_id)
    if row is None:
        raise SpecError("entry_check", check_id, "no such row in spec/vmx/entry_checks.toml")
    if row.failure not in FAILURE_ORDER:
        raise SpecError("entry_check", check_id, f"failure {row.failure} is the instruction's, not a check's")

    def register(fn: CheckFn) -> CheckFn:
        if check_id in REGISTRY:
            raise SpecError("entry_check", check_id, "registered twice")
        REGISTRY[check_id] = RegisteredCheck(row, fn)
        return fn

    return register


def _violation(row: EntryCheckSpec, found: str | Finding) -> Violation:
    if isinstance(found, Finding):
        return Violation(row, found.message, found.qualification)
    qualification = row.qualification if isinstance(row.qualification, int) else None
    return Violation(row, found, qualification if row.failure.startswith("exit_") else None)


def _outcome(v: Violation) -> EntryOutcome:
    row = v.check
    if row.failure in _VMFAIL_ERRORS:
        return VmFailValid(spec.get_error(_VMFAIL_ERRORS[row.failure]))
    reason = "INVALID_STATE" if row.failure == "exit_33" else "MSR_LOAD_FAIL"
    return VmEntryFailed(spec.get_exit_reason(reason), v.qualification or 0)


def evaluate_vm_entry(vmcs: Vmcs, caps: Capabilities, context: EntryContext | None = None) -> EntryVerdict:
    """Run every registered check; report all violations and the outcomes they can produce."""
    ctx = context or EntryContext()
    violations: list[Violation] = []
    unknown: list[str] = []
    for check in REGISTRY.values():
        try:
            violations += [_violation(check.spec, found) for found in check.fn(vmcs, caps, ctx)]
        except NotEvaluable as e:
            unknown.append(f"{check.spec.id}: {e}")
    failing = [f for f in FAILURE_ORDER if any(v.check.failure == f for v in violations)]
    if not failing:
        return EntryVerdict(tuple(violations), None, (), tuple(unknown))
    first = failing[0]
    if first in ANY_ORDER:
        possible = [_outcome(next(v for v in violations if v.check.failure == f)) for f in failing if f in ANY_ORDER]
    else:
        possible = list(dict.fromkeys(_outcome(v) for v in violations if v.check.failure == first))
    outcome = next(_outcome(v) for v in violations if v.check.failure == first)
    return EntryVerdict(tuple(violations), outcome, tuple(possible), tuple(unknown))


# ----------------------------------------------------------------------------- control fields

_RESERVED_BITS_ID = {"pin": "controls.pin_based.reserved_bits", "proc": "controls.primary_proc_based.reserved_bits",
                     "proc2": "controls.secondary_proc_based.reserved_bits",
                     "proc3": "controls.tertiary_proc_based.reserved_bits", "exit": "controls.exit.reserved_bits",
                     "exit2": "controls.exit.secondary_reserved_bits", "entry": "controls.entry.reserved_bits"}


def _register_reserved_bit_check(cf: spec.ControlField) -> None:
    """Reserved bits of a control field are set as its capability MSR requires (Appendix A). The
    secondary, tertiary and secondary VM-exit controls are checked only when the VMCS activates
    them (the "activate secondary controls" / "activate tertiary controls" bits)."""
    gates = [(spec.CONTROL_FIELDS[t.field].vmcs_field, spec.get_control(t.field, t.control).mask)
             for t in cf.enabled_by.terms if isinstance(t, ControlAllowed)]

    def check(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
        if gates and not any(vmcs.get(field) & bit for field, bit in gates):
            return
        value = vmcs.get(cf.vmcs_field)
        a0, a1 = caps.allowed0(cf.key), caps.allowed1(cf.key)
        if a0 is None or a1 is None:
            raise NotEvaluable(cf.vmcs_field.name, "reserved bits", f"the profile lacks {caps.control_msr(cf.key)}")
        if value & a0 != a0:
            yield (f"{cf.vmcs_field.name} = {value:#x} clears bits {a0 & ~value:#x} that "
                   f"{caps.control_msr(cf.key)} requires to be 1")
        if value & ~a1:
            yield (f"{cf.vmcs_field.name} = {value:#x} sets bits {value & ~a1:#x} that "
                   f"{caps.control_msr(cf.key)} does not allow")

    entry_check(_RESERVED_BITS_ID[cf.key])(check)


for _cf in spec.CONTROL_FIELDS:
    _register_reserved_bit_check(_cf)

# The check modules register their checks on import, in the SDM's order.
from vtx.vmx.entry import (  # noqa: E402
    exec_controls,
    exit_entry_controls,
    guest_non_register,
    guest_segments,
    guest_state,
    host_state,
    msr_load,
    smm,
)

__all__ = ["FAILURE_ORDER", "REGISTRY", "EntryContext", "EntryVerdict", "Finding", "Violation", "entry_check",
           "evaluate_vm_entry", "exec_controls", "exit_entry_controls", "guest_non_register", "guest_segments",
           "guest_state", "host_state", "msr_load", "smm"]
