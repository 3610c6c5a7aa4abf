"""Checks on the guest segment registers (SDM Vol. 3C §28.3.1.2 "Checks on Guest Segment Registers");
a violation is a VM-entry failure with exit reason 33."""

from __future__ import annotations

from collections.abc import Iterator

import attrs

from vtx.bits import BitRange, mask
from vtx.spec import VMCS_FIELDS, VmcsField, reg_bit
from vtx.vmx.capabilities import Capabilities
from vtx.vmx.entry import EntryContext, entry_check
from vtx.vmx.entry.common import (
    BITS_63_32,
    bit_field_reader,
    canonical_problem,
    cpuid_support,
    ia32e_guest_sets_cr4_fred,
    is_ia32e_guest,
    is_unrestricted_guest,
    linear_width,
    non_canonical,
    of_last_vmcs,
)
from vtx.vmx.vmcs import Vmcs


@attrs.frozen
class _Segment:
    """The four guest-state fields of one segment register."""

    name: str
    selector: VmcsField
    base: VmcsField
    limit: VmcsField
    access_rights: VmcsField


def _segment(name: str) -> _Segment:
    return _Segment(name, *(VMCS_FIELDS[f"GUEST_{name}_{part}"] for part in ("SELECTOR", "BASE", "LIMIT", "AR_BYTES")))


_ES, _CS, _SS, _DS, _FS, _GS, _TR, _LDTR = map(_segment, ("ES", "CS", "SS", "DS", "FS", "GS", "TR", "LDTR"))
_CODE_DATA = (_ES, _CS, _SS, _DS, _FS, _GS)
_CODE_DATA_AR = tuple(seg.access_rights for seg in _CODE_DATA)
_DATA = (_DS, _ES, _FS, _GS)
_TR_FS_GS_BASES = (_TR.base, _FS.base, _GS.base)

_RFLAGS = VMCS_FIELDS["GUEST_RFLAGS"]
_CR0 = VMCS_FIELDS["GUEST_CR0"]

_RFLAGS_VM = reg_bit("RFLAGS", "VM").mask
_CR0_PE = reg_bit("CR0", "PE").mask

# Selector and access-rights formats (SDM Vol. 3A §3.4.2; Vol. 3C §26.4.1 "Guest Register State").
_SEL_RPL = reg_bit("SEGMENT_SELECTOR", "RPL").bits
_SEL_TI = reg_bit("SEGMENT_SELECTOR", "TI").mask
_AR_TYPE = reg_bit("VMCS_ACCESS_RIGHTS", "TYPE").bits
_AR_S = reg_bit("VMCS_ACCESS_RIGHTS", "S").mask
_AR_DPL = reg_bit("VMCS_ACCESS_RIGHTS", "DPL").bits
_AR_P = reg_bit("VMCS_ACCESS_RIGHTS", "P").mask
_AR_L = reg_bit("VMCS_ACCESS_RIGHTS", "L").mask
_AR_DB = reg_bit("VMCS_ACCESS_RIGHTS", "DB").mask
_AR_G = reg_bit("VMCS_ACCESS_RIGHTS", "G").mask
_AR_UNUSABLE = reg_bit("VMCS_ACCESS_RIGHTS", "UNUSABLE").mask
_DPL_USER = mask(_AR_DPL.width)  # privilege level 3, the largest a DPL holds
_AR_RESERVED = reg_bit("VMCS_ACCESS_RIGHTS", "RESERVED_11_8").mask | reg_bit("VMCS_ACCESS_RIGHTS",
                                                                             "RESERVED_31_17").mask

# Code- and data-segment types (SDM Vol. 3A §3.4.5.1).
_TYPE_A = reg_bit("SEGMENT_TYPE", "A").mask
_TYPE_W_R = reg_bit("SEGMENT_TYPE", "W_R").mask
_TYPE_E_C = reg_bit("SEGMENT_TYPE", "E_C").mask
_TYPE_CODE = reg_bit("SEGMENT_TYPE", "CODE").mask
_DATA_RW_ACCESSED = _TYPE_W_R | _TYPE_A                                    # 3: read/write, accessed, expand-up
_SS_TYPES = frozenset({_DATA_RW_ACCESSED, _DATA_RW_ACCESSED | _TYPE_E_C})  # 3, 7
_NONCONFORMING_CODE = frozenset({_TYPE_CODE | _TYPE_A, _TYPE_CODE | _TYPE_W_R | _TYPE_A})  # 9, 11
_CONFORMING_CODE = frozenset(t | _TYPE_E_C for t in _NONCONFORMING_CODE)                 # 13, 15
_ACCESSED_CODE = _NONCONFORMING_CODE | _CONFORMING_CODE

