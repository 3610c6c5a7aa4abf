"""VM-entry MSR loading (vtx/vmx/entry/msr_load.py): exit reason 34 with the 1-based index of the
first entry VM entry refuses; entries after it are never examined."""

from __future__ import annotations

import attrs
import pytest

from vtx import spec
from vtx.errors import NotEvaluable
from vtx.paging.memory import PhysicalMemory
from vtx.spec import reg_bit
from vtx.vmx.capabilities import Capabilities, load_preset
from vtx.vmx.entry import EntryContext, EntryVerdict, evaluate_vm_entry
from vtx.vmx.entry.msr_load import ENTRY_BYTES, MSR_INDICES, MSR_WRITES, first_refused_entry, wrmsr_fault
from vtx.vmx.operation import VmxonRegion
from vtx.vmx.templates import build_template
from vtx.vmx.vmcs import Vmcs

SKYLAKE = load_preset("skylake_client")
IVYBRIDGE = load_preset("ivybridge_client")
MSR_LOAD_FAIL = spec.get_exit_reason("MSR_LOAD_FAIL")
AREA = 0x0003_0000

INDEX = reg_bit("VMX_MSR_ENTRY", "INDEX").bits
RESERVED = reg_bit("VMX_MSR_ENTRY", "RESERVED").bits
DATA = reg_bit("VMX_MSR_ENTRY", "DATA").bits

IA32_FS_BASE = MSR_INDICES["IA32_FS_BASE"]
IA32_GS_BASE = MSR_INDICES["IA32_GS_BASE"]
IA32_SMM_MONITOR_CTL = MSR_INDICES["IA32_SMM_MONITOR_CTL"]
IA32_KERNEL_GS_BASE = 0xC000_0102  # an MSR VM entry may load
IA32_SYSENTER_CS = 0x174
X2APIC_TPR = 0x808
WRMSR_ID = "msr_load.wrmsr_fault"
MSR_WRITES_BY_NAME = {w.name: w for w in MSR_WRITES.values()}


def msr_entry(index: int, data: int = 0, reserved: int = 0) -> int:
    return DATA.put(RESERVED.put(INDEX.put(0, index), reserved), data)


def load_area(*entries: int, caps: Capabilities = SKYLAKE, in_smm: bool = False) -> tuple[Vmcs, EntryContext]:
    """The long-mode template loading ``entries`` from a VM-entry MSR-load area at AREA."""
    memory = PhysicalMemory()
    for i, e in enumerate(entries):
        memory = memory.write_int(AREA + i * ENTRY_BYTES, ENTRY_BYTES, e)
    vmcs = build_template("long-mode", caps).with_fields(
        {"VM_ENTRY_MSR_LOAD_COUNT": len(entries), "VM_ENTRY_MSR_LOAD_ADDR": AREA})
    # in SMM: the executive-VMCS pointer field (0) is the VMXON pointer, a return to VMX root operation
    smm = {"vmxon_pointer": 0, "regions": {0: VmxonRegion(caps.msr_field("IA32_VMX_BASIC", "vmcs_revision_id") or 0)}}
    return vmcs, EntryContext(memory=memory, in_smm=in_smm, **(smm if in_smm else {}))  # type: ignore[arg-type]


def verdict(*entries: int, caps: Capabilities = SKYLAKE, in_smm: bool = False) -> EntryVerdict:
    vmcs, ctx = load_area(*entries, caps=caps, in_smm=in_smm)
    return evaluate_vm_entry(vmcs, caps, ctx)


def not_evaluable_ids(result: EntryVerdict) -> set[str]:
    return {n.partition(":")[0] for n in result.not_evaluable}


