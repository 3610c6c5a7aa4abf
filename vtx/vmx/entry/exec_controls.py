"""Checks on the VM-execution control fields (SDM Vol. 3C §28.2.1.1 "VM-Execution Control Fields"); a
violation makes VM entry fail with VMfailValid(7)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from vtx.bits import BitRange, fits_physical_width, mask
from vtx.errors import NotEvaluable
from vtx.spec import VM_FUNCTIONS, VMCS_FIELDS, VmcsField, reg_bit
from vtx.vmx.capabilities import Capabilities
from vtx.vmx.entry import EntryContext, entry_check
from vtx.vmx.entry.common import (
    ALIGN_4K,
    ALIGN_8,
    ALIGN_64,
    control_flag,
    required_msr_field,
    vmcs_fields,
)
from vtx.vmx.eptp import EPTP
from vtx.vmx.operation import physical_address_width
from vtx.vmx.vmcs import Vmcs

# ----------------------------------------------------------------------------- control settings


class _Gate(Protocol):
    """What turns a rule on: a control, or a VM function."""

    def on(self, vmcs: Vmcs) -> bool: ...

    def describe(self, vmcs: Vmcs) -> str: ...


_EXTERNAL_INTERRUPT_EXITING = control_flag("pin", "external_interrupt_exiting")
_NMI_EXITING = control_flag("pin", "nmi_exiting")
_VIRTUAL_NMIS = control_flag("pin", "virtual_nmis")
_PROCESS_POSTED_INTERRUPTS = control_flag("pin", "process_posted_interrupts")
_USE_TPR_SHADOW = control_flag("proc", "use_tpr_shadow")
_NMI_WINDOW_EXITING = control_flag("proc", "nmi_window_exiting")
_USE_IO_BITMAPS = control_flag("proc", "use_io_bitmaps")
_USE_MSR_BITMAPS = control_flag("proc", "use_msr_bitmaps")
_VIRTUALIZE_APIC_ACCESSES = control_flag("proc2", "virtualize_apic_accesses")
_ENABLE_EPT = control_flag("proc2", "enable_ept")
_VIRTUALIZE_X2APIC_MODE = control_flag("proc2", "virtualize_x2apic_mode")
_ENABLE_VPID = control_flag("proc2", "enable_vpid")
_UNRESTRICTED_GUEST = control_flag("proc2", "unrestricted_guest")
_APIC_REGISTER_VIRTUALIZATION = control_flag("proc2", "apic_register_virtualization")
_VIRTUAL_INTERRUPT_DELIVERY = control_flag("proc2", "virtual_interrupt_delivery")
_ENABLE_VM_FUNCTIONS = control_flag("proc2", "enable_vm_functions")
_VMCS_SHADOWING = control_flag("proc2", "vmcs_shadowing")
_ENABLE_PML = control_flag("proc2", "enable_pml")
_EPT_VIOLATION_VE = control_flag("proc2", "ept_violation_ve")
_PASID_TRANSLATION = control_flag("proc2", "pasid_translation")
_MODE_BASED_EPT_EXEC = control_flag("proc2", "mode_based_execute_control_for_ept")
_SPP = control_flag("proc2", "sub_page_write_permissions_for_ept")
_PT_USES_GPA = control_flag("proc2", "pt_uses_guest_physical_addresses")
_USE_TSC_SCALING = control_flag("proc2", "use_tsc_scaling")
_ENABLE_HLAT = control_flag("proc3", "enable_hlat")
_IPI_VIRTUALIZATION = control_flag("proc3", "ipi_virtualization")
_ACK_INTERRUPT_ON_EXIT = control_flag("exit", "acknowledge_interrupt_on_exit")
_CLEAR_IA32_RTIT_CTL = control_flag("exit", "clear_ia32_rtit_ctl")
_LOAD_IA32_RTIT_CTL = control_flag("entry", "load_ia32_rtit_ctl")

_EPTP_SWITCHING = VM_FUNCTIONS["eptp_switching"]
_EPTP_SWITCHING_MASK = 1 << _EPTP_SWITCHING.number


def _requires(vmcs: Vmcs, control: _Gate, needed: _Gate) -> Iterator[str]:
    """The rule "``needed`` must be 1 when ``control`` is 1"."""
    if control.on(vmcs) and not needed.on(vmcs):
        yield f"{control.describe(vmcs)} is 1 but {needed.describe(vmcs)} is 0; the first requires the second"


def _excludes(vmcs: Vmcs, control: _Gate, excluded: _Gate) -> Iterator[str]:
    """The rule "``excluded`` must be 0 when ``control`` is 1"."""
    if control.on(vmcs) and excluded.on(vmcs):
        yield f"{control.describe(vmcs)} is 1 and so is {excluded.describe(vmcs)}; the first excludes the second"


# ----------------------------------------------------------------------------- addresses



def _misaligned(vmcs: Vmcs, fields: tuple[VmcsField, ...], low: BitRange, control: _Gate) -> Iterator[str]:
    """Each address in ``fields`` must have bits ``low`` clear while ``control`` is 1."""
    if not control.on(vmcs):
        return
    for field in fields:
        value = vmcs.get(field)
        if value & low.mask:
            yield f"{field.name} = {value:#x}: bits {low} must be 0 while {control.describe(vmcs)} is 1"


def _beyond_width(vmcs: Vmcs, caps: Capabilities, fields: tuple[VmcsField, ...], control: _Gate) -> Iterator[str]:
    """No address in ``fields`` may set a bit at or above the physical-address width while ``control`` is 1."""
    if not control.on(vmcs):
        return
    width = physical_address_width(caps)
    for field in fields:
        value = vmcs.get(field)
        if not fits_physical_width(value, width):
            yield (f"{field.name} = {value:#x} sets bits {value & ~mask(width):#x} beyond the physical-address "
                   f"width ({width} bits) while {control.describe(vmcs)} is 1")


_IO_BITMAPS = vmcs_fields("IO_BITMAP_A", "IO_BITMAP_B")
_MSR_BITMAP = vmcs_fields("MSR_BITMAP")
_VIRTUAL_APIC_PAGE = vmcs_fields("VIRTUAL_APIC_PAGE_ADDR")
_APIC_ACCESS = vmcs_fields("APIC_ACCESS_ADDR")
_PI_DESCRIPTOR = vmcs_fields("POSTED_INTR_DESC_ADDR")
_PML = vmcs_fields("PML_ADDRESS")
_SPPTP = vmcs_fields("SUB_PAGE_PERMISSION_TABLE_POINTER")
_EPTP_LIST = vmcs_fields("EPTP_LIST_ADDRESS")
_VMCS_SHADOWING_BITMAPS = vmcs_fields("VMREAD_BITMAP", "VMWRITE_BITMAP")
_VE_INFORMATION = vmcs_fields("VE_INFORMATION_ADDRESS")
_HLATP = vmcs_fields("HLAT_POINTER")
_PASID_DIRECTORIES = vmcs_fields("LOW_PASID_DIRECTORY_ADDRESS", "HIGH_PASID_DIRECTORY_ADDRESS")
_PID_POINTER_TABLE = vmcs_fields("PID_POINTER_TABLE")

_CR3_TARGET_COUNT = VMCS_FIELDS["CR3_TARGET_COUNT"]
_TPR_THRESHOLD = VMCS_FIELDS["TPR_THRESHOLD"]
_TPR_THRESHOLD_BITS = reg_bit("TPR_THRESHOLD", "THRESHOLD").bits
_TPR_THRESHOLD_RESERVED = mask(_TPR_THRESHOLD.bits) & ~_TPR_THRESHOLD_BITS.mask
_VTPR_OFFSET = 0x80  # VTPR is at offset 080H of the virtual-APIC page (SDM Vol. 3C §31.1.1)
_VTPR_CLASS = reg_bit("VTPR", "CLASS").bits
_POSTED_INTR_NV = VMCS_FIELDS["POSTED_INTR_NV"]
_PI_VECTOR_RESERVED = mask(_POSTED_INTR_NV.bits) & ~reg_bit("POSTED_INTERRUPT_NOTIFICATION_VECTOR", "VECTOR").mask
_VPID = VMCS_FIELDS["VIRTUAL_PROCESSOR_ID"]
_EPT_POINTER = VMCS_FIELDS["EPT_POINTER"]
_VM_FUNCTION_CONTROL = VMCS_FIELDS["VM_FUNCTION_CONTROL"]
_TSC_MULTIPLIER = VMCS_FIELDS["TSC_MULTIPLIER"]
_HLAT_POINTER = VMCS_FIELDS["HLAT_POINTER"]
_HLATP_RESERVED = ALIGN_4K.mask & ~(reg_bit("HLATP", "PWT").mask | reg_bit("HLATP", "PCD").mask)
_HLAT_PREFIX_SIZE = VMCS_FIELDS["HLAT_PREFIX_SIZE"]


def _ept_capability(caps: Capabilities, bitfield: str) -> int:
    """A bit field of IA32_VMX_EPT_VPID_CAP, or NotEvaluable when the profile lacks the MSR."""
    return required_msr_field(caps, "IA32_VMX_EPT_VPID_CAP", bitfield, "EPT_POINTER")


# ----------------------------------------------------------------------------- the checks


@entry_check("controls.cr3_target_count")
def check_cr3_target_count(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """The CR3-target count is at most the number of CR3-target values the processor supports."""
    count = vmcs.get(_CR3_TARGET_COUNT)
    supported = caps.msr_field("IA32_VMX_MISC", "cr3_target_count")
    if supported is None:
        raise NotEvaluable("CR3_TARGET_COUNT", str(count), "the profile lacks IA32_VMX_MISC")
    if count > supported:
        yield f"CR3_TARGET_COUNT = {count} exceeds the {supported} CR3-target values IA32_VMX_MISC reports"


@entry_check("controls.io_bitmaps.alignment")
def check_io_bitmaps_alignment(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With 'use I/O bitmaps' 1, both I/O-bitmap addresses are 4-KByte aligned."""
    return _misaligned(vmcs, _IO_BITMAPS, ALIGN_4K, _USE_IO_BITMAPS)


