"""Checks on the VM-execution control fields (vtx/vmx/entry/exec_controls.py).

Every check has an input that breaks exactly that check (a template under a preset that allows the
feature, with a few controls and fields changed) and the nearest input that passes it. Checks that
depend on a capability are tried under a profile that allows the value and one that does not.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import attrs
import pytest

from vtx import spec
from vtx.errors import NotEvaluable
from vtx.outcomes import VmFailValid
from vtx.paging.memory import PhysicalMemory
from vtx.spec import CAPABILITY_MSRS, CONTROL_FIELDS, VMCS_FIELDS, get_control
from vtx.vmx.capabilities import Capabilities, load_preset
from vtx.vmx.entry import REGISTRY, EntryContext, evaluate_vm_entry
from vtx.vmx.entry.catalogue import ENTRY_CHECKS
from vtx.vmx.eptp import EPTP
from vtx.vmx.templates import build_template
from vtx.vmx.vmcs import Vmcs

GROUP = "exec_controls"
CONTROL_FIELD_ERROR = VmFailValid(spec.get_error("ENTRY_INVALID_CONTROL_FIELD"))


def _with_msr_field(caps: Capabilities, msr: str, bitfield: str, value: int) -> Capabilities:
    field = CAPABILITY_MSRS[msr].field(bitfield)
    raw = caps.msr(msr)
    assert raw is not None
    return caps.overlay({msr: field.put(raw, value)}, name=f"{caps.name}:{bitfield}={value}")


def _profiles() -> dict[str, Capabilities]:
    full = load_preset("max")
    skylake = load_preset("skylake_client")
    return {
        "max": full,
        "skylake_client": skylake,
        "ivybridge_client": load_preset("ivybridge_client"),
        # max with a 39-bit physical-address width (Skylake's) and with IA32_VMX_BASIC[48] = 1
        "max_maxphyaddr_39": full.overlay({"MAXPHYADDR": 39}, name="max_maxphyaddr_39"),
        "max_32_bit_pointers": _with_msr_field(full, "IA32_VMX_BASIC", "phys_addr_width_32", 1),
        "max_no_eptp_switching": _with_msr_field(full, "IA32_VMX_VMFUNC", "eptp_switching", 0),
        "max_no_hlat_prefix": _with_msr_field(full, "IA32_VMX_EPT_VPID_CAP", "max_hlat_prefix_size", 0),
        "skylake_no_uc_ept": _with_msr_field(skylake, "IA32_VMX_EPT_VPID_CAP", "memtype_uc", 0),
    }


PROFILES = _profiles()
WIDE = 1 << 40  # beyond 39 bits (and 36), within 52


@attrs.frozen
class Case:
    """A template under a profile with some controls turned on or off and some fields written.

    Controls are named "<field key>.<control>"; turning on a secondary or tertiary control also
    turns on the primary control that activates its field."""

    profile: str
    features: tuple[str, ...] = ()
    on: tuple[str, ...] = ()
    off: tuple[str, ...] = ()
    fields: Mapping[str, int] = attrs.field(factory=dict)
    vtpr: int | None = None
    template: str = "long-mode"

    def but(self, *, on: tuple[str, ...] = (), off: tuple[str, ...] = (), fields: Mapping[str, int] | None = None,
            profile: str | None = None, vtpr: int | None = None) -> Case:
        """This case with more controls turned on / off and more fields written."""
        return attrs.evolve(self, profile=profile or self.profile, on=self.on + on, off=self.off + off,
                            fields={**self.fields, **(fields or {})},
                            vtpr=self.vtpr if vtpr is None else vtpr)

    def build(self) -> tuple[Vmcs, Capabilities, EntryContext]:
        caps = PROFILES[self.profile]
        vmcs = build_template(self.template, caps, features=self.features)
        values = {cf.key: vmcs.get(cf.vmcs_field) for cf in CONTROL_FIELDS}
        for name in self.on:
            for key, control in _with_activator(name):
                values[key] |= get_control(key, control).mask
        for name in self.off:
            key, control = name.split(".")
            values[key] &= ~get_control(key, control).mask
        vmcs = vmcs.with_fields({CONTROL_FIELDS[k].vmcs_field.name: v for k, v in values.items()})
        vmcs = vmcs.with_fields(self.fields)
        ctx = EntryContext()
        if self.vtpr is not None:
            vtpr_address = vmcs["VIRTUAL_APIC_PAGE_ADDR"] + 0x80  # VTPR: offset 080H of the virtual-APIC page
            ctx = EntryContext(memory=PhysicalMemory().write_int(vtpr_address, 1, self.vtpr))
        return vmcs, caps, ctx


def _with_activator(name: str) -> Iterator[tuple[str, str]]:
    key, control = name.split(".")
    activator = {"proc2": "activate_secondary_controls", "proc3": "activate_tertiary_controls"}.get(key)
    if activator:
        yield "proc", activator
    yield key, control


WB = next(value for value, capability in EPTP.memory_types.items() if capability == "memtype_wb")


def _eptp(memory_type: int | None = None, levels: int | None = None, **bits: int) -> int:
    """An EPTP like the templates' (WB, 4 levels) with some of its fields changed."""
    eptp = EPTP.walk_length_minus_1.put(EPTP.memory_type.put(0x0010_1000, WB), 4 - 1)
    if memory_type is not None:
        eptp = EPTP.memory_type.put(eptp, memory_type)
    if levels is not None:
        eptp = EPTP.walk_length_minus_1.put(eptp, levels - 1)
    for name, value in bits.items():
        eptp = getattr(EPTP, name).put(eptp, value)
    return eptp


