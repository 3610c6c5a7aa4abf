"""VM-entry checks on guest control registers, MSRs, descriptor tables, RIP, RFLAGS and SSP
(vtx.vmx.entry.guest_state): each check rejects an input that breaks exactly its rule, with exit
reason 33, and accepts the nearest input that keeps it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pytest

from vtx import spec
from vtx.outcomes import VmEntryFailed
from vtx.spec import get_control, reg_bit
from vtx.vmx.capabilities import Capabilities, load_preset
from vtx.vmx.entry import REGISTRY, EntryVerdict, evaluate_vm_entry
from vtx.vmx.entry.catalogue import ENTRY_CHECKS
from vtx.vmx.templates import HOST_CR0, HOST_CR4, PAGE_TABLES, build_template
from vtx.vmx.vmcs import Vmcs

PRESETS = {name: load_preset(name) for name in
           ("ivybridge_client", "skylake_client", "raptorlake_client", "emeraldrapids_server", "max")}
INVALID_STATE = spec.get_exit_reason("INVALID_STATE")


def bit(register: str, name: str) -> int:
    return reg_bit(register, name).mask


def ar(**bits: int) -> int:
    """A VMCS access-rights value from named sub-fields."""
    value = 0
    for name, v in bits.items():
        value = reg_bit("VMCS_ACCESS_RIGHTS", name.upper()).bits.put(value, v)
    return value


CR0_WP, CR0_PE, CR0_PG, CR0_NE = (bit("CR0", b) for b in ("WP", "PE", "PG", "NE"))
CR4_CET, CR4_PAE, CR4_PCIDE, CR4_VMXE = (bit("CR4", b) for b in ("CET", "PAE", "PCIDE", "VMXE"))
CR4_FRED = 1 << 32  # FRED specification: CR4.FRED
RFLAGS_FIXED1, RFLAGS_VM, RFLAGS_IF = (bit("RFLAGS", b) for b in ("FIXED1", "VM", "IF"))
RFLAGS_IOPL3 = bit("RFLAGS", "IOPL")
EFER_LME, EFER_LMA, EFER_NXE = (bit("IA32_EFER", b) for b in ("LME", "LMA", "NXE"))
S_CET_SUPPRESS, S_CET_TRACKER = bit("IA32_S_CET", "SUPPRESS"), bit("IA32_S_CET", "TRACKER")
PAT_DEFAULT = 0x0007_0406_0007_0406  # WB, WT, UC-, UC repeated: the power-up value

# Addresses around the canonical boundaries of 48- and 57-bit linear addresses.
NONCANONICAL_48 = 0x0000_8000_0000_0000  # canonical with 57-bit linear addresses
NONCANONICAL_57 = 0x0100_0000_0000_0000
UPPER_DIFFER_48 = 0x0001_0000_0000_0000  # bits 63:48 not all equal; bits 63:57 all equal
EXTERNAL_INTERRUPT_32 = 0x8000_0020  # valid, type 0 (external interrupt), vector 32
NMI = 0x8000_0202  # valid, type 2 (NMI), vector 2


def build(preset: str, template: str = "long-mode", *, entry: Iterable[str] = (), features: Iterable[str] = (),
          fields: Mapping[str, int] | None = None) -> tuple[Vmcs, Capabilities]:
    """A template under ``preset`` with the VM-entry controls ``entry`` turned on and ``fields`` set."""
    caps = PRESETS[preset]
    vmcs = build_template(template, caps, features=features)
    controls = vmcs["VM_ENTRY_CONTROLS"]
    for name in entry:
        assert caps.allows("entry", name), (preset, name)
        controls |= get_control("entry", name).mask
    return vmcs.with_fields({"VM_ENTRY_CONTROLS": controls, **(fields or {})}), caps


def verdict(preset: str, template: str = "long-mode", **kwargs: object) -> EntryVerdict:
    vmcs, caps = build(preset, template, **kwargs)  # type: ignore[arg-type]
    return evaluate_vm_entry(vmcs, caps)


def ids(v: EntryVerdict) -> set[str]:
    return {x.check_id for x in v.violations}


# (check id, preset, template, keyword arguments of build): each breaks exactly the check.
REJECTS = [
    ("guest.cr0.fixed_bits", "skylake_client", "long-mode", {"fields": {"GUEST_CR0": HOST_CR0 & ~CR0_NE}}),
    ("guest.cr0.fixed_bits", "ivybridge_client", "long-mode", {"fields": {"GUEST_CR0": HOST_CR0 | 1 << 32}}),
    ("guest.cr0.pg_needs_pe", "skylake_client", "real-mode", {"fields": {"GUEST_CR0": CR0_NE | CR0_PG}}),
    ("guest.cr4.fixed_bits", "skylake_client", "long-mode", {"fields": {"GUEST_CR4": CR4_PAE}}),
    ("guest.cr4.fixed_bits", "skylake_client", "long-mode", {"fields": {"GUEST_CR4": HOST_CR4 | CR4_FRED}}),
    ("guest.cr4.cet_needs_wp", "max", "long-mode", {"fields": {"GUEST_CR4": HOST_CR4 | CR4_CET}}),
    ("guest.debugctl.reserved_bits", "skylake_client", "long-mode",
     {"entry": ["load_debug_controls"], "fields": {"GUEST_IA32_DEBUGCTL": 1 << 16}}),
    ("guest.debugctl.reserved_bits", "skylake_client", "long-mode",
     {"entry": ["load_debug_controls"], "fields": {"GUEST_IA32_DEBUGCTL": 1 << 3}}),
    ("guest.ia32e.paging", "skylake_client", "long-mode", {"fields": {"GUEST_CR4": CR4_VMXE}}),
    ("guest.non_ia32e.cr4_pcide", "skylake_client", "protected-mode",
     {"fields": {"GUEST_CR4": CR4_VMXE | CR4_PCIDE}}),
    ("guest.non_ia32e.cr4_fred", "max", "protected-mode", {"fields": {"GUEST_CR4": CR4_VMXE | CR4_FRED}}),
    ("guest.cr3.address_width", "skylake_client", "long-mode", {"fields": {"GUEST_CR3": PAGE_TABLES | 1 << 39}}),
    ("guest.cr3.address_width", "skylake_client", "long-mode", {"fields": {"GUEST_CR3": PAGE_TABLES | 1 << 61}}),
    ("guest.cr3.address_width", "max", "long-mode", {"fields": {"GUEST_CR3": PAGE_TABLES | 1 << 63}}),
    ("guest.dr7.upper_bits", "skylake_client", "long-mode",
     {"entry": ["load_debug_controls"], "fields": {"GUEST_DR7": 1 << 32 | 0x400}}),
    ("guest.sysenter.canonical", "skylake_client", "long-mode", {"fields": {"GUEST_SYSENTER_ESP": NONCANONICAL_48}}),
    ("guest.sysenter.canonical", "max", "long-mode", {"fields": {"GUEST_SYSENTER_EIP": NONCANONICAL_57}}),
    ("guest.cet.s_cet_canonical", "max", "long-mode",
     {"entry": ["load_cet_state"], "fields": {"GUEST_S_CET": NONCANONICAL_57}}),
    ("guest.cet.s_cet_canonical", "raptorlake_client", "long-mode",
     {"entry": ["load_cet_state"], "fields": {"GUEST_S_CET": NONCANONICAL_48}}),
    ("guest.cet.ssp_table_canonical", "raptorlake_client", "long-mode",
     {"entry": ["load_cet_state"], "fields": {"GUEST_INTR_SSP_TABLE": NONCANONICAL_48}}),
    ("guest.perf_global_ctrl.reserved_bits", "skylake_client", "long-mode",
     {"entry": ["load_ia32_perf_global_ctrl"], "fields": {"GUEST_IA32_PERF_GLOBAL_CTRL": 1 << 4}}),
    ("guest.perf_global_ctrl.reserved_bits", "skylake_client", "long-mode",
     {"entry": ["load_ia32_perf_global_ctrl"], "fields": {"GUEST_IA32_PERF_GLOBAL_CTRL": 1 << 35}}),
    ("guest.perf_global_ctrl.reserved_bits", "max", "long-mode",
     {"entry": ["load_ia32_perf_global_ctrl"], "fields": {"GUEST_IA32_PERF_GLOBAL_CTRL": 1 << 49}}),
    ("guest.pat.valid", "skylake_client", "long-mode",
     {"entry": ["load_ia32_pat"], "fields": {"GUEST_IA32_PAT": 0x0007_0406_0002_0406}}),
    ("guest.pat.valid", "ivybridge_client", "long-mode",
     {"entry": ["load_ia32_pat"], "fields": {"GUEST_IA32_PAT": PAT_DEFAULT | 8 << 56}}),
    ("guest.efer.reserved_bits", "skylake_client", "long-mode",
     {"entry": ["load_ia32_efer"], "fields": {"GUEST_IA32_EFER": EFER_LME | EFER_LMA | 1 << 9}}),
    ("guest.efer.lma", "skylake_client", "long-mode", {"entry": ["load_ia32_efer"], "fields": {"GUEST_IA32_EFER": 0}}),
    ("guest.efer.lma", "skylake_client", "protected-mode",
     {"entry": ["load_ia32_efer"], "fields": {"GUEST_IA32_EFER": EFER_LME | EFER_LMA}}),
    ("guest.efer.lme", "skylake_client", "long-mode",
     {"entry": ["load_ia32_efer"], "fields": {"GUEST_IA32_EFER": EFER_LMA}}),
    ("guest.bndcfgs.reserved_bits", "skylake_client", "long-mode",
     {"entry": ["load_ia32_bndcfgs"], "fields": {"GUEST_BNDCFGS": 1 << 2}}),
    ("guest.bndcfgs.canonical", "skylake_client", "long-mode",
     {"entry": ["load_ia32_bndcfgs"], "fields": {"GUEST_BNDCFGS": NONCANONICAL_48 | 1}}),
    ("guest.rtit_ctl.reserved_bits", "raptorlake_client", "long-mode",
     {"entry": ["load_ia32_rtit_ctl"], "fields": {"GUEST_IA32_RTIT_CTL": 1 << 18}}),
    ("guest.cet.s_cet_reserved_bits", "raptorlake_client", "long-mode",
     {"entry": ["load_cet_state"], "fields": {"GUEST_S_CET": 1 << 6}}),
    ("guest.cet.s_cet_reserved_bits", "raptorlake_client", "long-mode",
     {"entry": ["load_cet_state"], "fields": {"GUEST_S_CET": S_CET_SUPPRESS | S_CET_TRACKER}}),
    ("guest.lbr_ctl.reserved_bits", "raptorlake_client", "long-mode",
     {"entry": ["load_guest_ia32_lbr_ctl"], "fields": {"GUEST_IA32_LBR_CTL": 1 << 4}}),
    ("guest.pkrs.reserved_bits", "raptorlake_client", "long-mode",
     {"entry": ["load_pkrs"], "fields": {"GUEST_IA32_PKRS": 1 << 32}}),
    ("guest.uinv.reserved_bits", "emeraldrapids_server", "long-mode",
     {"entry": ["load_uinv"], "fields": {"GUEST_UINV": 0x1F0}}),
    ("guest.fred.config", "max", "long-mode", {"entry": ["load_fred"], "fields": {"GUEST_IA32_FRED_CONFIG": 1 << 11}}),
    ("guest.fred.config", "max", "long-mode",
     {"entry": ["load_fred"], "fields": {"GUEST_IA32_FRED_CONFIG": NONCANONICAL_57 | 1 << 6}}),
    ("guest.fred.rsp", "max", "long-mode", {"entry": ["load_fred"], "fields": {"GUEST_IA32_FRED_RSP1": 0x1020}}),
    ("guest.fred.rsp", "max", "long-mode",
     {"entry": ["load_fred"], "fields": {"GUEST_IA32_FRED_RSP3": NONCANONICAL_57}}),
    ("guest.fred.ssp", "max", "long-mode", {"entry": ["load_fred"], "fields": {"GUEST_IA32_FRED_SSP2": 0x1004}}),
    ("guest.fred.ssp", "max", "long-mode",
     {"entry": ["load_fred"], "fields": {"GUEST_IA32_FRED_SSP3": NONCANONICAL_57}}),
    ("guest.spec_ctrl.reserved_bits", "max", "long-mode",
     {"entry": ["load_ia32_spec_ctrl"], "fields": {"GUEST_IA32_SPEC_CTRL": 1 << 9}}),
    ("guest.dtr.base_canonical", "skylake_client", "long-mode", {"fields": {"GUEST_GDTR_BASE": NONCANONICAL_48}}),
    ("guest.dtr.base_canonical", "max", "long-mode", {"fields": {"GUEST_IDTR_BASE": NONCANONICAL_57}}),
    ("guest.dtr.limit_upper_bits", "skylake_client", "long-mode", {"fields": {"GUEST_GDTR_LIMIT": 0x1_0000}}),
    ("guest.dtr.limit_upper_bits", "skylake_client", "protected-mode", {"fields": {"GUEST_IDTR_LIMIT": 0x8000_0FFF}}),
    ("guest.rip.upper_bits", "skylake_client", "protected-mode", {"fields": {"GUEST_RIP": 1 << 32}}),
    ("guest.rip.canonical", "skylake_client", "long-mode", {"fields": {"GUEST_RIP": UPPER_DIFFER_48}}),
    ("guest.rip.canonical", "max", "long-mode", {"fields": {"GUEST_RIP": 1 << 57}}),
    ("guest.rflags.reserved_bits", "skylake_client", "long-mode",
     {"fields": {"GUEST_RFLAGS": RFLAGS_FIXED1 | 1 << 15}}),
    ("guest.rflags.reserved_bits", "skylake_client", "long-mode", {"fields": {"GUEST_RFLAGS": 0}}),
    ("guest.rflags.if_for_external_interrupt", "skylake_client", "long-mode",
     {"fields": {"VM_ENTRY_INTR_INFO_FIELD": EXTERNAL_INTERRUPT_32}}),
    ("guest.ssp.alignment", "raptorlake_client", "long-mode",
     {"entry": ["load_cet_state"], "fields": {"GUEST_SSP": 0x1002}}),
    ("guest.ssp.upper_bits", "raptorlake_client", "long-mode",
     {"entry": ["load_cet_state"], "fields": {"GUEST_SSP": UPPER_DIFFER_48}}),
    ("guest.ssp.upper_bits", "raptorlake_client", "protected-mode",
     {"entry": ["load_cet_state"], "fields": {"GUEST_SSP": UPPER_DIFFER_48}}),
]

# (check id, preset, template, keyword arguments of build): the nearest input that keeps the rule.
ACCEPTS = [
    ("guest.cr0.fixed_bits", "skylake_client", "long-mode", {}),
    ("guest.cr0.fixed_bits", "skylake_client", "real-mode", {}),  # PE = PG = 0 under "unrestricted guest"
    ("guest.cr0.fixed_bits", "ivybridge_client", "real-mode", {}),
    ("guest.cr0.pg_needs_pe", "skylake_client", "real-mode", {"fields": {"GUEST_CR0": CR0_NE | CR0_PE | CR0_PG}}),
    ("guest.cr4.fixed_bits", "max", "long-mode", {"fields": {"GUEST_CR4": HOST_CR4 | CR4_FRED}}),
    ("guest.cr4.cet_needs_wp", "max", "long-mode",
     {"fields": {"GUEST_CR4": HOST_CR4 | CR4_CET, "GUEST_CR0": HOST_CR0 | CR0_WP}}),
    ("guest.debugctl.reserved_bits", "skylake_client", "long-mode",
     {"entry": ["load_debug_controls"], "fields": {"GUEST_IA32_DEBUGCTL": 1}}),
    ("guest.debugctl.reserved_bits", "skylake_client", "long-mode", {"fields": {"GUEST_IA32_DEBUGCTL": 1 << 16}}),
    ("guest.ia32e.paging", "skylake_client", "protected-mode", {}),
    ("guest.non_ia32e.cr4_pcide", "skylake_client", "long-mode", {"fields": {"GUEST_CR4": HOST_CR4 | CR4_PCIDE}}),
    ("guest.non_ia32e.cr4_fred", "max", "long-mode", {"fields": {"GUEST_CR4": HOST_CR4 | CR4_FRED}}),
    ("guest.non_ia32e.cr4_fred", "skylake_client", "protected-mode",  # the fixed-bit rule rejects it instead
     {"fields": {"GUEST_CR4": CR4_VMXE | CR4_FRED}}),
    ("guest.cr3.address_width", "skylake_client", "long-mode", {"fields": {"GUEST_CR3": PAGE_TABLES | 1 << 38}}),
    ("guest.cr3.address_width", "max", "long-mode", {"fields": {"GUEST_CR3": PAGE_TABLES | 1 << 51 | 3 << 61}}),
    ("guest.dr7.upper_bits", "skylake_client", "long-mode", {"fields": {"GUEST_DR7": 1 << 32 | 0x400}}),
    ("guest.sysenter.canonical", "max", "long-mode", {"fields": {"GUEST_SYSENTER_ESP": NONCANONICAL_48}}),
    ("guest.sysenter.canonical", "skylake_client", "long-mode",
     {"fields": {"GUEST_SYSENTER_EIP": 0xFFFF_FFFF_FFFF_F000}}),
    ("guest.cet.s_cet_canonical", "max", "long-mode",
     {"entry": ["load_cet_state"], "fields": {"GUEST_S_CET": NONCANONICAL_48}}),
    ("guest.cet.ssp_table_canonical", "max", "long-mode",
     {"entry": ["load_cet_state"], "fields": {"GUEST_INTR_SSP_TABLE": NONCANONICAL_48}}),
    ("guest.perf_global_ctrl.reserved_bits", "ivybridge_client", "long-mode",
     {"entry": ["load_ia32_perf_global_ctrl"], "fields": {"GUEST_IA32_PERF_GLOBAL_CTRL": 1 << 4 | 1 << 34}}),
    ("guest.perf_global_ctrl.reserved_bits", "skylake_client", "long-mode",
     {"fields": {"GUEST_IA32_PERF_GLOBAL_CTRL": 1 << 4}}),
    ("guest.pat.valid", "skylake_client", "long-mode",
     {"entry": ["load_ia32_pat"], "fields": {"GUEST_IA32_PAT": 0x0706_0504_0100_0706}}),
    ("guest.efer.reserved_bits", "skylake_client", "long-mode",
     {"entry": ["load_ia32_efer"], "fields": {"GUEST_IA32_EFER": EFER_LME | EFER_LMA | EFER_NXE}}),
    ("guest.efer.lma", "skylake_client", "protected-mode",
     {"entry": ["load_ia32_efer"], "fields": {"GUEST_IA32_EFER": 0}}),
    ("guest.efer.lme", "skylake_client", "protected-mode",  # LME without LMA is fine while CR0.PG is 0
     {"entry": ["load_ia32_efer"], "features": ["unrestricted_guest"],
      "fields": {"GUEST_IA32_EFER": EFER_LME, "GUEST_CR0": HOST_CR0 & ~CR0_PG}}),
    ("guest.bndcfgs.reserved_bits", "skylake_client", "long-mode",
     {"entry": ["load_ia32_bndcfgs"], "fields": {"GUEST_BNDCFGS": 0x7FFF_FFFF_F000 | 3}}),
    ("guest.bndcfgs.canonical", "max", "long-mode",
     {"entry": ["load_ia32_bndcfgs"], "fields": {"GUEST_BNDCFGS": NONCANONICAL_48 | 1}}),
    ("guest.rtit_ctl.reserved_bits", "raptorlake_client", "long-mode",
     {"entry": ["load_ia32_rtit_ctl"], "fields": {"GUEST_IA32_RTIT_CTL": 1 << 13}}),
    ("guest.cet.s_cet_reserved_bits", "raptorlake_client", "long-mode",
     {"entry": ["load_cet_state"], "fields": {"GUEST_S_CET": S_CET_TRACKER | 0x3F}}),
    ("guest.lbr_ctl.reserved_bits", "raptorlake_client", "long-mode",
     {"entry": ["load_guest_ia32_lbr_ctl"], "fields": {"GUEST_IA32_LBR_CTL": 0x7F_000F}}),
    ("guest.pkrs.reserved_bits", "raptorlake_client", "long-mode",
     {"entry": ["load_pkrs"], "fields": {"GUEST_IA32_PKRS": 0xFFFF_FFFF}}),
    ("guest.uinv.reserved_bits", "emeraldrapids_server", "long-mode",
     {"entry": ["load_uinv"], "fields": {"GUEST_UINV": 0xF0}}),
    ("guest.fred.config", "max", "long-mode",
     {"entry": ["load_fred"], "fields": {"GUEST_IA32_FRED_CONFIG": 0xFFFF_FFFF_FFFF_F000 | 1 << 6}}),
    ("guest.fred.config", "max", "protected-mode",
     {"entry": ["load_fred"], "fields": {"GUEST_IA32_FRED_CONFIG": 1 << 11}}),
    ("guest.fred.rsp", "max", "long-mode", {"entry": ["load_fred"], "fields": {"GUEST_IA32_FRED_RSP1": 0x1040}}),
    ("guest.fred.ssp", "max", "long-mode", {"entry": ["load_fred"], "fields": {"GUEST_IA32_FRED_SSP1": 0x1008}}),
    ("guest.spec_ctrl.reserved_bits", "max", "long-mode",
     {"entry": ["load_ia32_spec_ctrl"], "fields": {"GUEST_IA32_SPEC_CTRL": 0x5FF}}),
    ("guest.dtr.base_canonical", "max", "long-mode", {"fields": {"GUEST_GDTR_BASE": NONCANONICAL_48}}),
    ("guest.dtr.limit_upper_bits", "skylake_client", "long-mode", {"fields": {"GUEST_GDTR_LIMIT": 0xFFFF}}),
    ("guest.rip.upper_bits", "skylake_client", "long-mode", {"fields": {"GUEST_RIP": 1 << 32}}),
    ("guest.rip.canonical", "skylake_client", "long-mode", {"fields": {"GUEST_RIP": NONCANONICAL_48}}),
    ("guest.rip.canonical", "max", "long-mode", {"fields": {"GUEST_RIP": UPPER_DIFFER_48}}),
    ("guest.rflags.reserved_bits", "skylake_client", "long-mode",
     {"fields": {"GUEST_RFLAGS": RFLAGS_FIXED1 | 1 << 21}}),
    ("guest.rflags.vm", "skylake_client", "long-mode", {"fields": {"GUEST_RFLAGS": RFLAGS_FIXED1 | 1 << 18}}),
    ("guest.rflags.if_for_external_interrupt", "skylake_client", "long-mode",
     {"fields": {"VM_ENTRY_INTR_INFO_FIELD": EXTERNAL_INTERRUPT_32, "GUEST_RFLAGS": RFLAGS_FIXED1 | RFLAGS_IF}}),
    ("guest.rflags.if_for_external_interrupt", "skylake_client", "long-mode",
     {"fields": {"VM_ENTRY_INTR_INFO_FIELD": NMI}}),
    ("guest.rflags.fred_iopl", "max", "long-mode",
     {"fields": {"GUEST_CR4": HOST_CR4 | CR4_FRED, "GUEST_RFLAGS": RFLAGS_FIXED1 | RFLAGS_IOPL3}}),
    ("guest.ssp.alignment", "raptorlake_client", "long-mode",
     {"entry": ["load_cet_state"], "fields": {"GUEST_SSP": 0x1004}}),
    ("guest.ssp.upper_bits", "raptorlake_client", "long-mode",
     {"entry": ["load_cet_state"], "fields": {"GUEST_SSP": NONCANONICAL_48}}),
    ("guest.ssp.upper_bits", "max", "protected-mode",
     {"entry": ["load_cet_state"], "fields": {"GUEST_SSP": UPPER_DIFFER_48}}),
]


def _case_id(case: tuple[str, str, str, object]) -> str:
    return f"{case[0]}-{case[1]}-{case[2]}"


@pytest.mark.parametrize(("check_id", "preset", "template", "kwargs"), REJECTS, ids=[_case_id(c) for c in REJECTS])
def test_check_rejects_input_breaking_only_its_rule(check_id: str, preset: str, template: str,
                                                    kwargs: dict[str, object]) -> None:
    v = verdict(preset, template, **kwargs)
    assert ids(v) == {check_id}, [x.message for x in v.violations]
    assert v.outcome == VmEntryFailed(INVALID_STATE, 0)
    assert v.not_evaluable == ()
    assert all(x.message for x in v.violations)


@pytest.mark.parametrize(("check_id", "preset", "template", "kwargs"), ACCEPTS, ids=[_case_id(c) for c in ACCEPTS])
def test_check_accepts_nearest_valid_input(check_id: str, preset: str, template: str,
                                           kwargs: dict[str, object]) -> None:
    v = verdict(preset, template, **kwargs)
    assert check_id not in ids(v), [x.message for x in v.violations]
    assert not any(check_id in u for u in v.not_evaluable)


# Checks whose violating input needs more than a field table (dedicated tests below).
DEDICATED = {"guest.rflags.vm", "guest.rflags.fred_iopl"}


def test_every_check_of_the_groups_is_tested_both_ways() -> None:
    wanted = {c.id for c in ENTRY_CHECKS if c.group in ("guest_regs", "guest_dtr", "guest_rip_rflags")}
    assert {c[0] for c in REJECTS} | DEDICATED == wanted
    assert {c[0] for c in ACCEPTS} | DEDICATED == wanted
    assert all(REGISTRY[i].fn.__module__ == "vtx.vmx.entry.guest_state" for i in wanted)


V86_AR = ar(type=3, s=1, dpl=3, p=1)  # SDM Vol. 3C §28.3.1.2: the access rights of a virtual-8086 segment


def v86_segments(vmcs: Vmcs) -> dict[str, int]:
    """CS, SS, DS, ES, FS and GS as virtual-8086 mode needs them: base = selector << 4, limit FFFFH,
    access rights F3H (so that only the RFLAGS.VM rule decides)."""
    fields: dict[str, int] = {}
    for reg in ("CS", "SS", "DS", "ES", "FS", "GS"):
        fields |= {f"GUEST_{reg}_BASE": vmcs[f"GUEST_{reg}_SELECTOR"] << 4, f"GUEST_{reg}_LIMIT": 0xFFFF,
                   f"GUEST_{reg}_AR_BYTES": V86_AR}
    return fields


@pytest.mark.parametrize(("preset", "template", "instance"), [
    ("skylake_client", "long-mode", "'IA-32e mode guest' is 1"), ("skylake_client", "real-mode", "GUEST_CR0.PE is 0")])
def test_rflags_vm_rejects_virtual_8086_mode_outside_protected_mode(preset: str, template: str, instance: str) -> None:
    vmcs, caps = build(preset, template)
    v86 = vmcs.with_fields(v86_segments(vmcs) | {"GUEST_RFLAGS": RFLAGS_FIXED1 | RFLAGS_VM})
    v = evaluate_vm_entry(v86, caps)
    assert ids(v) == {"guest.rflags.vm"}, [x.message for x in v.violations]
    assert [instance in x.message for x in v.violations] == [True]
    assert v.outcome == VmEntryFailed(INVALID_STATE, 0)


def test_rflags_vm_accepts_virtual_8086_mode_in_protected_mode() -> None:
    vmcs, caps = build("skylake_client", "protected-mode")
    v86 = vmcs.with_fields(v86_segments(vmcs) | {"GUEST_RFLAGS": RFLAGS_FIXED1 | RFLAGS_VM})
    assert "guest.rflags.vm" not in ids(evaluate_vm_entry(v86, caps))


def user_mode_fred_guest(rflags: int, *, cr4: int = HOST_CR4 | CR4_FRED) -> tuple[Vmcs, Capabilities]:
    """A 64-bit guest at CPL 3 (CS and SS DPL and RPL 3) under the synthetic maximum profile."""
    vmcs, caps = build("max")
    return vmcs.with_fields({
        "GUEST_CR4": cr4, "GUEST_RFLAGS": rflags,
        "GUEST_CS_SELECTOR": vmcs["GUEST_CS_SELECTOR"] | 3, "GUEST_SS_SELECTOR": vmcs["GUEST_SS_SELECTOR"] | 3,
        "GUEST_CS_AR_BYTES": reg_bit("VMCS_ACCESS_RIGHTS", "DPL").bits.put(vmcs["GUEST_CS_AR_BYTES"], 3),
        "GUEST_SS_AR_BYTES": reg_bit("VMCS_ACCESS_RIGHTS", "DPL").bits.put(vmcs["GUEST_SS_AR_BYTES"], 3)}), caps


def test_rflags_fred_iopl_rejects_iopl_for_a_user_mode_fred_guest() -> None:
    vmcs, caps = user_mode_fred_guest(RFLAGS_FIXED1 | RFLAGS_IOPL3)
    v = evaluate_vm_entry(vmcs, caps)
    assert ids(v) == {"guest.rflags.fred_iopl"}, [x.message for x in v.violations]
    assert v.outcome == VmEntryFailed(INVALID_STATE, 0)


@pytest.mark.parametrize(("rflags", "cr4"), [
    (RFLAGS_FIXED1, HOST_CR4 | CR4_FRED),                 # IOPL 0
    (RFLAGS_FIXED1 | RFLAGS_IOPL3, HOST_CR4)])            # no FRED transitions
def test_rflags_fred_iopl_accepts(rflags: int, cr4: int) -> None:
    vmcs, caps = user_mode_fred_guest(rflags, cr4=cr4)
    v = evaluate_vm_entry(vmcs, caps)
    assert ids(v) == set(), [x.message for x in v.violations]


def test_efer_nxe_is_reserved_without_execute_disable_support() -> None:
    caps = PRESETS["skylake_client"].overlay({"CPUID_NX": False})
    vmcs, _ = build("skylake_client", entry=["load_ia32_efer"],
                    fields={"GUEST_IA32_EFER": EFER_LME | EFER_LMA | EFER_NXE})
    v = evaluate_vm_entry(vmcs, caps)
    assert ids(v) == {"guest.efer.reserved_bits"}, [x.message for x in v.violations]


def test_perf_metrics_enable_is_not_evaluable_without_perf_capabilities() -> None:
    v = verdict("max", entry=["load_ia32_perf_global_ctrl"], fields={"GUEST_IA32_PERF_GLOBAL_CTRL": 1 << 48})
    assert ids(v) == set()
    assert [u.split(":")[0] for u in v.not_evaluable] == ["guest.perf_global_ctrl.reserved_bits"]
    assert not v.succeeds


def test_cr0_pe_pg_need_unrestricted_guest_and_secondary_controls() -> None:
    """The real-mode template passes only because "unrestricted guest" (with "activate secondary
    controls") exempts CR0.PE and CR0.PG from IA32_VMX_CR0_FIXED0."""
    vmcs, caps = build("skylake_client", "real-mode")
    proc = vmcs["CPU_BASED_VM_EXEC_CONTROL"] & ~get_control("proc", "activate_secondary_controls").mask
    proc2 = vmcs["SECONDARY_VM_EXEC_CONTROL"] & ~get_control("proc2", "unrestricted_guest").mask
    for mutated in (vmcs.with_fields({"CPU_BASED_VM_EXEC_CONTROL": proc}),
                    vmcs.with_fields({"SECONDARY_VM_EXEC_CONTROL": proc2})):
        v = evaluate_vm_entry(mutated, caps)
        messages = [x.message for x in v.violations if x.check_id == "guest.cr0.fixed_bits"]
        assert messages and f"{CR0_PE | CR0_PG:#x}" in messages[0]
