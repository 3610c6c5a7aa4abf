"""Checks on the VM-exit and VM-entry control fields (SDM Vol. 3C §28.2.1.2 "VM-Exit Control Fields"
and §28.2.1.3 "VM-Entry Control Fields"); a violation makes VM entry fail with VMfailValid(7).

The formats these rules read — the VM-entry interruption-information field, its interruption
types, the exception vectors that deliver an error code and the MSR-area layout — are the rows of
``spec/x86/exit_entry_controls.toml``. "The guest will use FRED transitions" means, as in the
catalogue, that 'IA-32e mode guest' is 1 and guest CR4.FRED is 1; vtx also requires the processor
to support FRED (CPUID_FRED), since on one that does not CR4.FRED is reserved.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import attrs

from vtx import spec
from vtx.bits import BitRange
from vtx.errors import NotEvaluable, SpecError
from vtx.spec import VMCS_FIELDS, VmcsField, get_control, reg_bit
from vtx.vmx.capabilities import Capabilities
from vtx.vmx.entry import EntryContext, common, entry_check
from vtx.vmx.entry.common import ia32e_guest_sets_cr4_fred, is_unrestricted_guest, required_msr_field
from vtx.vmx.operation import physical_address_width
from vtx.vmx.vmcs import Vmcs

# ----------------------------------------------------------------------------- the formats


@attrs.frozen
class InterruptionType:
    """One value of bits 10:8 of the VM-entry interruption-information field."""

    value: int
    name: str
    title: str


@attrs.frozen
class InjectionFormats:
    """What ``spec/x86/exit_entry_controls.toml`` says about event injection and the MSR areas."""

    types: Mapping[str, InterruptionType]
    type_by_value: Mapping[int, InterruptionType]
    other_events: Mapping[int, str]
    """Vector of an event of type 'other event' -> its name."""
    fred_other_events: frozenset[int]
    """The other-event vectors that only a guest using FRED transitions may receive."""
    exception_names: Mapping[int, str]
    error_code_vectors: frozenset[int]
    """Exceptions whose delivery in protected mode pushes an error code."""
    exception_vectors: BitRange
    max_instruction_length: int
    msr_entry_bytes: int
    msr_area_alignment: int


def _load_formats() -> InjectionFormats:
    """Read the formats, checking that every interruption type is listed once and every cite resolves."""
    t = spec._Table("x86/exit_entry_controls.toml")
    type_field = reg_bit("VM_ENTRY_INTERRUPTION_INFO", "TYPE").bits
    types = [InterruptionType(r["value"], r["name"], r["title"]) for r in t.rows("interruption_type")]
    if sorted(ty.value for ty in types) != list(range(1 << type_field.width)):
        raise SpecError(t.relpath, [ty.value for ty in types], "[[interruption_type]] must list every value of bits "
                        f"{type_field} once")
    for kind in ("interruption_type", "other_event", "exception"):
        for r in t.rows(kind):
            t.cite(kind, r)
    other = {r["vector"]: r["name"] for r in t.rows("other_event")}
    fred = frozenset(r["vector"] for r in t.rows("other_event") if t.source("other_event", r).key == "fred")
    exceptions = t.rows("exception")
    injection, area = t.data["event_injection"], t.data["msr_area"]
    for key in (injection["exception_vectors_cite"], injection["max_instruction_length_cite"], area["cite"]):
        if key not in t.citations:
            raise SpecError(t.relpath, key, "cite must name a [citations] key")
    return InjectionFormats(
        types={ty.name: ty for ty in types}, type_by_value={ty.value: ty for ty in types}, other_events=other,
        fred_other_events=fred, exception_names={r["vector"]: r["mnemonic"] for r in exceptions},
        error_code_vectors=frozenset(r["vector"] for r in exceptions if r["error_code"]),
        exception_vectors=BitRange(*injection["exception_vectors"]),
        max_instruction_length=injection["max_instruction_length"],
        msr_entry_bytes=area["entry_bytes"], msr_area_alignment=area["address_alignment"])


FORMATS = _load_formats()

_INFO = VMCS_FIELDS["VM_ENTRY_INTR_INFO_FIELD"]
_ERROR_CODE = VMCS_FIELDS["VM_ENTRY_EXCEPTION_ERROR_CODE"]
_INSTRUCTION_LEN = VMCS_FIELDS["VM_ENTRY_INSTRUCTION_LEN"]
_PIN = VMCS_FIELDS["PIN_BASED_VM_EXEC_CONTROL"]
_EXIT_CONTROLS = VMCS_FIELDS["VM_EXIT_CONTROLS"]
_ENTRY_CONTROLS = VMCS_FIELDS["VM_ENTRY_CONTROLS"]
_GUEST_CR0 = VMCS_FIELDS["GUEST_CR0"]
_GUEST_CR4 = VMCS_FIELDS["GUEST_CR4"]

_VECTOR = reg_bit("VM_ENTRY_INTERRUPTION_INFO", "VECTOR").bits
_TYPE = reg_bit("VM_ENTRY_INTERRUPTION_INFO", "TYPE").bits
_DELIVER_ERROR_CODE = reg_bit("VM_ENTRY_INTERRUPTION_INFO", "DELIVER_ERROR_CODE").mask
_NESTED_EXCEPTION = reg_bit("VM_ENTRY_INTERRUPTION_INFO", "NESTED_EXCEPTION").mask
_RESERVED_INFO = (reg_bit("VM_ENTRY_INTERRUPTION_INFO", "RESERVED_12").mask
                  | reg_bit("VM_ENTRY_INTERRUPTION_INFO", "RESERVED_30_14").mask)
_VALID = reg_bit("VM_ENTRY_INTERRUPTION_INFO", "VALID").mask
_ERROR_CODE_RESERVED = reg_bit("VM_ENTRY_EXCEPTION_ERROR_CODE", "RESERVED")

_RESERVED_TYPE = FORMATS.types["reserved"].value
_NMI_TYPE = FORMATS.types["nmi"].value
_HARDWARE_EXCEPTION = FORMATS.types["hardware_exception"].value
_OTHER_EVENT = FORMATS.types["other_event"].value
_SOFTWARE_TYPES = frozenset(FORMATS.types[n].value for n in
                            ("software_interrupt", "privileged_software_exception", "software_exception"))
_NMI_VECTOR = next(v for v, name in FORMATS.exception_names.items() if name == "NMI")
_PENDING_MTF = next(v for v, name in FORMATS.other_events.items() if name == "pending_mtf_vm_exit")

_ACTIVATE_PREEMPTION_TIMER = get_control("pin", "activate_vmx_preemption_timer")
_SAVE_PREEMPTION_TIMER = get_control("exit", "save_vmx_preemption_timer_value")
_ENTRY_TO_SMM = get_control("entry", "entry_to_smm")
_DEACTIVATE_DUAL_MONITOR = get_control("entry", "deactivate_dual_monitor_treatment")
_SMM_CONTROLS = (_ENTRY_TO_SMM, _DEACTIVATE_DUAL_MONITOR)
_CR0_PE = reg_bit("CR0", "PE").mask
CR4_FRED = common.CR4_FRED
"""CR4.FRED (bit 32), which with 'IA-32e mode guest' makes a guest use FRED transitions."""


# ----------------------------------------------------------------------------- shared helpers


def _event(info: int) -> str:
    """The interruption-information field, named, with its type and vector decoded."""
    ty = FORMATS.type_by_value[_TYPE.get(info)]
    return f"{_INFO.name} = {info:#x} (type {ty.value}, {ty.title}; vector {_VECTOR.get(info)})"


def _guest_in_real_mode(vmcs: Vmcs) -> bool:
    """The guest will be in real-address mode: 'unrestricted guest' is 1 and guest CR0.PE is 0."""
    return is_unrestricted_guest(vmcs) and not vmcs.get(_GUEST_CR0) & _CR0_PE


def _guest_uses_fred(vmcs: Vmcs, caps: Capabilities) -> bool:
    """The guest will use FRED transitions: 'IA-32e mode guest' and guest CR4.FRED are 1 (on a processor with FRED)."""
    if not ia32e_guest_sets_cr4_fred(vmcs):
        return False
    return bool(caps.require_fact("CPUID_FRED"))


def _supports_mtf(caps: Capabilities) -> bool:
    """Whether the processor supports the 1-setting of 'monitor trap flag' (the MTF other event)."""
    allowed = caps.allows("proc", "monitor_trap_flag")
    if allowed is None:
        raise NotEvaluable(_INFO.name, "type 7 (other event)", f"the profile lacks {caps.control_msr('proc')}")
    return allowed


def _basic_bit(caps: Capabilities, bitfield: str) -> bool:
    """A one-bit field of IA32_VMX_BASIC, or NotEvaluable when the profile lacks the MSR."""
    return bool(required_msr_field(caps, "IA32_VMX_BASIC", bitfield, _INFO.name))


@attrs.frozen
class MsrArea:
    """An MSR-store or MSR-load area: its name, and the VMCS fields of its count and address."""

    name: str
    count: VmcsField
    address: VmcsField


EXIT_MSR_STORE = MsrArea("VM-exit MSR-store", VMCS_FIELDS["VM_EXIT_MSR_STORE_COUNT"],
                         VMCS_FIELDS["VM_EXIT_MSR_STORE_ADDR"])
EXIT_MSR_LOAD = MsrArea("VM-exit MSR-load", VMCS_FIELDS["VM_EXIT_MSR_LOAD_COUNT"], VMCS_FIELDS["VM_EXIT_MSR_LOAD_ADDR"])
ENTRY_MSR_LOAD = MsrArea("VM-entry MSR-load", VMCS_FIELDS["VM_ENTRY_MSR_LOAD_COUNT"],
                         VMCS_FIELDS["VM_ENTRY_MSR_LOAD_ADDR"])
_MSR_AREA_MISALIGNED = FORMATS.msr_area_alignment - 1


def _msr_area_alignment_problems(vmcs: Vmcs, area: MsrArea) -> Iterator[str]:
    """A non-empty area starts at a 16-byte aligned address (bits 3:0 are 0)."""
    address = vmcs.get(area.address)
    if vmcs.get(area.count) and address & _MSR_AREA_MISALIGNED:
        yield (f"{area.address.name} = {address:#x} is not {FORMATS.msr_area_alignment}-byte aligned "
               f"({area.count.name} = {vmcs.get(area.count)})")


def _msr_area_address_problems(vmcs: Vmcs, caps: Capabilities, area: MsrArea) -> Iterator[str]:
    """A non-empty area starts within the physical-address width."""
    count = vmcs.get(area.count)
    address = vmcs.get(area.address)
    if count and address >> (width := physical_address_width(caps)):
        yield (f"{area.address.name} = {address:#x} sets bits beyond the physical-address width ({width}) "
               f"({area.count.name} = {count})")


def _msr_area_end_problems(vmcs: Vmcs, caps: Capabilities, area: MsrArea) -> Iterator[str]:
    """A non-empty area ends within the physical-address width: address + 16 * count - 1, not truncated."""
    count = vmcs.get(area.count)
    if not count:
        return
    address = vmcs.get(area.address)
    end = address + FORMATS.msr_entry_bytes * count - 1
    if end >> (width := physical_address_width(caps)):
        yield (f"the {area.name} area ends at {end:#x} ({area.address.name} = {address:#x} + "
               f"{FORMATS.msr_entry_bytes} * {area.count.name} {count} - 1), "
               f"beyond the physical-address width ({width})")


# ----------------------------------------------------------------------------- VM-exit controls


_SMM_CONTROL_MASKS = tuple((control, control.mask) for control in _SMM_CONTROLS)
_ACTIVATE_PREEMPTION_TIMER_MASK, _SAVE_PREEMPTION_TIMER_MASK, _ENTRY_TO_SMM_MASK = (
    _ACTIVATE_PREEMPTION_TIMER.mask, _SAVE_PREEMPTION_TIMER.mask, _ENTRY_TO_SMM.mask)


@entry_check("controls.exit.save_preemption_timer")
def check_save_preemption_timer(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """'Save VMX-preemption timer value' is 0 when 'activate VMX-preemption timer' is 0; VM entries that
    return from SMM (executed in SMM with 'entry to SMM' 0) skip this check."""
    if vmcs.get(_PIN) & _ACTIVATE_PREEMPTION_TIMER_MASK or not vmcs.get(_EXIT_CONTROLS) & _SAVE_PREEMPTION_TIMER_MASK:
        return
    if ctx.in_smm and not vmcs.get(_ENTRY_CONTROLS) & _ENTRY_TO_SMM_MASK:
        return
    yield (f"{_EXIT_CONTROLS.name} = {vmcs.get(_EXIT_CONTROLS):#x} sets '{_SAVE_PREEMPTION_TIMER.title}' but "
           f"{_PIN.name} = {vmcs.get(_PIN):#x} clears '{_ACTIVATE_PREEMPTION_TIMER.title}'")


@entry_check("controls.exit.msr_store.alignment")
def check_exit_msr_store_alignment(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With a non-zero VM-exit MSR-store count, bits 3:0 of the VM-exit MSR-store address are 0."""
    return _msr_area_alignment_problems(vmcs, EXIT_MSR_STORE)