# System-segment types (SDM Vol. 3A §3.5 "System Descriptor Types", Table 3-2), as §28.3.1.2 names them.
_LDT = 2
_BUSY_TSS_16 = 3
_BUSY_TSS_32_64 = 11

# Architectural constants of the virtual-8086 rules: base = selector << 4, limit 0000FFFFH and access
# rights 000000F3H (accessed read/write expand-up data, S = 1, DPL = 3, P = 1).
_V8086_BASE_SHIFT = 4
_V8086_LIMIT = mask(16)
_V8086_AR = _AR_TYPE.put(0, _DATA_RW_ACCESSED) | _AR_S | _AR_DPL.put(0, _DPL_USER) | _AR_P
# The granularity rule reads limit bits 11:0 (any 0 needs G = 0) and 31:20 (any 1 needs G = 1).
_LIMIT_LOW = BitRange(0, 11).mask
_LIMIT_HIGH = BitRange(20, 31).mask
# The CS, SS, DS and ES bases must have bits 63:32 clear.
_BASE_UPPER = BITS_63_32.mask


def _fmt_types(types: frozenset[int]) -> str:
    *rest, last = sorted(types)
    return f"{', '.join(map(str, rest))} or {last}"


_CS_TYPES_TEXT = _fmt_types(_ACCESSED_CODE)
_CS_TYPES_UNRESTRICTED_TEXT = _fmt_types(_ACCESSED_CODE | {_DATA_RW_ACCESSED})
_SS_TYPES_TEXT = _fmt_types(_SS_TYPES)


# ----------------------------------------------------------------------------- conditions


def _is_v8086(vmcs: Vmcs) -> bool:
    """The guest will be virtual-8086: RFLAGS.VM is 1 in the guest RFLAGS field."""
    return bool(vmcs.get(_RFLAGS) & _RFLAGS_VM)


def _is_usable(access_rights: int) -> bool:
    return not access_rights & _AR_UNUSABLE


_dpl = bit_field_reader(_AR_DPL)
_rpl = bit_field_reader(_SEL_RPL)
_type = bit_field_reader(_AR_TYPE)


@of_last_vmcs
def _code_data_to_check(vmcs: Vmcs) -> tuple[tuple[_Segment, int], ...]:
    """CS and each usable SS, DS, ES, FS and GS with its access rights, when the guest will not be
    virtual-8086 (the registers the sub-field rules of the access rights apply to)."""
    if _is_v8086(vmcs):
        return ()
    return tuple((seg, ar) for seg, ar in zip(_CODE_DATA, map(vmcs.get, _CODE_DATA_AR), strict=True)
                 if seg is _CS or not ar & _AR_UNUSABLE)


def _usable_ldtr(vmcs: Vmcs) -> int | None:
    """The LDTR access rights if LDTR is usable, else None (the LDTR rules then do not apply)."""
    ar = vmcs.get(_LDTR.access_rights)
    return ar if _is_usable(ar) else None


def _fred_applies(vmcs: Vmcs, caps: Capabilities) -> bool:
    """The guest will not be virtual-8086 and will use FRED transitions ('IA-32e mode guest' 1 and
    guest CR4.FRED 1) on a processor that supports FRED (elsewhere CR4.FRED is reserved)."""
    if _is_v8086(vmcs) or not ia32e_guest_sets_cr4_fred(vmcs):
        return False
    return cpuid_support(caps, "CPUID_FRED", f"capabilities {caps.name!r}",
                         "the FRED checks on SS apply only if the processor supports FRED")


# ----------------------------------------------------------------------------- shared rule shapes


