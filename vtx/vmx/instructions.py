"""The VMX instructions as transitions: ``(state, operands) -> (new state, outcome)``.

Each function follows the pseudocode of its entry in SDM Vol. 3C §32.3 "VMX Instructions",
branch by branch and in the same order; the branch comments quote the conditions. Outcomes are
values (:mod:`vtx.outcomes`); RFLAGS is updated as §32.2 "Conventions" says: VMsucceed clears
CF, PF, AF, ZF, SF and OF; VMfailInvalid sets CF; VMfailValid sets ZF and stores the error
number in the VM-instruction error field of the current VMCS. ``VMfail(n)`` is VMfailValid(n)
when there is a current VMCS and VMfailInvalid otherwise.
"""

from __future__ import annotations

import attrs

from vtx import spec
from vtx.bits import is_canonical, mask
from vtx.errors import NotEvaluable
from vtx.outcomes import (
    Fault,
    InstructionOutcome,
    VmEntered,
    VmEntryFailed,
    VmExit,
    VmFailInvalid,
    VmFailValid,
    VmSucceed,
)
from vtx.paging.memory import HostPhysAddr
from vtx.spec import VMCS_FIELDS, VMX_INSTRUCTIONS, VmInstructionError, get_control, get_error, reg_bit
from vtx.typecheck import checked
from vtx.vmx import vmcs as vmcs_access
from vtx.vmx.capabilities import Capabilities
from vtx.vmx.entry import EntryContext, evaluate_vm_entry_after
from vtx.vmx.eptp import is_valid_eptp
from vtx.vmx.operation import (
    INVALID_POINTER,
    LogicalProcessor,
    MsegHeader,
    VmxMode,
    is_valid_region_pointer,
    read_region_header,
)
from vtx.vmx.transitions import load_guest_state, load_host_state
from vtx.vmx.vmcs import LaunchState

Step = tuple[LogicalProcessor, InstructionOutcome]

UD = Fault("UD")
GP0 = Fault("GP", 0)
_STATUS_FLAGS = sum(reg_bit("RFLAGS", f).mask for f in ("CF", "PF", "AF", "ZF", "SF", "OF"))
_CF = reg_bit("RFLAGS", "CF").mask
_ZF = reg_bit("RFLAGS", "ZF").mask
_CR4_VMXE = reg_bit("CR4", "VMXE").mask
_SMM_VALID = reg_bit("IA32_SMM_MONITOR_CTL", "VALID").mask
_SMM_MSEG_BASE = reg_bit("IA32_SMM_MONITOR_CTL", "MSEG_BASE").bits
_REVISION = spec.REGION.revision_id
_SHADOW = spec.REGION.shadow_indicator
_ERROR_FIELD = VMCS_FIELDS["VM_INSTRUCTION_ERROR"]
_LINK_POINTER = VMCS_FIELDS["VMCS_LINK_POINTER"]
_SHADOWING = get_control("proc2", "vmcs_shadowing")
_ENABLE_VMFUNC = get_control("proc2", "enable_vm_functions")
_ENABLE_EPT = get_control("proc2", "enable_ept")
_ENABLE_VPID = get_control("proc2", "enable_vpid")
_ACTIVATE_SECONDARY = get_control("proc", "activate_secondary_controls")
_BITMAP_INDEX_BITS = 15  # VMREAD/VMWRITE bitmaps are indexed by bits 14:0 of the field encoding
_SMM_FEATURES_DEFINED = 1  # SMM-monitor features: only bit 0 (IA-32e mode SMM) is defined
_INVVPID_VPID = 16  # INVVPID descriptor: VPID in bits 15:0, bits 63:16 reserved (must be 0)


# ----------------------------------------------------------------------------- conventions


def _flags(state: LogicalProcessor, outcome: InstructionOutcome) -> LogicalProcessor:
    rflags = state.rflags & ~_STATUS_FLAGS
    if isinstance(outcome, VmFailInvalid):
        rflags |= _CF
    elif isinstance(outcome, VmFailValid):
        rflags |= _ZF
    return attrs.evolve(state, rflags=rflags)


def vmsucceed(state: LogicalProcessor, value: int | None = None) -> Step:
    outcome = VmSucceed(value)
    return _flags(state, outcome), outcome


@checked
def vmfail_invalid(state: LogicalProcessor) -> Step:
    outcome = VmFailInvalid()
    return _flags(state, outcome), outcome


