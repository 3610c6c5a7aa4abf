"""Checks on guest non-register state and PDPTEs (SDM Vol. 3C §28.3.1.5 "Checks on Guest Non-Register
State", §28.3.1.6 "Checks on Guest Page-Directory-Pointer-Table Entries"); exit reason 33."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from vtx import spec
from vtx.bits import mask
from vtx.errors import NotEvaluable, SpecError
from vtx.spec import POINTERS, REGION, REGISTERS, VMCS_FIELDS, reg_bit
from vtx.vmx.capabilities import Capabilities
from vtx.vmx.entry import EntryContext, entry_check
from vtx.vmx.entry.common import (
    control_flag,
    cpuid_support,
    ia32e_guest_sets_cr4_fred,
    is_ia32e_guest,
    required_msr_field,
)
from vtx.vmx.operation import INVALID_POINTER, physical_address_width
from vtx.vmx.vmcs import Vmcs

# ----------------------------------------------------------------------------- tables

OWN_TABLE = "x86/guest_non_register.toml"
EVENT_TABLE = "x86/exit_entry_controls.toml"


def _row(table: spec._Table, kind: str, key: str, name: str) -> Mapping[str, Any]:
    """The ``[[kind]]`` row of ``table`` whose ``key`` is ``name``; SpecError if there is none."""
    for r in table.rows(kind):
        if r.get(key) == name:
            return r
    raise SpecError(f"{table.relpath} [[{kind}]]", name, f"no row with {key} = {name!r}")


_OWN = spec._Table(OWN_TABLE)
_EVENTS = spec._Table(EVENT_TABLE)

ACTIVITY_STATES: Mapping[int, str] = {int(r["value"]): str(r["name"]) for r in _OWN.rows("value")
                                      if r["of"] == "GUEST_ACTIVITY_STATE"}
"""The activity states by value (SDM Vol. 3C §26.4.2): 0 active, 1 HLT, 2 shutdown, 3 wait-for-SIPI."""
_STATE = {name: value for value, name in ACTIVITY_STATES.items()}
ACTIVE, HLT, SHUTDOWN, WAIT_FOR_SIPI = (_STATE[n] for n in ("active", "HLT", "shutdown", "wait-for-SIPI"))
_ACTIVITY_CAPABILITY = {HLT: "activity_hlt", SHUTDOWN: "activity_shutdown", WAIT_FOR_SIPI: "activity_wait_for_sipi"}
"""The IA32_VMX_MISC bit that reports support for each inactive state."""

EXTERNAL_INTERRUPT, NMI, HARDWARE_EXCEPTION, OTHER_EVENT = (
    int(_row(_EVENTS, "interruption_type", "name", n)["value"])
    for n in ("external_interrupt", "nmi", "hardware_exception", "other_event"))
VECTOR_DB, VECTOR_MC = (int(_row(_EVENTS, "exception", "mnemonic", m)["vector"]) for m in ("DB", "MC"))
PENDING_MTF = int(_row(_EVENTS, "other_event", "name", "pending_mtf_vm_exit")["vector"])


# ----------------------------------------------------------------------------- fields and bits

_ACTIVITY = VMCS_FIELDS["GUEST_ACTIVITY_STATE"]
_INTERRUPTIBILITY = VMCS_FIELDS["GUEST_INTERRUPTIBILITY_INFO"]
_INTR_INFO = VMCS_FIELDS["VM_ENTRY_INTR_INFO_FIELD"]
_PENDING_DBG = VMCS_FIELDS["GUEST_PENDING_DBG_EXCEPTIONS"]
_RFLAGS = VMCS_FIELDS["GUEST_RFLAGS"]
_SS_AR = VMCS_FIELDS["GUEST_SS_AR_BYTES"]
_DEBUGCTL = VMCS_FIELDS["GUEST_IA32_DEBUGCTL"]
_LINK = VMCS_FIELDS["VMCS_LINK_POINTER"]
_CR0 = VMCS_FIELDS["GUEST_CR0"]
_CR3 = VMCS_FIELDS["GUEST_CR3"]
_CR4 = VMCS_FIELDS["GUEST_CR4"]
_PDPTR = tuple(VMCS_FIELDS[f"GUEST_PDPTR{i}"] for i in range(4))

_STI = reg_bit("VMCS_INTERRUPTIBILITY", "BLOCKING_BY_STI").mask
_MOV_SS = reg_bit("VMCS_INTERRUPTIBILITY", "BLOCKING_BY_MOV_SS").mask
_SMI = reg_bit("VMCS_INTERRUPTIBILITY", "BLOCKING_BY_SMI").mask
_NMI_BLOCKING = reg_bit("VMCS_INTERRUPTIBILITY", "BLOCKING_BY_NMI").mask
_ENCLAVE = reg_bit("VMCS_INTERRUPTIBILITY", "ENCLAVE_INTERRUPTION").mask
_INTERRUPTIBILITY_DEFINED = sum(b.mask for b in REGISTERS["VMCS_INTERRUPTIBILITY"].bits)
_INTERRUPTIBILITY_RESERVED = mask(_INTERRUPTIBILITY.bits) & ~_INTERRUPTIBILITY_DEFINED

_INTR_VALID = reg_bit("VM_ENTRY_INTERRUPTION_INFO", "VALID").mask
_INTR_TYPE = reg_bit("VM_ENTRY_INTERRUPTION_INFO", "TYPE").bits
_INTR_VECTOR = reg_bit("VM_ENTRY_INTERRUPTION_INFO", "VECTOR").bits

_PENDING_DBG_DEFINED = sum(b.mask for b in REGISTERS["VMCS_PENDING_DEBUG_EXCEPTIONS"].bits)
_PENDING_DBG_RESERVED = mask(_PENDING_DBG.bits) & ~_PENDING_DBG_DEFINED
_BS = reg_bit("VMCS_PENDING_DEBUG_EXCEPTIONS", "BS").mask
_RTM = reg_bit("VMCS_PENDING_DEBUG_EXCEPTIONS", "RTM").mask
_ENABLED_BREAKPOINT = reg_bit("VMCS_PENDING_DEBUG_EXCEPTIONS", "ENABLED_BREAKPOINT").mask

_RFLAGS_IF = reg_bit("RFLAGS", "IF").mask
_RFLAGS_TF = reg_bit("RFLAGS", "TF").mask
_BTF = reg_bit("IA32_DEBUGCTL", "BTF").mask
_SS_DPL = reg_bit("VMCS_ACCESS_RIGHTS", "DPL").bits
_CR0_PG = reg_bit("CR0", "PG").mask
_CR4_PAE = reg_bit("CR4", "PAE").mask

_ENTRY_TO_SMM = control_flag("entry", "entry_to_smm")
_VIRTUAL_NMIS = control_flag("pin", "virtual_nmis")
_VMCS_SHADOWING = control_flag("proc2", "vmcs_shadowing")
_ENABLE_EPT = control_flag("proc2", "enable_ept")

_PDPT_ADDRESS = reg_bit("CR3_PAE", "PDPT_ADDRESS").bits
_PDPTE_BYTES = 8
"""A PAE PDPTE is 64 bits (SDM Vol. 3A §5.4.1 "PDPTE Registers")."""
_PDPTE_P = reg_bit("PAE_PDPTE", "P").mask
_PDPTE_RESERVED = reg_bit("PAE_PDPTE", "RESERVED_2_1").mask | reg_bit("PAE_PDPTE", "RESERVED_8_5").mask


# ----------------------------------------------------------------------------- shared helpers


def _activity_name(state: int) -> str:
    return f"GUEST_ACTIVITY_STATE = {state} ({ACTIVITY_STATES.get(state, 'undefined')})"


def _injected(vmcs: Vmcs) -> tuple[int, int] | None:
    """The (interruption type, vector) that VM entry injects, or None if the valid bit is 0."""
    info = vmcs.get(_INTR_INFO)
    if not info & _INTR_VALID:
        return None
    return _INTR_TYPE.get(info), _INTR_VECTOR.get(info)


def _injects(vmcs: Vmcs, interruption_type: int) -> bool:
    event = _injected(vmcs)
    return event is not None and event[0] == interruption_type


def _ss_dpl(vmcs: Vmcs) -> int:
    return _SS_DPL.get(vmcs.get(_SS_AR))


# ----------------------------------------------------------------------------- activity state


@entry_check("guest.activity.supported")
def check_activity_supported(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """The activity state is 0 (active), 1 (HLT), 2 (shutdown) or 3 (wait-for-SIPI), and an inactive
    state only if IA32_VMX_MISC reports it supported."""
    state = vmcs.get(_ACTIVITY)
    if state == ACTIVE:
        return
    bitfield = _ACTIVITY_CAPABILITY.get(state)
    if bitfield is None:
        defined = ", ".join(f"{v} {n}" for v, n in ACTIVITY_STATES.items())
        yield f"{_activity_name(state)} is not an activity state ({defined})"
        return
    if not required_msr_field(caps, "IA32_VMX_MISC", bitfield, "GUEST_ACTIVITY_STATE", state):
        yield f"{_activity_name(state)} is not supported: IA32_VMX_MISC.{bitfield} is 0"


@entry_check("guest.activity.hlt_needs_dpl0")
def check_activity_hlt_needs_dpl0(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """The activity state is not HLT when the SS DPL is not 0."""
    if vmcs.get(_ACTIVITY) == HLT and _ss_dpl(vmcs) != 0:
        yield f"{_activity_name(HLT)} but GUEST_SS_AR_BYTES = {vmcs.get(_SS_AR):#x} has DPL {_ss_dpl(vmcs)}, not 0"


@entry_check("guest.activity.blocking_needs_active")
def check_activity_blocking_needs_active(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """The activity state is active when the interruptibility state shows blocking by STI or MOV SS."""
    blocking = vmcs.get(_INTERRUPTIBILITY) & (_STI | _MOV_SS)
    state = vmcs.get(_ACTIVITY)
    if blocking and state != ACTIVE:
        yield (f"GUEST_INTERRUPTIBILITY_INFO = {vmcs.get(_INTERRUPTIBILITY):#x} shows blocking by STI or MOV SS, "
               f"so the activity state must be active, not {_activity_name(state)}")


def _admitted(state: int, interruption_type: int, vector: int) -> bool:
    """Whether an inactive activity state admits the injection of this event."""
    if state == HLT:
        return (interruption_type in (EXTERNAL_INTERRUPT, NMI)
                or (interruption_type == HARDWARE_EXCEPTION and vector in (VECTOR_DB, VECTOR_MC))
                or (interruption_type == OTHER_EVENT and vector == PENDING_MTF))
    if state == SHUTDOWN:
        return interruption_type == NMI or (interruption_type == HARDWARE_EXCEPTION and vector == VECTOR_MC)
    return False  # wait-for-SIPI admits no event


@entry_check("guest.activity.injection_allowed")
def check_activity_injection_allowed(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """An injected event is one the activity state admits: any when active; in HLT external interrupts,
    NMIs, #DB and #MC hardware exceptions and pending MTF VM exits; in shutdown NMIs and #MC; in
    wait-for-SIPI none."""
    event = _injected(vmcs)
    state = vmcs.get(_ACTIVITY)
    if event is None or state not in _ACTIVITY_CAPABILITY:
        return
    if not _admitted(state, *event):
        yield (f"VM_ENTRY_INTR_INFO_FIELD = {vmcs.get(_INTR_INFO):#x} injects type {event[0]} vector {event[1]}, "
               f"an event that {_activity_name(state)} does not admit")


@entry_check("guest.activity.no_wait_for_sipi_on_smm_entry")
def check_activity_no_wait_for_sipi_on_smm_entry(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """The activity state is not wait-for-SIPI when the 'entry to SMM' VM-entry control is 1."""
    if _ENTRY_TO_SMM.on(vmcs) and vmcs.get(_ACTIVITY) == WAIT_FOR_SIPI:
        yield f"{_activity_name(WAIT_FOR_SIPI)} with the 'entry to SMM' VM-entry control 1"


# ----------------------------------------------------------------------------- interruptibility state


@entry_check("guest.interruptibility.reserved_bits")
def check_interruptibility_reserved_bits(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """Reserved bits 31:5 of the interruptibility-state field are 0."""
    value = vmcs.get(_INTERRUPTIBILITY)
    if value & _INTERRUPTIBILITY_RESERVED:
        yield f"GUEST_INTERRUPTIBILITY_INFO = {value:#x} sets reserved bits {value & _INTERRUPTIBILITY_RESERVED:#x}"


@entry_check("guest.interruptibility.sti_and_mov_ss")
def check_interruptibility_sti_and_mov_ss(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """The interruptibility state does not show blocking by both STI and MOV SS."""
    value = vmcs.get(_INTERRUPTIBILITY)
    if value & _STI and value & _MOV_SS:
        yield f"GUEST_INTERRUPTIBILITY_INFO = {value:#x} shows blocking by both STI (bit 0) and MOV SS (bit 1)"


@entry_check("guest.interruptibility.sti_needs_if")
def check_interruptibility_sti_needs_if(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """Blocking by STI is 0 when RFLAGS.IF is 0."""
    value = vmcs.get(_INTERRUPTIBILITY)
    if value & _STI and not vmcs.get(_RFLAGS) & _RFLAGS_IF:
        yield (f"GUEST_INTERRUPTIBILITY_INFO = {value:#x} shows blocking by STI but "
               f"GUEST_RFLAGS = {vmcs.get(_RFLAGS):#x} has IF = 0")


def _blocking_on_injection(vmcs: Vmcs, interruption_type: int, blocking: int, event: str) -> Iterator[str]:
    """Shared shape: injecting an event of ``interruption_type`` requires the ``blocking`` bits clear."""
    value = vmcs.get(_INTERRUPTIBILITY)
    if _injects(vmcs, interruption_type) and value & blocking:
        yield (f"VM_ENTRY_INTR_INFO_FIELD = {vmcs.get(_INTR_INFO):#x} injects {event} but "
               f"GUEST_INTERRUPTIBILITY_INFO = {value:#x} sets bits {value & blocking:#x}, which must be 0")


@entry_check("guest.interruptibility.external_interrupt_unblocked")
def check_interruptibility_external_interrupt_unblocked(vmcs: Vmcs, caps: Capabilities,
                                                        ctx: EntryContext) -> Iterator[str]:
    """Blocking by STI and by MOV SS are both 0 when an external interrupt is injected."""
    return _blocking_on_injection(vmcs, EXTERNAL_INTERRUPT, _STI | _MOV_SS, "an external interrupt")


@entry_check("guest.interruptibility.nmi_mov_ss")
def check_interruptibility_nmi_mov_ss(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """Blocking by MOV SS is 0 when an NMI is injected."""
    return _blocking_on_injection(vmcs, NMI, _MOV_SS, "an NMI")


@entry_check("guest.interruptibility.smi_outside_smm")
def check_interruptibility_smi_outside_smm(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """Blocking by SMI is 0 when the VM entry is executed outside SMM."""
    value = vmcs.get(_INTERRUPTIBILITY)
    if not ctx.in_smm and value & _SMI:
        yield f"GUEST_INTERRUPTIBILITY_INFO = {value:#x} shows blocking by SMI (bit 2) on a VM entry outside SMM"


@entry_check("guest.interruptibility.smi_on_smm_entry")
def check_interruptibility_smi_on_smm_entry(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """Blocking by SMI is 1 when the 'entry to SMM' VM-entry control is 1."""
    value = vmcs.get(_INTERRUPTIBILITY)
    if _ENTRY_TO_SMM.on(vmcs) and not value & _SMI:
        yield (f"GUEST_INTERRUPTIBILITY_INFO = {value:#x} does not show blocking by SMI (bit 2) although the "
               "'entry to SMM' VM-entry control is 1")


@entry_check("guest.interruptibility.nmi_sti")
def check_interruptibility_nmi_sti(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """Blocking by STI is 0 when an NMI is injected (a failure reports exit qualification 3)."""
    return _blocking_on_injection(vmcs, NMI, _STI, "an NMI")


@entry_check("guest.interruptibility.virtual_nmi_blocking")
def check_interruptibility_virtual_nmi_blocking(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """Blocking by NMI is 0 when an NMI is injected and the 'virtual NMIs' control is 1."""
    if _VIRTUAL_NMIS.on(vmcs):
        yield from _blocking_on_injection(vmcs, NMI, _NMI_BLOCKING, "an NMI with 'virtual NMIs' 1")


@entry_check("guest.interruptibility.enclave_mov_ss")
def check_interruptibility_enclave_mov_ss(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """Blocking by MOV SS is 0 when the enclave-interruption bit is 1."""
    value = vmcs.get(_INTERRUPTIBILITY)
    if value & _ENCLAVE and value & _MOV_SS:
        yield (f"GUEST_INTERRUPTIBILITY_INFO = {value:#x} sets enclave interruption (bit 4) together with "
               "blocking by MOV SS (bit 1)")


@entry_check("guest.interruptibility.enclave_needs_sgx")
def check_interruptibility_enclave_needs_sgx(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """The enclave-interruption bit is 1 only on a processor that supports SGX."""
    value = vmcs.get(_INTERRUPTIBILITY)
    if value & _ENCLAVE and not cpuid_support(caps, "CPUID_SGX", "GUEST_INTERRUPTIBILITY_INFO"):
        yield f"GUEST_INTERRUPTIBILITY_INFO = {value:#x} sets enclave interruption (bit 4) but the processor lacks SGX"


@entry_check("guest.interruptibility.fred_sti")
def check_interruptibility_fred_sti(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """Blocking by STI is 0 when the guest will use FRED transitions and the SS DPL is 3."""
    value = vmcs.get(_INTERRUPTIBILITY)
    if ia32e_guest_sets_cr4_fred(vmcs) and _ss_dpl(vmcs) == 3 and value & _STI:
        yield (f"GUEST_INTERRUPTIBILITY_INFO = {value:#x} shows blocking by STI in a guest that will use FRED "
               "transitions with SS DPL 3")


# ----------------------------------------------------------------------------- pending debug exceptions


@entry_check("guest.pending_debug.reserved_bits")
def check_pending_debug_reserved_bits(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """Reserved bits 11:4, 13, 15 and 63:17 of the pending-debug-exceptions field are 0."""
    value = vmcs.get(_PENDING_DBG)
    if value & _PENDING_DBG_RESERVED:
        yield f"GUEST_PENDING_DBG_EXCEPTIONS = {value:#x} sets reserved bits {value & _PENDING_DBG_RESERVED:#x}"


@entry_check("guest.pending_debug.bs")
def check_pending_debug_bs(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With blocking by STI or MOV SS, or in the HLT state, BS is 1 exactly when RFLAGS.TF is 1 and
    IA32_DEBUGCTL.BTF is 0."""
    if not (vmcs.get(_INTERRUPTIBILITY) & (_STI | _MOV_SS) or vmcs.get(_ACTIVITY) == HLT):
        return
    value, rflags, debugctl = vmcs.get(_PENDING_DBG), vmcs.get(_RFLAGS), vmcs.get(_DEBUGCTL)
    single_step = bool(rflags & _RFLAGS_TF) and not debugctl & _BTF
    if bool(value & _BS) != single_step:
        yield (f"GUEST_PENDING_DBG_EXCEPTIONS = {value:#x} has BS (bit 14) = {int(bool(value & _BS))} but must be "
               f"{int(single_step)}: GUEST_RFLAGS = {rflags:#x} (TF = {int(bool(rflags & _RFLAGS_TF))}), "
               f"GUEST_IA32_DEBUGCTL = {debugctl:#x} (BTF = {int(bool(debugctl & _BTF))})")


