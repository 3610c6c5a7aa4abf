"""When a VM-entry rule applies, beyond its VMX controls: the conjuncts of a catalogue row's ``applies_if``
about VMCS field values and the processor state that VM entry tests before the rule (SDM Vol. 3C §28.2,
§28.3: "If the valid bit ... is 1", "If the VMCS link pointer is not FFFFFFFF_FFFFFFFFH", "If LDTR is
usable", "If the VM entry is returning from SMM", ...).

:func:`conditions` reads them from the catalogue text: each conjunct (the text split at " and ", unless
it has an " or ") that is one of the phrases below becomes a :class:`Condition`; other conjuncts are
left to the check itself, which is sound. While a condition is false the rule does not apply and its
check can report nothing, so :func:`vtx.vmx.entry.evaluate_vm_entry` need not run it (tested against
:func:`vtx.vmx.entry.evaluate_every_check`, and per condition in ``tests/vmx/test_entry_incremental.py``).
The VMX-control conjuncts ("the 'enable EPT' control is 1") are :class:`vtx.vmx.entry.Gate`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import attrs

from vtx.bits import mask
from vtx.errors import SpecError
from vtx.spec import VMCS_FIELDS, VmcsField, reg_bit
from vtx.typecheck import checked
from vtx.vmx.entry import EntryContext
from vtx.vmx.entry.catalogue import EntryCheckSpec
from vtx.vmx.entry.common import control_flag
from vtx.vmx.operation import INVALID_POINTER
from vtx.vmx.vmcs import Vmcs, slot


@attrs.frozen
class Condition:
    """A conjunct of ``applies_if`` about a field value or processor state, as data: it holds when the
    ``context`` attribute of the :class:`~vtx.vmx.entry.EntryContext` (if given) has its value and, if
    ``field`` is given, ``(value of field & mask == equal) is holds_if_equal``. ``text`` is the catalogue's
    wording (two wordings of one condition are equal conditions)."""

    text: str = attrs.field(eq=False)
    field: VmcsField | None = attrs.field(repr=lambda f: "None" if f is None else f.name)
    mask: int = 0
    equal: int = 0
    holds_if_equal: bool = True
    context: tuple[str, bool] | None = None

    @checked
    def holds(self, vmcs: Vmcs, ctx: EntryContext) -> bool:
        """Whether the rule's condition is true for ``vmcs`` entered in ``ctx``."""
        if self.context is not None and getattr(ctx, self.context[0]) is not self.context[1]:
            return False
        return self.field is None or ((vmcs.get(self.field) & self.mask) == self.equal) is self.holds_if_equal

    def fields(self) -> tuple[str, ...]:
        """The VMCS fields the condition reads."""
        return () if self.field is None else (self.field.name,)

    @property
    def processor(self) -> tuple[str, ...]:
        """The processor-state terms (catalogue ``processor``) the condition reads."""
        return () if self.context is None else (self.context[0],)


ConditionSlots = tuple[int, int, int, int, bool, str | None, bool]
"""A condition for :func:`conditions_holding`: (group, index) of its field in :attr:`Vmcs.values` (group -1:
no field), mask, equal, holds_if_equal, and the context attribute (or None) with its required value."""


@checked
def condition_slots(condition: Condition) -> ConditionSlots:
    g, i = (-1, 0) if condition.field is None else slot(condition.field)
    name, value = condition.context if condition.context is not None else (None, False)
    return g, i, condition.mask, condition.equal, condition.holds_if_equal, name, value


def conditions_holding(all_slots: tuple[ConditionSlots, ...], vmcs: Vmcs, ctx: EntryContext) -> int:
    """Bit n set when condition n holds: :meth:`Condition.holds` of each, on the VMCS values directly (tested
    equal to it)."""
    values = vmcs.values
    bits = 0
    for n, (g, i, bit_mask, equal, holds_if_equal, name, value) in enumerate(all_slots):
        if name is not None and getattr(ctx, name) is not value:
            continue
        if g >= 0 and ((values[g][i] & bit_mask) == equal) is not holds_if_equal:
            continue
        bits |= 1 << n
    return bits


def _bits_set(text: str, field_name: str, bits: int) -> Condition:
    """Some bit of ``bits`` is 1 in the field (or, for a whole-field mask, the field is not 0)."""
    return Condition(text, VMCS_FIELDS[field_name], bits, 0, False)


def _bits_clear(text: str, field_name: str, bits: int) -> Condition:
    return Condition(text, VMCS_FIELDS[field_name], bits, 0, True)


# ----------------------------------------------------------------------------- the phrases

_INTR_INFO = "VM_ENTRY_INTR_INFO_FIELD"
_INTR_VALID = reg_bit("VM_ENTRY_INTERRUPTION_INFO", "VALID").mask
_INTR_TYPE = reg_bit("VM_ENTRY_INTERRUPTION_INFO", "TYPE").bits
_RFLAGS_VM = reg_bit("RFLAGS", "VM").mask
_AR_UNUSABLE = reg_bit("VMCS_ACCESS_RIGHTS", "UNUSABLE").mask
_ENTRY_TO_SMM = control_flag("entry", "entry_to_smm")
_MSR_COUNTS = {"VM-entry MSR-load": "VM_ENTRY_MSR_LOAD_COUNT", "VM-exit MSR-load": "VM_EXIT_MSR_LOAD_COUNT",
               "VM-exit MSR-store": "VM_EXIT_MSR_STORE_COUNT"}
