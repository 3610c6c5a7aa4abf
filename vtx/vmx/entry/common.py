"""Rules that several groups of VM-entry checks share (SDM Vol. 3C chapter 28 "VM Entries").

Every helper here states one rule of the SDM once: how VM entry reads a VMX control (a secondary or
tertiary control counts only while the primary control that activates its field is 1), which
processor mode the guest and host will be in, the reserved bits of a register, the CR0/CR4 bits
that IA32_VMX_CR0/CR4_FIXED0/1 fix, canonical addresses, and the capability facts and MSR fields a
check needs, raising :class:`~vtx.errors.NotEvaluable` when the profile lacks them.

Everything a check consults on its hot path (masks, fields, activating controls) is computed when
this module is imported; the helpers then only read the VMCS.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import attrs

from vtx.bits import BitRange, is_canonical, mask
from vtx.conditions import ControlAllowed
from vtx.errors import NotEvaluable, SpecError
from vtx.spec import CONTROL_FIELDS, REGISTERS, VMCS_FIELDS, VmcsField, _Table, get_control, reg_bit
from vtx.typecheck import checked
from vtx.vmx.capabilities import Capabilities
from vtx.vmx.vmcs import Vmcs

U64 = mask(64)
"""The bits of a 64-bit field."""

# ----------------------------------------------------------------------------- VMX controls


@attrs.frozen
class ControlFlag:
    """One VMX control as VM entry applies it.

    SDM Vol. 3C §25.6.2 and §25.7.1: the secondary processor-based controls are used only if the
    primary control 'activate secondary controls' is 1, the tertiary ones only if 'activate tertiary
    controls' is 1, and the secondary VM-exit controls only if the VM-exit control 'activate secondary
    controls' is 1; otherwise VM entry treats every control of the field as 0 (the field is neither
    checked nor used). ``activator_field`` / ``activator`` name that activating control (None / 0 for
    a field that always exists)."""

    field: VmcsField
    mask: int
    title: str
    activator_field: VmcsField | None = None
    activator: int = 0

    def active(self, vmcs: Vmcs) -> bool:
        """Whether the field that holds the control is in use (always, unless an activator gates it)."""
        return self.activator_field is None or bool(vmcs.get(self.activator_field) & self.activator)

    def on(self, vmcs: Vmcs) -> bool:
        """Whether the control is 1 as VM entry applies it (0 while its field is not activated)."""
        if self.activator_field is not None and not vmcs.get(self.activator_field) & self.activator:
            return False
        return bool(vmcs.get(self.field) & self.mask)

    @checked
    def describe(self, vmcs: Vmcs) -> str:
        """The control's title and the field that holds it, with the field's value."""
        return (f"'{self.title}' ({self.field.name} = {vmcs.get(self.field):#x}"
                + (")" if self.active(vmcs) else ", not activated)"))


def _make_flag(field_key: str, control_name: str) -> ControlFlag:
    cf = CONTROL_FIELDS[field_key]
    activator_field: VmcsField | None = None
    activator = 0
    for term in cf.enabled_by.terms:  # "exists only if ctl:<field>.activate_..._controls"
        if isinstance(term, ControlAllowed):
            activator_field = CONTROL_FIELDS[term.field].vmcs_field
            activator = get_control(term.field, term.control).mask
    control = get_control(field_key, control_name)
    return ControlFlag(cf.vmcs_field, control.mask, control.title, activator_field, activator)


_FLAGS: dict[tuple[str, str], ControlFlag] = {}


def control_flag(field_key: str, control_name: str) -> ControlFlag:
    """The control ``control_name`` of control field ``field_key`` (``"pin"``, ``"proc2"``, ``"exit2"``,
    ...), with the control that activates its field; built once per control. Checks keep the result
    in a module constant and call :meth:`ControlFlag.on`."""
    key = (field_key, control_name)
    flag = _FLAGS.get(key)
    if flag is None:
        flag = _FLAGS[key] = _make_flag(field_key, control_name)
    return flag


@checked
def control_on(vmcs: Vmcs, field_key: str, control_name: str) -> bool:
    """Whether VMX control ``control_name`` of field ``field_key`` is 1 as VM entry applies it: a
    secondary or tertiary control counts only when its activating primary control is also 1."""
    return control_flag(field_key, control_name).on(vmcs)


UNRESTRICTED_GUEST = control_flag("proc2", "unrestricted_guest")
IA32E_MODE_GUEST = control_flag("entry", "ia32e_mode_guest")
HOST_ADDRESS_SPACE_SIZE = control_flag("exit", "host_address_space_size")

# The predicates below read the fields and masks of these flags directly: they run in many checks,
# and one call is cheaper than a call through ControlFlag.on. The secondary control 'unrestricted
# guest' keeps its activator test.
if (IA32E_MODE_GUEST.activator_field is not None or HOST_ADDRESS_SPACE_SIZE.activator_field is not None
        or UNRESTRICTED_GUEST.activator_field is None):
    raise SpecError("spec/vmx/controls", "enabled_by", "vtx.vmx.entry.common expects the VM-entry and primary "
                    "VM-exit controls to always exist and the secondary processor-based controls to be activated")
_ENTRY_CONTROLS, _IA32E_MODE_GUEST = IA32E_MODE_GUEST.field, IA32E_MODE_GUEST.mask
_EXIT_CONTROLS, _HOST_ADDRESS_SPACE_SIZE = HOST_ADDRESS_SPACE_SIZE.field, HOST_ADDRESS_SPACE_SIZE.mask
_PROC, _ACTIVATE_SECONDARY = UNRESTRICTED_GUEST.activator_field, UNRESTRICTED_GUEST.activator
_PROC2, _UNRESTRICTED_GUEST = UNRESTRICTED_GUEST.field, UNRESTRICTED_GUEST.mask
_GUEST_CS_AR = VMCS_FIELDS["GUEST_CS_AR_BYTES"]
_AR_L = reg_bit("VMCS_ACCESS_RIGHTS", "L").mask
_GUEST_CR4 = VMCS_FIELDS["GUEST_CR4"]
CR4_FRED = reg_bit("CR4", "FRED").mask
"""CR4.FRED, bit 32 (FRED specification, "Enabling FRED")."""


def is_unrestricted_guest(vmcs: Vmcs) -> bool:
    """'Unrestricted guest' is 1 (a secondary control: 0 while 'activate secondary controls' is 0)."""
    return bool(vmcs.get(_PROC) & _ACTIVATE_SECONDARY and vmcs.get(_PROC2) & _UNRESTRICTED_GUEST)


def is_ia32e_guest(vmcs: Vmcs) -> bool:
    """The guest will be in IA-32e mode: the 'IA-32e mode guest' VM-entry control is 1 (§25.8.1)."""
    return bool(vmcs.get(_ENTRY_CONTROLS) & _IA32E_MODE_GUEST)


def is_64bit_guest(vmcs: Vmcs) -> bool:
    """The guest will start in 64-bit mode: 'IA-32e mode guest' is 1 and the guest CS access rights
    have L = 1 (§28.3.1.4)."""
    return bool(vmcs.get(_ENTRY_CONTROLS) & _IA32E_MODE_GUEST and vmcs.get(_GUEST_CS_AR) & _AR_L)


def is_64bit_host(vmcs: Vmcs) -> bool:
    """The host will be in 64-bit mode after VM exit: the 'host address-space size' VM-exit control
    is 1 (§28.2.4)."""
    return bool(vmcs.get(_EXIT_CONTROLS) & _HOST_ADDRESS_SPACE_SIZE)


def ia32e_guest_sets_cr4_fred(vmcs: Vmcs) -> bool:
    """'IA-32e mode guest' and guest CR4.FRED are both 1 — the VMCS part of "the guest will use FRED
    transitions" (FRED specification, VM-entry checks); whether the processor must also support FRED
    is each rule's own."""
    return bool(vmcs.get(_ENTRY_CONTROLS) & _IA32E_MODE_GUEST and vmcs.get(_GUEST_CR4) & CR4_FRED)