# Base settings shared by several rows.
TPR_SHADOW = Case("max", on=("proc.use_tpr_shadow",), fields={"VIRTUAL_APIC_PAGE_ADDR": 0x0030_0000})
VID = TPR_SHADOW.but(on=("pin.external_interrupt_exiting", "proc2.virtual_interrupt_delivery"))
POSTED = VID.but(on=("pin.process_posted_interrupts", "exit.acknowledge_interrupt_on_exit"),
                 fields={"POSTED_INTR_NV": 0xF2, "POSTED_INTR_DESC_ADDR": 0x0031_0040})
EPT = Case("max", features=("enable_ept",))
EPT_SKYLAKE = Case("skylake_client", features=("enable_ept",))
PML = Case("skylake_client", features=("enable_pml",))
SPP = EPT.but(on=("proc2.sub_page_write_permissions_for_ept",),
              fields={"SUB_PAGE_PERMISSION_TABLE_POINTER": 0x0032_0000})
VMFUNC = Case("skylake_client", features=("enable_ept", "enable_vm_functions"),
              fields={"VM_FUNCTION_CONTROL": 1, "EPTP_LIST_ADDRESS": 0x0033_0000})
SHADOWING = Case("skylake_client", features=("vmcs_shadowing",))
VE = Case("skylake_client", features=("ept_violation_ve",))
PT_GPA = EPT.but(on=("proc2.pt_uses_guest_physical_addresses", "entry.load_ia32_rtit_ctl",
                     "exit.clear_ia32_rtit_ctl"))
HLAT = EPT.but(on=("proc3.enable_hlat",), fields={"HLAT_POINTER": 0x0034_0000, "HLAT_PREFIX_SIZE": 1})
PASID = Case("max", on=("proc2.pasid_translation",),
              fields={"LOW_PASID_DIRECTORY_ADDRESS": 0x0035_0000, "HIGH_PASID_DIRECTORY_ADDRESS": 0x0036_0000})
IPIV = TPR_SHADOW.but(on=("proc3.ipi_virtualization",), fields={"PID_POINTER_TABLE": 0x0037_0008})
IO_BITMAPS = Case("max", on=("proc.use_io_bitmaps",), fields={"IO_BITMAP_A": 0x0038_0000, "IO_BITMAP_B": 0x0039_0000})
MSR_BITMAP = Case("max", on=("proc.use_msr_bitmaps",), fields={"MSR_BITMAP": 0x003A_0000})


def _instances(check_id: str, base: Case, fields: tuple[str, ...], bad: int, *, good_profile: str | None = None,
               bad_profile: str | None = None) -> list[tuple[str, Case, Case]]:
    """One (bad, good) pair per address field: the field set to ``bad`` (under ``bad_profile``)
    and the base case (under ``good_profile``)."""
    return [(check_id, base.but(fields={f: bad}, profile=bad_profile), base.but(profile=good_profile))
            for f in fields]


