"""Checks on the host-state area: SDM Vol. 3C §28.2.2 "Checks on Host Control Registers, MSRs,
and SSP", §28.2.3 "Checks on Host Segment and Descriptor-Table Registers" and §28.2.4 "Checks
Related to Address-Space Size", plus the host-state rules of the FRED specification and of the
ISE's IA32_SPEC_CTRL virtualization. A violation makes VM entry fail with VMfailValid(8).

MSR formats come from ``spec/x86/``: IA32_EFER from ``registers.toml``; IA32_PAT and its memory
types, IA32_PERF_GLOBAL_CTRL, IA32_S_CET, IA32_PKRS, IA32_FRED_CONFIG and IA32_SPEC_CTRL from
``guest_state.toml`` (whose convention names every reserved bit range ``RESERVED_*``); the segment
selector from ``guest_segments.toml``. "Canonical" is relative to the processor's linear-address
width (``LINEAR_ADDRESS_WIDTH``), except for the host RIP, whose width is that of the paging mode
the host uses after VM exit.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from vtx.bits import BitRange, is_canonical, mask
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
    EFER_FEATURE_BITS,
    EFER_RESERVED,
    PAT_MEMORY_TYPES,
    control_flag,
    fixed_bit_problems,
    is_64bit_host,
    is_ia32e_guest,
    linear_width,
    non_canonical,
    reserved_bits_problem,
    reserved_mask,
    vmcs_fields,
)
from vtx.vmx.vmcs import Vmcs

# ----------------------------------------------------------------------------- shared pieces

_HOST_CR0 = VMCS_FIELDS["HOST_CR0"]
_HOST_CR3 = VMCS_FIELDS["HOST_CR3"]
_HOST_CR4 = VMCS_FIELDS["HOST_CR4"]
_HOST_RIP = VMCS_FIELDS["HOST_RIP"]
_HOST_S_CET = VMCS_FIELDS["HOST_S_CET"]
_HOST_SSP = VMCS_FIELDS["HOST_SSP"]

_LOAD_PERF_GLOBAL_CTRL = control_flag("exit", "load_ia32_perf_global_ctrl")
_LOAD_PAT = control_flag("exit", "load_ia32_pat")
_LOAD_EFER = control_flag("exit", "load_ia32_efer")
_LOAD_CET = control_flag("exit", "load_cet_state")
_LOAD_PKRS = control_flag("exit", "load_pkrs")
_LOAD_FRED = control_flag("exit2", "load_fred")
_LOAD_SPEC_CTRL = control_flag("exit2", "load_host_ia32_spec_ctrl")


def _misaligned(vmcs: Vmcs, fields: Iterable[VmcsField], low_bits: BitRange) -> Iterator[str]:
    """A message for each of ``fields`` that sets one of ``low_bits`` (an alignment rule)."""
    for field in fields:
        value = vmcs.get(field)
        if value & low_bits.mask:
            yield (f"{field.name} = {value:#x} sets bits {low_bits}: it must be "
                   f"{1 << low_bits.width}-byte aligned")


# ----------------------------------------------------------------------------- §28.2.2 CRs, MSRs, SSP


@entry_check("host.cr0.fixed_bits")
def check_host_cr0_fixed_bits(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """The host CR0 field sets no bit to a value not supported in VMX operation (IA32_VMX_CR0_FIXED0/1)."""
    return fixed_bit_problems(_HOST_CR0, "CR0", vmcs.get(_HOST_CR0), caps)


@entry_check("host.cr4.fixed_bits")
def check_host_cr4_fixed_bits(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """The host CR4 field sets no bit to a value not supported in VMX operation (IA32_VMX_CR4_FIXED0/1)."""
    return fixed_bit_problems(_HOST_CR4, "CR4", vmcs.get(_HOST_CR4), caps)


_CR4_CET = reg_bit("CR4", "CET")
_CR0_WP = reg_bit("CR0", "WP")
_CR4_CET_MASK, _CR0_WP_MASK = _CR4_CET.mask, _CR0_WP.mask


@entry_check("host.cr4.cet_needs_wp")
def check_host_cr4_cet_needs_wp(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """If the host CR4 field sets CET, the host CR0 field sets WP."""
    cr4 = vmcs.get(_HOST_CR4)
    if cr4 & _CR4_CET_MASK:
        cr0 = vmcs.get(_HOST_CR0)
        if not cr0 & _CR0_WP_MASK:
            yield (f"HOST_CR4 = {cr4:#x} sets CET (bit {_CR4_CET.bits}) but HOST_CR0 = {cr0:#x} "
                   f"clears WP (bit {_CR0_WP.bits})")


_CR3_LAM_MASK = CR3_LAM.mask


@entry_check("host.cr3.address_width")
def check_host_cr3_address_width(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """The host CR3 field sets no bit at or above the physical-address width, except bits 62:61
    (LAM_U48, LAM_U57) on processors that support linear-address masking."""
    cr3 = vmcs.get(_HOST_CR3)
    width = caps.require_fact("MAXPHYADDR")
    beyond = cr3 >> width << width
    if beyond & ~_CR3_LAM_MASK:
        yield (f"HOST_CR3 = {cr3:#x} sets bits {beyond & ~_CR3_LAM_MASK:#x} at or above the "
               f"physical-address width ({width} bits)")
    elif beyond and not caps.require_fact("CPUID_LAM"):
        yield (f"HOST_CR3 = {cr3:#x} sets the LAM bits {beyond:#x} (bits {CR3_LAM}) on a processor "
               "without linear-address masking")


_HOST_SYSENTER = vmcs_fields("HOST_IA32_SYSENTER_ESP", "HOST_IA32_SYSENTER_EIP")


@entry_check("host.sysenter.canonical")
def check_host_sysenter_canonical(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """The host IA32_SYSENTER_ESP and IA32_SYSENTER_EIP fields each hold a canonical address."""
    return non_canonical(vmcs, caps, _HOST_SYSENTER)


_HOST_CET_ADDRESSES = vmcs_fields("HOST_S_CET", "HOST_INTR_SSP_TABLE")


@entry_check("host.cet.canonical")
def check_host_cet_canonical(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """If 'load CET state' is 1, the host IA32_S_CET and IA32_INTERRUPT_SSP_TABLE_ADDR fields each
    hold a canonical address."""
    if _LOAD_CET.on(vmcs):
        yield from non_canonical(vmcs, caps, _HOST_CET_ADDRESSES)


_HOST_PERF_GLOBAL_CTRL = VMCS_FIELDS["HOST_IA32_PERF_GLOBAL_CTRL"]
_EN_PMC = reg_bit("IA32_PERF_GLOBAL_CTRL", "EN_PMC").bits
_EN_FIXED_CTR = reg_bit("IA32_PERF_GLOBAL_CTRL", "EN_FIXED_CTR").bits
_EN_PERF_METRICS = reg_bit("IA32_PERF_GLOBAL_CTRL", "EN_PERF_METRICS").mask


@entry_check("host.perf_global_ctrl.reserved_bits")
def check_host_perf_global_ctrl_reserved_bits(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """If 'load IA32_PERF_GLOBAL_CTRL' is 1, the host IA32_PERF_GLOBAL_CTRL field enables only
    counters the PMU has (CPUID leaf 0AH) and sets no reserved bit."""
    if not _LOAD_PERF_GLOBAL_CTRL.on(vmcs):
        return
    value = vmcs.get(_HOST_PERF_GLOBAL_CTRL)
    gp, fixed = caps.require_fact("PMU_GP_COUNTERS"), caps.require_fact("PMU_FIXED_COUNTERS")
    counters = mask(min(gp, _EN_PMC.width)) << _EN_PMC.lo | mask(min(fixed, _EN_FIXED_CTR.width)) << _EN_FIXED_CTR.lo
    reserved = value & ~(counters | _EN_PERF_METRICS)
    if reserved:
        yield (f"HOST_IA32_PERF_GLOBAL_CTRL = {value:#x} sets bits {reserved:#x}, reserved with {gp} "
               f"general-purpose and {fixed} fixed-function counters")
    elif value & _EN_PERF_METRICS:
        raise NotEvaluable("HOST_IA32_PERF_GLOBAL_CTRL", hex(value),
                           "EN_PERF_METRICS (bit 48) exists only where IA32_PERF_CAPABILITIES[15] enumerates "
                           "PERF_METRICS, which the profile does not say")


_HOST_PAT = VMCS_FIELDS["HOST_IA32_PAT"]
_PAT_ENTRIES = tuple(REGISTERS["IA32_PAT"].bits)
_PAT_TYPE_LIST = ", ".join(f"{v} ({n})" for v, n in sorted(PAT_MEMORY_TYPES.items()))


@entry_check("host.pat.valid")
def check_host_pat_valid(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """If 'load IA32_PAT' is 1, each of the eight entries of the host IA32_PAT field holds a memory
    type the PAT can encode (UC, WC, WT, WP, WB or UC-)."""
    if not _LOAD_PAT.on(vmcs):
        return
    pat = vmcs.get(_HOST_PAT)
    bad = [f"{e.name} = {e.bits.get(pat):#x}" for e in _PAT_ENTRIES if e.bits.get(pat) not in PAT_MEMORY_TYPES]
    if bad:
        yield f"HOST_IA32_PAT = {pat:#018x}: {', '.join(bad)} not a PAT memory type ({_PAT_TYPE_LIST})"


_HOST_EFER = VMCS_FIELDS["HOST_IA32_EFER"]
_EFER_LMA = reg_bit("IA32_EFER", "LMA")
_EFER_LME = reg_bit("IA32_EFER", "LME")


@entry_check("host.efer.reserved_bits")
def check_host_efer_reserved_bits(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """If 'load IA32_EFER' is 1, the host IA32_EFER field sets no reserved bit: none outside SCE,
    LME, LMA and NXE, no LME/LMA without Intel 64 support and no NXE without execute-disable."""
    if not _LOAD_EFER.on(vmcs):
        return
    efer = vmcs.get(_HOST_EFER)
    if efer & EFER_RESERVED:
        yield f"HOST_IA32_EFER = {efer:#x} sets reserved bits {efer & EFER_RESERVED:#x}"
        return
    for bits, fact, name in EFER_FEATURE_BITS:
        if efer & bits and not caps.require_fact(fact):
            yield f"HOST_IA32_EFER = {efer:#x} sets {name}, reserved on a processor without {fact}"


@entry_check("host.efer.lma_lme")
def check_host_efer_lma_lme(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """If 'load IA32_EFER' is 1, LMA and LME of the host IA32_EFER field each equal the 'host
    address-space size' VM-exit control."""
    if not _LOAD_EFER.on(vmcs):
        return
    efer, host_64 = vmcs.get(_HOST_EFER), is_64bit_host(vmcs)
    for bit in (_EFER_LMA, _EFER_LME):
        if bool(efer & bit.mask) != host_64:
            yield (f"HOST_IA32_EFER = {efer:#x}: {bit.name} (bit {bit.bits}) is {int(not host_64)} but the "
                   f"'host address-space size' VM-exit control is {int(host_64)}")