# ----------------------------------------------------------------------------- shared derivations

_T = TypeVar("_T")


def of_last_vmcs(derive: Callable[[Vmcs], _T]) -> Callable[[Vmcs], _T]:
    """``derive``, a pure function of a VMCS's field values, remembered for the last VMCS it was given (by
    the identity of its immutable :attr:`Vmcs.values`): the checks of one evaluation that share it compute it
    once. Its result must be immutable."""
    last: list[tuple[tuple[tuple[int, ...], ...], _T]] = []

    @functools.wraps(derive)
    def derived(vmcs: Vmcs) -> _T:
        if last and last[0][0] is vmcs.values:
            return last[0][1]
        result = derive(vmcs)
        last[:] = [(vmcs.values, result)]
        return result

    return derived


# ----------------------------------------------------------------------------- fields and registers


def vmcs_fields(*names: str) -> tuple[VmcsField, ...]:
    """The VMCS fields named ``names``, in order."""
    return tuple(VMCS_FIELDS[n] for n in names)


@checked
def reserved_mask(register: str) -> int:
    """The bits of ``register`` that its ``spec/x86`` rows name ``RESERVED_*`` (the convention of
    ``registers.toml`` and ``guest_state.toml``: every reserved range is such a row)."""
    return sum(b.mask for b in REGISTERS[register].bits if b.name.startswith("RESERVED"))


