"""Checks on the guest control registers, debug registers, MSRs, descriptor-table registers, RIP,
RFLAGS and SSP (SDM Vol. 3C §28.3.1.1 "Checks on Guest Control Registers, Debug Registers, and
MSRs", §28.3.1.3 "Checks on Guest Descriptor-Table Registers", §28.3.1.4 "Checks on Guest RIP,
RFLAGS, and SSP", and the FRED specification's VM-entry checks).

A violation makes VM entry fail after it has begun loading guest state: a VM exit with basic
exit reason 33 and bit 31 of the exit-reason field set.

"Canonical" is relative to the processor's linear-address width (the ``LINEAR_ADDRESS_WIDTH``
fact), not to the guest's paging mode. MSR reserved bits come from ``spec/x86/guest_state.toml``,
where every reserved range is a row named ``RESERVED_*``.
"""

from __future__ import annotations

from collections.abc import Iterator

from vtx.bits import BitRange, mask
from vtx.errors import NotEvaluable
from vtx.spec import REGISTERS, VMCS_FIELDS, VmcsField, reg_bit
from vtx.vmx.capabilities import Capabilities
from vtx.vmx.entry import EntryContext, entry_check
from vtx.vmx.entry.common import (
    ALIGN_4,
    ALIGN_8,
    ALIGN_64,
    BITS_63_32,
    CR3_LAM,
    CR4_FRED,
    EFER_FEATURE_BITS,
    EFER_RESERVED,
    PAT_MEMORY_TYPES,
    U64,
    canonical_problem,
    control_flag,
    fixed_bit_problems,
    ia32e_guest_sets_cr4_fred,
    is_64bit_guest,
    is_ia32e_guest,
    is_unrestricted_guest,
    linear_width,
    non_canonical,
    reserved_bits_problem,
    reserved_mask,
    upper_bits_equal,
)
from vtx.vmx.vmcs import Vmcs

# ----------------------------------------------------------------------------- shared shapes

_LOAD_DEBUG_CONTROLS = control_flag("entry", "load_debug_controls")
_LOAD_CET_STATE = control_flag("entry", "load_cet_state")
_LOAD_FRED = control_flag("entry", "load_fred")

_CR0_PE = reg_bit("CR0", "PE").mask
_CR0_PG = reg_bit("CR0", "PG").mask
_CR0_WP = reg_bit("CR0", "WP").mask
_CR4_PAE = reg_bit("CR4", "PAE").mask
_CR4_PCIDE = reg_bit("CR4", "PCIDE").mask
_CR4_CET = reg_bit("CR4", "CET").mask

_AR_DPL = reg_bit("VMCS_ACCESS_RIGHTS", "DPL").bits


def _clear_bits_problem(field: VmcsField, value: int, bits: BitRange, rule: str) -> Iterator[str]:
    if bits.get(value):
        yield f"{field.name} = {value:#x} sets bits {bits} ({rule})"


# ----------------------------------------------------------------------------- control registers

_GUEST_CR0 = VMCS_FIELDS["GUEST_CR0"]
_GUEST_CR3 = VMCS_FIELDS["GUEST_CR3"]
_GUEST_CR4 = VMCS_FIELDS["GUEST_CR4"]


