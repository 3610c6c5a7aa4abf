"""VM entries that return from SMM under the dual-monitor treatment (SDM Vol. 3C §33.15.4 "VM
Entries That Return from SMM"): checks on the executive-VMCS pointer (VMfailValid 16, 17, 18),
on the VM-execution controls of the executive VMCS (VMfailValid 25), and the restrictions of a
return to VMX root operation (only a pending MTF VM exit may be injected; no wait-for-SIPI).

A VM entry returns from SMM when it is executed in SMM with the "entry to SMM" VM-entry control 0.
"""

from __future__ import annotations

from collections.abc import Iterator

from vtx.errors import NotEvaluable
from vtx.spec import POINTERS, REGION, VMCS_FIELDS, get_control, reg_bit
from vtx.vmx.capabilities import Capabilities
from vtx.vmx.entry import REGISTRY, EntryContext, entry_check
from vtx.vmx.entry.guest_non_register import OTHER_EVENT, PENDING_MTF, WAIT_FOR_SIPI
from vtx.vmx.operation import physical_address_width
from vtx.vmx.vmcs import LaunchState, Vmcs

_ENTRY = VMCS_FIELDS["VM_ENTRY_CONTROLS"]
_EXECUTIVE = VMCS_FIELDS["EXECUTIVE_VMCS_POINTER"]
_INTR_INFO = VMCS_FIELDS["VM_ENTRY_INTR_INFO_FIELD"]
_ACTIVITY = VMCS_FIELDS["GUEST_ACTIVITY_STATE"]
_ENTRY_TO_SMM = get_control("entry", "entry_to_smm").mask
_DEACTIVATE = get_control("entry", "deactivate_dual_monitor_treatment").mask
_INFO = {b.name: b.bits for b in (reg_bit("VM_ENTRY_INTERRUPTION_INFO", n) for n in ("VECTOR", "TYPE", "VALID"))}


def _returns_from_smm(vmcs: Vmcs, ctx: EntryContext) -> bool:
    return ctx.in_smm and not vmcs.get(_ENTRY) & _ENTRY_TO_SMM


def _to_root(vmcs: Vmcs, ctx: EntryContext) -> bool:
    """The entry returns from SMM to VMX root operation: the executive-VMCS pointer is the VMXON pointer."""
    return _returns_from_smm(vmcs, ctx) and vmcs.get(_EXECUTIVE) == ctx.vmxon_pointer


def _executive(vmcs: Vmcs) -> int:
    return vmcs.get(_EXECUTIVE)


@entry_check("smm.executive_vmcs.alignment")
def check_executive_vmcs_alignment(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """Bits 11:0 of the executive-VMCS pointer are 0."""
    if _returns_from_smm(vmcs, ctx) and _executive(vmcs) % POINTERS.alignment:
        yield f"EXECUTIVE_VMCS_POINTER = {_executive(vmcs):#x} is not 4-KByte aligned"


@entry_check("smm.executive_vmcs.address_width")
def check_executive_vmcs_address_width(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """The executive-VMCS pointer sets no bit beyond the physical-address width."""
    if _returns_from_smm(vmcs, ctx):
        width = physical_address_width(caps)
        if _executive(vmcs) >> width:
            yield (f"EXECUTIVE_VMCS_POINTER = {_executive(vmcs):#x} sets bits beyond the {width}-bit "
                   "physical-address width")


@entry_check("smm.executive_vmcs.revision_id")
def check_executive_vmcs_revision_id(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """The first 32 bits of the region the executive-VMCS pointer references hold the processor's
    VMCS revision identifier."""
    if not _returns_from_smm(vmcs, ctx):
        return
    revision = caps.msr_field("IA32_VMX_BASIC", "vmcs_revision_id")
    if revision is None:
        raise NotEvaluable("EXECUTIVE_VMCS_POINTER", "revision", "the profile lacks IA32_VMX_BASIC")
    header = ctx.region_header(_executive(vmcs))
    if header != revision:
        yield (f"the region at EXECUTIVE_VMCS_POINTER = {_executive(vmcs):#x} starts with {header:#x}, "
               f"not the VMCS revision identifier {revision:#x}")


@entry_check("smm.executive_vmcs.launched")
def check_executive_vmcs_launched(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """Unless the dual-monitor treatment is being deactivated or the executive-VMCS pointer is the
    VMXON pointer, the executive VMCS is launched."""
    if not _returns_from_smm(vmcs, ctx) or vmcs.get(_ENTRY) & _DEACTIVATE or _to_root(vmcs, ctx):
        return
    region = ctx.regions.get(_executive(vmcs))
    if not isinstance(region, Vmcs) or region.launch_state is not LaunchState.LAUNCHED:
        yield f"the executive VMCS at {_executive(vmcs):#x} is not launched"


@entry_check("smm.executive_vmcs.deactivate_needs_vmxon_pointer")
def check_deactivate_needs_vmxon_pointer(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With "deactivate dual-monitor treatment" 1, the executive-VMCS pointer is the VMXON pointer."""
    if _returns_from_smm(vmcs, ctx) and vmcs.get(_ENTRY) & _DEACTIVATE and not _to_root(vmcs, ctx):
        yield (f"'deactivate dual-monitor treatment' is 1 but EXECUTIVE_VMCS_POINTER = {_executive(vmcs):#x} "
               f"is not the VMXON pointer")


@entry_check("smm.executive_vmcs.execution_controls")
def check_executive_vmcs_execution_controls(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """The VM-execution control checks pass on the executive VMCS (when it is not the VMXON pointer)."""
    if not _returns_from_smm(vmcs, ctx) or _to_root(vmcs, ctx):
        return
    region = ctx.regions.get(_executive(vmcs))
    executive = region if isinstance(region, Vmcs) else Vmcs(revision_id=REGION.revision_id.get(
        ctx.region_header(_executive(vmcs))))
    for check in REGISTRY.values():
        if check.spec.group == "exec_controls":
            for found in check.fn(executive, caps, ctx):
                yield f"executive VMCS: {found}"


@entry_check("smm.entry_controls.root_return_injection")
def check_root_return_injection(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """A return to VMX root operation injects nothing but a pending MTF VM exit (other event, vector 0)."""
    info = vmcs.get(_INTR_INFO)
    if not _to_root(vmcs, ctx) or not _INFO["VALID"].get(info):
        return
    if _INFO["TYPE"].get(info) != OTHER_EVENT or _INFO["VECTOR"].get(info) != PENDING_MTF:
        yield f"VM_ENTRY_INTR_INFO_FIELD = {info:#x} injects an event into VMX root operation"


@entry_check("smm.guest.root_return_activity")
def check_root_return_activity(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """A return to VMX root operation does not enter the wait-for-SIPI activity state."""
    if _to_root(vmcs, ctx) and vmcs.get(_ACTIVITY) == WAIT_FOR_SIPI:
        yield f"GUEST_ACTIVITY_STATE = {WAIT_FOR_SIPI} (wait-for-SIPI) on a return to VMX root operation"