@entry_check("guest.pending_debug.rtm_bits")
def check_pending_debug_rtm_bits(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With RTM (bit 16) set, every other bit of the pending-debug-exceptions field is 0 except bit 12
    (enabled breakpoint), which is 1."""
    value = vmcs.get(_PENDING_DBG)
    if not value & _RTM:
        return
    others = value & ~(_RTM | _ENABLED_BREAKPOINT)
    if others:
        yield f"GUEST_PENDING_DBG_EXCEPTIONS = {value:#x} sets RTM (bit 16) and bits {others:#x}, which must be 0"
    if not value & _ENABLED_BREAKPOINT:
        yield f"GUEST_PENDING_DBG_EXCEPTIONS = {value:#x} sets RTM (bit 16) but not enabled breakpoint (bit 12)"


@entry_check("guest.pending_debug.rtm_needs_rtm")
def check_pending_debug_rtm_needs_rtm(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """RTM (bit 16) of the pending-debug-exceptions field is 1 only on a processor that supports RTM."""
    value = vmcs.get(_PENDING_DBG)
    if value & _RTM and not cpuid_support(caps, "CPUID_RTM", "GUEST_PENDING_DBG_EXCEPTIONS"):
        yield f"GUEST_PENDING_DBG_EXCEPTIONS = {value:#x} sets RTM (bit 16) but the processor lacks RTM"


@entry_check("guest.pending_debug.rtm_mov_ss")
def check_pending_debug_rtm_mov_ss(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With RTM (bit 16) set, the interruptibility state does not show blocking by MOV SS."""
    value, blocking = vmcs.get(_PENDING_DBG), vmcs.get(_INTERRUPTIBILITY)
    if value & _RTM and blocking & _MOV_SS:
        yield (f"GUEST_PENDING_DBG_EXCEPTIONS = {value:#x} sets RTM (bit 16) while GUEST_INTERRUPTIBILITY_INFO = "
               f"{blocking:#x} shows blocking by MOV SS")


# ----------------------------------------------------------------------------- VMCS link pointer


def _link_pointer(vmcs: Vmcs) -> int | None:
    """The VMCS link pointer, or None when it is FFFFFFFF_FFFFFFFFH (no rule then applies)."""
    link = vmcs.get(_LINK)
    return None if link == INVALID_POINTER else link


@entry_check("guest.vmcs_link.alignment")
def check_vmcs_link_alignment(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """A VMCS link pointer other than FFFFFFFF_FFFFFFFFH is 4-KByte aligned (bits 11:0 are 0)."""
    link = _link_pointer(vmcs)
    if link is not None and link % POINTERS.alignment:
        yield f"VMCS_LINK_POINTER = {link:#x} is not {POINTERS.alignment:#x}-byte aligned"


@entry_check("guest.vmcs_link.address_width")
def check_vmcs_link_address_width(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """A VMCS link pointer other than FFFFFFFF_FFFFFFFFH sets no bit beyond the physical-address width."""
    link = _link_pointer(vmcs)
    if link is None:
        return
    width = physical_address_width(caps)
    if link >> width:
        yield f"VMCS_LINK_POINTER = {link:#x} sets bits beyond the {width}-bit physical-address width"


@entry_check("guest.vmcs_link.revision_id")
def check_vmcs_link_revision_id(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """The region the VMCS link pointer references holds the processor's VMCS revision identifier."""
    link = _link_pointer(vmcs)
    if link is None:
        return
    expected = required_msr_field(caps, "IA32_VMX_BASIC", "vmcs_revision_id", "VMCS_LINK_POINTER", hex(link))
    found = REGION.revision_id.get(ctx.region_header(link))
    if found != expected:
        yield (f"the region at VMCS_LINK_POINTER = {link:#x} has revision identifier {found:#x}, "
               f"not the processor's {expected:#x} (IA32_VMX_BASIC)")


@entry_check("guest.vmcs_link.shadow_indicator")
def check_vmcs_link_shadow_indicator(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """Bit 31 of the region the VMCS link pointer references equals the 'VMCS shadowing' control."""
    link = _link_pointer(vmcs)
    if link is None:
        return
    shadow = REGION.shadow_indicator.get(ctx.region_header(link))
    shadowing = int(_VMCS_SHADOWING.on(vmcs))
    if shadow != shadowing:
        yield (f"the region at VMCS_LINK_POINTER = {link:#x} has shadow-VMCS indicator {shadow} but the "
               f"'VMCS shadowing' control is {shadowing}")


@entry_check("guest.vmcs_link.not_current_vmcs")
def check_vmcs_link_not_current_vmcs(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """Outside SMM, or with 'entry to SMM' 1, the VMCS link pointer is not the current-VMCS pointer."""
    link = _link_pointer(vmcs)
    if link is None or (ctx.in_smm and not _ENTRY_TO_SMM.on(vmcs)):
        return
    if ctx.current_vmcs is None:
        raise NotEvaluable("VMCS_LINK_POINTER", hex(link), "the entry context gives no current-VMCS pointer")
    if link == ctx.current_vmcs:
        yield f"VMCS_LINK_POINTER = {link:#x} is the current-VMCS pointer"


@entry_check("guest.vmcs_link.not_vmxon_pointer")
def check_vmcs_link_not_vmxon_pointer(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """In SMM with 'entry to SMM' 0, the VMCS link pointer is not the VMXON pointer."""
    link = _link_pointer(vmcs)
    if link is None or not ctx.in_smm or _ENTRY_TO_SMM.on(vmcs):
        return
    if ctx.vmxon_pointer is None:
        raise NotEvaluable("VMCS_LINK_POINTER", hex(link), "the entry context gives no VMXON pointer")
    if link == ctx.vmxon_pointer:
        yield f"VMCS_LINK_POINTER = {link:#x} is the VMXON pointer (VM entry in SMM with 'entry to SMM' 0)"


# ----------------------------------------------------------------------------- guest PDPTEs


def _uses_pae_paging(vmcs: Vmcs) -> bool:
    """CR0.PG = 1, CR4.PAE = 1 and 'IA-32e mode guest' = 0: the guest will use PAE paging."""
    return (bool(vmcs.get(_CR0) & _CR0_PG) and bool(vmcs.get(_CR4) & _CR4_PAE)
            and not is_ia32e_guest(vmcs))


def _pdpte_problems(pdptes: Iterator[tuple[str, int]], caps: Capabilities) -> Iterator[str]:
    """Each present PDPTE sets no reserved bit: 2:1, 8:5 and 63:MAXPHYADDR."""
    reserved = _PDPTE_RESERVED | (mask(_PDPTR[0].bits) & ~mask(caps.require_fact("MAXPHYADDR")))
    for where, pdpte in pdptes:
        if pdpte & _PDPTE_P and pdpte & reserved:
            yield f"{where} = {pdpte:#x} is present and sets reserved bits {pdpte & reserved:#x}"


@entry_check("guest.pdptes.fields")
def check_pdptes_fields(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With PAE paging and EPT, each present guest PDPTE field sets no reserved bit."""
    if _uses_pae_paging(vmcs) and _ENABLE_EPT.on(vmcs):
        yield from _pdpte_problems(((f"PDPTE{i} ({field.name})", vmcs.get(field)) for i, field in enumerate(_PDPTR)),
                                   caps)


def _pdpt_entries(vmcs: Vmcs, ctx: EntryContext) -> Iterator[tuple[str, int]]:
    base = _PDPT_ADDRESS.get(vmcs.get(_CR3)) << _PDPT_ADDRESS.lo
    for i in range(len(_PDPTR)):
        address = base + i * _PDPTE_BYTES
        yield f"PDPTE{i} (at {address:#x}, from GUEST_CR3 = {vmcs.get(_CR3):#x})", ctx.read_int(address, _PDPTE_BYTES)


@entry_check("guest.pdptes.memory")
def check_pdptes_memory(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """With PAE paging and without EPT, each present PDPTE of the table guest CR3 references sets no
    reserved bit."""
    if _uses_pae_paging(vmcs) and not _ENABLE_EPT.on(vmcs):
        yield from _pdpte_problems(_pdpt_entries(vmcs, ctx), caps)