_S_CET_RESERVED = reserved_mask("IA32_S_CET")
_S_CET_SUPPRESS = reg_bit("IA32_S_CET", "SUPPRESS")
_S_CET_TRACKER = reg_bit("IA32_S_CET", "TRACKER")


@entry_check("host.cet.s_cet_reserved_bits")
def check_host_s_cet_reserved_bits(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """If 'load CET state' is 1, the host IA32_S_CET field sets no reserved bit (9:6) and does not
    set both SUPPRESS and TRACKER."""
    if not _LOAD_CET.on(vmcs):
        return
    s_cet = vmcs.get(_HOST_S_CET)
    yield from reserved_bits_problem(_HOST_S_CET, s_cet, _S_CET_RESERVED, "IA32_S_CET")
    if s_cet & _S_CET_SUPPRESS.mask and s_cet & _S_CET_TRACKER.mask:
        yield (f"HOST_S_CET = {s_cet:#x} sets both SUPPRESS (bit {_S_CET_SUPPRESS.bits}) and "
               f"TRACKER (bit {_S_CET_TRACKER.bits})")


@entry_check("host.cet.ssp_alignment")
def check_host_ssp_alignment(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """If 'load CET state' is 1, bits 1:0 of the host SSP field are 0."""
    if _LOAD_CET.on(vmcs):
        yield from _misaligned(vmcs, (_HOST_SSP,), ALIGN_4)


_HOST_PKRS = VMCS_FIELDS["HOST_IA32_PKRS"]
_PKRS_RESERVED = reserved_mask("IA32_PKRS")


@entry_check("host.pkrs.reserved_bits")
def check_host_pkrs_reserved_bits(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """If 'load PKRS' is 1, bits 63:32 of the host IA32_PKRS field are 0."""
    if _LOAD_PKRS.on(vmcs):
        yield from reserved_bits_problem(_HOST_PKRS, vmcs.get(_HOST_PKRS), _PKRS_RESERVED, "IA32_PKRS")


def _loads_fred_for_64bit_host(vmcs: Vmcs) -> bool:
    """The FRED host-state rules apply: 'load FRED' and 'host address-space size' are both 1."""
    return is_64bit_host(vmcs) and _LOAD_FRED.on(vmcs)


_HOST_FRED_CONFIG = VMCS_FIELDS["HOST_IA32_FRED_CONFIG"]
_FRED_CONFIG_RESERVED = reserved_mask("IA32_FRED_CONFIG")
_FRED_ENTRYPOINT = reg_bit("IA32_FRED_CONFIG", "ENTRYPOINT")


@entry_check("host.fred.config")
def check_host_fred_config(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """If 'load FRED' and 'host address-space size' are 1, the host IA32_FRED_CONFIG field sets no
    reserved bit (2, 5:4, 11) and its entry point (bits 63:12) is canonical."""
    if not _loads_fred_for_64bit_host(vmcs):
        return
    config = vmcs.get(_HOST_FRED_CONFIG)
    yield from reserved_bits_problem(_HOST_FRED_CONFIG, config, _FRED_CONFIG_RESERVED, "IA32_FRED_CONFIG")
    width = linear_width(caps)
    if not is_canonical(config & _FRED_ENTRYPOINT.mask, width):
        yield (f"HOST_IA32_FRED_CONFIG = {config:#x}: the entry point (bits {_FRED_ENTRYPOINT.bits}) is not "
               f"canonical ({width}-bit linear addresses)")


_HOST_FRED_RSPS = vmcs_fields("HOST_IA32_FRED_RSP1", "HOST_IA32_FRED_RSP2", "HOST_IA32_FRED_RSP3")


@entry_check("host.fred.rsp")
def check_host_fred_rsp(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """If 'load FRED' and 'host address-space size' are 1, each host IA32_FRED_RSPi field (i = 1-3)
    is 64-byte aligned and canonical."""
    if _loads_fred_for_64bit_host(vmcs):
        yield from _misaligned(vmcs, _HOST_FRED_RSPS, ALIGN_64)
        yield from non_canonical(vmcs, caps, _HOST_FRED_RSPS)


_HOST_FRED_SSPS = vmcs_fields("HOST_IA32_FRED_SSP1", "HOST_IA32_FRED_SSP2", "HOST_IA32_FRED_SSP3")


@entry_check("host.fred.ssp")
def check_host_fred_ssp(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """If 'load FRED' and 'host address-space size' are 1, each host IA32_FRED_SSPi field (i = 1-3)
    is 8-byte aligned and canonical."""
    if _loads_fred_for_64bit_host(vmcs):
        yield from _misaligned(vmcs, _HOST_FRED_SSPS, ALIGN_8)
        yield from non_canonical(vmcs, caps, _HOST_FRED_SSPS)


_HOST_SPEC_CTRL = VMCS_FIELDS["HOST_IA32_SPEC_CTRL"]
_SPEC_CTRL_RESERVED = reserved_mask("IA32_SPEC_CTRL")


@entry_check("host.spec_ctrl.reserved_bits")
def check_host_spec_ctrl_reserved_bits(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """If 'load host IA32_SPEC_CTRL' is 1, the host IA32_SPEC_CTRL field sets no reserved bit."""
    if _LOAD_SPEC_CTRL.on(vmcs):
        yield from reserved_bits_problem(_HOST_SPEC_CTRL, vmcs.get(_HOST_SPEC_CTRL), _SPEC_CTRL_RESERVED,
                                      "IA32_SPEC_CTRL")


# ----------------------------------------------------------------------------- §28.2.3 segment and table registers

_HOST_SELECTORS = {reg: VMCS_FIELDS[f"HOST_{reg}_SELECTOR"] for reg in ("ES", "CS", "SS", "DS", "FS", "GS", "TR")}
_HOST_SELECTOR_FIELDS = tuple(_HOST_SELECTORS.values())
_RPL = reg_bit("SEGMENT_SELECTOR", "RPL")
_TI = reg_bit("SEGMENT_SELECTOR", "TI")
_RPL_TI = _RPL.mask | _TI.mask


@entry_check("host.selectors.rpl_ti")
def check_host_selectors_rpl_ti(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """In the host ES, CS, SS, DS, FS, GS and TR selector fields, RPL and TI are 0."""
    for field, selector in zip(_HOST_SELECTOR_FIELDS, map(vmcs.get, _HOST_SELECTOR_FIELDS), strict=True):
        if selector & _RPL_TI:
            yield (f"{field.name} = {selector:#06x} has RPL {_RPL.bits.get(selector)} and TI "
                   f"{_TI.bits.get(selector)}; both must be 0")


def _null_selectors(vmcs: Vmcs, registers: Iterable[str]) -> Iterator[str]:
    for reg in registers:
        if vmcs.get(_HOST_SELECTORS[reg]) == 0:
            yield f"{_HOST_SELECTORS[reg].name} is 0000H (null)"


@entry_check("host.selectors.cs_tr_nonnull")
def check_host_selectors_cs_tr_nonnull(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """The host CS and TR selector fields are not 0000H."""
    return _null_selectors(vmcs, ("CS", "TR"))


@entry_check("host.selectors.ss_nonnull")
def check_host_selectors_ss_nonnull(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """If 'host address-space size' is 0, the host SS selector field is not 0000H."""
    if not is_64bit_host(vmcs):
        yield from (f"{message} while the 'host address-space size' VM-exit control is 0"
                    for message in _null_selectors(vmcs, ("SS",)))


_HOST_BASES = vmcs_fields("HOST_FS_BASE", "HOST_GS_BASE", "HOST_GDTR_BASE", "HOST_IDTR_BASE", "HOST_TR_BASE")


@entry_check("host.bases.canonical")
def check_host_bases_canonical(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """The host FS, GS, GDTR, IDTR and TR base-address fields each hold a canonical address."""
    return non_canonical(vmcs, caps, _HOST_BASES)


# ----------------------------------------------------------------------------- §28.2.4 address-space size


@entry_check("address_space.vmm_outside_ia32e")
def check_vmm_outside_ia32e(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """A VMM outside IA-32e mode sets neither 'IA-32e mode guest' nor 'host address-space size'."""
    if ctx.vmm_ia32e_mode:
        return
    if is_ia32e_guest(vmcs):
        yield "the 'IA-32e mode guest' VM-entry control is 1 but the VMM is outside IA-32e mode"
    if is_64bit_host(vmcs):
        yield "the 'host address-space size' VM-exit control is 1 but the VMM is outside IA-32e mode"


@entry_check("address_space.vmm_in_ia32e")
def check_vmm_in_ia32e(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """A VMM in IA-32e mode sets 'host address-space size'."""
    if ctx.vmm_ia32e_mode and not is_64bit_host(vmcs):
        yield "the 'host address-space size' VM-exit control is 0 but the VMM is in IA-32e mode"


@entry_check("address_space.host_32bit.no_ia32e_guest")
def check_host_32bit_no_ia32e_guest(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """If 'host address-space size' is 0, 'IA-32e mode guest' is 0."""
    if not is_64bit_host(vmcs) and is_ia32e_guest(vmcs):
        yield "the 'IA-32e mode guest' VM-entry control is 1 but the 'host address-space size' VM-exit control is 0"


def _host_cr4_bit_problem(vmcs: Vmcs, name: str, bit: BitRange, *, required: bool) -> Iterator[str]:
    """A message if host CR4 bit ``bit`` is not ``required`` under the host address-space size."""
    cr4 = vmcs.get(_HOST_CR4)
    if bool(cr4 & bit.mask) != required:
        size = int(is_64bit_host(vmcs))
        yield (f"HOST_CR4 = {cr4:#x} {'clears' if required else 'sets'} {name} (bit {bit}) while the "
               f"'host address-space size' VM-exit control is {size}")


_CR4_PCIDE = reg_bit("CR4", "PCIDE").bits
_CR4_FRED = reg_bit("CR4", "FRED").bits


@entry_check("address_space.host_32bit.cr4_pcide")
def check_host_32bit_cr4_pcide(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """If 'host address-space size' is 0, the host CR4 field clears PCIDE."""
    if not is_64bit_host(vmcs):
        yield from _host_cr4_bit_problem(vmcs, "PCIDE", _CR4_PCIDE, required=False)


@entry_check("address_space.host_32bit.cr4_fred")
def check_host_32bit_cr4_fred(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """If 'host address-space size' is 0, the host CR4 field clears FRED (bit 32)."""
    if not is_64bit_host(vmcs):
        yield from _host_cr4_bit_problem(vmcs, "FRED", _CR4_FRED, required=False)


_BITS_63_32_MASK = BITS_63_32.mask


def _upper_bits_set(vmcs: Vmcs, fields: Iterable[VmcsField]) -> Iterator[str]:
    for field in fields:
        value = vmcs.get(field)
        if value & _BITS_63_32_MASK:
            yield (f"{field.name} = {value:#x} sets bits {BITS_63_32} while the 'host address-space size' "
                   "VM-exit control is 0")


@entry_check("address_space.host_32bit.rip_upper_bits")
def check_host_32bit_rip_upper_bits(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """If 'host address-space size' is 0, bits 63:32 of the host RIP field are 0."""
    if not is_64bit_host(vmcs):
        yield from _upper_bits_set(vmcs, (_HOST_RIP,))


@entry_check("address_space.host_32bit.cet_upper_bits")
def check_host_32bit_cet_upper_bits(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """If 'host address-space size' is 0 and 'load CET state' is 1, bits 63:32 of the host
    IA32_S_CET and SSP fields are 0."""
    if not is_64bit_host(vmcs) and _LOAD_CET.on(vmcs):
        yield from _upper_bits_set(vmcs, (_HOST_S_CET, _HOST_SSP))


_CR4_PAE = reg_bit("CR4", "PAE").bits
_CR4_LA57 = reg_bit("CR4", "LA57").mask
_PAGING_LINEAR_WIDTH = {False: 48, True: 57}
"""Linear-address width of 4-level (CR4.LA57 = 0) and 5-level (CR4.LA57 = 1) paging (SDM Vol. 3A
"4-Level Paging and 5-Level Paging"), which rule address_space.host_64bit.rip_canonical uses."""


@entry_check("address_space.host_64bit.cr4_pae")
def check_host_64bit_cr4_pae(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """If 'host address-space size' is 1, the host CR4 field sets PAE."""
    if is_64bit_host(vmcs):
        yield from _host_cr4_bit_problem(vmcs, "PAE", _CR4_PAE, required=True)


@entry_check("address_space.host_64bit.rip_canonical")
def check_host_64bit_rip_canonical(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """If 'host address-space size' is 1, the host RIP field is canonical for the paging mode the host
    uses after VM exit: 57 bits if the host CR4 field sets LA57, 48 bits otherwise."""
    if not is_64bit_host(vmcs):
        return
    rip, la57 = vmcs.get(_HOST_RIP), bool(vmcs.get(_HOST_CR4) & _CR4_LA57)
    width = _PAGING_LINEAR_WIDTH[la57]
    if not is_canonical(rip, width):
        yield f"HOST_RIP = {rip:#x} is not canonical for {width}-bit linear addresses (host CR4.LA57 = {int(la57)})"


@entry_check("address_space.host_64bit.ssp_canonical")
def check_host_64bit_ssp_canonical(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """If 'host address-space size' and 'load CET state' are 1, the host SSP field is canonical."""
    if is_64bit_host(vmcs) and _LOAD_CET.on(vmcs):
        yield from non_canonical(vmcs, caps, (_HOST_SSP,))
