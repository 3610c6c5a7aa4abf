"""VM entry: the checks VMLAUNCH and VMRESUME make after their basic checks, as one interface.

SDM Vol. 3C chapter 28 "VM Entries": checks on the VMX controls and host-state area fail with
VMfailValid(7) or (8) (§28.2; they "may be performed in any order"); checks on guest state and
PDPTEs fail as a VM exit with reason 33 (§28.3); loading MSRs fails with reason 34 (§28.4).
Each check is a function registered with :func:`entry_check` under a stable id; the registry is
evaluated in vtx's documented order — controls, host state, guest state, MSR loading — and every
violation is reported, not just the first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import attrs

from vtx import spec
from vtx.errors import NotEvaluable
from vtx.outcomes import VmEntryFailed, VmFailValid
from vtx.spec import ControlField
from vtx.vmx.capabilities import Capabilities
from vtx.vmx.vmcs import Vmcs

GROUP_ORDER = ("controls", "host_state", "guest_state", "msr_load")
"""vtx's order of the check groups; the first group with a violation decides the outcome."""


@attrs.frozen
class EntryContext:
    """What a check may read besides the VMCS and the capabilities."""

    instruction: str = "vmlaunch"
    vmm_ia32e_mode: bool = True
    in_smm: bool = False


@attrs.frozen
class Violation:
    """One violated check: its id, group, citation, the fields it read and a readable message."""

    check_id: str
    group: str
    citation: str
    fields: tuple[str, ...]
    message: str


@attrs.frozen
class EntryVerdict:
    """Every violation, and the architectural outcome of the first group that has one."""

    violations: tuple[Violation, ...]
    outcome: VmFailValid | VmEntryFailed | None
    not_evaluable: tuple[str, ...] = ()

    @property
    def succeeds(self) -> bool:
        """True only when every check ran and none was violated."""
        return self.outcome is None and not self.not_evaluable


CheckFn = Callable[[Vmcs, Capabilities, EntryContext], Iterator[str]]
"""A check yields one message per violation (none when it passes); it raises
:class:`~vtx.errors.NotEvaluable` when the capability profile cannot decide it."""


@attrs.frozen
class RegisteredCheck:
    check_id: str
    group: str
    citation: str
    fields: tuple[str, ...]
    fn: CheckFn


REGISTRY: dict[str, RegisteredCheck] = {}


def entry_check(check_id: str, *, group: str, citation: str, fields: tuple[str, ...]) -> Callable[[CheckFn], CheckFn]:
    """Register a VM-entry check under ``check_id``."""
    if group not in GROUP_ORDER:
        raise ValueError(f"unknown check group {group!r}")

    def register(fn: CheckFn) -> CheckFn:
        if check_id in REGISTRY:
            raise ValueError(f"duplicate VM-entry check id {check_id!r}")
        REGISTRY[check_id] = RegisteredCheck(check_id, group, citation, fields, fn)
        return fn

    return register


_OUTCOME_OF_GROUP: dict[str, VmFailValid | VmEntryFailed] = {
    "controls": VmFailValid(spec.get_error("ENTRY_INVALID_CONTROL_FIELD")),
    "host_state": VmFailValid(spec.get_error("ENTRY_INVALID_HOST_STATE_FIELD")),
    "guest_state": VmEntryFailed(spec.get_exit_reason("INVALID_STATE"), 0),
    "msr_load": VmEntryFailed(spec.get_exit_reason("MSR_LOAD_FAIL"), 0),
}


def evaluate_vm_entry(vmcs: Vmcs, caps: Capabilities, context: EntryContext | None = None) -> EntryVerdict:
    """Run every registered check; report all violations and the outcome of the first failing group."""
    ctx = context or EntryContext()
    violations, unknown = [], []
    for check in REGISTRY.values():
        try:
            violations += [Violation(check.check_id, check.group, check.citation, check.fields, message)
                           for message in check.fn(vmcs, caps, ctx)]
        except NotEvaluable as e:
            unknown.append(f"{check.check_id}: {e}")
    failing = [g for g in GROUP_ORDER if any(v.group == g for v in violations)]
    return EntryVerdict(tuple(violations), _OUTCOME_OF_GROUP[failing[0]] if failing else None, tuple(unknown))


# ----------------------------------------------------------------------------- control fields


def _register_reserved_bit_check(cf: ControlField) -> None:
    """Reserved bits of a control field are set as its capability MSR requires (Appendix A)."""

    def check(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
        active = caps.evaluate(cf.enabled_by)
        if active is False:
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

    enabled = tuple(t.field for t in cf.enabled_by.terms if hasattr(t, "field"))
    fields = (cf.vmcs_field.name, *(spec.CONTROL_FIELDS[k].vmcs_field.name for k in enabled))
    entry_check(f"controls.{cf.key}.reserved_bits", group="controls", citation=str(cf.citation),
                fields=fields)(check)


for _cf in spec.CONTROL_FIELDS:
    _register_reserved_bit_check(_cf)

from vtx.vmx.entry import guest_state, host_state  # noqa: E402  (they register their checks)

__all__ = ["GROUP_ORDER", "REGISTRY", "EntryContext", "EntryVerdict", "Violation", "entry_check",
           "evaluate_vm_entry", "guest_state", "host_state"]