@checked
def reserved_bits_problem(field: VmcsField, value: int, reserved: int, register: str) -> Iterator[str]:
    """The rule "``field`` sets no bit reserved in ``register``": a message if ``value`` sets one of
    ``reserved``."""
    if value & reserved:
        yield f"{field.name} = {value:#x} sets bits {value & reserved:#x} reserved in {register}"


_FIXED_MSRS = {register: (f"IA32_VMX_{register}_FIXED0", f"IA32_VMX_{register}_FIXED1") for register in ("CR0", "CR4")}


def fixed_bit_problems(field: VmcsField, register: str, value: int, caps: Capabilities,
                       exempt: int = 0) -> Iterator[str]:
    """The rule "``field`` (a CR0 or CR4 value) sets no bit to a value not supported in VMX operation"
    (SDM Vol. 3C §28.2.2, §28.3.1.1; Vol. 3D §A.7, §A.8): every bit 1 in IA32_VMX_<register>_FIXED0 is
    1 and every bit 0 in IA32_VMX_<register>_FIXED1 is 0, except the bits of ``exempt`` (guest CR0.PE
    and PG when 'unrestricted guest' is 1). NotEvaluable when the profile lacks either MSR."""
    fixed0_msr, fixed1_msr = _FIXED_MSRS[register]
    fixed0, fixed1 = caps.msr(fixed0_msr), caps.msr(fixed1_msr)
    if fixed0 is None or fixed1 is None:
        raise NotEvaluable(field.name, hex(value), f"the profile lacks IA32_VMX_{register}_FIXED0/1")
    must_be_1 = fixed0 & ~value & ~exempt
    must_be_0 = value & ~fixed1 & ~exempt & U64
    if must_be_1:
        yield f"{field.name} = {value:#x} clears bits {must_be_1:#x} that IA32_VMX_{register}_FIXED0 fixes to 1"
    if must_be_0:
        yield f"{field.name} = {value:#x} sets bits {must_be_0:#x} that IA32_VMX_{register}_FIXED1 fixes to 0"


EFER_RESERVED = U64 & ~sum(b.mask for b in REGISTERS["IA32_EFER"].bits)
"""IA32_EFER bits outside SCE, LME, LMA and NXE: reserved (SDM Vol. 3C §28.2.2, §28.3.1.1)."""
EFER_FEATURE_BITS = ((reg_bit("IA32_EFER", "LME").mask | reg_bit("IA32_EFER", "LMA").mask, "CPUID_LM", "LME/LMA"),
                     (reg_bit("IA32_EFER", "NXE").mask, "CPUID_NX", "NXE"))
"""IA32_EFER bits that exist only where CPUID enumerates their feature: (mask, fact, name); elsewhere
they are reserved too."""

PAT_MEMORY_TYPES: dict[int, str] = {int(row["value"]): str(row["name"])
                                    for row in _Table("x86/guest_state.toml").rows("pat_memory_type")}
"""The memory types an IA32_PAT entry can encode (SDM Vol. 3A §13.12.2), value -> name; the host and
guest IA32_PAT rules (§28.2.2, §28.3.1.1) require every entry to be one of them."""

PAT_ENTRIES = tuple(b.bits for b in REGISTERS["IA32_PAT"].bits)
"""The eight one-byte entries PA0-PA7 of IA32_PAT."""


@checked
def invalid_pat_entries(pat: int) -> list[tuple[int, int]]:
    """The entries of IA32_PAT value ``pat`` that hold no memory type the PAT can encode, as (i, value)
    for entry PAi; WRMSR of such a value raises #GP (SDM Vol. 3A §13.12.2 "IA32_PAT MSR")."""
    return [(i, t) for i, bits in enumerate(PAT_ENTRIES) if (t := bits.get(pat)) not in PAT_MEMORY_TYPES]


@checked
def bit_field_reader(bits: BitRange) -> Callable[[int], int]:
    """``bits.get``, with the shift and mask computed once: for the rules that read a sub-field (a DPL,
    a segment type) of many values (tested equal to ``bits.get``)."""
    shift, width_mask = bits.lo, mask(bits.width)

    def read(value: int) -> int:
        return value >> shift & width_mask

    read.__doc__ = f"Bits {bits} of ``value``, shifted down to bit 0."
    return read


# ----------------------------------------------------------------------------- addresses


@checked
@checked
def alignment_bits(n_bytes: int) -> BitRange:
    """The low bits an ``n_bytes``-aligned address clears (a power of two): bits log2(n)-1:0."""
    return BitRange(0, n_bytes.bit_length() - 2)