# (check id, an input that breaks exactly this check, the nearest input that passes it)
CASES: list[tuple[str, Case, Case]] = [
    ("controls.cr3_target_count", Case("skylake_client", fields={"CR3_TARGET_COUNT": 5}),
     Case("skylake_client", fields={"CR3_TARGET_COUNT": 4})),
    *_instances("controls.io_bitmaps.alignment", IO_BITMAPS, ("IO_BITMAP_A", "IO_BITMAP_B"), 0x0038_0800),
    *_instances("controls.io_bitmaps.address_width", IO_BITMAPS, ("IO_BITMAP_A", "IO_BITMAP_B"), WIDE,
                bad_profile="max_maxphyaddr_39"),
    *_instances("controls.msr_bitmap.alignment", MSR_BITMAP, ("MSR_BITMAP",), 0x003A_0008),
    ("controls.msr_bitmap.address_width", MSR_BITMAP.but(fields={"MSR_BITMAP": WIDE}, profile="ivybridge_client"),
     MSR_BITMAP.but(fields={"MSR_BITMAP": 1 << 38}, profile="skylake_client")),
    ("controls.msr_bitmap.address_width", MSR_BITMAP.but(fields={"MSR_BITMAP": 1 << 32}, profile="max_32_bit_pointers"),
     MSR_BITMAP.but(fields={"MSR_BITMAP": 1 << 32})),
    *_instances("controls.virtual_apic.alignment", TPR_SHADOW, ("VIRTUAL_APIC_PAGE_ADDR",), 0x0030_0010),
    *_instances("controls.virtual_apic.address_width", TPR_SHADOW, ("VIRTUAL_APIC_PAGE_ADDR",), WIDE,
                bad_profile="max_maxphyaddr_39"),
    ("controls.tpr_threshold.reserved_bits", TPR_SHADOW.but(fields={"TPR_THRESHOLD": 0x10}),
     VID.but(fields={"TPR_THRESHOLD": 0x10})),
    ("controls.tpr_threshold.vtpr", TPR_SHADOW.but(fields={"TPR_THRESHOLD": 3}, vtpr=0x2F),
     TPR_SHADOW.but(fields={"TPR_THRESHOLD": 3}, vtpr=0x30)),
    ("controls.tpr_threshold.vtpr", TPR_SHADOW.but(fields={"TPR_THRESHOLD": 3}, vtpr=0x2F),
     TPR_SHADOW.but(on=("proc2.virtualize_apic_accesses",), fields={"TPR_THRESHOLD": 3,
                                                                                  "APIC_ACCESS_ADDR": 0x0020_0000})),
    ("controls.nmi.virtual_nmis_need_nmi_exiting", Case("skylake_client", on=("pin.virtual_nmis",)),
     Case("skylake_client", on=("pin.virtual_nmis", "pin.nmi_exiting"))),
    ("controls.nmi.nmi_window_needs_virtual_nmis", Case("skylake_client", on=("proc.nmi_window_exiting",)),
     Case("skylake_client", on=("proc.nmi_window_exiting", "pin.virtual_nmis", "pin.nmi_exiting"))),
    ("controls.apic_access.alignment", Case("skylake_client", features=("virtualize_apic_accesses",),
                                            fields={"APIC_ACCESS_ADDR": 0x0020_0001}),
     Case("skylake_client", features=("virtualize_apic_accesses",))),
    ("controls.apic_access.address_width", Case("ivybridge_client", features=("virtualize_apic_accesses",),
                                                fields={"APIC_ACCESS_ADDR": 1 << 37}),
     Case("skylake_client", features=("virtualize_apic_accesses",), fields={"APIC_ACCESS_ADDR": 1 << 37})),
    ("controls.apicv.needs_tpr_shadow", Case("max", on=("proc2.virtualize_x2apic_mode",)),
     TPR_SHADOW.but(on=("proc2.virtualize_x2apic_mode",))),
    ("controls.apicv.needs_tpr_shadow", Case("max", on=("proc2.apic_register_virtualization",)),
     TPR_SHADOW.but(on=("proc2.apic_register_virtualization",))),
    ("controls.apicv.needs_tpr_shadow", VID.but(off=("proc.use_tpr_shadow",)), VID),
    ("controls.apicv.ipi_virtualization_needs_tpr_shadow", IPIV.but(off=("proc.use_tpr_shadow",)), IPIV),
    ("controls.apicv.x2apic_excludes_apic_accesses",
     TPR_SHADOW.but(on=("proc2.virtualize_x2apic_mode", "proc2.virtualize_apic_accesses")),
     TPR_SHADOW.but(on=("proc2.virtualize_x2apic_mode",))),
    ("controls.apicv.vid_needs_external_interrupt_exiting", VID.but(off=("pin.external_interrupt_exiting",)), VID),
    ("controls.posted_interrupts.needs_vid", POSTED.but(off=("proc2.virtual_interrupt_delivery",)), POSTED),
    ("controls.posted_interrupts.needs_ack_on_exit", POSTED.but(off=("exit.acknowledge_interrupt_on_exit",)), POSTED),
    ("controls.posted_interrupts.notification_vector", POSTED.but(fields={"POSTED_INTR_NV": 0x1F2}),
     POSTED.but(fields={"POSTED_INTR_NV": 0xFF})),
    *_instances("controls.posted_interrupts.descriptor_alignment", POSTED, ("POSTED_INTR_DESC_ADDR",), 0x0031_0020),
    *_instances("controls.posted_interrupts.descriptor_address_width", POSTED, ("POSTED_INTR_DESC_ADDR",), WIDE,
                bad_profile="max_maxphyaddr_39"),
    ("controls.vpid.nonzero", Case("ivybridge_client", features=("enable_vpid",), fields={"VIRTUAL_PROCESSOR_ID": 0}),
     Case("ivybridge_client", features=("enable_vpid",))),
    ("controls.eptp.memory_type", EPT_SKYLAKE.but(fields={"EPT_POINTER": _eptp(memory_type=1)}), EPT_SKYLAKE),
    ("controls.eptp.memory_type", EPT_SKYLAKE.but(fields={"EPT_POINTER": _eptp(memory_type=0)},
                                                  profile="skylake_no_uc_ept"),
     EPT_SKYLAKE.but(fields={"EPT_POINTER": _eptp(memory_type=0)})),
    ("controls.eptp.page_walk_length", EPT.but(fields={"EPT_POINTER": _eptp(levels=5)}, profile="skylake_client"),
     EPT.but(fields={"EPT_POINTER": _eptp(levels=5)})),
    ("controls.eptp.page_walk_length", EPT.but(fields={"EPT_POINTER": _eptp(levels=3)}), EPT),
    ("controls.eptp.accessed_dirty", EPT.but(fields={"EPT_POINTER": _eptp(accessed_dirty=1)},
                                             profile="ivybridge_client"),
     EPT.but(fields={"EPT_POINTER": _eptp(accessed_dirty=1)}, profile="skylake_client")),
    ("controls.eptp.supervisor_shadow_stack", EPT.but(fields={"EPT_POINTER": _eptp(supervisor_shadow_stack=1)},
                                                      profile="skylake_client"),
     EPT.but(fields={"EPT_POINTER": _eptp(supervisor_shadow_stack=1)})),
    ("controls.eptp.reserved_bits", EPT.but(fields={"EPT_POINTER": _eptp(reserved=0b0100)}), EPT),
    ("controls.eptp.reserved_bits", EPT.but(fields={"EPT_POINTER": _eptp() | WIDE}, profile="max_maxphyaddr_39"),
     EPT.but(fields={"EPT_POINTER": _eptp() | WIDE})),
    ("controls.pml.needs_ept", PML.but(off=("proc2.enable_ept",)), PML),
    *_instances("controls.pml.alignment", PML, ("PML_ADDRESS",), 0x0023_0100),
    ("controls.pml.address_width", PML.but(fields={"PML_ADDRESS": WIDE}),
     PML.but(fields={"PML_ADDRESS": WIDE}, profile="max")),
    ("controls.unrestricted_guest.needs_ept", Case("ivybridge_client", on=("proc2.unrestricted_guest",)),
     Case("ivybridge_client", features=("unrestricted_guest",))),
    ("controls.mode_based_ept_exec.needs_ept", Case("max", on=("proc2.mode_based_execute_control_for_ept",)),
     EPT.but(on=("proc2.mode_based_execute_control_for_ept",))),
    ("controls.spp.needs_ept", SPP.but(off=("proc2.enable_ept",)), SPP),
    *_instances("controls.spp.alignment", SPP, ("SUB_PAGE_PERMISSION_TABLE_POINTER",), 0x0032_0400),
    *_instances("controls.spp.address_width", SPP, ("SUB_PAGE_PERMISSION_TABLE_POINTER",), WIDE,
                bad_profile="max_maxphyaddr_39"),
    ("controls.vmfunc.reserved_bits", VMFUNC.but(fields={"VM_FUNCTION_CONTROL": 0b11}), VMFUNC),
    ("controls.vmfunc.reserved_bits", VMFUNC.but(profile="max_no_eptp_switching"), VMFUNC.but(profile="max")),
    ("controls.vmfunc.eptp_switching_needs_ept", VMFUNC.but(off=("proc2.enable_ept",)),
     VMFUNC.but(off=("proc2.enable_ept",), fields={"VM_FUNCTION_CONTROL": 0})),
    *_instances("controls.vmfunc.eptp_list_alignment", VMFUNC, ("EPTP_LIST_ADDRESS",), 0x0033_0008),
    ("controls.vmfunc.eptp_list_address_width", VMFUNC.but(fields={"EPTP_LIST_ADDRESS": WIDE}),
     VMFUNC.but(fields={"EPTP_LIST_ADDRESS": WIDE}, profile="max")),
    *_instances("controls.vmcs_shadowing.bitmap_alignment", SHADOWING, ("VMREAD_BITMAP", "VMWRITE_BITMAP"),
                0x0021_0040),
    *_instances("controls.vmcs_shadowing.bitmap_address_width", SHADOWING, ("VMREAD_BITMAP", "VMWRITE_BITMAP"),
                WIDE, good_profile="max"),
    *_instances("controls.ept_violation_ve.alignment", VE, ("VE_INFORMATION_ADDRESS",), 0x0024_0004),
    *_instances("controls.ept_violation_ve.address_width", VE, ("VE_INFORMATION_ADDRESS",), WIDE,
                good_profile="max"),
    ("controls.pt_uses_gpa.dependencies", PT_GPA.but(off=("proc2.enable_ept",)), PT_GPA),
    ("controls.pt_uses_gpa.dependencies", PT_GPA.but(off=("entry.load_ia32_rtit_ctl",)), PT_GPA),
    ("controls.pt_uses_gpa.dependencies", PT_GPA.but(off=("exit.clear_ia32_rtit_ctl",)), PT_GPA),
    ("controls.tsc_scaling.multiplier_nonzero", Case("max", features=("use_tsc_scaling",),
                                                     fields={"TSC_MULTIPLIER": 0}),
     Case("max", features=("use_tsc_scaling",))),
    ("controls.hlat.needs_ept", HLAT.but(off=("proc2.enable_ept",)), HLAT),
    ("controls.hlat.hlatp_reserved_bits", HLAT.but(fields={"HLAT_POINTER": 0x0034_0001}),
     HLAT.but(fields={"HLAT_POINTER": 0x0034_0018})),
    ("controls.hlat.hlatp_reserved_bits", HLAT.but(fields={"HLAT_POINTER": 0x0034_0020}), HLAT),
    *_instances("controls.hlat.hlatp_address_width", HLAT, ("HLAT_POINTER",), WIDE, bad_profile="max_maxphyaddr_39"),
    ("controls.hlat.prefix_size", HLAT.but(fields={"HLAT_PREFIX_SIZE": 2}), HLAT),
    ("controls.hlat.prefix_size", HLAT.but(profile="max_no_hlat_prefix"),
     HLAT.but(fields={"HLAT_PREFIX_SIZE": 0}, profile="max_no_hlat_prefix")),
    *_instances("controls.pasid_translation.alignment", PASID,
                ("LOW_PASID_DIRECTORY_ADDRESS", "HIGH_PASID_DIRECTORY_ADDRESS"), 0x0035_0200),
    *_instances("controls.pasid_translation.address_width", PASID,
                ("LOW_PASID_DIRECTORY_ADDRESS", "HIGH_PASID_DIRECTORY_ADDRESS"), WIDE, bad_profile="max_maxphyaddr_39"),
    ("controls.ipi_virtualization.pid_table_alignment", IPIV.but(fields={"PID_POINTER_TABLE": 0x0037_0004}), IPIV),
    *_instances("controls.ipi_virtualization.pid_table_address_width", IPIV, ("PID_POINTER_TABLE",), WIDE,
                bad_profile="max_maxphyaddr_39"),
]
PARAMS = [pytest.param(check_id, bad, good, id=f"{check_id}-{i}") for i, (check_id, bad, good) in enumerate(CASES)]
IMPLEMENTED = sorted({row.id for row in ENTRY_CHECKS if row.group == GROUP and row.id in REGISTRY})