def _ar_text(seg: _Segment, ar: int) -> str:
    return f"{seg.access_rights.name} = {ar:#x}"


# Each rule shape below is a test (True when the rule holds) and the message of a violation, built only then.


def _s_problem(seg: _Segment, ar: int, *, system: bool) -> str:
    if system:
        return f"{_ar_text(seg, ar)} sets S (bit 4); {seg.name} must describe a system segment"
    return f"{_ar_text(seg, ar)} clears S (bit 4); {seg.name} must describe a code or data segment"


def _present_problem(seg: _Segment, ar: int) -> str:
    return f"{_ar_text(seg, ar)} clears P (bit 7); {seg.name} must be present"


def _reserved_problem(seg: _Segment, ar: int) -> str:
    return f"{_ar_text(seg, ar)} sets reserved bits {ar & _AR_RESERVED:#x} (bits 11:8 and 31:17 must be 0)"


def _granularity_holds(limit: int, ar: int) -> bool:
    """A 0 in limit bits 11:0 needs G = 0; a 1 in limit bits 31:20 needs G = 1."""
    if ar & _AR_G:
        return limit & _LIMIT_LOW == _LIMIT_LOW
    return not limit & _LIMIT_HIGH


def _granularity_problem(seg: _Segment, limit: int, ar: int) -> str:
    if ar & _AR_G:
        return (f"{_ar_text(seg, ar)} sets G (bit 15) but {seg.limit.name} = {limit:#x} has a 0 in bits 11:0, "
                "which needs G = 0")
    return (f"{_ar_text(seg, ar)} clears G (bit 15) but {seg.limit.name} = {limit:#x} has a 1 in bits 31:20, "
            "which needs G = 1")


def _selector_ti_problem(seg: _Segment, selector: int) -> str:
    return f"{seg.selector.name} = {selector:#x} sets TI (bit 2); {seg.name} must select a GDT descriptor"


def _upper_bits_problem(seg: _Segment, base: int) -> str:
    return f"{seg.base.name} = {base:#x} sets bits in 63:32, which must be 0"


# ----------------------------------------------------------------------------- selectors