@pytest.mark.parametrize(("check_ids", "entries", "qualification", "in_smm"), [
    ({"msr_load.fs_gs_base"}, [msr_entry(IA32_FS_BASE)], 1, False),
    ({"msr_load.fs_gs_base"}, [msr_entry(IA32_KERNEL_GS_BASE), msr_entry(IA32_GS_BASE)], 2, False),
    ({"msr_load.x2apic"}, [msr_entry(X2APIC_TPR)], 1, False),
    ({"msr_load.x2apic"}, [msr_entry(IA32_SYSENTER_CS), msr_entry(IA32_KERNEL_GS_BASE), msr_entry(0x8FF)], 3, False),
    ({"msr_load.smm_only"}, [msr_entry(IA32_SMM_MONITOR_CTL, 1)], 1, False),
    ({"msr_load.model_specific"}, [msr_entry(MSR_INDICES["IA32_BIOS_UPDT_TRIG"])], 1, False),
    ({"msr_load.model_specific"}, [msr_entry(IA32_SYSENTER_CS), msr_entry(MSR_INDICES["IA32_BIOS_SIGN_ID"])], 2, False),
    ({"msr_load.reserved_bits"}, [msr_entry(IA32_SYSENTER_CS, reserved=1)], 1, False),
    ({"msr_load.reserved_bits"}, [msr_entry(IA32_SYSENTER_CS, reserved=1 << 31)], 1, True),
    # one entry refused for two reasons: both are reported, with the same qualification
    ({"msr_load.fs_gs_base", "msr_load.reserved_bits"}, [msr_entry(IA32_FS_BASE, reserved=1)], 1, False),
])
def test_msr_load_rejects(check_ids: set[str], entries: list[int], qualification: int, in_smm: bool) -> None:
    result = verdict(*entries, in_smm=in_smm)
    assert {v.check_id for v in result.violations} == check_ids, [v.message for v in result.violations]
    assert {v.qualification for v in result.violations} == {qualification}
    assert result.outcome is not None
    assert (result.outcome.reason, result.outcome.qualification) == (MSR_LOAD_FAIL, qualification)  # type: ignore[union-attr]
    assert result.possible_outcomes == (result.outcome,)


@pytest.mark.parametrize(("check_id", "entries", "in_smm"), [
    ("msr_load.fs_gs_base", [msr_entry(IA32_KERNEL_GS_BASE)], False),
    ("msr_load.x2apic", [msr_entry(0x7FF)], False),
    ("msr_load.x2apic", [msr_entry(0x900)], False),
    ("msr_load.smm_only", [msr_entry(IA32_SMM_MONITOR_CTL, 1)], True),
    ("msr_load.model_specific", [msr_entry(IA32_SYSENTER_CS)], False),
    ("msr_load.reserved_bits", [msr_entry(IA32_SYSENTER_CS, data=(1 << 64) - 1)], False),
])
def test_msr_load_accepts(check_id: str, entries: list[int], in_smm: bool) -> None:
    result = verdict(*entries, in_smm=in_smm)
    assert check_id not in {v.check_id for v in result.violations}
    assert check_id not in not_evaluable_ids(result)


def test_loading_stops_at_the_first_refused_entry() -> None:
    result = verdict(msr_entry(IA32_SYSENTER_CS, reserved=1), msr_entry(IA32_FS_BASE), msr_entry(X2APIC_TPR))
    assert [(v.check_id, v.qualification) for v in result.violations] == [("msr_load.reserved_bits", 1)]


def test_the_first_refused_entry_is_found_in_memory() -> None:
    vmcs, ctx = load_area(msr_entry(IA32_SYSENTER_CS, 5), msr_entry(X2APIC_TPR, 7))
    refused = first_refused_entry(vmcs, SKYLAKE, ctx)
    assert refused is not None
    entry, reasons = refused
    assert (entry.number, entry.address, entry.index, entry.data) == (2, AREA + ENTRY_BYTES, X2APIC_TPR, 7)
    assert set(reasons) == {"msr_load.x2apic"}


def test_no_msr_loading_is_evaluable_and_passes() -> None:
    vmcs = build_template("long-mode", SKYLAKE)
    assert evaluate_vm_entry(vmcs, SKYLAKE).succeeds


# ---------------------------------------------------------------- msr_load.wrmsr_fault

RAPTORLAKE = load_preset("raptorlake_client")  # PKS and CET shadow stacks; 48-bit linear addresses
EMERALDRAPIDS = load_preset("emeraldrapids_server")  # 57-bit linear addresses
IA32_VMX_BASIC = spec.CAPABILITY_MSRS["IA32_VMX_BASIC"].index
IA32_DEBUGCTL, IA32_PAT, IA32_PKRS, IA32_LSTAR = (MSR_WRITES_BY_NAME[n].index for n in (
    "IA32_DEBUGCTL", "IA32_PAT", "IA32_PKRS", "IA32_LSTAR"))