@entry_check("guest.cr0.fixed_bits")
def check_guest_cr0_fixed_bits(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """The guest CR0 field sets no bit to a value IA32_VMX_CR0_FIXED0/1 forbid; PE and PG are exempt
    when "unrestricted guest" is 1 (and "activate secondary controls" is 1)."""
    exempt = _CR0_PE | _CR0_PG if is_unrestricted_guest(vmcs) else 0
    yield from fixed_bit_problems(_GUEST_CR0, "CR0", vmcs.get(_GUEST_CR0), caps, exempt)


@entry_check("guest.cr0.pg_needs_pe")
def check_guest_cr0_pg_needs_pe(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """If the guest CR0 field sets PG (bit 31), it also sets PE (bit 0)."""
    cr0 = vmcs.get(_GUEST_CR0)
    if cr0 & _CR0_PG and not cr0 & _CR0_PE:
        yield f"GUEST_CR0 = {cr0:#x} sets PG but not PE"


@entry_check("guest.cr4.fixed_bits")
def check_guest_cr4_fixed_bits(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """The guest CR4 field sets no bit to a value IA32_VMX_CR4_FIXED0/1 forbid."""
    return fixed_bit_problems(_GUEST_CR4, "CR4", vmcs.get(_GUEST_CR4), caps)


@entry_check("guest.cr4.cet_needs_wp")
def check_guest_cr4_cet_needs_wp(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """If the guest CR4 field sets CET (bit 23), the guest CR0 field sets WP (bit 16)."""
    cr4, cr0 = vmcs.get(_GUEST_CR4), vmcs.get(_GUEST_CR0)
    if cr4 & _CR4_CET and not cr0 & _CR0_WP:
        yield f"GUEST_CR4 = {cr4:#x} sets CET but GUEST_CR0 = {cr0:#x} clears WP"


_GUEST_DEBUGCTL = VMCS_FIELDS["GUEST_IA32_DEBUGCTL"]
_DEBUGCTL_RESERVED = reserved_mask("IA32_DEBUGCTL")


@entry_check("guest.debugctl.reserved_bits")
def check_guest_debugctl_reserved(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With "load debug controls" 1, the guest IA32_DEBUGCTL field sets no bit reserved in that MSR."""
    if _LOAD_DEBUG_CONTROLS.on(vmcs):
        yield from reserved_bits_problem(_GUEST_DEBUGCTL, vmcs.get(_GUEST_DEBUGCTL), _DEBUGCTL_RESERVED,
                                         "IA32_DEBUGCTL")


_IA32E_PAGING = (("CR0.PG", _GUEST_CR0, _CR0_PG), ("CR4.PAE", _GUEST_CR4, _CR4_PAE))


@entry_check("guest.ia32e.paging")
def check_guest_ia32e_paging(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With "IA-32e mode guest" 1, the guest CR0 field sets PG and the guest CR4 field sets PAE."""
    if not is_ia32e_guest(vmcs):
        return
    for instance, field, bit in _IA32E_PAGING:
        value = vmcs.get(field)
        if not value & bit:
            yield f"{field.name} = {value:#x} clears {instance}, which an IA-32e mode guest needs"


@entry_check("guest.non_ia32e.cr4_pcide")
def check_guest_non_ia32e_cr4_pcide(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With "IA-32e mode guest" 0, the guest CR4 field clears PCIDE (bit 17)."""
    cr4 = vmcs.get(_GUEST_CR4)
    if cr4 & _CR4_PCIDE and not is_ia32e_guest(vmcs):
        yield f"GUEST_CR4 = {cr4:#x} sets PCIDE although 'IA-32e mode guest' is 0"


@entry_check("guest.non_ia32e.cr4_fred")
def check_guest_non_ia32e_cr4_fred(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With "IA-32e mode guest" 0, the guest CR4 field clears FRED (bit 32). The rule exists on
    processors that support FRED; elsewhere CR4.FRED is a bit IA32_VMX_CR4_FIXED1 fixes to 0."""
    cr4 = vmcs.get(_GUEST_CR4)
    if cr4 & CR4_FRED and not is_ia32e_guest(vmcs) and caps.require_fact("CPUID_FRED"):
        yield f"GUEST_CR4 = {cr4:#x} sets FRED although 'IA-32e mode guest' is 0"


_CR3_LAM = CR3_LAM.mask
# The rule checks bits 51:32 beyond the physical-address width and bits 63:52 (SDM Vol. 3C §28.3.1.1);
# bits 31:0 are never checked.
_CR3_ALWAYS_CHECKED_FROM = 32


@entry_check("guest.cr3.address_width")
def check_guest_cr3_address_width(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """The guest CR3 field sets no bit at or above the physical-address width (bits 63:52 and bits
    51:32 beyond MAXPHYADDR); with linear-address masking, bits 62:61 may be 1."""
    cr3 = vmcs.get(_GUEST_CR3)
    width = max(caps.require_fact("MAXPHYADDR"), _CR3_ALWAYS_CHECKED_FROM)
    beyond = cr3 >> width << width  # the bits at and above the width
    if beyond & _CR3_LAM and caps.require_fact("CPUID_LAM"):
        beyond &= ~_CR3_LAM
    if beyond:
        yield f"GUEST_CR3 = {cr3:#x} sets bits {beyond:#x} beyond the physical-address width ({width} bits)"


_GUEST_DR7 = VMCS_FIELDS["GUEST_DR7"]
_DR7_UPPER = BITS_63_32  # SDM Vol. 3C §28.3.1.1: "bits 63:32 in the DR7 field must be 0"


@entry_check("guest.dr7.upper_bits")
def check_guest_dr7_upper_bits(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With "load debug controls" 1, bits 63:32 of the guest DR7 field are 0."""
    if _LOAD_DEBUG_CONTROLS.on(vmcs):
        yield from _clear_bits_problem(_GUEST_DR7, vmcs.get(_GUEST_DR7), _DR7_UPPER, "must be 0")


_SYSENTER = (VMCS_FIELDS["GUEST_SYSENTER_ESP"], VMCS_FIELDS["GUEST_SYSENTER_EIP"])


@entry_check("guest.sysenter.canonical")
def check_guest_sysenter_canonical(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """The guest IA32_SYSENTER_ESP and IA32_SYSENTER_EIP fields each hold a canonical address."""
    return non_canonical(vmcs, caps, _SYSENTER)


_GUEST_S_CET = VMCS_FIELDS["GUEST_S_CET"]
_GUEST_INTR_SSP_TABLE = VMCS_FIELDS["GUEST_INTR_SSP_TABLE"]


@entry_check("guest.cet.s_cet_canonical")
def check_guest_s_cet_canonical(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With "load CET state" 1, the guest IA32_S_CET field holds a canonical address."""
    if _LOAD_CET_STATE.on(vmcs):
        yield from canonical_problem(_GUEST_S_CET.name, vmcs.get(_GUEST_S_CET), linear_width(caps))


@entry_check("guest.cet.ssp_table_canonical")
def check_guest_ssp_table_canonical(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With "load CET state" 1, the guest IA32_INTERRUPT_SSP_TABLE_ADDR field holds a canonical address."""
    if _LOAD_CET_STATE.on(vmcs):
        yield from canonical_problem(_GUEST_INTR_SSP_TABLE.name, vmcs.get(_GUEST_INTR_SSP_TABLE), linear_width(caps))


_GUEST_PERF_GLOBAL_CTRL = VMCS_FIELDS["GUEST_IA32_PERF_GLOBAL_CTRL"]
_LOAD_PERF_GLOBAL_CTRL = control_flag("entry", "load_ia32_perf_global_ctrl")
_EN_PMC = reg_bit("IA32_PERF_GLOBAL_CTRL", "EN_PMC").bits
_EN_FIXED_CTR = reg_bit("IA32_PERF_GLOBAL_CTRL", "EN_FIXED_CTR").bits
_EN_PERF_METRICS = reg_bit("IA32_PERF_GLOBAL_CTRL", "EN_PERF_METRICS").mask
_PERF_GLOBAL_CTRL_RESERVED = reserved_mask("IA32_PERF_GLOBAL_CTRL")


@entry_check("guest.perf_global_ctrl.reserved_bits")
def check_guest_perf_global_ctrl_reserved(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With "load IA32_PERF_GLOBAL_CTRL" 1, the guest IA32_PERF_GLOBAL_CTRL field enables no counter
    beyond those CPUID leaf 0AH reports and sets no reserved bit."""
    if not _LOAD_PERF_GLOBAL_CTRL.on(vmcs):
        return
    value = vmcs.get(_GUEST_PERF_GLOBAL_CTRL)
    reserved = _PERF_GLOBAL_CTRL_RESERVED
    if value & (_EN_PMC.mask | _EN_FIXED_CTR.mask):
        implemented = (_EN_PMC.put(0, mask(caps.require_fact("PMU_GP_COUNTERS")))
                       | _EN_FIXED_CTR.put(0, mask(caps.require_fact("PMU_FIXED_COUNTERS"))))
        reserved |= (_EN_PMC.mask | _EN_FIXED_CTR.mask) & ~implemented
    yield from reserved_bits_problem(_GUEST_PERF_GLOBAL_CTRL, value, reserved, "IA32_PERF_GLOBAL_CTRL")
    if value & _EN_PERF_METRICS:
        raise NotEvaluable(_GUEST_PERF_GLOBAL_CTRL.name, hex(value),
                           "bit 48 (EN_PERF_METRICS) is reserved unless IA32_PERF_CAPABILITIES enumerates "
                           "PERF_METRICS, which the profile does not give")


_GUEST_PAT = VMCS_FIELDS["GUEST_IA32_PAT"]
_LOAD_PAT = control_flag("entry", "load_ia32_pat")
_PAT_ENTRIES = tuple(b.bits for b in REGISTERS["IA32_PAT"].bits)


@entry_check("guest.pat.valid")
def check_guest_pat_valid(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With "load IA32_PAT" 1, each of the 8 bytes of the guest IA32_PAT field is a memory type the
    PAT can encode (0 UC, 1 WC, 4 WT, 5 WP, 6 WB, 7 UC-)."""
    if not _LOAD_PAT.on(vmcs):
        return
    pat = vmcs.get(_GUEST_PAT)
    for i, entry in enumerate(_PAT_ENTRIES):
        memory_type = entry.get(pat)
        if memory_type not in PAT_MEMORY_TYPES:
            yield f"GUEST_IA32_PAT = {pat:#x}: entry PA{i} = {memory_type:#x} is not a valid PAT memory type"


_GUEST_EFER = VMCS_FIELDS["GUEST_IA32_EFER"]
_LOAD_EFER = control_flag("entry", "load_ia32_efer")
_EFER_LME = reg_bit("IA32_EFER", "LME").mask
_EFER_LMA = reg_bit("IA32_EFER", "LMA").mask


@entry_check("guest.efer.reserved_bits")
def check_guest_efer_reserved(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With "load IA32_EFER" 1, the guest IA32_EFER field sets no reserved bit: only SCE, LME and LMA
    (with Intel 64 support) and NXE (with execute-disable support) may be 1."""
    if not _LOAD_EFER.on(vmcs):
        return
    efer = vmcs.get(_GUEST_EFER)
    reserved = EFER_RESERVED
    for bits, fact, _ in EFER_FEATURE_BITS:
        if efer & bits and not caps.require_fact(fact):
            reserved |= bits
    yield from reserved_bits_problem(_GUEST_EFER, efer, reserved, "IA32_EFER")


@entry_check("guest.efer.lma")
def check_guest_efer_lma(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With "load IA32_EFER" 1, LMA (bit 10) of the guest IA32_EFER field equals "IA-32e mode guest"."""
    if not _LOAD_EFER.on(vmcs):
        return
    efer, ia32e = vmcs.get(_GUEST_EFER), is_ia32e_guest(vmcs)
    lma = bool(efer & _EFER_LMA)
    if lma != ia32e:
        yield f"GUEST_IA32_EFER = {efer:#x} has LMA = {int(lma)} but 'IA-32e mode guest' is {int(ia32e)}"


@entry_check("guest.efer.lme")
def check_guest_efer_lme(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With "load IA32_EFER" 1 and guest CR0.PG 1, LME (bit 8) of the guest IA32_EFER field equals LMA (bit 10)."""
    if not _LOAD_EFER.on(vmcs) or not vmcs.get(_GUEST_CR0) & _CR0_PG:
        return
    efer = vmcs.get(_GUEST_EFER)
    lme, lma = bool(efer & _EFER_LME), bool(efer & _EFER_LMA)
    if lme != lma:
        yield f"GUEST_IA32_EFER = {efer:#x} has LME = {int(lme)} but LMA = {int(lma)} while GUEST_CR0.PG is 1"


_GUEST_BNDCFGS = VMCS_FIELDS["GUEST_BNDCFGS"]
_LOAD_BNDCFGS = control_flag("entry", "load_ia32_bndcfgs")
_BNDCFGS_RESERVED = reserved_mask("IA32_BNDCFGS")
_BNDCFGS_BASE = reg_bit("IA32_BNDCFGS", "BASE").mask


@entry_check("guest.bndcfgs.reserved_bits")
def check_guest_bndcfgs_reserved(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With "load IA32_BNDCFGS" 1, bits 11:2 of the guest IA32_BNDCFGS field are 0."""
    if _LOAD_BNDCFGS.on(vmcs):
        yield from reserved_bits_problem(_GUEST_BNDCFGS, vmcs.get(_GUEST_BNDCFGS), _BNDCFGS_RESERVED, "IA32_BNDCFGS")


@entry_check("guest.bndcfgs.canonical")
def check_guest_bndcfgs_canonical(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With "load IA32_BNDCFGS" 1, the bound-directory base (bits 63:12) of the guest IA32_BNDCFGS
    field is a canonical linear address."""
    if _LOAD_BNDCFGS.on(vmcs):
        yield from canonical_problem(_GUEST_BNDCFGS.name, vmcs.get(_GUEST_BNDCFGS) & _BNDCFGS_BASE, linear_width(caps),
                                     " (bound-directory base)")


def _register_msr_reserved_check(check_id: str, field_name: str, control: str, register: str) -> None:
    """Register the check that, with the VM-entry control ``control`` 1, the guest field
    ``field_name`` sets no bit reserved in MSR ``register``."""
    field, flag, reserved = VMCS_FIELDS[field_name], control_flag("entry", control), reserved_mask(register)

    def check(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
        if flag.on(vmcs):
            yield from reserved_bits_problem(field, vmcs.get(field), reserved, register)

    check.__name__ = check.__qualname__ = f"check_{check_id.replace('.', '_')}"
    check.__doc__ = f"With {control!r} 1, the {field_name} field sets no bit reserved in {register}."
    entry_check(check_id)(check)


_register_msr_reserved_check("guest.rtit_ctl.reserved_bits", "GUEST_IA32_RTIT_CTL", "load_ia32_rtit_ctl",
                             "IA32_RTIT_CTL")

_S_CET_RESERVED = reserved_mask("IA32_S_CET")
_S_CET_SUPPRESS_AND_TRACKER = reg_bit("IA32_S_CET", "SUPPRESS").mask | reg_bit("IA32_S_CET", "TRACKER").mask


@entry_check("guest.cet.s_cet_reserved_bits")
def check_guest_s_cet_reserved(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With "load CET state" 1, the guest IA32_S_CET field clears its reserved bits 9:6 and does not
    set both SUPPRESS (bit 10) and TRACKER (bit 11)."""
    if not _LOAD_CET_STATE.on(vmcs):
        return
    s_cet = vmcs.get(_GUEST_S_CET)
    yield from reserved_bits_problem(_GUEST_S_CET, s_cet, _S_CET_RESERVED, "IA32_S_CET")
    if s_cet & _S_CET_SUPPRESS_AND_TRACKER == _S_CET_SUPPRESS_AND_TRACKER:
        yield f"GUEST_S_CET = {s_cet:#x} sets both SUPPRESS and TRACKER"


_register_msr_reserved_check("guest.lbr_ctl.reserved_bits", "GUEST_IA32_LBR_CTL", "load_guest_ia32_lbr_ctl",
                             "IA32_LBR_CTL")
_register_msr_reserved_check("guest.pkrs.reserved_bits", "GUEST_IA32_PKRS", "load_pkrs", "IA32_PKRS")

_GUEST_UINV = VMCS_FIELDS["GUEST_UINV"]
_LOAD_UINV = control_flag("entry", "load_uinv")
_UINV_UPPER = BitRange(8, 15)  # SDM Vol. 3C §28.3.1.1: "bits 15:8 of the guest UINV field must be 0"


@entry_check("guest.uinv.reserved_bits")
def check_guest_uinv_reserved(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With "load UINV" 1, bits 15:8 of the guest UINV field are 0 (UINV is an 8-bit vector)."""
    if _LOAD_UINV.on(vmcs):
        yield from _clear_bits_problem(_GUEST_UINV, vmcs.get(_GUEST_UINV), _UINV_UPPER, "must be 0")


def _loads_fred_into_64bit_guest(vmcs: Vmcs) -> bool:
    return _LOAD_FRED.on(vmcs) and is_ia32e_guest(vmcs)


_GUEST_FRED_CONFIG = VMCS_FIELDS["GUEST_IA32_FRED_CONFIG"]
_FRED_CONFIG_RESERVED = reserved_mask("IA32_FRED_CONFIG")
_FRED_CONFIG_ENTRYPOINT = reg_bit("IA32_FRED_CONFIG", "ENTRYPOINT").mask


@entry_check("guest.fred.config")
def check_guest_fred_config(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With "load FRED" and "IA-32e mode guest" 1, the guest IA32_FRED_CONFIG field clears its reserved
    bits (2, 5:4, 11) and its entry point (bits 63:12) is canonical."""
    if not _loads_fred_into_64bit_guest(vmcs):
        return
    config = vmcs.get(_GUEST_FRED_CONFIG)
    yield from reserved_bits_problem(_GUEST_FRED_CONFIG, config, _FRED_CONFIG_RESERVED, "IA32_FRED_CONFIG")
    yield from canonical_problem(_GUEST_FRED_CONFIG.name, config & _FRED_CONFIG_ENTRYPOINT, linear_width(caps),
                                 " (entry point)")


def _aligned_canonical_problems(vmcs: Vmcs, caps: Capabilities, fields: tuple[VmcsField, ...],
                                low: BitRange, alignment: str) -> Iterator[str]:
    """Each of ``fields`` clears the bits ``low`` and holds a canonical address."""
    for field in fields:
        value = vmcs.get(field)
        yield from _clear_bits_problem(field, value, low, f"must be {alignment}-aligned")
        yield from canonical_problem(field.name, value, linear_width(caps))


_GUEST_FRED_RSP = tuple(VMCS_FIELDS[f"GUEST_IA32_FRED_RSP{i}"] for i in (1, 2, 3))
_GUEST_FRED_SSP = tuple(VMCS_FIELDS[f"GUEST_IA32_FRED_SSP{i}"] for i in (1, 2, 3))
# FRED specification, VM-entry checks on guest FRED state: the stack pointers are 64-byte aligned
# (bits 5:0 clear), the shadow-stack pointers 8-byte aligned (bits 2:0 clear).
_FRED_RSP_LOW = ALIGN_64
_FRED_SSP_LOW = ALIGN_8


@entry_check("guest.fred.rsp")
def check_guest_fred_rsp(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With "load FRED" and "IA-32e mode guest" 1, each guest IA32_FRED_RSPi field (i = 1-3) clears
    bits 5:0 and holds a canonical address."""
    if _loads_fred_into_64bit_guest(vmcs):
        yield from _aligned_canonical_problems(vmcs, caps, _GUEST_FRED_RSP, _FRED_RSP_LOW, "64-byte")


@entry_check("guest.fred.ssp")
def check_guest_fred_ssp(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With "load FRED" and "IA-32e mode guest" 1, each guest IA32_FRED_SSPi field (i = 1-3) clears
    bits 2:0 and holds a canonical address."""
    if _loads_fred_into_64bit_guest(vmcs):
        yield from _aligned_canonical_problems(vmcs, caps, _GUEST_FRED_SSP, _FRED_SSP_LOW, "8-byte")


_register_msr_reserved_check("guest.spec_ctrl.reserved_bits", "GUEST_IA32_SPEC_CTRL", "load_ia32_spec_ctrl",
                             "IA32_SPEC_CTRL")

# ----------------------------------------------------------------------------- descriptor tables

_DTR = (("GDTR", VMCS_FIELDS["GUEST_GDTR_BASE"], VMCS_FIELDS["GUEST_GDTR_LIMIT"]),
        ("IDTR", VMCS_FIELDS["GUEST_IDTR_BASE"], VMCS_FIELDS["GUEST_IDTR_LIMIT"]))
_DTR_BASES = tuple(base for _, base, _ in _DTR)
_DTR_LIMIT_UPPER = BitRange(16, 31)  # SDM Vol. 3C §28.3.1.3: bits 31:16 of each limit field must be 0
_DTR_LIMIT_UPPER_MASK = _DTR_LIMIT_UPPER.mask


@entry_check("guest.dtr.base_canonical")
def check_guest_dtr_base_canonical(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """The guest GDTR and IDTR base fields each hold a canonical address."""
    return non_canonical(vmcs, caps, _DTR_BASES)


@entry_check("guest.dtr.limit_upper_bits")
def check_guest_dtr_limit_upper_bits(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """Bits 31:16 of the guest GDTR and IDTR limit fields are 0 (the limits are 16 bits)."""
    for register, _, limit in _DTR:
        value = vmcs.get(limit)
        if value & _DTR_LIMIT_UPPER_MASK:
            yield from _clear_bits_problem(limit, value, _DTR_LIMIT_UPPER, f"a {register} limit has 16 bits")


# ----------------------------------------------------------------------------- RIP, RFLAGS, SSP

_GUEST_RIP = VMCS_FIELDS["GUEST_RIP"]
_GUEST_RFLAGS = VMCS_FIELDS["GUEST_RFLAGS"]
_RIP_UPPER = BITS_63_32  # SDM Vol. 3C §28.3.1.4: bits 63:32 must be 0 outside 64-bit mode


@entry_check("guest.rip.upper_bits")
def check_guest_rip_upper_bits(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """Bits 63:32 of the guest RIP field are 0 unless "IA-32e mode guest" and CS.L are both 1."""
    if not is_64bit_guest(vmcs):
        yield from _clear_bits_problem(_GUEST_RIP, vmcs.get(_GUEST_RIP), _RIP_UPPER,
                                       "must be 0 unless 'IA-32e mode guest' and CS.L are 1")


@entry_check("guest.rip.canonical")
def check_guest_rip_canonical(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With "IA-32e mode guest" and CS.L 1, bits 63:N of the guest RIP field are all equal, N being the
    linear-address width (bit N-1 may differ: RIP need not be canonical)."""
    if not is_64bit_guest(vmcs):
        return
    rip, width = vmcs.get(_GUEST_RIP), linear_width(caps)
    if not upper_bits_equal(rip, width):
        yield f"GUEST_RIP = {rip:#x}: bits 63:{width} are not all equal ({width}-bit linear addresses)"


_RFLAGS_DEFINED = sum(b.mask for b in REGISTERS["RFLAGS"].bits)
_RFLAGS_RESERVED = U64 & ~_RFLAGS_DEFINED
_RFLAGS_FIXED1 = reg_bit("RFLAGS", "FIXED1").mask
_RFLAGS_VM = reg_bit("RFLAGS", "VM").mask
_RFLAGS_IF = reg_bit("RFLAGS", "IF").mask
_RFLAGS_IOPL = reg_bit("RFLAGS", "IOPL").bits


@entry_check("guest.rflags.reserved_bits")
def check_guest_rflags_reserved(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """Reserved bits 63:22, 15, 5 and 3 of the RFLAGS field are 0 and reserved bit 1 is 1."""
    rflags = vmcs.get(_GUEST_RFLAGS)
    if rflags & _RFLAGS_RESERVED:
        yield f"GUEST_RFLAGS = {rflags:#x} sets reserved bits {rflags & _RFLAGS_RESERVED:#x}"
    if not rflags & _RFLAGS_FIXED1:
        yield f"GUEST_RFLAGS = {rflags:#x} clears bit 1, which must be 1"


@entry_check("guest.rflags.vm")
def check_guest_rflags_vm(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """The guest RFLAGS field clears VM (bit 17) if "IA-32e mode guest" is 1 or guest CR0.PE is 0."""
    rflags = vmcs.get(_GUEST_RFLAGS)
    if not rflags & _RFLAGS_VM:
        return
    if is_ia32e_guest(vmcs):
        yield f"GUEST_RFLAGS = {rflags:#x} sets VM although 'IA-32e mode guest' is 1"
    if not vmcs.get(_GUEST_CR0) & _CR0_PE:
        yield f"GUEST_RFLAGS = {rflags:#x} sets VM although GUEST_CR0.PE is 0"


_ENTRY_INTR_INFO = VMCS_FIELDS["VM_ENTRY_INTR_INFO_FIELD"]
# The VM-entry interruption-information format (SDM Vol. 3C §26.8.3 "VM-Entry Controls for Event
# Injection"): bit 31 valid, bits 10:8 the event type, type 0 an external interrupt.
# x86/ has no table of this format yet.
_INTR_INFO_VALID = BitRange(31, 31)
_INTR_INFO_TYPE = BitRange(8, 10)
_EXTERNAL_INTERRUPT = 0


@entry_check("guest.rflags.if_for_external_interrupt")
def check_guest_rflags_if_for_external_interrupt(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """The guest RFLAGS field sets IF (bit 9) when VM entry injects an external interrupt (valid, type 0)."""
    info = vmcs.get(_ENTRY_INTR_INFO)
    if _INTR_INFO_VALID.get(info) and _INTR_INFO_TYPE.get(info) == _EXTERNAL_INTERRUPT:
        rflags = vmcs.get(_GUEST_RFLAGS)
        if not rflags & _RFLAGS_IF:
            yield (f"GUEST_RFLAGS = {rflags:#x} clears IF although VM_ENTRY_INTR_INFO_FIELD = {info:#x} "
                   "injects an external interrupt")


_GUEST_SS_AR = VMCS_FIELDS["GUEST_SS_AR_BYTES"]
_USER_PRIVILEGE = 3  # FRED specification: the IOPL rule applies to a guest entered at CPL 3


@entry_check("guest.rflags.fred_iopl")
def check_guest_rflags_fred_iopl(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """When the guest will use FRED transitions ("IA-32e mode guest" 1 and guest CR4.FRED 1) and the
    SS DPL is 3, IOPL (bits 13:12) of the guest RFLAGS field is 0."""
    rflags = vmcs.get(_GUEST_RFLAGS)
    if (_RFLAGS_IOPL.get(rflags) and ia32e_guest_sets_cr4_fred(vmcs)
            and _AR_DPL.get(vmcs.get(_GUEST_SS_AR)) == _USER_PRIVILEGE):
        yield f"GUEST_RFLAGS = {rflags:#x} has IOPL {_RFLAGS_IOPL.get(rflags)} for a FRED guest at SS.DPL 3"


_GUEST_SSP = VMCS_FIELDS["GUEST_SSP"]
_SSP_LOW = ALIGN_4  # SDM Vol. 3C §28.3.1.4: bits 1:0 of the SSP field must be 0


@entry_check("guest.ssp.alignment")
def check_guest_ssp_alignment(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With "load CET state" 1, bits 1:0 of the guest SSP field are 0."""
    if _LOAD_CET_STATE.on(vmcs):
        yield from _clear_bits_problem(_GUEST_SSP, vmcs.get(_GUEST_SSP), _SSP_LOW, "must be 0")


@entry_check("guest.ssp.upper_bits")
def check_guest_ssp_upper_bits(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With "load CET state" 1, bits 63:N of the guest SSP field are all equal, N being the linear-address
    width; SSP need not be canonical, and neither "IA-32e mode guest" nor CS.L matters."""
    if not _LOAD_CET_STATE.on(vmcs):
        return
    ssp, width = vmcs.get(_GUEST_SSP), linear_width(caps)
    if not upper_bits_equal(ssp, width):
        yield f"GUEST_SSP = {ssp:#x}: bits 63:{width} are not all equal ({width}-bit linear addresses)"