@checked
def vmfail(state: LogicalProcessor, error: VmInstructionError) -> Step:
    """VMfailValid(error) if there is a current VMCS (storing the error in it), else VMfailInvalid."""
    if not state.has_current_vmcs:
        return vmfail_invalid(state)
    vmcs = state.get_current_vmcs().set(_ERROR_FIELD, error.number)
    outcome = VmFailValid(error)
    return _flags(state.with_region(state.current_vmcs, vmcs), outcome), outcome


@checked
def vm_exit(state: LogicalProcessor, caps: Capabilities, instruction: str) -> Step:
    """The instruction causes a VM exit with its basic exit reason (SDM Vol. 3C §27.1.2
    "Instructions That Cause VM Exits Unconditionally")."""
    reason = VMX_INSTRUCTIONS[instruction].exit_reason
    return load_host_state(state, caps, state.get_current_vmcs(), reason), VmExit(reason)


def _ud_conditions(state: LogicalProcessor, *, needs_vmx: bool = True) -> bool:
    """The #UD test the VMX instructions share: not in VMX operation, CR0.PE = 0, RFLAGS.VM = 1,
    or IA-32e mode with CS.L = 0 (compatibility mode)."""
    return ((needs_vmx and not state.in_vmx_operation) or not state.is_protected_mode
            or state.is_virtual_8086 or state.is_compatibility_mode)


def _prologue(state: LogicalProcessor, caps: Capabilities, instruction: str) -> Step | None:
    """#UD; VM exit in non-root operation; #GP(0) if CPL > 0 — the first three branches of most
    VMX instructions."""
    if _ud_conditions(state):
        return state, UD
    if state.mode is VmxMode.NON_ROOT:
        return vm_exit(state, caps, instruction)
    if state.cpl > 0:
        return state, GP0
    return None


# ----------------------------------------------------------------------------- VMXON / VMXOFF


@checked
def vmxon(state: LogicalProcessor, caps: Capabilities, pointer: int) -> Step:
    """Enter VMX root operation with the VMXON region at ``pointer``."""
    # IF (register operand) or (CR0.PE = 0) or (CR4.VMXE = 0) or (RFLAGS.VM = 1) or
    #    (IA32_EFER.LMA = 1 and CS.L = 0) THEN #UD
    if _ud_conditions(state, needs_vmx=False) or not state.cr4 & _CR4_VMXE:
        return state, UD
    if not state.in_vmx_operation:
        # IF (CPL > 0) or (in A20M mode) or (CR0, CR4 not supported in VMX operation) or
        #    (IA32_FEATURE_CONTROL lock bit clear) or (VMX not enabled for this SMX state) THEN #GP(0)
        fixed_ok = state.vmx_cr_fixed_ok(caps)
        if fixed_ok is None:
            raise NotEvaluable("VMXON", "CR0/CR4", "the profile lacks the IA32_VMX_CR0/CR4_FIXED MSRs")
        if state.cpl > 0 or state.a20m or not fixed_ok or not state.vmx_allowed_by_feature_control():
            return state, GP0
        # IF addr is not 4KB-aligned or sets bits beyond the physical-address width THEN VMfailInvalid
        if not is_valid_region_pointer(pointer, caps):
            return vmfail_invalid(state)
        # IF rev[30:0] != VMCS revision identifier OR rev[31] = 1 THEN VMfailInvalid
        rev = read_region_header(state, pointer)
        if _REVISION.get(rev) != caps.msr_field("IA32_VMX_BASIC", "vmcs_revision_id") or _SHADOW.get(rev):
            return vmfail_invalid(state)
        # current-VMCS pointer <- FFFFFFFF_FFFFFFFFH; enter VMX operation; VMsucceed
        return vmsucceed(attrs.evolve(state, mode=VmxMode.ROOT, vmxon_pointer=pointer,
                                      current_vmcs=INVALID_POINTER))
    if state.mode is VmxMode.NON_ROOT:
        return vm_exit(state, caps, "vmxon")
    if state.cpl > 0:
        return state, GP0
    return vmfail(state, get_error("VMXON_IN_VMX_ROOT_OPERATION"))


@checked
def vmxoff(state: LogicalProcessor, caps: Capabilities) -> Step:
    """Leave VMX operation."""
    if (early := _prologue(state, caps, "vmxoff")) is not None:
        return early
    # IF dual-monitor treatment of SMIs and SMM is active THEN VMfail(...)
    if state.dual_monitor_active:
        return vmfail(state, get_error("VMXOFF_UNDER_DUAL_MONITOR_TREATMENT_OF_SMIS_AND_SMM"))
    # leave VMX operation; VMsucceed. The VMCS regions stay in memory as they are.
    return vmsucceed(attrs.evolve(state, mode=VmxMode.OUTSIDE, vmxon_pointer=None, current_vmcs=INVALID_POINTER))