UNKNOWN_MSR = 0x10  # IA32_TIME_STAMP_COUNTER: spec/x86/msr_writes.toml has no row for it
DEBUGCTL_LBR = reg_bit("IA32_DEBUGCTL", "LBR").mask
DEBUGCTL_RESERVED = reg_bit("IA32_DEBUGCTL", "RESERVED_5_3").mask
DEBUGCTL_BLD = reg_bit("IA32_DEBUGCTL", "BLD").mask
PKRS_RESERVED = reg_bit("IA32_PKRS", "RESERVED_63_32").mask
PAT_DEFAULT = 0x0007_0406_0007_0406  # WB, WT, UC-, UC in PA0-PA3 and again in PA4-PA7
PAT_PA0_TYPE_2 = (PAT_DEFAULT & ~0xFF) | 2  # encoding 2 is reserved
CANONICAL_48 = 0xFFFF_8000_0000_1000
CANONICAL_57_ONLY = 0x0000_8000_0000_1000  # canonical with 57-bit linear addresses, not with 48


@pytest.mark.parametrize(("kind", "entries", "caps", "qualification"), [
    ("read_only", [msr_entry(IA32_VMX_BASIC)], SKYLAKE, 1),
    ("reserved", [msr_entry(IA32_DEBUGCTL, DEBUGCTL_LBR | DEBUGCTL_RESERVED)], SKYLAKE, 1),
    ("reserved", [msr_entry(IA32_SYSENTER_CS), msr_entry(IA32_PKRS, PKRS_RESERVED)], RAPTORLAKE, 2),
    ("canonical", [msr_entry(IA32_LSTAR, CANONICAL_57_ONLY)], SKYLAKE, 1),
    ("canonical", [msr_entry(IA32_KERNEL_GS_BASE, CANONICAL_48), msr_entry(0x175, 1 << 63)], SKYLAKE, 2),
    ("pat", [msr_entry(IA32_PAT, PAT_PA0_TYPE_2)], SKYLAKE, 1),
    ("exists", [msr_entry(IA32_PKRS, 0)], SKYLAKE, 1),  # no PKS: the MSR does not exist
    ("exists", [msr_entry(IA32_LSTAR, 0)], SKYLAKE.overlay({"CPUID_LM": 0}), 1),
])
def test_wrmsr_fault_rejects(kind: str, entries: list[int], caps: Capabilities, qualification: int) -> None:
    result = verdict(*entries, caps=caps)
    assert [(v.check_id, v.qualification) for v in result.violations] == [(WRMSR_ID, qualification)], kind
    assert result.outcome is not None
    assert (result.outcome.reason, result.outcome.qualification) == (MSR_LOAD_FAIL, qualification)  # type: ignore[union-attr]
    assert WRMSR_ID not in not_evaluable_ids(result)


@pytest.mark.parametrize(("kind", "entries", "caps"), [
    ("no rule", [msr_entry(IA32_SYSENTER_CS, (1 << 64) - 1)], SKYLAKE),  # UNSURE: bits 63:16 accept any value
    ("reserved", [msr_entry(IA32_DEBUGCTL, DEBUGCTL_LBR)], SKYLAKE),
    ("reserved", [msr_entry(IA32_PKRS, PKRS_RESERVED >> 32)], RAPTORLAKE),
    ("canonical", [msr_entry(IA32_LSTAR, CANONICAL_48), msr_entry(0x176, 0x7FFF_FFFF_F000)], SKYLAKE),
    ("canonical", [msr_entry(IA32_LSTAR, CANONICAL_57_ONLY)], EMERALDRAPIDS),  # WRMSR: the processor's width
    ("pat", [msr_entry(IA32_PAT, PAT_DEFAULT)], SKYLAKE),
    ("exists", [msr_entry(IA32_PKRS, 0)], RAPTORLAKE),
])
def test_wrmsr_fault_accepts(kind: str, entries: list[int], caps: Capabilities) -> None:
    result = verdict(*entries, caps=caps)
    assert not result.violations, (kind, [v.message for v in result.violations])
    assert result.succeeds, (kind, result.not_evaluable)


@pytest.mark.parametrize("name", list(spec.CAPABILITY_MSRS.keys()))
def test_every_vmx_capability_msr_is_read_only(name: str) -> None:
    assert wrmsr_fault(spec.CAPABILITY_MSRS[name].index, 0, SKYLAKE) is not None


def test_the_wrmsr_message_names_the_msr_the_value_and_the_rule() -> None:
    message = verdict(msr_entry(IA32_LSTAR, CANONICAL_57_ONLY)).violations[0].message
    assert "IA32_LSTAR" in message and hex(CANONICAL_57_ONLY) in message and "not canonical" in message