def _violations(case: Case) -> dict[str, list[str]]:
    vmcs, caps, ctx = case.build()
    verdict = evaluate_vm_entry(vmcs, caps, ctx)
    found: dict[str, list[str]] = {}
    for v in verdict.violations:
        found.setdefault(v.check_id, []).append(v.message)
    return found


@pytest.mark.parametrize(("check_id", "bad", "good"), PARAMS)
def test_exec_control_check_rejects_the_breaking_input(check_id: str, bad: Case, good: Case) -> None:
    vmcs, caps, ctx = bad.build()
    verdict = evaluate_vm_entry(vmcs, caps, ctx)
    assert {v.check_id for v in verdict.violations} == {check_id}, [v.message for v in verdict.violations]
    assert verdict.outcome == CONTROL_FIELD_ERROR
    assert not verdict.not_evaluable


@pytest.mark.parametrize(("check_id", "bad", "good"), PARAMS)
def test_exec_control_check_accepts_the_nearest_valid_input(check_id: str, bad: Case, good: Case) -> None:
    found = _violations(good)
    assert not {c for c in found if ENTRY_CHECKS[c].group == GROUP}, found


def test_every_exec_control_check_has_a_breaking_case() -> None:
    reserved = {f"controls.{k}.reserved_bits" for k in ("pin_based", "primary_proc_based", "secondary_proc_based",
                                                         "tertiary_proc_based")}
    assert {check_id for check_id, _, _ in CASES} == set(IMPLEMENTED) - reserved