@entry_check("guest.segments.tr_selector_ti")
def check_tr_selector_ti(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """The TI flag (bit 2) of the guest TR selector is 0."""
    selector = vmcs.get(_TR.selector)
    if selector & _SEL_TI:
        yield _selector_ti_problem(_TR, selector)


@entry_check("guest.segments.ldtr_selector_ti")
def check_ldtr_selector_ti(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """If LDTR is usable, the TI flag (bit 2) of the guest LDTR selector is 0."""
    if _usable_ldtr(vmcs) is not None and (selector := vmcs.get(_LDTR.selector)) & _SEL_TI:
        yield _selector_ti_problem(_LDTR, selector)


@entry_check("guest.segments.ss_rpl_equals_cs_rpl")
def check_ss_rpl_equals_cs_rpl(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """Unless the guest will be virtual-8086 or 'unrestricted guest' is 1, the RPL of the SS selector
    equals the RPL of the CS selector."""
    if _is_v8086(vmcs) or is_unrestricted_guest(vmcs):
        return
    ss, cs = vmcs.get(_SS.selector), vmcs.get(_CS.selector)
    if _rpl(ss) != _rpl(cs):
        yield (f"GUEST_SS_SELECTOR = {ss:#x} has RPL {_rpl(ss)} but GUEST_CS_SELECTOR = {cs:#x} has RPL {_rpl(cs)}; "
               "they must be equal")


# ----------------------------------------------------------------------------- bases


@entry_check("guest.segments.v8086_base")
def check_v8086_base(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """If the guest will be virtual-8086, each of the CS, SS, DS, ES, FS and GS bases is its selector
    shifted left by 4 bits."""
    if not _is_v8086(vmcs):
        return
    for seg in _CODE_DATA:
        selector, base = vmcs.get(seg.selector), vmcs.get(seg.base)
        if base != selector << _V8086_BASE_SHIFT:
            yield (f"{seg.base.name} = {base:#x}, but a virtual-8086 guest needs {seg.selector.name} = {selector:#x} "
                   f"shifted left by 4 ({selector << _V8086_BASE_SHIFT:#x})")


@entry_check("guest.segments.tr_fs_gs_base_canonical")
def check_tr_fs_gs_base_canonical(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """The TR, FS and GS bases are canonical."""
    return non_canonical(vmcs, caps, _TR_FS_GS_BASES)


@entry_check("guest.segments.ldtr_base_canonical")
def check_ldtr_base_canonical(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """If LDTR is usable, its base is canonical."""
    if _usable_ldtr(vmcs) is not None:
        yield from canonical_problem(_LDTR.base.name, vmcs.get(_LDTR.base), linear_width(caps))


@entry_check("guest.segments.cs_base_upper_bits")
def check_cs_base_upper_bits(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """Bits 63:32 of the CS base are 0."""
    base = vmcs.get(_CS.base)
    if base & _BASE_UPPER:
        yield _upper_bits_problem(_CS, base)


@entry_check("guest.segments.ss_ds_es_base_upper_bits")
def check_ss_ds_es_base_upper_bits(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """Bits 63:32 of the SS, DS and ES bases are 0, for each of them that is usable."""
    for seg in (_SS, _DS, _ES):
        if _is_usable(vmcs.get(seg.access_rights)) and (base := vmcs.get(seg.base)) & _BASE_UPPER:
            yield _upper_bits_problem(seg, base)


# ----------------------------------------------------------------------------- limits


@entry_check("guest.segments.v8086_limit")
def check_v8086_limit(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """If the guest will be virtual-8086, each of the CS, SS, DS, ES, FS and GS limits is 0000FFFFH."""
    if not _is_v8086(vmcs):
        return
    for seg in _CODE_DATA:
        limit = vmcs.get(seg.limit)
        if limit != _V8086_LIMIT:
            yield f"{seg.limit.name} = {limit:#x}, but a virtual-8086 guest needs {_V8086_LIMIT:#x}"


# ----------------------------------------------------------------------------- access rights: CS, SS, DS, ES, FS, GS


@entry_check("guest.segments.v8086_access_rights")
def check_v8086_access_rights(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """If the guest will be virtual-8086, each of the CS, SS, DS, ES, FS and GS access rights is 000000F3H."""
    if not _is_v8086(vmcs):
        return
    for seg in _CODE_DATA:
        ar = vmcs.get(seg.access_rights)
        if ar != _V8086_AR:
            yield f"{_ar_text(seg, ar)}, but a virtual-8086 guest needs {_V8086_AR:#x}"


@entry_check("guest.segments.cs_type")
def check_cs_type(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """Unless the guest will be virtual-8086, the CS type is an accessed code segment (9, 11, 13 or 15),
    or, with 'unrestricted guest' 1, also 3 (accessed read/write expand-up data)."""
    if _is_v8086(vmcs):
        return
    ar = vmcs.get(_CS.access_rights)
    cs_type = _type(ar)
    if cs_type in _ACCESSED_CODE:
        return
    if is_unrestricted_guest(vmcs):
        if cs_type != _DATA_RW_ACCESSED:
            yield (f"{_ar_text(_CS, ar)} has type {cs_type}; with 'unrestricted guest' CS needs "
                   f"{_CS_TYPES_UNRESTRICTED_TEXT}")
    else:
        yield f"{_ar_text(_CS, ar)} has type {cs_type}; CS needs {_CS_TYPES_TEXT} (3 only with 'unrestricted guest')"


@entry_check("guest.segments.ss_type")
def check_ss_type(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """Unless the guest will be virtual-8086, a usable SS has type 3 or 7 (accessed read/write data)."""
    if _is_v8086(vmcs):
        return
    ar = vmcs.get(_SS.access_rights)
    if _is_usable(ar) and _type(ar) not in _SS_TYPES:
        yield f"{_ar_text(_SS, ar)} has type {_type(ar)}; a usable SS needs {_SS_TYPES_TEXT}"


@entry_check("guest.segments.data_type")
def check_data_type(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """Unless the guest will be virtual-8086, each usable DS, ES, FS and GS is accessed (type bit 0),
    and readable (type bit 1) if it is a code segment (type bit 3)."""
    if _is_v8086(vmcs):
        return
    for seg in _DATA:
        ar = vmcs.get(seg.access_rights)
        if not _is_usable(ar):
            continue
        seg_type = _type(ar)
        if not seg_type & _TYPE_A:
            yield f"{_ar_text(seg, ar)} has type {seg_type}, not accessed (type bit 0 must be 1)"
        if seg_type & _TYPE_CODE and not seg_type & _TYPE_W_R:
            yield f"{_ar_text(seg, ar)} has type {seg_type}, an execute-only code segment (type bit 1 must be 1)"


@entry_check("guest.segments.s_bit")
def check_s_bit(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """Unless the guest will be virtual-8086, S (bit 4) is 1 for CS and each usable SS, DS, ES, FS and GS."""
    for seg, ar in _code_data_to_check(vmcs):
        if not ar & _AR_S:
            yield _s_problem(seg, ar, system=False)


@entry_check("guest.segments.cs_dpl")
def check_cs_dpl(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """Unless the guest will be virtual-8086, the CS DPL fits its type: 0 for type 3, the SS DPL for
    non-conforming code (9, 11), at most the SS DPL for conforming code (13, 15)."""
    if _is_v8086(vmcs):
        return
    cs_ar, ss_ar = vmcs.get(_CS.access_rights), vmcs.get(_SS.access_rights)
    cs_type, cs_dpl, ss_dpl = _type(cs_ar), _dpl(cs_ar), _dpl(ss_ar)
    if cs_type == _DATA_RW_ACCESSED and cs_dpl != 0:
        yield f"{_ar_text(_CS, cs_ar)} has type {cs_type} (data) with DPL {cs_dpl}; it must be 0"
    elif cs_type in _NONCONFORMING_CODE and cs_dpl != ss_dpl:
        yield (f"{_ar_text(_CS, cs_ar)} is non-conforming code (type {cs_type}) with DPL {cs_dpl}, but "
               f"{_ar_text(_SS, ss_ar)} has DPL {ss_dpl}; they must be equal")
    elif cs_type in _CONFORMING_CODE and cs_dpl > ss_dpl:
        yield (f"{_ar_text(_CS, cs_ar)} is conforming code (type {cs_type}) with DPL {cs_dpl}, greater than the "
               f"DPL {ss_dpl} of {_ar_text(_SS, ss_ar)}")


@entry_check("guest.segments.ss_dpl_equals_rpl")
def check_ss_dpl_equals_rpl(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """Unless the guest will be virtual-8086 or 'unrestricted guest' is 1, the SS DPL equals the RPL
    of the SS selector."""
    if _is_v8086(vmcs) or is_unrestricted_guest(vmcs):
        return
    ar, selector = vmcs.get(_SS.access_rights), vmcs.get(_SS.selector)
    if _dpl(ar) != _rpl(selector):
        yield (f"{_ar_text(_SS, ar)} has DPL {_dpl(ar)} but GUEST_SS_SELECTOR = {selector:#x} has RPL "
               f"{_rpl(selector)}; they must be equal")


@entry_check("guest.segments.ss_dpl_zero")
def check_ss_dpl_zero(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """Unless the guest will be virtual-8086, the SS DPL is 0 if the CS type is 3 or guest CR0.PE is 0."""
    if _is_v8086(vmcs):
        return
    ss_ar = vmcs.get(_SS.access_rights)
    if _dpl(ss_ar) == 0:
        return
    cs_ar, cr0 = vmcs.get(_CS.access_rights), vmcs.get(_CR0)
    if _type(cs_ar) == _DATA_RW_ACCESSED:
        yield (f"{_ar_text(_SS, ss_ar)} has DPL {_dpl(ss_ar)}, but {_ar_text(_CS, cs_ar)} has type "
               f"{_DATA_RW_ACCESSED}, which needs SS DPL 0")
    if not cr0 & _CR0_PE:
        yield f"{_ar_text(_SS, ss_ar)} has DPL {_dpl(ss_ar)}, but GUEST_CR0 = {cr0:#x} clears PE, which needs SS DPL 0"


@entry_check("guest.segments.fred_ss_dpl")
def check_fred_ss_dpl(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """If the guest will use FRED transitions (and is not virtual-8086), the SS DPL is 0 or 3."""
    if not _fred_applies(vmcs, caps):
        return
    ar = vmcs.get(_SS.access_rights)
    if _dpl(ar) not in (0, _DPL_USER):
        yield f"{_ar_text(_SS, ar)} has DPL {_dpl(ar)}; a guest using FRED transitions needs SS DPL 0 or 3"


@entry_check("guest.segments.fred_ss_dpl0_needs_64bit_cs")
def check_fred_ss_dpl0_needs_64bit_cs(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """If the guest will use FRED transitions (and is not virtual-8086) and the SS DPL is 0, CS.L
    (access-rights bit 13) is 1."""
    if not _fred_applies(vmcs, caps):
        return
    ss_ar, cs_ar = vmcs.get(_SS.access_rights), vmcs.get(_CS.access_rights)
    if _dpl(ss_ar) == 0 and not cs_ar & _AR_L:
        yield (f"{_ar_text(_CS, cs_ar)} clears L (bit 13), but {_ar_text(_SS, ss_ar)} has DPL 0; a guest using "
               "FRED transitions at CPL 0 needs a 64-bit CS")


@entry_check("guest.segments.data_dpl")
def check_data_dpl(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """Unless the guest will be virtual-8086 or 'unrestricted guest' is 1, each usable DS, ES, FS and GS
    of type 0-11 (data or non-conforming code) has a DPL not less than the RPL of its selector."""
    if _is_v8086(vmcs) or is_unrestricted_guest(vmcs):
        return
    for seg in _DATA:
        ar = vmcs.get(seg.access_rights)
        if ar & _AR_UNUSABLE:
            continue
        seg_type = _type(ar)
        if seg_type & _TYPE_CODE and seg_type & _TYPE_E_C:
            continue
        selector = vmcs.get(seg.selector)
        if _dpl(ar) < _rpl(selector):
            yield (f"{_ar_text(seg, ar)} (type {seg_type}) has DPL {_dpl(ar)}, less than the RPL {_rpl(selector)} "
                   f"of {seg.selector.name} = {selector:#x}")


@entry_check("guest.segments.present")
def check_present(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """Unless the guest will be virtual-8086, P (bit 7) is 1 for CS and each usable SS, DS, ES, FS and GS."""
    for seg, ar in _code_data_to_check(vmcs):
        if not ar & _AR_P:
            yield _present_problem(seg, ar)


@entry_check("guest.segments.reserved_bits")
def check_reserved_bits(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """Unless the guest will be virtual-8086, access-rights bits 11:8 and 31:17 are 0 for CS and each
    usable SS, DS, ES, FS and GS."""
    for seg, ar in _code_data_to_check(vmcs):
        if ar & _AR_RESERVED:
            yield _reserved_problem(seg, ar)


@entry_check("guest.segments.cs_db")
def check_cs_db(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """Unless the guest will be virtual-8086, an IA-32e-mode guest whose CS has L = 1 has CS D/B = 0."""
    if _is_v8086(vmcs) or not is_ia32e_guest(vmcs):
        return
    ar = vmcs.get(_CS.access_rights)
    if ar & _AR_L and ar & _AR_DB:
        yield f"{_ar_text(_CS, ar)} sets both L (bit 13) and D/B (bit 14) for an IA-32e-mode guest; D/B must be 0"


@entry_check("guest.segments.granularity")
def check_granularity(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """Unless the guest will be virtual-8086, G (bit 15) agrees with the limit for CS and each usable SS,
    DS, ES, FS and GS: a 0 in limit bits 11:0 needs G = 0, a 1 in limit bits 31:20 needs G = 1."""
    for seg, ar in _code_data_to_check(vmcs):
        limit = vmcs.get(seg.limit)
        if not _granularity_holds(limit, ar):
            yield _granularity_problem(seg, limit, ar)


# ----------------------------------------------------------------------------- access rights: TR


@entry_check("guest.segments.tr_type")
def check_tr_type(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """The TR type is 11 (busy 32-bit/64-bit TSS), or also 3 (busy 16-bit TSS) for a guest that will not
    be in IA-32e mode."""
    ar = vmcs.get(_TR.access_rights)
    tr_type = _type(ar)
    if tr_type == _BUSY_TSS_32_64:
        return
    if is_ia32e_guest(vmcs):
        yield (f"{_ar_text(_TR, ar)} has type {tr_type}; an IA-32e-mode guest needs type {_BUSY_TSS_32_64} "
               "(busy 64-bit TSS)")
    elif tr_type != _BUSY_TSS_16:
        yield f"{_ar_text(_TR, ar)} has type {tr_type}; TR needs a busy TSS ({_BUSY_TSS_16} or {_BUSY_TSS_32_64})"


@entry_check("guest.segments.tr_s_bit")
def check_tr_s_bit(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """S (bit 4) of the TR access rights is 0."""
    ar = vmcs.get(_TR.access_rights)
    if ar & _AR_S:
        yield _s_problem(_TR, ar, system=True)


@entry_check("guest.segments.tr_present")
def check_tr_present(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """P (bit 7) of the TR access rights is 1."""
    ar = vmcs.get(_TR.access_rights)
    if not ar & _AR_P:
        yield _present_problem(_TR, ar)


@entry_check("guest.segments.tr_reserved_bits")
def check_tr_reserved_bits(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """TR access-rights bits 11:8 and 31:17 are 0."""
    ar = vmcs.get(_TR.access_rights)
    if ar & _AR_RESERVED:
        yield _reserved_problem(_TR, ar)


@entry_check("guest.segments.tr_granularity")
def check_tr_granularity(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """The TR G bit agrees with the TR limit (a 0 in bits 11:0 needs G = 0, a 1 in bits 31:20 needs G = 1)."""
    limit, ar = vmcs.get(_TR.limit), vmcs.get(_TR.access_rights)
    if not _granularity_holds(limit, ar):
        yield _granularity_problem(_TR, limit, ar)


@entry_check("guest.segments.tr_usable")
def check_tr_usable(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """TR is usable: bit 16 of its access rights is 0."""
    ar = vmcs.get(_TR.access_rights)
    if not _is_usable(ar):
        yield f"{_ar_text(_TR, ar)} sets unusable (bit 16); TR must be usable"


# ----------------------------------------------------------------------------- access rights: LDTR


@entry_check("guest.segments.ldtr_type")
def check_ldtr_type(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """If LDTR is usable, its type is 2 (LDT)."""
    ar = _usable_ldtr(vmcs)
    if ar is not None and _type(ar) != _LDT:
        yield f"{_ar_text(_LDTR, ar)} has type {_type(ar)}; a usable LDTR needs type {_LDT} (LDT)"


@entry_check("guest.segments.ldtr_s_bit")
def check_ldtr_s_bit(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """If LDTR is usable, S (bit 4) of its access rights is 0."""
    ar = _usable_ldtr(vmcs)
    if ar is not None and ar & _AR_S:
        yield _s_problem(_LDTR, ar, system=True)


@entry_check("guest.segments.ldtr_present")
def check_ldtr_present(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """If LDTR is usable, P (bit 7) of its access rights is 1."""
    ar = _usable_ldtr(vmcs)
    if ar is not None and not ar & _AR_P:
        yield _present_problem(_LDTR, ar)


@entry_check("guest.segments.ldtr_reserved_bits")
def check_ldtr_reserved_bits(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """If LDTR is usable, its access-rights bits 11:8 and 31:17 are 0."""
    ar = _usable_ldtr(vmcs)
    if ar is not None and ar & _AR_RESERVED:
        yield _reserved_problem(_LDTR, ar)


@entry_check("guest.segments.ldtr_granularity")
def check_ldtr_granularity(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """If LDTR is usable, its G bit agrees with its limit (a 0 in bits 11:0 needs G = 0, a 1 in bits 31:20
    needs G = 1)."""
    ar = _usable_ldtr(vmcs)
    if ar is not None and not _granularity_holds(limit := vmcs.get(_LDTR.limit), ar):
        yield _granularity_problem(_LDTR, limit, ar)