# ----------------------------------------------------------------------------- VMCLEAR / VMPTRLD / VMPTRST


@checked
def vmclear(state: LogicalProcessor, caps: Capabilities, pointer: int) -> Step:
    """Make the VMCS at ``pointer`` clear (its data written to memory) and, if it is current,
    invalidate the current-VMCS pointer."""
    if (early := _prologue(state, caps, "vmclear")) is not None:
        return early
    if not is_valid_region_pointer(pointer, caps):
        return vmfail(state, get_error("VMCLEAR_INVALID_ADDRESS"))
    if pointer == state.vmxon_pointer:
        return vmfail(state, get_error("VMCLEAR_VMXON_POINTER"))
    vmcs = attrs.evolve(state.get_vmcs(pointer), launch_state=LaunchState.CLEAR)
    new = state.with_region(pointer, vmcs)
    if pointer == state.current_vmcs:
        new = attrs.evolve(new, current_vmcs=INVALID_POINTER)
    return vmsucceed(new)


@checked
def vmptrld(state: LogicalProcessor, caps: Capabilities, pointer: int) -> Step:
    """Make the VMCS at ``pointer`` the current VMCS."""
    if (early := _prologue(state, caps, "vmptrld")) is not None:
        return early
    if not is_valid_region_pointer(pointer, caps):
        return vmfail(state, get_error("VMPTRLD_INVALID_ADDRESS"))
    if pointer == state.vmxon_pointer:
        return vmfail(state, get_error("VMPTRLD_VMXON_POINTER"))
    # IF rev[30:0] != VMCS revision identifier OR rev[31] = 1 and VMCS shadowing is not supported
    rev = read_region_header(state, pointer)
    shadowing = caps.allows("proc2", _SHADOWING.name)
    if _SHADOW.get(rev) and shadowing is None:
        raise NotEvaluable("VMPTRLD", "shadow-VMCS indicator",
                           "the profile cannot say whether VMCS shadowing is supported")
    if _REVISION.get(rev) != caps.msr_field("IA32_VMX_BASIC", "vmcs_revision_id") or (
            _SHADOW.get(rev) and not shadowing):
        return vmfail(state, get_error("VMPTRLD_INCORRECT_VMCS_REVISION_ID"))
    new = state.with_region(pointer, state.get_vmcs(pointer))
    return vmsucceed(attrs.evolve(new, current_vmcs=pointer))


@checked
def vmptrst(state: LogicalProcessor, caps: Capabilities) -> Step:
    """Store the current-VMCS pointer (the outcome's value is what is stored)."""
    if (early := _prologue(state, caps, "vmptrst")) is not None:
        return early
    return vmsucceed(state, state.current_vmcs)


# ----------------------------------------------------------------------------- VMREAD / VMWRITE


