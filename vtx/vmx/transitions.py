"""The two mode switches of VMX operation: VM entry into non-root and VM exit back to root.

Only the processor state that :class:`~vtx.vmx.operation.LogicalProcessor` models is loaded here;
the full VM-exit information and the rest of the state are :mod:`vtx.vmx.exits` (the exits issue).
"""

from __future__ import annotations

import attrs

from vtx import spec
from vtx.bits import BitRange, mask
from vtx.errors import InputError
from vtx.spec import VMCS_FIELDS, ExitReason, get_control, reg_bit
from vtx.vmx.capabilities import Capabilities
from vtx.vmx.exits.info import ExitInfo, record_exit
from vtx.vmx.operation import LogicalProcessor, VmxMode
from vtx.vmx.vmcs import LaunchState, Vmcs

_F = VMCS_FIELDS
_CR4_PAE = reg_bit("CR4", "PAE").mask
_CR4_PCIDE = reg_bit("CR4", "PCIDE").mask
_EFER_LMA = reg_bit("IA32_EFER", "LMA").mask
_EFER_LME = reg_bit("IA32_EFER", "LME").mask
_RFLAGS_FIXED1 = reg_bit("RFLAGS", "FIXED1").mask
_AR_DPL = reg_bit("VMCS_ACCESS_RIGHTS", "DPL").bits
_AR_L = reg_bit("VMCS_ACCESS_RIGHTS", "L").mask
_BLOCKING_MOV_SS = reg_bit("VMCS_INTERRUPTIBILITY", "BLOCKING_BY_MOV_SS").mask
_EXIT_HOST_64 = get_control("exit", "host_address_space_size").mask
_EXIT_LOAD_EFER = get_control("exit", "load_ia32_efer").mask
_ENTRY_IA32E = get_control("entry", "ia32e_mode_guest").mask
_ENTRY_LOAD_EFER = get_control("entry", "load_ia32_efer").mask
_FAILED_ENTRY = spec.EXIT_REASON_FORMAT["failed_vmentry"].bits


_CR0_UNCHANGED_ON_EXIT = sum(reg_bit("CR0", b).mask for b in ("ET", "CD", "NW")) | sum(
    BitRange(lo, hi).mask for lo, hi in ((32, 63), (19, 28), (17, 17), (6, 15)))
"""CR0 bits a VM exit does not load from the host CR0 field (SDM Vol. 3C §29.5.1)."""


def _keep(old: int, new: int, keep: int) -> int:
    return (old & keep) | (new & ~keep)


def load_guest_state(state: LogicalProcessor, vmcs: Vmcs, *, launch: bool) -> LogicalProcessor:
    """Enter VMX non-root operation with the guest registers of ``vmcs`` (SDM Vol. 3C §28.3.2
    "Loading Guest State"); VMLAUNCH marks the VMCS launched (§32.3 VMLAUNCH/VMRESUME)."""
    entry = vmcs.get(_F["VM_ENTRY_CONTROLS"])
    ia32e = bool(entry & _ENTRY_IA32E)
    if entry & _ENTRY_LOAD_EFER:
        efer = vmcs.get(_F["GUEST_IA32_EFER"])
    else:
        lm = (_EFER_LMA | _EFER_LME) if ia32e else 0
        efer = (state.efer & ~(_EFER_LMA | _EFER_LME)) | lm
    if launch:
        vmcs = attrs.evolve(vmcs, launch_state=LaunchState.LAUNCHED)
    return attrs.evolve(
        state, mode=VmxMode.NON_ROOT, cr0=vmcs.get(_F["GUEST_CR0"]), cr4=vmcs.get(_F["GUEST_CR4"]), efer=efer,
        rflags=vmcs.get(_F["GUEST_RFLAGS"]), cpl=_AR_DPL.get(vmcs.get(_F["GUEST_SS_AR_BYTES"])),
        cs_l=bool(vmcs.get(_F["GUEST_CS_AR_BYTES"]) & _AR_L),
        blocking_by_mov_ss=bool(vmcs.get(_F["GUEST_INTERRUPTIBILITY_INFO"]) & _BLOCKING_MOV_SS),
        regions={**state.regions, state.current_vmcs: vmcs})


def load_host_state(state: LogicalProcessor, caps: Capabilities, vmcs: Vmcs, reason: ExitReason, *,
                    qualification: int = 0,
                    entry_failure: bool = False, info: ExitInfo | None = None) -> LogicalProcessor:
    """Return to VMX root operation: record the exit reason (and bit 31 for a VM-entry failure,
    SDM Vol. 3C §29.2.1 "Basic VM-Exit Information") and load the host registers (§29.5.1
    "Loading Host Control Registers, Debug Registers, MSRs": CR0 bits ET, CD, NW, 63:32, 28:19, 17
    and 15:6, and the CR0 and CR4 bits fixed in VMX operation, keep their values; CR4.PAE is set
    and CR4.PCIDE kept only for a 64-bit host; without "load IA32_EFER", EFER.LMA and LME follow
    "host address-space size"; RFLAGS is cleared but for bit 1; CPL is 0). With ``info`` (an exit
    decided by :func:`vtx.vmx.exits.rules.decide`) every exit-information field it reports is
    recorded too (§29.2 "Recording VM-Exit Information and Updating VM-Entry Control Fields")."""
    exit_ctls = vmcs.get(_F["VM_EXIT_CONTROLS"])
    host64 = bool(exit_ctls & _EXIT_HOST_64)
    fixed0 = {r: caps.msr(f"IA32_VMX_{r}_FIXED0") or 0 for r in ("CR0", "CR4")}
    fixed1 = {r: caps.msr(f"IA32_VMX_{r}_FIXED1") for r in ("CR0", "CR4")}
    fixed = {r: fixed0[r] | (~f1 & mask(64) if f1 is not None else 0) for r, f1 in fixed1.items()}
    cr0 = _keep(state.cr0, vmcs.get(_F["HOST_CR0"]), _CR0_UNCHANGED_ON_EXIT | fixed["CR0"])
    cr4 = _keep(state.cr4, vmcs.get(_F["HOST_CR4"]), fixed["CR4"])
    cr4 = cr4 | _CR4_PAE if host64 else cr4 & ~_CR4_PCIDE
    if exit_ctls & _EXIT_LOAD_EFER:
        efer = vmcs.get(_F["HOST_IA32_EFER"])
    else:
        lm = (_EFER_LMA | _EFER_LME) if host64 else 0
        efer = (state.efer & ~(_EFER_LMA | _EFER_LME)) | lm
    full_reason = _FAILED_ENTRY.put(reason.number, int(entry_failure))
    if info is None:
        vmcs = vmcs.with_fields({"VM_EXIT_REASON": full_reason, "EXIT_QUALIFICATION": qualification})
    elif info.reason != reason or entry_failure:
        raise InputError("info", str(info), f"must describe a true VM exit with basic reason {reason.number}")
    else:
        vmcs = record_exit(vmcs, info)
    return attrs.evolve(
        state, mode=VmxMode.ROOT, cpl=0, cr0=cr0,
        cr4=cr4, efer=efer, rflags=_RFLAGS_FIXED1, cs_l=host64, blocking_by_mov_ss=False,
        regions={**state.regions, state.current_vmcs: vmcs})