def test_a_wrmsr_fault_stops_loading() -> None:
    result = verdict(msr_entry(IA32_PAT, PAT_PA0_TYPE_2), msr_entry(IA32_FS_BASE), msr_entry(X2APIC_TPR))
    assert [(v.check_id, v.qualification) for v in result.violations] == [(WRMSR_ID, 1)]


def test_a_refused_entry_is_also_checked_for_a_wrmsr_fault() -> None:
    result = verdict(msr_entry(IA32_VMX_BASIC, reserved=1))
    assert {(v.check_id, v.qualification) for v in result.violations} == {(WRMSR_ID, 1), ("msr_load.reserved_bits", 1)}


@pytest.mark.parametrize("caps", [SKYLAKE, IVYBRIDGE])
def test_an_unknown_msr_is_not_evaluable(caps: Capabilities) -> None:
    result = verdict(msr_entry(IA32_SYSENTER_CS, 0x10), msr_entry(UNKNOWN_MSR), caps=caps)
    assert not result.violations
    assert not_evaluable_ids(result) == {WRMSR_ID}
    assert "entry 2" in result.not_evaluable[0] and "msr_writes.toml" in result.not_evaluable[0]
    assert not result.succeeds


def test_an_unknown_msr_before_a_faulting_one_is_not_evaluable() -> None:
    # VM entry fails on entry 1 if WRMSR to it faults, else on entry 2: the qualification is not known
    result = verdict(msr_entry(UNKNOWN_MSR), msr_entry(IA32_LSTAR, CANONICAL_57_ONLY))
    assert not result.violations
    assert not_evaluable_ids(result) == {WRMSR_ID}


def test_an_enumerated_bit_is_not_evaluable() -> None:
    result = verdict(msr_entry(IA32_DEBUGCTL, DEBUGCTL_BLD))
    assert not result.violations
    assert not_evaluable_ids(result) == {WRMSR_ID}


def test_a_profile_without_the_existence_fact_is_not_evaluable() -> None:
    caps = attrs.evolve(RAPTORLAKE, facts={k: v for k, v in RAPTORLAKE.facts.items() if k != "CPUID_PKS"})
    with pytest.raises(NotEvaluable, match="CPUID_PKS"):
        wrmsr_fault(IA32_PKRS, 0, caps)


def test_wrmsr_fault_is_moot_when_the_first_entry_is_refused() -> None:
    result = verdict(msr_entry(IA32_FS_BASE), msr_entry(UNKNOWN_MSR))
    assert WRMSR_ID not in not_evaluable_ids(result)


def test_wrmsr_fault_names_only_the_entries_before_the_refused_one() -> None:
    assert WRMSR_ID not in not_evaluable_ids(verdict(msr_entry(IA32_SYSENTER_CS), msr_entry(X2APIC_TPR),
                                                     msr_entry(UNKNOWN_MSR)))
    result = verdict(msr_entry(UNKNOWN_MSR), msr_entry(X2APIC_TPR))
    assert "entry 1 " in next(n for n in result.not_evaluable if n.startswith(WRMSR_ID))


def test_a_list_beyond_the_recommended_maximum_is_not_evaluable() -> None:
    n = SKYLAKE.msr_field("IA32_VMX_MISC", "max_msr_list_count")
    assert n is not None
    count = 512 * (n + 1) + 1  # Vol. 3D §A.6: 512 * (N + 1) is the recommended maximum
    vmcs = build_template("long-mode", SKYLAKE).with_fields(
        {"VM_ENTRY_MSR_LOAD_COUNT": count, "VM_ENTRY_MSR_LOAD_ADDR": AREA})
    result = evaluate_vm_entry(vmcs, SKYLAKE, EntryContext())
    assert not result.violations
    assert {c for c in not_evaluable_ids(result) if c.startswith("msr_load.")} == {
        "msr_load.fs_gs_base", "msr_load.x2apic", "msr_load.smm_only", "msr_load.model_specific",
        "msr_load.reserved_bits", WRMSR_ID}


def test_messages_name_the_entry_and_the_msr() -> None:
    result = verdict(msr_entry(IA32_SYSENTER_CS), msr_entry(IA32_GS_BASE, 0x1234))
    message = result.violations[0].message
    assert "entry 2" in message and "IA32_GS_BASE" in message and hex(AREA + ENTRY_BYTES) in message