def _shadow_exit(state: LogicalProcessor, encoding: int, bitmap_field: str) -> bool:
    """In non-root operation, whether VMREAD/VMWRITE exits: VMCS shadowing is 0, the encoding sets
    bits 63:15, or its bit in the VMREAD/VMWRITE bitmap is 1."""
    vmcs = state.get_current_vmcs()
    if not vmcs.get(VMCS_FIELDS["SECONDARY_VM_EXEC_CONTROL"]) & _SHADOWING.mask or not vmcs.get(
            VMCS_FIELDS["CPU_BASED_VM_EXEC_CONTROL"]) & _ACTIVATE_SECONDARY.mask:
        return True
    if encoding >> _BITMAP_INDEX_BITS:
        return True
    bitmap = vmcs.get(VMCS_FIELDS[bitmap_field])
    return bool(state.memory.read_int(HostPhysAddr(bitmap + encoding // 8), 1) >> (encoding % 8) & 1)


def _target_vmcs(state: LogicalProcessor) -> int | None:
    """The VMCS VMREAD/VMWRITE accesses: the current VMCS in root operation, the one the VMCS link
    pointer references in non-root operation; None if that pointer is invalid."""
    if state.mode is VmxMode.ROOT:
        return state.current_vmcs if state.has_current_vmcs else None
    link = state.get_current_vmcs().get(_LINK_POINTER)
    return None if link == INVALID_POINTER else link


def _field_access(state: LogicalProcessor, caps: Capabilities, encoding: int, instruction: str,
                  bitmap_field: str) -> Step | int:
    """The branches VMREAD and VMWRITE share: #UD; in non-root operation a VM exit unless VMCS
    shadowing satisfies the access; #GP(0) at CPL > 0; VMfailInvalid without a VMCS to access.
    Otherwise the physical address of the VMCS the access goes to."""
    if _ud_conditions(state):
        return state, UD
    if state.mode is VmxMode.NON_ROOT and _shadow_exit(state, encoding, bitmap_field):
        return vm_exit(state, caps, instruction)
    if state.cpl > 0:
        return state, GP0
    target = _target_vmcs(state)
    return vmfail_invalid(state) if target is None else target


@checked
def vmread(state: LogicalProcessor, caps: Capabilities, encoding: int, *, operand_bits: int = 64) -> Step:
    """Read a VMCS field (the outcome's value)."""
    target = _field_access(state, caps, encoding, "vmread", "VMREAD_BITMAP")
    if not isinstance(target, int):
        return target
    outcome = vmcs_access.vmread(state.get_vmcs(target), caps, encoding, operand_bits=operand_bits)
    if isinstance(outcome, VmFailValid):
        return vmfail(state, outcome.error)
    return vmsucceed(state, outcome.value)


@checked
def vmwrite(state: LogicalProcessor, caps: Capabilities, encoding: int, value: int, *,
            operand_bits: int = 64) -> Step:
    """Write a VMCS field."""
    target = _field_access(state, caps, encoding, "vmwrite", "VMWRITE_BITMAP")
    if not isinstance(target, int):
        return target
    new_vmcs, outcome = vmcs_access.vmwrite(state.get_vmcs(target), caps, encoding, value, operand_bits=operand_bits)
    if isinstance(outcome, VmFailValid):
        return vmfail(state, outcome.error)
    return vmsucceed(state.with_region(target, new_vmcs))


# ----------------------------------------------------------------------------- VMLAUNCH / VMRESUME

BASIC_CHECKS = {
    "basic.vmx_operation": "_prologue: #UD outside VMX operation",
    "basic.operating_mode": "_prologue: #UD with CR0.PE = 0, in virtual-8086 or compatibility mode",
    "basic.non_root_exit": "_prologue: VM exit in VMX non-root operation",
    "basic.cpl": "_prologue: #GP(0) at CPL > 0",
    "basic.current_vmcs": "_vm_entry: VMfailInvalid without a current VMCS",
    "basic.not_shadow_vmcs": "_vm_entry: VMfailInvalid when the current VMCS is a shadow VMCS",
    "basic.mov_ss_blocking": "_vm_entry: VMfailValid(26) with blocking by MOV SS",
    "basic.vmlaunch_clear": "_vm_entry: VMfailValid(4) for VMLAUNCH of a VMCS that is not clear",
    "basic.vmresume_launched": "_vm_entry: VMfailValid(5) for VMRESUME of a VMCS that is not launched",
}
"""The catalogue's basic VM-entry checks (SDM Vol. 3C §28.1 "Basic VM-Entry Checks"): they are
branches of the VMLAUNCH / VMRESUME pseudocode below, not registered checks."""


def _vm_entry(state: LogicalProcessor, caps: Capabilities, instruction: str) -> Step:
    if (early := _prologue(state, caps, instruction)) is not None:
        return early
    # ELSIF current-VMCS pointer is not valid, or the current VMCS is a shadow VMCS THEN VMfailInvalid
    if not state.has_current_vmcs or state.get_current_vmcs().shadow:
        return vmfail_invalid(state)
    vmcs = state.get_current_vmcs()
    # ELSIF events are being blocked by MOV SS THEN VMfailValid(...)
    if state.blocking_by_mov_ss:
        return vmfail(state, get_error("ENTRY_EVENTS_BLOCKED_BY_MOV_SS"))
    if instruction == "vmlaunch" and vmcs.launch_state is not LaunchState.CLEAR:
        return vmfail(state, get_error("VMLAUNCH_NONCLEAR_VMCS"))
    if instruction == "vmresume" and vmcs.launch_state is not LaunchState.LAUNCHED:
        return vmfail(state, get_error("VMRESUME_NONLAUNCHED_VMCS"))
    # Check settings of VMX controls and host-state area; load guest state; load MSRs (chapter 28)
    # (incremental: only the checks that read what changed since this VMCS's last entry run again)
    verdict = evaluate_vm_entry_after(state.current_vmcs, vmcs, caps, EntryContext.from_processor(state, instruction))
    if isinstance(verdict.outcome, VmFailValid):
        return vmfail(state, verdict.outcome.error)
    if isinstance(verdict.outcome, VmEntryFailed):
        failed = load_host_state(state, caps, vmcs, verdict.outcome.reason,
                                 qualification=verdict.outcome.qualification, entry_failure=True)
        return failed, verdict.outcome
    if verdict.not_evaluable:
        raise NotEvaluable(instruction.upper(), "VM-entry checks", "; ".join(verdict.not_evaluable))
    return load_guest_state(state, vmcs, launch=instruction == "vmlaunch"), VmEntered()


@checked
def vmlaunch(state: LogicalProcessor, caps: Capabilities) -> Step:
    """Launch the guest of the current (clear) VMCS."""
    return _vm_entry(state, caps, "vmlaunch")


@checked
def vmresume(state: LogicalProcessor, caps: Capabilities) -> Step:
    """Resume the guest of the current (launched) VMCS."""
    return _vm_entry(state, caps, "vmresume")


# ----------------------------------------------------------------------------- INVEPT / INVVPID


def _requires(caps: Capabilities, what: str, *, control: str, cap: str) -> bool:
    """Whether the processor supports ``what``: the secondary control may be 1 and the
    IA32_VMX_EPT_VPID_CAP bit is set. INVEPT / INVVPID raise #UD otherwise."""
    allowed = caps.allows("proc2", control)
    bit = caps.msr_field("IA32_VMX_EPT_VPID_CAP", cap) if allowed else 0
    if allowed is None or bit is None:
        raise NotEvaluable(what, control, "the profile lacks IA32_VMX_PROCBASED_CTLS2 or IA32_VMX_EPT_VPID_CAP")
    return bool(allowed and bit)


_INVEPT_TYPES = {1: "invept_single_context", 2: "invept_all_context"}
_INVVPID_TYPES = {0: "invvpid_individual_address", 1: "invvpid_single_context", 2: "invvpid_all_context",
                  3: "invvpid_single_context_retaining_globals"}


@checked
def invept(state: LogicalProcessor, caps: Capabilities, invept_type: int, descriptor: int) -> Step:
    """Invalidate EPT-derived translations. ``descriptor`` is the 128-bit INVEPT descriptor (EPTP
    in bits 63:0). What is invalidated is the TLB model's business; this is the instruction."""
    if _ud_conditions(state) or not _requires(caps, "INVEPT", control=_ENABLE_EPT.name, cap="invept"):
        return state, UD
    if state.mode is VmxMode.NON_ROOT:
        return vm_exit(state, caps, "invept")
    if state.cpl > 0:
        return state, GP0
    cap = _INVEPT_TYPES.get(invept_type)
    if cap is None or not caps.msr_field("IA32_VMX_EPT_VPID_CAP", cap):
        return vmfail(state, get_error("INVALID_OPERAND_TO_INVEPT_INVVPID"))
    if invept_type == 1 and not is_valid_eptp(descriptor & mask(64), caps):
        return vmfail(state, get_error("INVALID_OPERAND_TO_INVEPT_INVVPID"))
    return vmsucceed(state)


@checked
def invvpid(state: LogicalProcessor, caps: Capabilities, invvpid_type: int, descriptor: int) -> Step:
    """Invalidate VPID-tagged translations. ``descriptor`` is the 128-bit INVVPID descriptor: VPID in
    bits 15:0, bits 63:16 reserved, the linear address in bits 127:64."""
    if _ud_conditions(state) or not _requires(caps, "INVVPID", control=_ENABLE_VPID.name, cap="invvpid"):
        return state, UD
    if state.mode is VmxMode.NON_ROOT:
        return vm_exit(state, caps, "invvpid")
    if state.cpl > 0:
        return state, GP0
    invalid = get_error("INVALID_OPERAND_TO_INVEPT_INVVPID")
    cap = _INVVPID_TYPES.get(invvpid_type)
    if cap is None or not caps.msr_field("IA32_VMX_EPT_VPID_CAP", cap):
        return vmfail(state, invalid)
    if descriptor >> _INVVPID_VPID & mask(64 - _INVVPID_VPID):
        return vmfail(state, invalid)
    vpid = descriptor & mask(_INVVPID_VPID)
    linear = descriptor >> 64
    la57 = state.cr4 & reg_bit("CR4", "LA57").mask
    if invvpid_type in (0, 1, 3) and vpid == 0:
        return vmfail(state, invalid)
    if invvpid_type == 0 and not is_canonical(linear, 57 if la57 else 48):
        return vmfail(state, invalid)
    return vmsucceed(state)


# ----------------------------------------------------------------------------- VMCALL / VMFUNC


@checked
def vmcall(state: LogicalProcessor, caps: Capabilities) -> Step:
    """Call the VM monitor: a VM exit in non-root operation; in root operation, activate the
    dual-monitor treatment of SMIs and SMM (SDM Vol. 3C, "Activating the Dual-Monitor Treatment")
    or fail."""
    if not state.in_vmx_operation:
        return state, UD
    if state.mode is VmxMode.NON_ROOT:
        return vm_exit(state, caps, "vmcall")
    if state.is_virtual_8086 or state.is_compatibility_mode:
        return state, UD
    if state.cpl > 0:
        return state, GP0
    dual_monitor = caps.msr_field("IA32_VMX_BASIC", "dual_monitor")
    if state.in_smm or not dual_monitor or not state.smm_monitor_ctl & _SMM_VALID:
        return vmfail(state, get_error("VMCALL_IN_VMX_ROOT_OPERATION"))
    if state.dual_monitor_active:
        raise NotEvaluable("VMCALL", "dual-monitor treatment active",
                           "an SMM VM exit to the SMM-transfer monitor is outside vtx's model")
    if not state.has_current_vmcs:
        return vmfail_invalid(state)
    vmcs = state.get_current_vmcs()
    if vmcs.launch_state is not LaunchState.CLEAR:
        return vmfail(state, get_error("VMCALL_NONCLEAR_VMCS"))
    exit_ok = caps.control_value_allowed("exit", vmcs.get(VMCS_FIELDS["VM_EXIT_CONTROLS"]))
    if exit_ok is None:
        raise NotEvaluable("VMCALL", "VM-exit controls", "the profile lacks IA32_VMX_(TRUE_)EXIT_CTLS")
    if not exit_ok:
        return vmfail(state, get_error("VMCALL_INVALID_VM_EXIT_CONTROL_FIELDS"))
    mseg = state.regions.get(_SMM_MSEG_BASE.get(state.smm_monitor_ctl) << _SMM_MSEG_BASE.lo)
    revision = mseg.revision_id if isinstance(mseg, MsegHeader) else 0
    if revision != caps.msr_field("IA32_VMX_MISC", "mseg_revision_id"):
        return vmfail(state, get_error("VMCALL_INCORRECT_MSEG_REVISION_ID"))
    features = mseg.features if isinstance(mseg, MsegHeader) else 0
    if features & ~_SMM_FEATURES_DEFINED:
        return vmfail(state, get_error("VMCALL_INVALID_SMM_MONITOR_FEATURES"))
    return vmsucceed(attrs.evolve(state, dual_monitor_active=True))


@checked
def vmfunc(state: LogicalProcessor, caps: Capabilities, function: int, argument: int) -> Step:
    """Invoke VM function ``function`` (EAX) with ``argument`` (ECX). Only non-root operation with
    "enable VM functions" may execute it; a function the VM-function controls do not enable, or
    an EPTP-switching request for an index >= 512 or an invalid EPTP-list entry, exits (59)."""
    if state.mode is not VmxMode.NON_ROOT:
        return state, UD
    vmcs = state.get_current_vmcs()
    if not vmcs.get(VMCS_FIELDS["CPU_BASED_VM_EXEC_CONTROL"]) & _ACTIVATE_SECONDARY.mask or not vmcs.get(
            VMCS_FIELDS["SECONDARY_VM_EXEC_CONTROL"]) & _ENABLE_VMFUNC.mask:
        return state, UD
    enabled = vmcs.get(VMCS_FIELDS["VM_FUNCTION_CONTROL"])
    if function > 63 or not enabled >> function & 1:
        return vm_exit(state, caps, "vmfunc")
    if function == spec.VM_FUNCTIONS["eptp_switching"].number:
        if argument >= 512:
            return vm_exit(state, caps, "vmfunc")
        entry = state.memory.read_int(HostPhysAddr(vmcs.get(VMCS_FIELDS["EPTP_LIST_ADDRESS"]) + 8 * argument), 8)
        if not is_valid_eptp(entry, caps):
            return vm_exit(state, caps, "vmfunc")
        new_vmcs = vmcs.set(VMCS_FIELDS["EPT_POINTER"], entry)
        return state.with_region(state.current_vmcs, new_vmcs), VmSucceed()
    return vm_exit(state, caps, "vmfunc")