@entry_check("controls.exit.msr_store.address_width")
def check_exit_msr_store_address_width(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With a non-zero VM-exit MSR-store count, the VM-exit MSR-store address fits the physical-address width."""
    return _msr_area_address_problems(vmcs, caps, EXIT_MSR_STORE)


@entry_check("controls.exit.msr_store.last_byte")
def check_exit_msr_store_last_byte(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With a non-zero VM-exit MSR-store count, the last byte of the area (address + 16 * count - 1) fits the
    physical-address width."""
    return _msr_area_end_problems(vmcs, caps, EXIT_MSR_STORE)


@entry_check("controls.exit.msr_load.alignment")
def check_exit_msr_load_alignment(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With a non-zero VM-exit MSR-load count, bits 3:0 of the VM-exit MSR-load address are 0."""
    return _msr_area_alignment_problems(vmcs, EXIT_MSR_LOAD)


@entry_check("controls.exit.msr_load.address_width")
def check_exit_msr_load_address_width(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With a non-zero VM-exit MSR-load count, the VM-exit MSR-load address fits the physical-address width."""
    return _msr_area_address_problems(vmcs, caps, EXIT_MSR_LOAD)


@entry_check("controls.exit.msr_load.last_byte")
def check_exit_msr_load_last_byte(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With a non-zero VM-exit MSR-load count, the last byte of the area (address + 16 * count - 1) fits the
    physical-address width."""
    return _msr_area_end_problems(vmcs, caps, EXIT_MSR_LOAD)


# ----------------------------------------------------------------------------- VM-entry controls: event injection


@entry_check("controls.entry.event_injection.type")
def check_injection_type(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """A valid injected event's type is not 1 (reserved), and is 7 (other event) only if the processor
    supports 'monitor trap flag' or, under FRED, for vectors 1 and 2 when the guest will use FRED transitions."""
    info = vmcs.get(_INFO)
    if not info & _VALID:
        return
    interruption_type = _TYPE.get(info)
    if interruption_type == _RESERVED_TYPE:
        yield f"{_event(info)}: interruption type {_RESERVED_TYPE} is reserved"
    elif interruption_type == _OTHER_EVENT and not _supports_mtf(caps):
        if _VECTOR.get(info) in FORMATS.fred_other_events and _guest_uses_fred(vmcs, caps):
            return
        yield (f"{_event(info)}: interruption type {_OTHER_EVENT} is reserved on a processor without the "
               "1-setting of 'monitor trap flag' (except FRED SYSCALL/SYSENTER for a guest using FRED transitions)")


@entry_check("controls.entry.event_injection.nmi_vector")
def check_injection_nmi_vector(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """An injected NMI (type 2) has vector 2."""
    info = vmcs.get(_INFO)
    if info & _VALID and _TYPE.get(info) == _NMI_TYPE and _VECTOR.get(info) != _NMI_VECTOR:
        yield f"{_event(info)}: an injected NMI must have vector {_NMI_VECTOR}"


@entry_check("controls.entry.event_injection.hardware_exception_vector")
def check_injection_hardware_exception_vector(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """An injected hardware exception (type 3) has a vector no greater than 31."""
    info = vmcs.get(_INFO)
    if info & _VALID and _TYPE.get(info) == _HARDWARE_EXCEPTION and _VECTOR.get(info) > FORMATS.exception_vectors.hi:
        yield (f"{_event(info)}: an injected hardware exception must have a vector in "
               f"{FORMATS.exception_vectors.lo}-{FORMATS.exception_vectors.hi}")


@entry_check("controls.entry.event_injection.other_event_vector")
def check_injection_other_event_vector(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """An injected other event (type 7) has vector 0 (pending MTF VM exit, which needs 'monitor trap flag'
    support), or vector 1 (SYSCALL) or 2 (SYSENTER) when the guest will use FRED transitions."""
    info = vmcs.get(_INFO)
    if not info & _VALID or _TYPE.get(info) != _OTHER_EVENT:
        return
    vector = _VECTOR.get(info)
    if vector == _PENDING_MTF:
        if not _supports_mtf(caps):
            yield f"{_event(info)}: a pending MTF VM exit needs the 1-setting of 'monitor trap flag'"
    elif vector in FORMATS.fred_other_events:
        if not _guest_uses_fred(vmcs, caps):
            yield (f"{_event(info)}: other event {FORMATS.other_events[vector]} needs a guest using FRED transitions "
                   f"('IA-32e mode guest' 1 and {_GUEST_CR4.name}.FRED 1 on a processor with FRED); "
                   f"{_ENTRY_CONTROLS.name} = {vmcs.get(_ENTRY_CONTROLS):#x}, "
                   f"{_GUEST_CR4.name} = {vmcs.get(_GUEST_CR4):#x}")
    else:
        yield f"{_event(info)}: no other event has vector {vector}"


@entry_check("controls.entry.event_injection.error_code_required")
def check_injection_error_code_required(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """An injected hardware exception that pushes an error code in protected mode (#DF, #TS, #NP, #SS, #GP,
    #PF, #AC, #CP) delivers one when the guest will be in protected mode, unless IA32_VMX_BASIC[56] is 1."""
    info = vmcs.get(_INFO)
    if (not info & _VALID or info & _DELIVER_ERROR_CODE or _TYPE.get(info) != _HARDWARE_EXCEPTION
            or _VECTOR.get(info) not in FORMATS.error_code_vectors or _guest_in_real_mode(vmcs)):
        return
    if not _basic_bit(caps, "no_hw_error_code_check"):
        yield (f"{_event(info)}: #{FORMATS.exception_names[_VECTOR.get(info)]} injected into a protected-mode guest "
               "must set the deliver-error-code bit (IA32_VMX_BASIC[56] is 0)")


@entry_check("controls.entry.event_injection.error_code_forbidden")
def check_injection_error_code_forbidden(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """The deliver-error-code bit is 0 when the guest will be in real-address mode, when the type is not 3
    (hardware exception), or — unless IA32_VMX_BASIC[56] is 1 — when the exception pushes no error code."""
    info = vmcs.get(_INFO)
    if not info & _VALID or not info & _DELIVER_ERROR_CODE:
        return
    if _guest_in_real_mode(vmcs):
        yield (f"{_event(info)} delivers an error code to a guest in real-address mode ('unrestricted guest' 1, "
               f"{_GUEST_CR0.name} = {vmcs.get(_GUEST_CR0):#x} with PE 0)")
    elif _TYPE.get(info) != _HARDWARE_EXCEPTION:
        yield f"{_event(info)} delivers an error code, which only a hardware exception (type 3) may"
    elif _VECTOR.get(info) not in FORMATS.error_code_vectors and not _basic_bit(caps, "no_hw_error_code_check"):
        yield (f"{_event(info)} delivers an error code with an exception that has none "
               "(IA32_VMX_BASIC[56] is 0)")


@entry_check("controls.entry.event_injection.reserved_bits")
def check_injection_reserved_bits(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """Bits 30:12 of a valid VM-entry interruption-information field are 0; bit 13 (nested exception) may be
    1 when IA32_VMX_BASIC[58] is 1."""
    info = vmcs.get(_INFO)
    if not info & _VALID:
        return
    reserved = _RESERVED_INFO
    if info & _NESTED_EXCEPTION and not _basic_bit(caps, "nested_exception"):
        reserved |= _NESTED_EXCEPTION
    if info & reserved:
        yield f"{_event(info)} sets reserved bits {info & reserved:#x}"


@entry_check("controls.entry.event_injection.nested_exception_type")
def check_injection_nested_exception_type(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """Bit 13 (event nested on FRED event delivery) is 1 only for a hardware exception (type 3). Checked where
    IA32_VMX_BASIC[58] defines the bit; elsewhere it is a reserved bit (event_injection.reserved_bits)."""
    info = vmcs.get(_INFO)
    if (info & _VALID and info & _NESTED_EXCEPTION and _TYPE.get(info) != _HARDWARE_EXCEPTION
            and _basic_bit(caps, "nested_exception")):
        yield f"{_event(info)} sets the nested-exception bit, which only a hardware exception (type 3) may"


@entry_check("controls.entry.event_injection.error_code_reserved_bits")
def check_injection_error_code_reserved_bits(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """When a valid injected event delivers an error code, bits 31:16 of the VM-entry exception error code are 0."""
    info = vmcs.get(_INFO)
    error_code = vmcs.get(_ERROR_CODE)
    if info & _VALID and info & _DELIVER_ERROR_CODE and error_code & _ERROR_CODE_RESERVED.mask:
        yield (f"{_ERROR_CODE.name} = {error_code:#x} sets bits {_ERROR_CODE_RESERVED.bits} "
               f"(delivered with {_event(info)})")


@entry_check("controls.entry.event_injection.instruction_length")
def check_injection_instruction_length(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """An injected software interrupt or software exception (type 4, 5 or 6) has a VM-entry instruction length
    of 1-15, or 0 when IA32_VMX_MISC[30] is 1."""
    info = vmcs.get(_INFO)
    if not info & _VALID or _TYPE.get(info) not in _SOFTWARE_TYPES:
        return
    length = vmcs.get(_INSTRUCTION_LEN)
    if length > FORMATS.max_instruction_length:
        yield (f"{_INSTRUCTION_LEN.name} = {length} exceeds {FORMATS.max_instruction_length} "
               f"(injecting {_event(info)})")
    elif length == 0 and not required_msr_field(caps, "IA32_VMX_MISC", "zero_length_injection",
                                                _INSTRUCTION_LEN.name, "0"):
        yield f"{_INSTRUCTION_LEN.name} = 0 (injecting {_event(info)}) needs IA32_VMX_MISC[30]"


@entry_check("controls.entry.event_injection.fred_instruction_length")
def check_injection_fred_instruction_length(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """An injected FRED SYSCALL or SYSENTER (type 7, vector 1 or 2) has a VM-entry instruction length of at most
    15. Checked on processors with FRED; elsewhere those vectors are invalid (event_injection.other_event_vector)."""
    info = vmcs.get(_INFO)
    length = vmcs.get(_INSTRUCTION_LEN)
    if (info & _VALID and _TYPE.get(info) == _OTHER_EVENT and _VECTOR.get(info) in FORMATS.fred_other_events
            and length > FORMATS.max_instruction_length and caps.require_fact("CPUID_FRED")):
        yield (f"{_INSTRUCTION_LEN.name} = {length} exceeds {FORMATS.max_instruction_length} "
               f"(injecting {_event(info)})")


# ----------------------------------------------------------------------------- VM-entry controls: MSR loading


@entry_check("controls.entry.msr_load.alignment")
def check_entry_msr_load_alignment(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With a non-zero VM-entry MSR-load count, bits 3:0 of the VM-entry MSR-load address are 0."""
    return _msr_area_alignment_problems(vmcs, ENTRY_MSR_LOAD)


@entry_check("controls.entry.msr_load.address_width")
def check_entry_msr_load_address_width(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With a non-zero VM-entry MSR-load count, the VM-entry MSR-load address fits the physical-address width."""
    return _msr_area_address_problems(vmcs, caps, ENTRY_MSR_LOAD)


@entry_check("controls.entry.msr_load.last_byte")
def check_entry_msr_load_last_byte(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With a non-zero VM-entry MSR-load count, the last byte of the area (address + 16 * count - 1) fits the
    physical-address width."""
    return _msr_area_end_problems(vmcs, caps, ENTRY_MSR_LOAD)


# ----------------------------------------------------------------------------- VM-entry controls: SMM


@entry_check("controls.entry.smm_controls_outside_smm")
def check_smm_controls_outside_smm(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """Outside SMM, 'entry to SMM' and 'deactivate dual-monitor treatment' are both 0 (each checked and named)."""
    if ctx.in_smm:
        return
    controls = vmcs.get(_ENTRY_CONTROLS)
    for control, bit in _SMM_CONTROL_MASKS:
        if controls & bit:
            yield f"{_ENTRY_CONTROLS.name} = {controls:#x} sets '{control.title}' outside SMM"


@entry_check("controls.entry.smm_controls_exclusive")
def check_smm_controls_exclusive(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """'Entry to SMM' and 'deactivate dual-monitor treatment' are not both 1."""
    controls = vmcs.get(_ENTRY_CONTROLS)
    if controls & _ENTRY_TO_SMM_MASK and controls & _DEACTIVATE_DUAL_MONITOR.mask:
        yield (f"{_ENTRY_CONTROLS.name} = {controls:#x} sets both '{_ENTRY_TO_SMM.title}' and "
               f"'{_DEACTIVATE_DUAL_MONITOR.title}'")
