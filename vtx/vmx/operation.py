"""The VMX state of one logical processor: outside VMX operation, VMX root, VMX non-root.

SDM Vol. 3C §25.7 "Enabling and Entering VMX Operation" and §32.1 "Overview" (VMX Instruction
Reference): VMXON enters VMX root operation; VMLAUNCH / VMRESUME enter non-root operation; a VM
exit returns to root operation; VMXOFF leaves VMX operation. The processor keeps a VMXON pointer
and a current-VMCS pointer; VMCS regions live in physical memory with their launch states.

Memory is modelled in two parts. VMCS regions (whose data format is implementation-specific and
reached only through VMREAD / VMWRITE), VMXON regions and MSEG headers are objects keyed by
their physical address (:attr:`LogicalProcessor.regions`). Everything else the instructions read
(VMREAD / VMWRITE bitmaps, the EPTP list, the MSR-load area) comes from byte-addressed
host-physical memory (:class:`MemoryReader`). Faults of a memory operand's linear address are out of scope: pointer
operands are the 64-bit pointer values themselves.
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Mapping
from typing import Any, Protocol

import attrs

from vtx.bits import mask
from vtx.paging.memory import HostPhysAddr, PhysicalMemory
from vtx.spec import POINTERS, REGION, reg_bit
from vtx.typecheck import checked
from vtx.vmx.capabilities import Capabilities
from vtx.vmx.exits.info import AfterEntry
from vtx.vmx.vmcs import Vmcs

INVALID_POINTER = POINTERS.invalid
"""The value of the current-VMCS pointer (and of the VMCS link pointer) when it is invalid."""


class VmxMode(enum.Enum):
    OUTSIDE = "outside VMX operation"
    ROOT = "VMX root operation"
    NON_ROOT = "VMX non-root operation"


class MemoryReader(Protocol):
    """Byte-addressed host-physical memory, read as little-endian integers
    (:class:`vtx.paging.memory.PhysicalMemory` is the implementation)."""

    def read_int(self, address: HostPhysAddr, size: int) -> int: ...


@attrs.frozen
class VmxonRegion:
    """A VMXON region: only its first 32 bits are architectural (revision identifier, bit 31)."""

    header: int


@attrs.frozen
class MsegHeader:
    """The MSEG header that VMCALL reads to activate the dual-monitor treatment: the MSEG revision
    identifier (offset 0) and the SMM-monitor features field (offset 4; only bit 0, IA-32e mode SMM,
    is defined)."""

    revision_id: int
    features: int = 0


Region = Vmcs | VmxonRegion | MsegHeader


@attrs.frozen
class Segment:
    """A segment or descriptor-table register as VM entries and exits load and save it: selector,
    base, limit and access rights in the VMCS format (GDTR and IDTR use base and limit only)."""

    selector: int = 0
    base: int = 0
    limit: int = 0
    ar: int = 0

_CR0_PE = reg_bit("CR0", "PE").mask
_CR0_NE = reg_bit("CR0", "NE").mask
_CR0_PG = reg_bit("CR0", "PG").mask
_CR4_VMXE = reg_bit("CR4", "VMXE").mask
_EFER_LMA = reg_bit("IA32_EFER", "LMA").mask
_EFER_LME = reg_bit("IA32_EFER", "LME").mask
_RFLAGS_VM = reg_bit("RFLAGS", "VM").mask
_RFLAGS_FIXED1 = reg_bit("RFLAGS", "FIXED1").mask
_FC_LOCK = reg_bit("IA32_FEATURE_CONTROL", "LOCK").mask
_FC_OUTSIDE_SMX = reg_bit("IA32_FEATURE_CONTROL", "VMX_OUTSIDE_SMX").mask
_FC_INSIDE_SMX = reg_bit("IA32_FEATURE_CONTROL", "VMX_INSIDE_SMX").mask


@attrs.frozen
class LogicalProcessor:
    """One logical processor's VMX-relevant state (registers as the current mode sees them)."""

    mode: VmxMode = VmxMode.OUTSIDE
    cpl: int = 0
    cr0: int = _CR0_PE | _CR0_NE | _CR0_PG
    cr4: int = _CR4_VMXE
    efer: int = _EFER_LMA | _EFER_LME
    rflags: int = _RFLAGS_FIXED1
    cs_l: bool = True
    feature_control: int = _FC_LOCK | _FC_OUTSIDE_SMX
    in_smx: bool = False
    in_smm: bool = False
    a20m: bool = False
    blocking_by_mov_ss: bool = False
    smm_monitor_ctl: int = 0
    dual_monitor_active: bool = False
    vmxon_pointer: int | None = None
    current_vmcs: int = INVALID_POINTER
    regions: Mapping[int, Region] = attrs.field(factory=dict)
    memory: MemoryReader = attrs.field(factory=PhysicalMemory)
    rip: int = 0
    rsp: int = 0
    cr3: int = 0
    dr7: int = 0
    segments: Mapping[str, Segment] = attrs.field(factory=dict)
    """ES, CS, SS, DS, FS, GS, LDTR, TR, GDTR, IDTR by name; a missing one reads as all zeros."""
    msrs: Mapping[int, int] = attrs.field(factory=dict)
    """The current values of MSRs by index (IA32_EFER is :attr:`efer`, FS/GS base the segment bases);
    the MSR areas and the MSR controls of VM entries and exits read and write them."""
    interruptibility: int = 0
    """The interruptibility state in the VMCS format; its blocking-by-MOV-SS bit is
    :attr:`blocking_by_mov_ss`."""
    activity_state: int = 0
    pending_debug_exceptions: int = 0
    preemption_timer: int = 0
    """The VMX-preemption timer's current value in VMX non-root operation."""
    shutdown: bool = False
    """The processor is in the shutdown state (after a VMX abort, SDM Vol. 3C §29.7)."""
    after_entry: AfterEntry | None = None
    """What the guest meets first after the last successful VM entry (event injection, and a VM exit
    due before its first instruction)."""

    # ------------------------------------------------------------------ predicates

    @property
    def in_vmx_operation(self) -> bool:
        return self.mode is not VmxMode.OUTSIDE

    @property
    def is_protected_mode(self) -> bool:
        return bool(self.cr0 & _CR0_PE)

    @property
    def is_virtual_8086(self) -> bool:
        return bool(self.rflags & _RFLAGS_VM)

    @property
    def is_ia32e_mode(self) -> bool:
        """IA32_EFER.LMA = 1."""
        return bool(self.efer & _EFER_LMA)

    @property
    def is_compatibility_mode(self) -> bool:
        """IA-32e mode active with CS.L = 0."""
        return bool(self.efer & _EFER_LMA) and not self.cs_l

    @property
    def has_current_vmcs(self) -> bool:
        return self.current_vmcs != INVALID_POINTER

    def get_current_vmcs(self) -> Vmcs:
        """The current VMCS (the processor must have one)."""
        region = self.regions.get(self.current_vmcs)
        assert isinstance(region, Vmcs), "the current-VMCS pointer always references a VMCS region"
        return region

    @checked
    def get_vmcs(self, address: int) -> Vmcs:
        """The VMCS region at ``address`` as the processor would use it (one is made from the
        32-bit header in memory if no VMCS object is there yet)."""
        region = self.regions.get(address)
        if isinstance(region, Vmcs):
            return region
        header = read_region_header(self, address)
        return Vmcs(revision_id=REGION.revision_id.get(header), shadow=bool(REGION.shadow_indicator.get(header)))

    def with_region(self, address: int, region: Region) -> LogicalProcessor:
        """A copy with ``region`` placed at physical address ``address``."""
        return self.replace(regions={**self.regions, address: region})

    def replace(self, **changes: Any) -> LogicalProcessor:
        """``attrs.evolve(self, **changes)``, faster: the attributes are read in one call and passed to
        ``__init__`` by position (the class has no converters or validators; tested equal to evolve). The
        transitions of every VM entry and exit copy the processor several times."""
        values = list(_attribute_values(self))
        for name, value in changes.items():
            values[_ATTRIBUTE_POSITION[name]] = value
        return LogicalProcessor(*values)

    @checked
    def vmx_cr_fixed_ok(self, caps: Capabilities) -> bool | None:
        """Whether CR0 and CR4 satisfy IA32_VMX_CR0/CR4_FIXED0/1 (Appendix A.7, A.8): every bit
        that is 1 in FIXED0 is 1, every bit that is 0 in FIXED1 is 0. None if unknown."""
        values = [caps.msr(f"IA32_VMX_{r}_FIXED{n}") for r in ("CR0", "CR4") for n in (0, 1)]
        if any(v is None for v in values):
            return None
        cr0_f0, cr0_f1, cr4_f0, cr4_f1 = (v or 0 for v in values)
        return (self.cr0 & cr0_f0 == cr0_f0 and self.cr0 & ~cr0_f1 & mask(64) == 0
                and self.cr4 & cr4_f0 == cr4_f0 and self.cr4 & ~cr4_f1 & mask(64) == 0)

    def vmx_allowed_by_feature_control(self) -> bool:
        """IA32_FEATURE_CONTROL is locked and enables VMX in the current SMX state."""
        enable = _FC_INSIDE_SMX if self.in_smx else _FC_OUTSIDE_SMX
        return bool(self.feature_control & _FC_LOCK) and bool(self.feature_control & enable)