def test_messages_name_the_field_and_its_value() -> None:
    case = IO_BITMAPS.but(fields={"IO_BITMAP_B": 0x0039_0010})
    proc = case.build()[0]["CPU_BASED_VM_EXEC_CONTROL"]
    assert _violations(case) == {"controls.io_bitmaps.alignment": [
        "IO_BITMAP_B = 0x390010: bits 11:0 must be 0 while "
        f"'Use I/O bitmaps' (CPU_BASED_VM_EXEC_CONTROL = {proc:#x}) is 1"]}


def test_every_instance_is_reported() -> None:
    found = _violations(PT_GPA.but(off=("proc2.enable_ept", "entry.load_ia32_rtit_ctl", "exit.clear_ia32_rtit_ctl")))
    assert len(found["controls.pt_uses_gpa.dependencies"]) == 3


def test_secondary_controls_are_ignored_while_not_activated() -> None:
    """'Unrestricted guest' without EPT is no violation when the secondary controls are not activated."""
    case = Case("ivybridge_client", on=("proc2.unrestricted_guest",), off=("proc.activate_secondary_controls",))
    assert "controls.unrestricted_guest.needs_ept" not in _violations(case)


def test_tpr_threshold_against_vtpr_waits_for_a_valid_virtual_apic_address() -> None:
    found = _violations(TPR_SHADOW.but(fields={"TPR_THRESHOLD": 3, "VIRTUAL_APIC_PAGE_ADDR": 0x0030_0010}, vtpr=0))
    assert set(found) == {"controls.virtual_apic.alignment"}