ALIGN_4 = alignment_bits(4)
"""Bits 1:0: the SSP fields are 4-byte aligned (§28.2.2, §28.3.1.4)."""
ALIGN_8 = alignment_bits(8)
"""Bits 2:0: 8-byte alignment (the FRED SSPi, the PID-pointer table)."""
ALIGN_64 = alignment_bits(64)
"""Bits 5:0: 64-byte alignment (the FRED RSPi, the posted-interrupt descriptor)."""
ALIGN_4K = alignment_bits(4096)
"""Bits 11:0: 4-KByte alignment (the bitmaps, pages and tables VMX controls reference, §28.2.1.1)."""
CR3_LAM = BitRange(61, 62)
"""CR3 bits 62:61 (LAM_U48 and LAM_U57), which the host and guest CR3 address-width rules (§28.2.2,
§28.3.1.1) let be 1 on a processor that supports linear-address masking (ISE "Linear Address
Masking": "VMX interactions"); registers.toml has no CR3 row yet."""
BITS_63_32 = BitRange(32, 63)
"""Bits 63:32, which the rules for 32-bit values held in 64-bit fields require to be 0 (a 32-bit host's
RIP, IA32_S_CET and SSP, the guest DR7, RIP outside 64-bit mode, the CS/SS/DS/ES bases)."""


def linear_width(caps: Capabilities) -> int:
    """The processor's linear-address width (the ``LINEAR_ADDRESS_WIDTH`` fact), against which the
    VM-entry checks judge canonical addresses; NotEvaluable if the profile does not give it."""
    width = caps.facts.get("LINEAR_ADDRESS_WIDTH")  # caps.require_fact, without its name check on the hot path
    return caps.require_fact("LINEAR_ADDRESS_WIDTH") if width is None else width


_CANONICAL_HIGH_BITS = {width: (width - 1, mask(64 - width + 1)) for width in range(1, 65)}
"""For each linear-address width w: the shift that leaves bits 63:w-1 of an address, and their value
when all are 1 (:func:`vtx.bits.is_canonical`, precomputed: an address is canonical when those bits
are all 0 or all 1; tested equal)."""


def is_canonical_for(address: int, width: int) -> bool:
    """:func:`vtx.bits.is_canonical` with the mask of bits 63:``width``-1 looked up, not computed."""
    known = _CANONICAL_HIGH_BITS.get(width)
    if known is None:  # a width no processor has: the general rule
        return is_canonical(address, width)
    shift, all_ones = known
    high = address >> shift
    return high in (0, all_ones)


def _not_canonical(name: str, address: int, width: int, what: str = "") -> str:
    return f"{name} = {address:#x}{what} is not canonical ({width}-bit linear addresses)"


@checked
def canonical_problem(name: str, address: int, width: int, what: str = "") -> Iterator[str]:
    """The rule "``address`` is canonical" (SDM Vol. 1 §3.3.7.1: bits 63:``width``-1 all equal), for
    the field or value ``name`` (``what`` qualifies it, e.g. " (entry point)")."""
    if not is_canonical_for(address, width):
        yield _not_canonical(name, address, width, what)


def non_canonical(vmcs: Vmcs, caps: Capabilities, fields: Iterable[VmcsField]) -> Iterator[str]:
    """A message for each of ``fields`` whose value is not canonical for the processor's
    linear-address width."""
    width = linear_width(caps)
    for field in fields:
        value = vmcs.get(field)
        if not is_canonical_for(value, width):
            yield _not_canonical(field.name, value, width)


def upper_bits_equal(value: int, width: int) -> bool:
    """Bits 63:``width`` of a 64-bit value are all equal (always true with 64-bit linear addresses):
    the rule for the guest RIP in 64-bit mode and the guest SSP (§28.3.1.4), which need not be canonical."""
    if width >= 64:
        return True
    return value >> width in (0, (1 << (64 - width)) - 1)  # all 0 or all 1


# ----------------------------------------------------------------------------- capability facts


@checked
def cpuid_support(caps: Capabilities, fact: str, where: str,
                  reason: str = "the profile does not say whether the processor has this feature") -> bool:
    """Whether the processor has feature ``fact`` (a spec/cpuid.toml fact); NotEvaluable(``where``,
    ``fact``, ``reason``) if the profile does not say."""
    value = caps.fact(fact)
    if value is None:
        raise NotEvaluable(where, fact, reason)
    return bool(value)


def required_msr_field(caps: Capabilities, msr: str, bitfield: str, where: str, what: object = None) -> int:
    """Bit field ``bitfield`` of capability MSR ``msr``; NotEvaluable(``where``, ``what`` (default
    ``bitfield``), "the profile lacks ``msr``") when the profile does not give the MSR."""
    value = caps.msr_field(msr, bitfield)
    if value is None:
        raise NotEvaluable(where, bitfield if what is None else what, f"the profile lacks {msr}")
    return value