_ATTRIBUTES: tuple[attrs.Attribute[Any], ...] = attrs.fields(LogicalProcessor)
_ATTRIBUTE_POSITION = {a.name: n for n, a in enumerate(_ATTRIBUTES)}
_attribute_values = operator.attrgetter(*_ATTRIBUTE_POSITION)
if any(a.converter or a.validator or not a.init or a.kw_only or a.alias != a.name for a in _ATTRIBUTES):
    raise AssertionError("LogicalProcessor.replace passes every attribute to __init__ by position")


@checked
def read_region_header(state: LogicalProcessor, address: int) -> int:
    """The 32 bits at ``address``: a region's revision identifier and bit 31."""
    return region_header(state.regions, state.memory, address)


@checked
def region_header(regions: Mapping[int, Region], memory: MemoryReader, address: int) -> int:
    """The 32 bits at ``address`` given the regions and the byte memory."""
    region = regions.get(address)
    if isinstance(region, Vmcs):
        return REGION.shadow_indicator.put(region.revision_id, int(region.shadow))
    if isinstance(region, VmxonRegion):
        return region.header
    if isinstance(region, MsegHeader):
        return region.revision_id
    return memory.read_int(HostPhysAddr(address), 4)


def physical_address_width(caps: Capabilities) -> int:
    """The width that VMX pointers must fit: 32 if IA32_VMX_BASIC[48] is set, else MAXPHYADDR."""
    if caps.msr_field("IA32_VMX_BASIC", "phys_addr_width_32"):
        return 32
    return caps.require_fact("MAXPHYADDR")


@checked
def is_valid_region_pointer(address: int, caps: Capabilities) -> bool:
    """4-KByte aligned and within the physical-address width (the VMXON, VMCLEAR and VMPTRLD rule)."""
    return address % POINTERS.alignment == 0 and address >> physical_address_width(caps) == 0