# ----------------------------------------------------------------------------- not evaluable

BARE = Capabilities.from_msrs({}, name="bare")
ALL_ON = Vmcs().with_fields({cf.vmcs_field.name: (1 << cf.width) - 1 for cf in CONTROL_FIELDS}
                            | {"VIRTUAL_PROCESSOR_ID": 1, "VM_FUNCTION_CONTROL": 1, "CR3_TARGET_COUNT": 1})


@pytest.mark.parametrize("check_id", ["controls.cr3_target_count", "controls.io_bitmaps.address_width",
                                      "controls.eptp.memory_type", "controls.eptp.accessed_dirty",
                                      "controls.vmfunc.reserved_bits", "controls.hlat.prefix_size"])
def test_a_profile_without_the_capability_makes_the_check_not_evaluable(check_id: str) -> None:
    vmcs = ALL_ON.with_fields({"EPT_POINTER": _eptp(accessed_dirty=1), "HLAT_PREFIX_SIZE": 1})
    with pytest.raises(NotEvaluable):
        list(REGISTRY[check_id].fn(vmcs, BARE, EntryContext()))


# ----------------------------------------------------------------------------- fields read


@pytest.mark.parametrize("check_id", IMPLEMENTED)
@pytest.mark.parametrize("controls", ["all_on", "all_off"])
def test_checks_read_only_the_fields_their_catalogue_row_lists(check_id: str, controls: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    vmcs = ALL_ON if controls == "all_on" else Vmcs()
    read: set[str] = set()
    original = Vmcs.get

    def recording_get(self: Vmcs, field: spec.VmcsField) -> int:
        read.add(field.name)
        return original(self, field)

    monkeypatch.setattr(Vmcs, "get", recording_get)
    list(REGISTRY[check_id].fn(vmcs, load_preset("max"), EntryContext()))
    assert read <= set(ENTRY_CHECKS[check_id].fields)


def test_every_field_name_used_here_exists() -> None:
    for _, bad, good in CASES:
        for case in (bad, good):
            assert all(name in VMCS_FIELDS for name in case.fields)
