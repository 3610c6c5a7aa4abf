"""VM-entry checks on guest non-register state and guest PDPTEs (vtx/vmx/entry/guest_non_register.py).

Each rejecting case breaks exactly one check of a template and expects a VM-entry failure with exit
reason 33 and the catalogue's qualification; each accepting case is the nearest input that passes.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import pytest

from vtx import spec
from vtx.paging.memory import PhysicalMemory
from vtx.spec import get_control, reg_bit
from vtx.vmx.capabilities import Capabilities, load_preset
from vtx.vmx.entry import EntryContext, EntryVerdict, evaluate_vm_entry
from vtx.vmx.entry.guest_non_register import (
    EXTERNAL_INTERRUPT,
    HARDWARE_EXCEPTION,
    HLT,
    NMI,
    OTHER_EVENT,
    PENDING_MTF,
    SHUTDOWN,
    VECTOR_DB,
    VECTOR_MC,
    WAIT_FOR_SIPI,
)
from vtx.vmx.operation import VmxonRegion
from vtx.vmx.templates import build_template
from vtx.vmx.vmcs import Vmcs

SKYLAKE = load_preset("skylake_client")
IVYBRIDGE = load_preset("ivybridge_client")
RAPTORLAKE = load_preset("raptorlake_client")
MAX = load_preset("max")
_MISC = SKYLAKE.msr("IA32_VMX_MISC") or 0
NO_HLT = attrs.evolve(SKYLAKE, name="skylake without HLT",
                      msrs={**SKYLAKE.msrs, "IA32_VMX_MISC": _MISC & ~(1 << 6)})  # IA32_VMX_MISC.activity_hlt
NO_MISC = attrs.evolve(SKYLAKE, name="skylake without IA32_VMX_MISC",
                       msrs={k: v for k, v in SKYLAKE.msrs.items() if k != "IA32_VMX_MISC"})
PRESETS = {"skylake": SKYLAKE, "ivybridge": IVYBRIDGE, "raptorlake": RAPTORLAKE, "max": MAX, "no_hlt": NO_HLT}

INVALID_STATE = spec.get_exit_reason("INVALID_STATE")

STI = reg_bit("VMCS_INTERRUPTIBILITY", "BLOCKING_BY_STI").mask
MOV_SS = reg_bit("VMCS_INTERRUPTIBILITY", "BLOCKING_BY_MOV_SS").mask
SMI = reg_bit("VMCS_INTERRUPTIBILITY", "BLOCKING_BY_SMI").mask
NMI_BLOCKING = reg_bit("VMCS_INTERRUPTIBILITY", "BLOCKING_BY_NMI").mask
ENCLAVE = reg_bit("VMCS_INTERRUPTIBILITY", "ENCLAVE_INTERRUPTION").mask
B0 = reg_bit("VMCS_PENDING_DEBUG_EXCEPTIONS", "B0_B3").bits.put(0, 1)
ENABLED_BP = reg_bit("VMCS_PENDING_DEBUG_EXCEPTIONS", "ENABLED_BREAKPOINT").mask
BS = reg_bit("VMCS_PENDING_DEBUG_EXCEPTIONS", "BS").mask
RTM = reg_bit("VMCS_PENDING_DEBUG_EXCEPTIONS", "RTM").mask
BTF = reg_bit("IA32_DEBUGCTL", "BTF").mask
ENTRY_TO_SMM = get_control("entry", "entry_to_smm").mask
VIRTUAL_NMIS = get_control("pin", "virtual_nmis").mask | get_control("pin", "nmi_exiting").mask
DPL = reg_bit("VMCS_ACCESS_RIGHTS", "DPL").bits
PDPTE_RESERVED_2_1 = reg_bit("PAE_PDPTE", "RESERVED_2_1").mask
PDPTE_RESERVED_8_5 = reg_bit("PAE_PDPTE", "RESERVED_8_5").mask
CR4_FRED = reg_bit("CR4", "FRED").mask

LONG_MODE = build_template("long-mode", SKYLAKE)
RFLAGS = LONG_MODE["GUEST_RFLAGS"]
IF = RFLAGS | reg_bit("RFLAGS", "IF").mask
TF = RFLAGS | reg_bit("RFLAGS", "TF").mask
IF_TF = IF | TF
ENTRY = LONG_MODE["VM_ENTRY_CONTROLS"]
PIN = LONG_MODE["PIN_BASED_VM_EXEC_CONTROL"]
CPL3 = {"GUEST_SS_AR_BYTES": DPL.put(LONG_MODE["GUEST_SS_AR_BYTES"], 3), "GUEST_SS_SELECTOR": 0x13,
        "GUEST_CS_AR_BYTES": DPL.put(LONG_MODE["GUEST_CS_AR_BYTES"], 3), "GUEST_CS_SELECTOR": 0x0B}
FRED_CPL3 = {**CPL3, "GUEST_CR4": LONG_MODE["GUEST_CR4"] | CR4_FRED}
IN_SMM = EntryContext(in_smm=True)


def inject(interruption_type: int, vector: int) -> int:
    """A valid VM-entry interruption-information value."""
    info = reg_bit("VM_ENTRY_INTERRUPTION_INFO", "VALID").mask
    info = reg_bit("VM_ENTRY_INTERRUPTION_INFO", "TYPE").bits.put(info, interruption_type)
    return reg_bit("VM_ENTRY_INTERRUPTION_INFO", "VECTOR").bits.put(info, vector)


EXT_INT = inject(EXTERNAL_INTERRUPT, 0x20)
NMI_EVENT = inject(NMI, 2)
DE = inject(HARDWARE_EXCEPTION, 0)
DB = inject(HARDWARE_EXCEPTION, VECTOR_DB)
MC = inject(HARDWARE_EXCEPTION, VECTOR_MC)
MTF = inject(OTHER_EVENT, PENDING_MTF)


def verdict(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext | None = None) -> EntryVerdict:
    return evaluate_vm_entry(vmcs, caps, ctx)


def assert_fails_only(result: EntryVerdict, check_id: str, qualification: int) -> None:
    assert {v.check_id for v in result.violations} == {check_id}, [v.message for v in result.violations]
    assert result.outcome is not None
    assert (result.outcome.reason, result.outcome.qualification) == (INVALID_STATE, qualification)  # type: ignore[union-attr]


def assert_passes(result: EntryVerdict, check_id: str) -> None:
    assert check_id not in {v.check_id for v in result.violations}, [v.message for v in result.violations]
    assert not any(n.startswith(check_id + ":") for n in result.not_evaluable)


def long_mode(caps: Capabilities, fields: Mapping[str, int]) -> Vmcs:
    return build_template("long-mode", caps).with_fields(fields)


# ----------------------------------------------------------------------------- activity, interruptibility, debug

REJECTS: list[tuple[str, str, dict[str, int], EntryContext | None, int]] = [
    ("guest.activity.supported", "skylake", {"GUEST_ACTIVITY_STATE": 4}, None, 0),
    ("guest.activity.supported", "no_hlt", {"GUEST_ACTIVITY_STATE": HLT}, None, 0),
    ("guest.activity.hlt_needs_dpl0", "skylake", {"GUEST_ACTIVITY_STATE": HLT, **CPL3}, None, 0),
    ("guest.activity.blocking_needs_active", "skylake",
     {"GUEST_ACTIVITY_STATE": SHUTDOWN, "GUEST_INTERRUPTIBILITY_INFO": MOV_SS}, None, 0),
    ("guest.activity.injection_allowed", "skylake",  # HLT
     {"GUEST_ACTIVITY_STATE": HLT, "VM_ENTRY_INTR_INFO_FIELD": DE}, None, 0),
    ("guest.activity.injection_allowed", "skylake",  # shutdown
     {"GUEST_ACTIVITY_STATE": SHUTDOWN, "VM_ENTRY_INTR_INFO_FIELD": EXT_INT, "GUEST_RFLAGS": IF}, None, 0),
    ("guest.activity.injection_allowed", "skylake",  # shutdown admits no #DB
     {"GUEST_ACTIVITY_STATE": SHUTDOWN, "VM_ENTRY_INTR_INFO_FIELD": DB}, None, 0),
    ("guest.activity.injection_allowed", "skylake",  # wait-for-SIPI
     {"GUEST_ACTIVITY_STATE": WAIT_FOR_SIPI, "VM_ENTRY_INTR_INFO_FIELD": NMI_EVENT}, None, 0),
    ("guest.activity.no_wait_for_sipi_on_smm_entry", "skylake",
     {"VM_ENTRY_CONTROLS": ENTRY | ENTRY_TO_SMM, "GUEST_INTERRUPTIBILITY_INFO": SMI,
      "GUEST_ACTIVITY_STATE": WAIT_FOR_SIPI}, IN_SMM, 0),
    ("guest.interruptibility.reserved_bits", "skylake", {"GUEST_INTERRUPTIBILITY_INFO": ENCLAVE << 1}, None, 0),
    ("guest.interruptibility.sti_and_mov_ss", "skylake",
     {"GUEST_INTERRUPTIBILITY_INFO": STI | MOV_SS, "GUEST_RFLAGS": IF}, None, 0),
    ("guest.interruptibility.sti_needs_if", "skylake", {"GUEST_INTERRUPTIBILITY_INFO": STI}, None, 0),
    ("guest.interruptibility.external_interrupt_unblocked", "skylake",
     {"GUEST_INTERRUPTIBILITY_INFO": STI, "GUEST_RFLAGS": IF, "VM_ENTRY_INTR_INFO_FIELD": EXT_INT}, None, 0),
    ("guest.interruptibility.external_interrupt_unblocked", "skylake",
     {"GUEST_INTERRUPTIBILITY_INFO": MOV_SS, "GUEST_RFLAGS": IF, "VM_ENTRY_INTR_INFO_FIELD": EXT_INT}, None, 0),
    ("guest.interruptibility.nmi_mov_ss", "skylake",
     {"GUEST_INTERRUPTIBILITY_INFO": MOV_SS, "VM_ENTRY_INTR_INFO_FIELD": NMI_EVENT}, None, 0),
    ("guest.interruptibility.smi_outside_smm", "skylake", {"GUEST_INTERRUPTIBILITY_INFO": SMI}, None, 0),
    ("guest.interruptibility.smi_on_smm_entry", "skylake", {"VM_ENTRY_CONTROLS": ENTRY | ENTRY_TO_SMM}, IN_SMM, 0),
    ("guest.interruptibility.nmi_sti", "skylake",
     {"GUEST_INTERRUPTIBILITY_INFO": STI, "GUEST_RFLAGS": IF, "VM_ENTRY_INTR_INFO_FIELD": NMI_EVENT}, None, 3),
    ("guest.interruptibility.virtual_nmi_blocking", "skylake",
     {"PIN_BASED_VM_EXEC_CONTROL": PIN | VIRTUAL_NMIS, "GUEST_INTERRUPTIBILITY_INFO": NMI_BLOCKING,
      "VM_ENTRY_INTR_INFO_FIELD": NMI_EVENT}, None, 0),
    ("guest.interruptibility.enclave_mov_ss", "skylake", {"GUEST_INTERRUPTIBILITY_INFO": ENCLAVE | MOV_SS}, None, 0),
    ("guest.interruptibility.enclave_needs_sgx", "raptorlake", {"GUEST_INTERRUPTIBILITY_INFO": ENCLAVE}, None, 0),
    ("guest.interruptibility.enclave_needs_sgx", "ivybridge", {"GUEST_INTERRUPTIBILITY_INFO": ENCLAVE}, None, 0),
    ("guest.interruptibility.fred_sti", "max",
     {**FRED_CPL3, "GUEST_INTERRUPTIBILITY_INFO": STI, "GUEST_RFLAGS": IF}, None, 0),
    ("guest.pending_debug.reserved_bits", "skylake", {"GUEST_PENDING_DBG_EXCEPTIONS": B0 << 4}, None, 0),
    ("guest.pending_debug.reserved_bits", "skylake", {"GUEST_PENDING_DBG_EXCEPTIONS": BS >> 1}, None, 0),
    ("guest.pending_debug.bs", "skylake",  # TF = 1, BTF = 0, BS = 0
     {"GUEST_INTERRUPTIBILITY_INFO": STI, "GUEST_RFLAGS": IF_TF}, None, 0),
    ("guest.pending_debug.bs", "skylake",  # TF = 0, BS = 1
     {"GUEST_ACTIVITY_STATE": HLT, "GUEST_PENDING_DBG_EXCEPTIONS": BS}, None, 0),
    ("guest.pending_debug.bs", "skylake",  # BTF = 1, BS = 1
     {"GUEST_INTERRUPTIBILITY_INFO": MOV_SS, "GUEST_RFLAGS": TF, "GUEST_IA32_DEBUGCTL": BTF,
      "GUEST_PENDING_DBG_EXCEPTIONS": BS}, None, 0),
    ("guest.pending_debug.rtm_bits", "skylake", {"GUEST_PENDING_DBG_EXCEPTIONS": RTM}, None, 0),
    ("guest.pending_debug.rtm_bits", "skylake", {"GUEST_PENDING_DBG_EXCEPTIONS": RTM | ENABLED_BP | B0}, None, 0),
    ("guest.pending_debug.rtm_needs_rtm", "ivybridge", {"GUEST_PENDING_DBG_EXCEPTIONS": RTM | ENABLED_BP}, None, 0),
    ("guest.pending_debug.rtm_needs_rtm", "raptorlake", {"GUEST_PENDING_DBG_EXCEPTIONS": RTM | ENABLED_BP}, None, 0),
    ("guest.pending_debug.rtm_mov_ss", "skylake",
     {"GUEST_PENDING_DBG_EXCEPTIONS": RTM | ENABLED_BP, "GUEST_INTERRUPTIBILITY_INFO": MOV_SS}, None, 0),
]

ACCEPTS: list[tuple[str, str, dict[str, int], EntryContext | None]] = [
    ("guest.activity.supported", "skylake", {"GUEST_ACTIVITY_STATE": HLT}, None),
    ("guest.activity.supported", "skylake", {"GUEST_ACTIVITY_STATE": SHUTDOWN}, None),
    ("guest.activity.supported", "skylake", {"GUEST_ACTIVITY_STATE": WAIT_FOR_SIPI}, None),
    ("guest.activity.supported", "no_hlt", {"GUEST_ACTIVITY_STATE": SHUTDOWN}, None),
    ("guest.activity.hlt_needs_dpl0", "skylake", {"GUEST_ACTIVITY_STATE": HLT}, None),
    ("guest.activity.hlt_needs_dpl0", "skylake", CPL3, None),
    ("guest.activity.blocking_needs_active", "skylake", {"GUEST_INTERRUPTIBILITY_INFO": MOV_SS}, None),
    ("guest.activity.injection_allowed", "skylake",
     {"GUEST_ACTIVITY_STATE": HLT, "VM_ENTRY_INTR_INFO_FIELD": EXT_INT, "GUEST_RFLAGS": IF}, None),
    *[("guest.activity.injection_allowed", "skylake",
       {"GUEST_ACTIVITY_STATE": state, "VM_ENTRY_INTR_INFO_FIELD": event}, None)
      for state, event in [(HLT, NMI_EVENT), (HLT, DB), (HLT, MC), (HLT, MTF), (SHUTDOWN, NMI_EVENT), (SHUTDOWN, MC)]],
    ("guest.activity.injection_allowed", "skylake", {"VM_ENTRY_INTR_INFO_FIELD": DE}, None),
    ("guest.activity.injection_allowed", "skylake", {"GUEST_ACTIVITY_STATE": WAIT_FOR_SIPI}, None),
    ("guest.activity.no_wait_for_sipi_on_smm_entry", "skylake",
     {"VM_ENTRY_CONTROLS": ENTRY | ENTRY_TO_SMM, "GUEST_INTERRUPTIBILITY_INFO": SMI, "GUEST_ACTIVITY_STATE": HLT},
     IN_SMM),
    ("guest.interruptibility.reserved_bits", "skylake", {"GUEST_INTERRUPTIBILITY_INFO": ENCLAVE}, None),
    ("guest.interruptibility.sti_and_mov_ss", "skylake", {"GUEST_INTERRUPTIBILITY_INFO": STI, "GUEST_RFLAGS": IF},
     None),
    ("guest.interruptibility.sti_needs_if", "skylake", {"GUEST_INTERRUPTIBILITY_INFO": STI, "GUEST_RFLAGS": IF}, None),
    ("guest.interruptibility.external_interrupt_unblocked", "skylake",
     {"VM_ENTRY_INTR_INFO_FIELD": EXT_INT, "GUEST_RFLAGS": IF}, None),
    ("guest.interruptibility.nmi_mov_ss", "skylake", {"VM_ENTRY_INTR_INFO_FIELD": NMI_EVENT}, None),
    ("guest.interruptibility.nmi_mov_ss", "skylake",
     {"VM_ENTRY_INTR_INFO_FIELD": DE, "GUEST_INTERRUPTIBILITY_INFO": MOV_SS}, None),
    ("guest.interruptibility.smi_outside_smm", "skylake", {"GUEST_INTERRUPTIBILITY_INFO": SMI}, IN_SMM),
    ("guest.interruptibility.smi_on_smm_entry", "skylake",
     {"VM_ENTRY_CONTROLS": ENTRY | ENTRY_TO_SMM, "GUEST_INTERRUPTIBILITY_INFO": SMI}, IN_SMM),
    ("guest.interruptibility.nmi_sti", "skylake",
     {"GUEST_INTERRUPTIBILITY_INFO": STI, "GUEST_RFLAGS": IF, "VM_ENTRY_INTR_INFO_FIELD": DE}, None),
    ("guest.interruptibility.virtual_nmi_blocking", "skylake",  # 'virtual NMIs' 0: no requirement
     {"GUEST_INTERRUPTIBILITY_INFO": NMI_BLOCKING, "VM_ENTRY_INTR_INFO_FIELD": NMI_EVENT}, None),
    ("guest.interruptibility.virtual_nmi_blocking", "skylake",
     {"PIN_BASED_VM_EXEC_CONTROL": PIN | VIRTUAL_NMIS, "VM_ENTRY_INTR_INFO_FIELD": NMI_EVENT}, None),
    ("guest.interruptibility.enclave_mov_ss", "skylake", {"GUEST_INTERRUPTIBILITY_INFO": ENCLAVE}, None),
    ("guest.interruptibility.enclave_needs_sgx", "skylake", {"GUEST_INTERRUPTIBILITY_INFO": ENCLAVE}, None),
    ("guest.interruptibility.fred_sti", "max", FRED_CPL3, None),
    ("guest.interruptibility.fred_sti", "max", {**CPL3, "GUEST_INTERRUPTIBILITY_INFO": STI, "GUEST_RFLAGS": IF}, None),
    ("guest.interruptibility.fred_sti", "max",
     {"GUEST_CR4": FRED_CPL3["GUEST_CR4"], "GUEST_INTERRUPTIBILITY_INFO": STI, "GUEST_RFLAGS": IF}, None),
    ("guest.pending_debug.reserved_bits", "skylake",
     {"GUEST_PENDING_DBG_EXCEPTIONS": reg_bit("VMCS_PENDING_DEBUG_EXCEPTIONS", "B0_B3").mask | ENABLED_BP}, None),
    ("guest.pending_debug.bs", "skylake",
     {"GUEST_INTERRUPTIBILITY_INFO": STI, "GUEST_RFLAGS": IF_TF, "GUEST_PENDING_DBG_EXCEPTIONS": BS}, None),
    ("guest.pending_debug.bs", "skylake",
     {"GUEST_ACTIVITY_STATE": HLT, "GUEST_RFLAGS": TF, "GUEST_IA32_DEBUGCTL": BTF}, None),
    ("guest.pending_debug.bs", "skylake", {"GUEST_RFLAGS": TF}, None),  # no blocking, not HLT: no rule
    ("guest.pending_debug.rtm_bits", "skylake", {"GUEST_PENDING_DBG_EXCEPTIONS": RTM | ENABLED_BP}, None),
    ("guest.pending_debug.rtm_needs_rtm", "skylake", {"GUEST_PENDING_DBG_EXCEPTIONS": RTM | ENABLED_BP}, None),
    ("guest.pending_debug.rtm_mov_ss", "skylake",
     {"GUEST_PENDING_DBG_EXCEPTIONS": RTM | ENABLED_BP, "GUEST_INTERRUPTIBILITY_INFO": STI, "GUEST_RFLAGS": IF},
     None),
]


@pytest.mark.parametrize(("check_id", "preset", "fields", "ctx", "qualification"), REJECTS)
def test_check_rejects(check_id: str, preset: str, fields: dict[str, int], ctx: EntryContext | None,
                       qualification: int) -> None:
    caps = PRESETS[preset]
    result = verdict(long_mode(caps, fields), caps, ctx)
    assert_fails_only(result, check_id, qualification)


@pytest.mark.parametrize(("check_id", "preset", "fields", "ctx"), ACCEPTS)
def test_check_accepts(check_id: str, preset: str, fields: dict[str, int], ctx: EntryContext | None) -> None:
    caps = PRESETS[preset]
    assert_passes(verdict(long_mode(caps, fields), caps, ctx), check_id)


def test_templates_pass_every_non_register_and_pdpte_check() -> None:
    for caps in (SKYLAKE, IVYBRIDGE, RAPTORLAKE, MAX):
        for name in ("long-mode", "protected-mode", "pae", "real-mode"):
            result = verdict(build_template(name, caps), caps)
            assert result.succeeds, (caps.name, name, result.violations, result.not_evaluable)


UNKNOWN_SGX_RTM = attrs.evolve(MAX, facts={k: v for k, v in MAX.facts.items() if k not in ("CPUID_SGX", "CPUID_RTM")})


@pytest.mark.parametrize(("check_id", "caps", "fields"), [
    ("guest.activity.supported", NO_MISC, {"GUEST_ACTIVITY_STATE": HLT}),
    ("guest.interruptibility.enclave_needs_sgx", UNKNOWN_SGX_RTM, {"GUEST_INTERRUPTIBILITY_INFO": ENCLAVE}),
    ("guest.pending_debug.rtm_needs_rtm", UNKNOWN_SGX_RTM, {"GUEST_PENDING_DBG_EXCEPTIONS": RTM | ENABLED_BP}),
])
def test_check_is_not_evaluable_without_the_capability(check_id: str, caps: Capabilities,
                                                       fields: dict[str, int]) -> None:
    result = verdict(long_mode(caps, fields), caps)
    assert check_id not in {v.check_id for v in result.violations}
    assert any(n.startswith(check_id + ":") for n in result.not_evaluable)
    assert not result.succeeds


def test_injection_message_names_the_activity_state() -> None:
    result = verdict(long_mode(SKYLAKE, {"GUEST_ACTIVITY_STATE": WAIT_FOR_SIPI, "VM_ENTRY_INTR_INFO_FIELD": MC}),
                     SKYLAKE)
    assert "wait-for-SIPI" in result.violations[0].message


# ----------------------------------------------------------------------------- VMCS link pointer

LINK = 0x0004_0000
CURRENT = 0x0000_2000
VMXON = 0x0000_1000
REVISION = SKYLAKE.msr_field("IA32_VMX_BASIC", "vmcs_revision_id") or 0


def link_context(regions: Mapping[int, Vmcs | VmxonRegion] | None = None, *, in_smm: bool = False,
                 current: int | None = CURRENT) -> EntryContext:
    if regions is None:
        regions = {LINK: Vmcs(revision_id=REVISION)}
    return EntryContext(regions={VMXON: VmxonRegion(REVISION), **regions}, current_vmcs=current,
                        vmxon_pointer=VMXON, in_smm=in_smm)


def with_link(link: int, caps: Capabilities = SKYLAKE, *, features: tuple[str, ...] = ()) -> Vmcs:
    """The template with the VMCS link pointer ``link``; in SMM contexts the entry returns to VMX
    root operation (executive-VMCS pointer = VMXON pointer)."""
    return build_template("long-mode", caps, features=features).with_fields(
        {"VMCS_LINK_POINTER": link, "EXECUTIVE_VMCS_POINTER": VMXON})


LINK_REJECTS: list[tuple[str, Vmcs, Capabilities, EntryContext]] = [
    ("guest.vmcs_link.alignment", with_link(LINK + 0x10), SKYLAKE,
     link_context({LINK + 0x10: Vmcs(revision_id=REVISION)})),
    ("guest.vmcs_link.address_width", with_link(1 << 39), SKYLAKE,  # MAXPHYADDR 39
     link_context({1 << 39: Vmcs(revision_id=REVISION)})),
    ("guest.vmcs_link.address_width", with_link(1 << 36, IVYBRIDGE), IVYBRIDGE,  # MAXPHYADDR 36
     link_context({1 << 36: Vmcs(revision_id=IVYBRIDGE.msr_field("IA32_VMX_BASIC", "vmcs_revision_id") or 0)})),
    ("guest.vmcs_link.revision_id", with_link(LINK), SKYLAKE, link_context({LINK: Vmcs(revision_id=REVISION ^ 1)})),
    ("guest.vmcs_link.revision_id", with_link(LINK), SKYLAKE, link_context({})),  # zeroed memory
    ("guest.vmcs_link.shadow_indicator", with_link(LINK), SKYLAKE,
     link_context({LINK: Vmcs(revision_id=REVISION, shadow=True)})),
    ("guest.vmcs_link.shadow_indicator", with_link(LINK, features=("vmcs_shadowing",)), SKYLAKE, link_context()),
    ("guest.vmcs_link.not_current_vmcs", with_link(CURRENT), SKYLAKE,
     link_context({CURRENT: Vmcs(revision_id=REVISION)})),
    ("guest.vmcs_link.not_vmxon_pointer", with_link(VMXON), SKYLAKE, link_context({}, in_smm=True)),
]

LINK_ACCEPTS: list[tuple[str, Vmcs, Capabilities, EntryContext]] = [
    ("guest.vmcs_link.alignment", with_link(LINK), SKYLAKE, link_context()),
    ("guest.vmcs_link.address_width", with_link((1 << 39) - 0x1000), SKYLAKE,
     link_context({(1 << 39) - 0x1000: Vmcs(revision_id=REVISION)})),
    ("guest.vmcs_link.address_width", with_link(1 << 39, MAX), MAX,  # MAXPHYADDR 52
     link_context({1 << 39: Vmcs(revision_id=MAX.msr_field("IA32_VMX_BASIC", "vmcs_revision_id") or 0)})),
    ("guest.vmcs_link.revision_id", with_link(LINK), SKYLAKE, link_context()),
    ("guest.vmcs_link.shadow_indicator", with_link(LINK, features=("vmcs_shadowing",)), SKYLAKE,
     link_context({LINK: Vmcs(revision_id=REVISION, shadow=True)})),
    ("guest.vmcs_link.not_current_vmcs", with_link(LINK), SKYLAKE, link_context()),
    ("guest.vmcs_link.not_current_vmcs", with_link(CURRENT), SKYLAKE,  # in SMM, 'entry to SMM' 0
     link_context({CURRENT: Vmcs(revision_id=REVISION)}, in_smm=True)),
    ("guest.vmcs_link.not_vmxon_pointer", with_link(LINK), SKYLAKE, link_context(in_smm=True)),
    ("guest.vmcs_link.not_vmxon_pointer", with_link(VMXON), SKYLAKE, link_context({})),  # outside SMM
]


@pytest.mark.parametrize(("check_id", "vmcs", "caps", "ctx"), LINK_REJECTS)
def test_vmcs_link_check_rejects(check_id: str, vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> None:
    assert_fails_only(verdict(vmcs, caps, ctx), check_id, 4)


@pytest.mark.parametrize(("check_id", "vmcs", "caps", "ctx"), LINK_ACCEPTS)
def test_vmcs_link_check_accepts(check_id: str, vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> None:
    assert_passes(verdict(vmcs, caps, ctx), check_id)


def test_vmcs_link_is_not_compared_without_a_current_vmcs_pointer() -> None:
    result = verdict(with_link(LINK), SKYLAKE, link_context(current=None))
    assert not result.violations
    assert any(n.startswith("guest.vmcs_link.not_current_vmcs:") for n in result.not_evaluable)


# ----------------------------------------------------------------------------- guest PDPTEs

PAE = build_template("pae", SKYLAKE)
PDPT = reg_bit("CR3_PAE", "PDPT_ADDRESS").bits.get(PAE["GUEST_CR3"]) << reg_bit("CR3_PAE", "PDPT_ADDRESS").bits.lo
PDPTES = [PAE[f"GUEST_PDPTR{i}"] for i in range(4)]


def pae_without_ept(caps: Capabilities) -> Vmcs:
    """The "pae" template with 'enable EPT' 0: the PDPTEs come from the table at guest CR3."""
    vmcs = build_template("pae", caps)
    proc2 = vmcs["SECONDARY_VM_EXEC_CONTROL"] & ~get_control("proc2", "enable_ept").mask
    return vmcs.with_fields({"SECONDARY_VM_EXEC_CONTROL": proc2, "EPT_POINTER": 0})


def pdpt_context(pdptes: list[int]) -> EntryContext:
    memory = PhysicalMemory()
    for i, pdpte in enumerate(pdptes):
        memory = memory.write_int(PDPT + 8 * i, 8, pdpte)
    return EntryContext(memory=memory)


@pytest.mark.parametrize(("preset", "index", "pdpte"), [
    ("skylake", 0, PDPTES[0] | PDPTE_RESERVED_2_1),
    ("skylake", 3, PDPTES[3] | PDPTE_RESERVED_8_5),
    ("skylake", 1, PDPTES[1] | 1 << 39),  # MAXPHYADDR 39
    ("ivybridge", 2, PDPTES[2] | 1 << 36),  # MAXPHYADDR 36
])
def test_pdpte_fields_reject_reserved_bits_with_ept(preset: str, index: int, pdpte: int) -> None:
    caps = PRESETS[preset]
    vmcs = build_template("pae", caps).with_fields({f"GUEST_PDPTR{index}": pdpte})
    result = verdict(vmcs, caps)
    assert_fails_only(result, "guest.pdptes.fields", 2)
    assert f"PDPTE{index}" in result.violations[0].message


@pytest.mark.parametrize(("preset", "fields"), [
    ("skylake", {"GUEST_PDPTR0": PDPTE_RESERVED_2_1 | PDPTE_RESERVED_8_5}),  # not present
    ("skylake", {"GUEST_PDPTR1": PDPTES[1] | 1 << 38}),
    ("max", {"GUEST_PDPTR1": PDPTES[1] | 1 << 39}),  # MAXPHYADDR 52
])
def test_pdpte_fields_accept(preset: str, fields: dict[str, int]) -> None:
    caps = PRESETS[preset]
    assert_passes(verdict(build_template("pae", caps).with_fields(fields), caps), "guest.pdptes.fields")


def test_pdpte_fields_are_not_checked_without_pae_paging() -> None:
    vmcs = long_mode(SKYLAKE, {"GUEST_PDPTR0": PDPTES[0] | PDPTE_RESERVED_2_1})
    assert_passes(verdict(vmcs, SKYLAKE), "guest.pdptes.fields")


@pytest.mark.parametrize(("preset", "index", "pdpte"), [
    ("skylake", 0, PDPTES[0] | PDPTE_RESERVED_2_1),
    ("skylake", 2, PDPTES[2] | PDPTE_RESERVED_8_5),
    ("ivybridge", 3, PDPTES[3] | 1 << 36),  # MAXPHYADDR 36
])
def test_pdptes_in_memory_reject_reserved_bits_without_ept(preset: str, index: int, pdpte: int) -> None:
    caps = PRESETS[preset]
    entries = [pdpte if i == index else p for i, p in enumerate(PDPTES)]
    result = verdict(pae_without_ept(caps), caps, pdpt_context(entries))
    assert_fails_only(result, "guest.pdptes.memory", 2)
    assert f"PDPTE{index}" in result.violations[0].message


@pytest.mark.parametrize(("preset", "entries"), [
    ("skylake", PDPTES),
    ("skylake", [PDPTE_RESERVED_2_1, 0, 0, 0]),  # not present
    ("skylake", [PDPTES[0] | 1 << 36, *PDPTES[1:]]),  # MAXPHYADDR 39
])
def test_pdptes_in_memory_accept(preset: str, entries: list[int]) -> None:
    caps = PRESETS[preset]
    result = verdict(pae_without_ept(caps), caps, pdpt_context(entries))
    assert not result.violations and result.succeeds


def test_pdpte_fields_are_not_read_from_memory_with_ept() -> None:
    result = verdict(PAE, SKYLAKE, pdpt_context([PDPTE_RESERVED_2_1 | 1, 0, 0, 0]))
    assert result.succeeds