_BIT_FIELDS = {"pending-debug-exceptions field": "GUEST_PENDING_DBG_EXCEPTIONS",
               "interruptibility state": "GUEST_INTERRUPTIBILITY_INFO", "VM-function control": "VM_FUNCTION_CONTROL"}


def _whole(field_name: str) -> int:
    return mask(VMCS_FIELDS[field_name].bits)


def _intr_valid(m: re.Match[str]) -> Condition:
    return _bits_set(m[0], _INTR_INFO, _INTR_VALID)


def _intr_valid_with_type(m: re.Match[str]) -> Condition:
    return Condition(m[0], VMCS_FIELDS[_INTR_INFO], _INTR_VALID | _INTR_TYPE.mask,
                     _INTR_VALID | _INTR_TYPE.put(0, int(m["type"])), True)


def _msr_count(m: re.Match[str]) -> Condition:
    name = _MSR_COUNTS[m["area"]]
    return _bits_set(m[0], name, _whole(name))


def _each_msr_load_entry(m: re.Match[str]) -> Condition:
    """A rule "for each entry of the VM-entry MSR-load area" applies only if the area has an entry."""
    name = _MSR_COUNTS["VM-entry MSR-load"]
    return _bits_set(m[0], name, _whole(name))


def _link_pointer_valid(m: re.Match[str]) -> Condition:
    return Condition(m[0], VMCS_FIELDS["VMCS_LINK_POINTER"], _whole("VMCS_LINK_POINTER"), INVALID_POINTER, False)


def _bit_of_field(m: re.Match[str]) -> Condition:
    return _bits_set(m[0], _BIT_FIELDS[m["field"]], 1 << int(m["bit"]))


def _returns_from_smm(m: re.Match[str]) -> Condition:
    """Executed in SMM with the 'entry to SMM' VM-entry control (a field that always exists) 0."""
    return Condition(m[0], _ENTRY_TO_SMM.field, _ENTRY_TO_SMM.mask, 0, True, ("in_smm", True))


def _outside_smm(m: re.Match[str]) -> Condition:
    return Condition(m[0], None, context=("in_smm", False))


def _virtual_8086(m: re.Match[str]) -> Condition:
    return Condition(m[0], VMCS_FIELDS["GUEST_RFLAGS"], _RFLAGS_VM, 0, m["not"] is not None)


def _ldtr_usable(m: re.Match[str]) -> Condition:
    return _bits_clear(m[0], "GUEST_LDTR_AR_BYTES", _AR_UNUSABLE)


def _vmm_lma(m: re.Match[str]) -> Condition:
    return Condition(m[0], None, context=("vmm_ia32e_mode", m["value"] == "1"))


_PHRASES: tuple[tuple[str, Callable[[re.Match[str]], Condition]], ...] = (
    (r"the valid bit \(bit 31\) of the VM-entry interruption-information field is 1"
     r"|the VM-entry interruption-information field is valid", _intr_valid),
    (r"the VM-entry interruption-information field is valid with type (?P<type>\d)", _intr_valid_with_type),
    (r"the (?P<area>VM-entry MSR-load|VM-exit MSR-load|VM-exit MSR-store) count is not 0", _msr_count),
    (r"for each entry of the VM-entry MSR-load area, in order", _each_msr_load_entry),
    (r"the VMCS link pointer is not FFFFFFFF_FFFFFFFFH", _link_pointer_valid),
    (r"bit (?P<bit>\d+) of the (?P<field>pending-debug-exceptions field|interruptibility state) is 1", _bit_of_field),
    (r"(?P<field>VM-function control) bit (?P<bit>\d+) is 1", _bit_of_field),
    (r"the VM entry returns from SMM \(executed in SMM with the 'entry to SMM' VM-entry control 0\)",
     _returns_from_smm),
    (r"the processor is not in SMM", _outside_smm),
    (r"the guest will (?P<not>not )?be virtual-8086(?: \(RFLAGS\.VM is [01]\))?", _virtual_8086),
    (r"LDTR is usable(?: \(bit 16 of its access rights is 0\))?", _ldtr_usable),
    (r"IA32_EFER\.LMA is (?P<value>[01]) when VMLAUNCH/VMRESUME executes", _vmm_lma),
)
_COMPILED = tuple((re.compile(pattern), build) for pattern, build in _PHRASES)


_KNOWN: dict[str, Condition] = {}


def condition_of(term: str) -> Condition | None:
    """The condition a conjunct of ``applies_if`` states, if it is one of the phrases above (built once)."""
    found = _KNOWN.get(term)
    if found is None:
        for pattern, build in _COMPILED:
            m = pattern.fullmatch(term)
            if m is not None:
                found = _KNOWN[term] = build(m)
                break
    return found


def conditions(row: EntryCheckSpec) -> tuple[Condition, ...]:
    """The field and processor-state conditions ``row`` applies under (see the module docstring)."""
    if " or " in row.applies_if:
        return ()
    return tuple(c for term in row.applies_if.split(" and ") if (c := condition_of(term)) is not None)


if _INTR_VALID != 1 << 31 or _AR_UNUSABLE != 1 << 16:
    raise SpecError("x86/registers.toml", "VM_ENTRY_INTERRUPTION_INFO / VMCS_ACCESS_RIGHTS",
                    "the catalogue's applies_if wording names bit 31 (valid) and bit 16 (unusable)")