@entry_check("controls.io_bitmaps.address_width")
def check_io_bitmaps_address_width(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With 'use I/O bitmaps' 1, neither I/O-bitmap address exceeds the physical-address width."""
    return _beyond_width(vmcs, caps, _IO_BITMAPS, _USE_IO_BITMAPS)


@entry_check("controls.msr_bitmap.alignment")
def check_msr_bitmap_alignment(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With 'use MSR bitmaps' 1, the MSR-bitmap address is 4-KByte aligned."""
    return _misaligned(vmcs, _MSR_BITMAP, ALIGN_4K, _USE_MSR_BITMAPS)


@entry_check("controls.msr_bitmap.address_width")
def check_msr_bitmap_address_width(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With 'use MSR bitmaps' 1, the MSR-bitmap address does not exceed the physical-address width."""
    return _beyond_width(vmcs, caps, _MSR_BITMAP, _USE_MSR_BITMAPS)


@entry_check("controls.virtual_apic.alignment")
def check_virtual_apic_alignment(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With 'use TPR shadow' 1, the virtual-APIC address is 4-KByte aligned."""
    return _misaligned(vmcs, _VIRTUAL_APIC_PAGE, ALIGN_4K, _USE_TPR_SHADOW)


@entry_check("controls.virtual_apic.address_width")
def check_virtual_apic_address_width(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With 'use TPR shadow' 1, the virtual-APIC address does not exceed the physical-address width."""
    return _beyond_width(vmcs, caps, _VIRTUAL_APIC_PAGE, _USE_TPR_SHADOW)


@entry_check("controls.tpr_threshold.reserved_bits")
def check_tpr_threshold_reserved_bits(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With 'use TPR shadow' 1 and 'virtual-interrupt delivery' 0, bits 31:4 of the TPR threshold are 0."""
    if not _USE_TPR_SHADOW.on(vmcs) or _VIRTUAL_INTERRUPT_DELIVERY.on(vmcs):
        return
    threshold = vmcs.get(_TPR_THRESHOLD)
    if threshold & _TPR_THRESHOLD_RESERVED:
        yield (f"TPR_THRESHOLD = {threshold:#x} sets reserved bits {threshold & _TPR_THRESHOLD_RESERVED:#x} "
               f"while {_USE_TPR_SHADOW.describe(vmcs)} is 1 and {_VIRTUAL_INTERRUPT_DELIVERY.describe(vmcs)} is 0")


@entry_check("controls.tpr_threshold.vtpr")
def check_tpr_threshold_vtpr(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With 'use TPR shadow' 1 and both 'virtualize APIC accesses' and 'virtual-interrupt delivery' 0,
    bits 3:0 of the TPR threshold are at most bits 7:4 of VTPR (offset 80H of the virtual-APIC
    page). Checked only once the virtual-APIC address is valid."""
    if not _USE_TPR_SHADOW.on(vmcs) or _VIRTUALIZE_APIC_ACCESSES.on(vmcs) or _VIRTUAL_INTERRUPT_DELIVERY.on(vmcs):
        return
    page = vmcs.get(_VIRTUAL_APIC_PAGE[0])
    if page & ALIGN_4K.mask or not fits_physical_width(page, physical_address_width(caps)):
        return
    threshold = _TPR_THRESHOLD_BITS.get(vmcs.get(_TPR_THRESHOLD))
    vtpr = ctx.read_int(page + _VTPR_OFFSET, 1)
    if threshold > _VTPR_CLASS.get(vtpr):
        yield (f"TPR_THRESHOLD bits {_TPR_THRESHOLD_BITS} = {threshold} exceed VTPR bits {_VTPR_CLASS} = "
               f"{_VTPR_CLASS.get(vtpr)} (VTPR = {vtpr:#x} at VIRTUAL_APIC_PAGE_ADDR {page:#x} + {_VTPR_OFFSET:#x})")


@entry_check("controls.nmi.virtual_nmis_need_nmi_exiting")
def check_virtual_nmis_need_nmi_exiting(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """'Virtual NMIs' is 0 when 'NMI exiting' is 0."""
    return _requires(vmcs, _VIRTUAL_NMIS, _NMI_EXITING)


@entry_check("controls.nmi.nmi_window_needs_virtual_nmis")
def check_nmi_window_needs_virtual_nmis(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """'NMI-window exiting' is 0 when 'virtual NMIs' is 0."""
    return _requires(vmcs, _NMI_WINDOW_EXITING, _VIRTUAL_NMIS)


@entry_check("controls.apic_access.alignment")
def check_apic_access_alignment(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With 'virtualize APIC accesses' 1, the APIC-access address is 4-KByte aligned."""
    return _misaligned(vmcs, _APIC_ACCESS, ALIGN_4K, _VIRTUALIZE_APIC_ACCESSES)


@entry_check("controls.apic_access.address_width")
def check_apic_access_address_width(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With 'virtualize APIC accesses' 1, the APIC-access address does not exceed the physical-address width."""
    return _beyond_width(vmcs, caps, _APIC_ACCESS, _VIRTUALIZE_APIC_ACCESSES)


_NEED_TPR_SHADOW = (_VIRTUALIZE_X2APIC_MODE, _APIC_REGISTER_VIRTUALIZATION, _VIRTUAL_INTERRUPT_DELIVERY)


@entry_check("controls.apicv.needs_tpr_shadow")
def check_apicv_needs_tpr_shadow(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With 'use TPR shadow' 0, 'virtualize x2APIC mode', 'APIC-register virtualization' and
    'virtual-interrupt delivery' are each 0."""
    for control in _NEED_TPR_SHADOW:
        yield from _requires(vmcs, control, _USE_TPR_SHADOW)


@entry_check("controls.apicv.ipi_virtualization_needs_tpr_shadow")
def check_ipi_virtualization_needs_tpr_shadow(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With 'use TPR shadow' 0, the tertiary control 'IPI virtualization' is 0."""
    return _requires(vmcs, _IPI_VIRTUALIZATION, _USE_TPR_SHADOW)


@entry_check("controls.apicv.x2apic_excludes_apic_accesses")
def check_x2apic_excludes_apic_accesses(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """'Virtualize APIC accesses' is 0 when 'virtualize x2APIC mode' is 1."""
    return _excludes(vmcs, _VIRTUALIZE_X2APIC_MODE, _VIRTUALIZE_APIC_ACCESSES)


@entry_check("controls.apicv.vid_needs_external_interrupt_exiting")
def check_vid_needs_external_interrupt_exiting(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """'External-interrupt exiting' is 1 when 'virtual-interrupt delivery' is 1."""
    return _requires(vmcs, _VIRTUAL_INTERRUPT_DELIVERY, _EXTERNAL_INTERRUPT_EXITING)


@entry_check("controls.posted_interrupts.needs_vid")
def check_posted_interrupts_need_vid(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """'Virtual-interrupt delivery' is 1 when 'process posted interrupts' is 1."""
    return _requires(vmcs, _PROCESS_POSTED_INTERRUPTS, _VIRTUAL_INTERRUPT_DELIVERY)


@entry_check("controls.posted_interrupts.needs_ack_on_exit")
def check_posted_interrupts_need_ack_on_exit(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """The VM-exit control 'acknowledge interrupt on exit' is 1 when 'process posted interrupts' is 1."""
    return _requires(vmcs, _PROCESS_POSTED_INTERRUPTS, _ACK_INTERRUPT_ON_EXIT)


@entry_check("controls.posted_interrupts.notification_vector")
def check_posted_interrupt_notification_vector(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With 'process posted interrupts' 1, bits 15:8 of the posted-interrupt notification vector are 0."""
    if not _PROCESS_POSTED_INTERRUPTS.on(vmcs):
        return
    vector = vmcs.get(_POSTED_INTR_NV)
    if vector & _PI_VECTOR_RESERVED:
        yield (f"POSTED_INTR_NV = {vector:#x} is not a vector 0-255 (bits {vector & _PI_VECTOR_RESERVED:#x} set) "
               f"while {_PROCESS_POSTED_INTERRUPTS.describe(vmcs)} is 1")


@entry_check("controls.posted_interrupts.descriptor_alignment")
def check_posted_interrupt_descriptor_alignment(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With 'process posted interrupts' 1, the posted-interrupt descriptor address is 64-byte aligned."""
    return _misaligned(vmcs, _PI_DESCRIPTOR, ALIGN_64, _PROCESS_POSTED_INTERRUPTS)


@entry_check("controls.posted_interrupts.descriptor_address_width")
def check_posted_interrupt_descriptor_address_width(vmcs: Vmcs, caps: Capabilities,
                                                    ctx: EntryContext) -> Iterator[str]:
    """With 'process posted interrupts' 1, the descriptor address does not exceed the physical-address width."""
    return _beyond_width(vmcs, caps, _PI_DESCRIPTOR, _PROCESS_POSTED_INTERRUPTS)


@entry_check("controls.vpid.nonzero")
def check_vpid_nonzero(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With 'enable VPID' 1, the VPID is not 0000H."""
    if _ENABLE_VPID.on(vmcs) and vmcs.get(_VPID) == 0:
        yield f"VIRTUAL_PROCESSOR_ID = 0 while {_ENABLE_VPID.describe(vmcs)} is 1; VPID 0000H is the VMM's"


@entry_check("controls.eptp.memory_type")
def check_eptp_memory_type(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With 'enable EPT' 1, EPTP bits 2:0 name a memory type IA32_VMX_EPT_VPID_CAP allows (UC or WB)."""
    if not _ENABLE_EPT.on(vmcs):
        return
    eptp = vmcs.get(_EPT_POINTER)
    memory_type = EPTP.memory_type.get(eptp)
    capability = EPTP.memory_types.get(memory_type)
    if capability is None or not _ept_capability(caps, capability):
        yield (f"EPT_POINTER = {eptp:#x}: memory type {memory_type} (bits {EPTP.memory_type}) is not one "
               f"IA32_VMX_EPT_VPID_CAP allows")


@entry_check("controls.eptp.page_walk_length")
def check_eptp_page_walk_length(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With 'enable EPT' 1, EPTP bits 5:3 name a page-walk length IA32_VMX_EPT_VPID_CAP allows (4 or 5 levels)."""
    if not _ENABLE_EPT.on(vmcs):
        return
    eptp = vmcs.get(_EPT_POINTER)
    levels = EPTP.walk_length_minus_1.get(eptp) + 1
    capability = EPTP.walk_lengths.get(levels)
    if capability is None or not _ept_capability(caps, capability):
        yield (f"EPT_POINTER = {eptp:#x}: a {levels}-level walk (bits {EPTP.walk_length_minus_1} + 1) is not one "
               f"IA32_VMX_EPT_VPID_CAP allows")


def _eptp_flag(vmcs: Vmcs, caps: Capabilities, flag: BitRange, capability: str, title: str) -> Iterator[str]:
    """With 'enable EPT' 1, EPTP bit ``flag`` is 0 unless IA32_VMX_EPT_VPID_CAP.``capability`` is 1."""
    if not _ENABLE_EPT.on(vmcs):
        return
    eptp = vmcs.get(_EPT_POINTER)
    if flag.get(eptp) and not _ept_capability(caps, capability):
        yield f"EPT_POINTER = {eptp:#x} sets bit {flag} ({title}) but IA32_VMX_EPT_VPID_CAP.{capability} is 0"


@entry_check("controls.eptp.accessed_dirty")
def check_eptp_accessed_dirty(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With 'enable EPT' 1, EPTP bit 6 (EPT accessed and dirty flags) is 0 unless the processor supports them."""
    return _eptp_flag(vmcs, caps, EPTP.accessed_dirty, EPTP.accessed_dirty_capability,
                      "accessed and dirty flags")


@entry_check("controls.eptp.supervisor_shadow_stack")
def check_eptp_supervisor_shadow_stack(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With 'enable EPT' 1, EPTP bit 7 (supervisor shadow-stack control) is 0 unless the processor supports it."""
    return _eptp_flag(vmcs, caps, EPTP.supervisor_shadow_stack, EPTP.supervisor_shadow_stack_capability,
                      "supervisor shadow-stack control")


@entry_check("controls.eptp.reserved_bits")
def check_eptp_reserved_bits(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With 'enable EPT' 1, EPTP bits 11:8 and the bits at and above the physical-address width are 0."""
    if not _ENABLE_EPT.on(vmcs):
        return
    eptp = vmcs.get(_EPT_POINTER)
    if EPTP.reserved.get(eptp):
        yield f"EPT_POINTER = {eptp:#x} sets reserved bits {EPTP.reserved} while {_ENABLE_EPT.describe(vmcs)} is 1"
    yield from _beyond_width(vmcs, caps, (_EPT_POINTER,), _ENABLE_EPT)


@entry_check("controls.pml.needs_ept")
def check_pml_needs_ept(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """'Enable EPT' is 1 when 'enable PML' is 1."""
    return _requires(vmcs, _ENABLE_PML, _ENABLE_EPT)


@entry_check("controls.pml.alignment")
def check_pml_alignment(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With 'enable PML' 1, the PML address is 4-KByte aligned."""
    return _misaligned(vmcs, _PML, ALIGN_4K, _ENABLE_PML)


@entry_check("controls.pml.address_width")
def check_pml_address_width(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With 'enable PML' 1, the PML address does not exceed the physical-address width."""
    return _beyond_width(vmcs, caps, _PML, _ENABLE_PML)


@entry_check("controls.unrestricted_guest.needs_ept")
def check_unrestricted_guest_needs_ept(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """'Enable EPT' is 1 when 'unrestricted guest' is 1."""
    return _requires(vmcs, _UNRESTRICTED_GUEST, _ENABLE_EPT)


@entry_check("controls.mode_based_ept_exec.needs_ept")
def check_mode_based_ept_exec_needs_ept(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """'Enable EPT' is 1 when 'mode-based execute control for EPT' is 1."""
    return _requires(vmcs, _MODE_BASED_EPT_EXEC, _ENABLE_EPT)


@entry_check("controls.spp.needs_ept")
def check_spp_needs_ept(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """'Enable EPT' is 1 when 'sub-page write permissions for EPT' is 1."""
    return _requires(vmcs, _SPP, _ENABLE_EPT)


@entry_check("controls.spp.alignment")
def check_spp_alignment(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With 'sub-page write permissions for EPT' 1, the SPPTP is 4-KByte aligned."""
    return _misaligned(vmcs, _SPPTP, ALIGN_4K, _SPP)


@entry_check("controls.spp.address_width")
def check_spp_address_width(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With 'sub-page write permissions for EPT' 1, the SPPTP does not exceed the physical-address width."""
    return _beyond_width(vmcs, caps, _SPPTP, _SPP)


@entry_check("controls.vmfunc.reserved_bits")
def check_vmfunc_reserved_bits(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With 'enable VM functions' 1, every bit set in the VM-function controls names a VM function
    IA32_VMX_VMFUNC reports as supported."""
    if not _ENABLE_VM_FUNCTIONS.on(vmcs):
        return
    controls = vmcs.get(_VM_FUNCTION_CONTROL)
    exists = caps.msr_exists("IA32_VMX_VMFUNC")
    supported = 0 if exists is False else caps.msr("IA32_VMX_VMFUNC")
    if supported is None:
        raise NotEvaluable("VM_FUNCTION_CONTROL", f"{controls:#x}", "the profile lacks IA32_VMX_VMFUNC")
    if controls & ~supported:
        yield (f"VM_FUNCTION_CONTROL = {controls:#x} sets bits {controls & ~supported:#x} that IA32_VMX_VMFUNC "
               f"does not allow while {_ENABLE_VM_FUNCTIONS.describe(vmcs)} is 1")


class _EptpSwitching:
    """The 'EPTP switching' VM function as a gate: on when 'enable VM functions' is 1 and
    VM-function control bit 0 is 1."""

    def on(self, vmcs: Vmcs) -> bool:
        return _ENABLE_VM_FUNCTIONS.on(vmcs) and bool(vmcs.get(_VM_FUNCTION_CONTROL) & _EPTP_SWITCHING_MASK)

    def describe(self, vmcs: Vmcs) -> str:
        return (f"VM function {_EPTP_SWITCHING.number} '{_EPTP_SWITCHING.title}' "
                f"(VM_FUNCTION_CONTROL = {vmcs.get(_VM_FUNCTION_CONTROL):#x})")


_EPTP_SWITCHING_ON = _EptpSwitching()


@entry_check("controls.vmfunc.eptp_switching_needs_ept")
def check_eptp_switching_needs_ept(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """'Enable EPT' is 1 when the 'EPTP switching' VM function is enabled."""
    if _EPTP_SWITCHING_ON.on(vmcs) and not _ENABLE_EPT.on(vmcs):
        yield from _requires(vmcs, _EPTP_SWITCHING_ON, _ENABLE_EPT)


@entry_check("controls.vmfunc.eptp_list_alignment")
def check_eptp_list_alignment(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With the 'EPTP switching' VM function enabled, the EPTP-list address is 4-KByte aligned."""
    return _misaligned(vmcs, _EPTP_LIST, ALIGN_4K, _EPTP_SWITCHING_ON)


@entry_check("controls.vmfunc.eptp_list_address_width")
def check_eptp_list_address_width(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With the 'EPTP switching' VM function enabled, the EPTP-list address does not exceed the
    physical-address width."""
    return _beyond_width(vmcs, caps, _EPTP_LIST, _EPTP_SWITCHING_ON)


@entry_check("controls.vmcs_shadowing.bitmap_alignment")
def check_vmcs_shadowing_bitmap_alignment(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With 'VMCS shadowing' 1, the VMREAD-bitmap and VMWRITE-bitmap addresses are 4-KByte aligned."""
    return _misaligned(vmcs, _VMCS_SHADOWING_BITMAPS, ALIGN_4K, _VMCS_SHADOWING)


@entry_check("controls.vmcs_shadowing.bitmap_address_width")
def check_vmcs_shadowing_bitmap_address_width(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With 'VMCS shadowing' 1, neither bitmap address exceeds the physical-address width."""
    return _beyond_width(vmcs, caps, _VMCS_SHADOWING_BITMAPS, _VMCS_SHADOWING)


@entry_check("controls.ept_violation_ve.alignment")
def check_ept_violation_ve_alignment(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With 'EPT-violation #VE' 1, the virtualization-exception information address is 4-KByte aligned."""
    return _misaligned(vmcs, _VE_INFORMATION, ALIGN_4K, _EPT_VIOLATION_VE)


@entry_check("controls.ept_violation_ve.address_width")
def check_ept_violation_ve_address_width(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With 'EPT-violation #VE' 1, the virtualization-exception information address does not exceed the
    physical-address width."""
    return _beyond_width(vmcs, caps, _VE_INFORMATION, _EPT_VIOLATION_VE)


_PT_USES_GPA_NEEDS = (_ENABLE_EPT, _LOAD_IA32_RTIT_CTL, _CLEAR_IA32_RTIT_CTL)


@entry_check("controls.pt_uses_gpa.dependencies")
def check_pt_uses_gpa_dependencies(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With 'Intel PT uses guest physical addresses' 1, 'enable EPT', the VM-entry control 'load
    IA32_RTIT_CTL' and the VM-exit control 'clear IA32_RTIT_CTL' are each 1."""
    for needed in _PT_USES_GPA_NEEDS:
        yield from _requires(vmcs, _PT_USES_GPA, needed)


@entry_check("controls.tsc_scaling.multiplier_nonzero")
def check_tsc_multiplier_nonzero(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With 'use TSC scaling' 1, the TSC multiplier is not 0."""
    if _USE_TSC_SCALING.on(vmcs) and vmcs.get(_TSC_MULTIPLIER) == 0:
        yield f"TSC_MULTIPLIER = 0 while {_USE_TSC_SCALING.describe(vmcs)} is 1"


@entry_check("controls.hlat.needs_ept")
def check_hlat_needs_ept(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """'Enable EPT' is 1 when the tertiary control 'enable HLAT' is 1."""
    return _requires(vmcs, _ENABLE_HLAT, _ENABLE_EPT)


@entry_check("controls.hlat.hlatp_reserved_bits")
def check_hlatp_reserved_bits(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With 'enable HLAT' 1, HLATP bits 2:0 and 11:5 are 0 (bits 4:3 are PWT and PCD)."""
    if not _ENABLE_HLAT.on(vmcs):
        return
    hlatp = vmcs.get(_HLAT_POINTER)
    if hlatp & _HLATP_RESERVED:
        yield (f"HLAT_POINTER = {hlatp:#x} sets reserved bits {hlatp & _HLATP_RESERVED:#x} "
               f"while {_ENABLE_HLAT.describe(vmcs)} is 1")


@entry_check("controls.hlat.hlatp_address_width")
def check_hlatp_address_width(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With 'enable HLAT' 1, the HLATP does not exceed the physical-address width."""
    return _beyond_width(vmcs, caps, _HLATP, _ENABLE_HLAT)


@entry_check("controls.hlat.prefix_size")
def check_hlat_prefix_size(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With 'enable HLAT' 1, the HLAT prefix size is at most IA32_VMX_EPT_VPID_CAP.max_hlat_prefix_size."""
    if not _ENABLE_HLAT.on(vmcs):
        return
    size = vmcs.get(_HLAT_PREFIX_SIZE)
    maximum = _ept_capability(caps, "max_hlat_prefix_size")
    if size > maximum:
        yield f"HLAT_PREFIX_SIZE = {size} exceeds IA32_VMX_EPT_VPID_CAP.max_hlat_prefix_size = {maximum}"


@entry_check("controls.pasid_translation.alignment")
def check_pasid_directory_alignment(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With 'PASID translation' 1, the low and high PASID-directory addresses are 4-KByte aligned."""
    return _misaligned(vmcs, _PASID_DIRECTORIES, ALIGN_4K, _PASID_TRANSLATION)


@entry_check("controls.pasid_translation.address_width")
def check_pasid_directory_address_width(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With 'PASID translation' 1, neither PASID-directory address exceeds the physical-address width."""
    return _beyond_width(vmcs, caps, _PASID_DIRECTORIES, _PASID_TRANSLATION)


@entry_check("controls.ipi_virtualization.pid_table_alignment")
def check_pid_pointer_table_alignment(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With 'IPI virtualization' 1, the PID-pointer table address is 8-byte aligned."""
    return _misaligned(vmcs, _PID_POINTER_TABLE, ALIGN_8, _IPI_VIRTUALIZATION)


@entry_check("controls.ipi_virtualization.pid_table_address_width")
def check_pid_pointer_table_address_width(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With 'IPI virtualization' 1, the PID-pointer table address does not exceed the physical-address width."""
    return _beyond_width(vmcs, caps, _PID_POINTER_TABLE, _IPI_VIRTUALIZATION)
