"""VM-entry checks on the guest segment registers (SDM Vol. 3C §28.3.1.2 "Checks on Guest Segment
Registers"): each rule rejects an input that breaks it alone, with a VM-entry failure of reason 33, and
accepts the nearest input that keeps it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs
import pytest

from vtx import spec
from vtx.outcomes import VmEntryFailed
from vtx.spec import get_control, reg_bit
from vtx.vmx.capabilities import Capabilities, load_preset
from vtx.vmx.entry import evaluate_vm_entry
from vtx.vmx.entry.catalogue import ENTRY_CHECKS
from vtx.vmx.templates import HOST_CR4, build_template
from vtx.vmx.vmcs import Vmcs

PRESETS = {name: load_preset(name) for name in ("skylake_client", "ivybridge_client", "max")}
INVALID_STATE = VmEntryFailed(spec.get_exit_reason("INVALID_STATE"), 0)
CR4_FRED = 1 << 32  # FRED specification: CR4.FRED is bit 32


def ar(**bits: int) -> int:
    """An access-rights value from named sub-fields of the VMCS access-rights format."""
    value = 0
    for name, v in bits.items():
        value = reg_bit("VMCS_ACCESS_RIGHTS", name.upper()).bits.put(value, v)
    return value


# Access rights of the templates (see vtx/vmx/templates.py) and the variants the cases use.
CODE = 11          # execute/read, accessed
CONFORMING = 15    # execute/read, conforming, accessed
DATA = 3           # read/write, accessed
CS_64 = ar(type=CODE, s=1, p=1, l=1, g=1)
CS_32 = ar(type=CODE, s=1, p=1, db=1, g=1)
DATA_32 = ar(type=DATA, s=1, p=1, db=1, g=1)
REAL_CS = ar(type=CODE, s=1, p=1)
REAL_DATA = ar(type=DATA, s=1, p=1)
V8086 = ar(type=DATA, s=1, dpl=3, p=1)
UNUSABLE = ar(unusable=1)
TR = ar(type=11, p=1)
LDT = ar(type=2, p=1)
LDTR_USABLE = {"GUEST_LDTR_SELECTOR": 0x20, "GUEST_LDTR_AR_BYTES": LDT, "GUEST_LDTR_LIMIT": 0xFFF}
NONCANONICAL_48 = 1 << 47  # canonical only with 57-bit linear addresses


def base(template: str, preset: str = "skylake_client", features: Iterable[str] = ()) -> tuple[Vmcs, Capabilities]:
    """A template VMCS that passes every check; "v8086" is the real-mode template with RFLAGS.VM set,
    CR0.PE set (a virtual-8086 guest needs it) and the access rights virtual-8086 requires."""
    caps = PRESETS[preset]
    if template != "v8086":
        return build_template(template, caps, features=features), caps
    vmcs = build_template("real-mode", caps, features=features)
    rflags = vmcs["GUEST_RFLAGS"] | reg_bit("RFLAGS", "VM").mask
    cr0 = vmcs["GUEST_CR0"] | reg_bit("CR0", "PE").mask
    return vmcs.with_fields({"GUEST_RFLAGS": rflags, "GUEST_CR0": cr0,
                             **{f"GUEST_{r}_AR_BYTES": V8086 for r in ("CS", "SS", "DS", "ES", "FS", "GS")}}), caps


def violated(vmcs: Vmcs, caps: Capabilities) -> set[str]:
    return {v.check_id for v in evaluate_vm_entry(vmcs, caps).violations}


# (check id, base template, preset, features, fields that break exactly that check)
REJECTS: list[tuple[str, str, str, tuple[str, ...], Mapping[str, int]]] = [
    ("guest.segments.tr_selector_ti", "long-mode", "skylake_client", (), {"GUEST_TR_SELECTOR": 0x18 | 4}),
    ("guest.segments.ldtr_selector_ti", "long-mode", "skylake_client", (),
     LDTR_USABLE | {"GUEST_LDTR_SELECTOR": 0x20 | 4}),
    ("guest.segments.ss_rpl_equals_cs_rpl", "protected-mode", "skylake_client", (), {"GUEST_CS_SELECTOR": 0x08 | 3}),
    ("guest.segments.v8086_base", "v8086", "skylake_client", (), {"GUEST_DS_BASE": 0x10}),
    ("guest.segments.v8086_base", "v8086", "skylake_client", (), {"GUEST_CS_SELECTOR": 0xF800}),
    ("guest.segments.tr_fs_gs_base_canonical", "long-mode", "skylake_client", (), {"GUEST_TR_BASE": NONCANONICAL_48}),
    ("guest.segments.tr_fs_gs_base_canonical", "long-mode", "skylake_client", (), {"GUEST_FS_BASE": NONCANONICAL_48}),
    ("guest.segments.tr_fs_gs_base_canonical", "protected-mode", "ivybridge_client", (),
     {"GUEST_GS_BASE": NONCANONICAL_48}),
    ("guest.segments.tr_fs_gs_base_canonical", "long-mode", "max", (), {"GUEST_GS_BASE": 1 << 56}),
    ("guest.segments.ldtr_base_canonical", "long-mode", "skylake_client", (),
     LDTR_USABLE | {"GUEST_LDTR_BASE": NONCANONICAL_48}),
    ("guest.segments.cs_base_upper_bits", "long-mode", "skylake_client", (), {"GUEST_CS_BASE": 1 << 32}),
    ("guest.segments.ss_ds_es_base_upper_bits", "long-mode", "skylake_client", (), {"GUEST_SS_BASE": 1 << 32}),
    ("guest.segments.ss_ds_es_base_upper_bits", "protected-mode", "skylake_client", (), {"GUEST_DS_BASE": 1 << 40}),
    ("guest.segments.ss_ds_es_base_upper_bits", "long-mode", "skylake_client", (), {"GUEST_ES_BASE": 1 << 63}),
    ("guest.segments.v8086_limit", "v8086", "skylake_client", (), {"GUEST_ES_LIMIT": 0xFFFFF}),
    ("guest.segments.v8086_limit", "v8086", "skylake_client", (), {"GUEST_CS_LIMIT": 0xFFFE}),
    ("guest.segments.v8086_access_rights", "v8086", "skylake_client", (), {"GUEST_SS_AR_BYTES": REAL_DATA}),
    ("guest.segments.v8086_access_rights", "v8086", "skylake_client", (), {"GUEST_GS_AR_BYTES": V8086 | UNUSABLE}),
    ("guest.segments.cs_type", "protected-mode", "skylake_client", (), {"GUEST_CS_AR_BYTES": DATA_32}),
    ("guest.segments.cs_type", "real-mode", "skylake_client", (), {"GUEST_CS_AR_BYTES": ar(type=8, s=1, p=1)}),
    ("guest.segments.ss_type", "protected-mode", "skylake_client", (), {"GUEST_SS_AR_BYTES": DATA_32 & ~2}),
    ("guest.segments.ss_type", "long-mode", "skylake_client", (), {"GUEST_SS_AR_BYTES": CS_32}),
    ("guest.segments.data_type", "protected-mode", "skylake_client", (), {"GUEST_DS_AR_BYTES": DATA_32 & ~1}),
    ("guest.segments.data_type", "long-mode", "skylake_client", (), {"GUEST_ES_AR_BYTES": ar(type=9, s=1, p=1, g=1)}),
    ("guest.segments.s_bit", "protected-mode", "skylake_client", (), {"GUEST_GS_AR_BYTES": DATA_32 & ~ar(s=1)}),
    ("guest.segments.s_bit", "long-mode", "skylake_client", (), {"GUEST_CS_AR_BYTES": CS_64 & ~ar(s=1)}),
    ("guest.segments.cs_dpl", "real-mode", "skylake_client", (), {"GUEST_CS_AR_BYTES": ar(type=DATA, s=1, dpl=3, p=1)}),
    ("guest.segments.cs_dpl", "protected-mode", "skylake_client", (), {"GUEST_CS_AR_BYTES": CS_32 | ar(dpl=3)}),
    ("guest.segments.cs_dpl", "long-mode", "skylake_client", (),
     {"GUEST_CS_AR_BYTES": ar(type=CONFORMING, s=1, dpl=2, p=1, l=1, g=1)}),
    ("guest.segments.ss_dpl_equals_rpl", "protected-mode", "skylake_client", (),
     {"GUEST_CS_AR_BYTES": ar(type=CONFORMING, s=1, p=1, db=1, g=1), "GUEST_SS_AR_BYTES": DATA_32 | ar(dpl=3)}),
    ("guest.segments.ss_dpl_zero", "real-mode", "skylake_client", (),
     {"GUEST_CS_AR_BYTES": REAL_CS | ar(dpl=3), "GUEST_SS_AR_BYTES": REAL_DATA | ar(dpl=3)}),
    ("guest.segments.ss_dpl_zero", "protected-mode", "skylake_client", ("unrestricted_guest",),
     {"GUEST_CS_AR_BYTES": ar(type=DATA, s=1, p=1, db=1, g=1), "GUEST_SS_AR_BYTES": DATA_32 | ar(dpl=3)}),
    ("guest.segments.fred_ss_dpl", "long-mode", "max", (),
     {"GUEST_CR4": HOST_CR4 | CR4_FRED, "GUEST_CS_SELECTOR": 0x08 | 1, "GUEST_CS_AR_BYTES": CS_64 | ar(dpl=1),
      "GUEST_SS_SELECTOR": 0x10 | 1, "GUEST_SS_AR_BYTES": DATA_32 | ar(dpl=1)}),
    ("guest.segments.fred_ss_dpl0_needs_64bit_cs", "long-mode", "max", (),
     {"GUEST_CR4": HOST_CR4 | CR4_FRED, "GUEST_CS_AR_BYTES": CS_32}),
    ("guest.segments.data_dpl", "protected-mode", "skylake_client", (), {"GUEST_DS_SELECTOR": 0x10 | 3}),
    ("guest.segments.data_dpl", "long-mode", "skylake_client", (),
     {"GUEST_FS_SELECTOR": 0x08 | 2, "GUEST_FS_AR_BYTES": CS_32 | ar(dpl=1)}),
    ("guest.segments.present", "protected-mode", "skylake_client", (), {"GUEST_FS_AR_BYTES": DATA_32 & ~ar(p=1)}),
    ("guest.segments.present", "real-mode", "skylake_client", (), {"GUEST_CS_AR_BYTES": REAL_CS & ~ar(p=1)}),
    ("guest.segments.reserved_bits", "long-mode", "skylake_client", (), {"GUEST_CS_AR_BYTES": CS_64 | 1 << 8}),
    ("guest.segments.reserved_bits", "protected-mode", "skylake_client", (), {"GUEST_ES_AR_BYTES": DATA_32 | 1 << 17}),
    ("guest.segments.cs_db", "long-mode", "skylake_client", (), {"GUEST_CS_AR_BYTES": CS_64 | ar(db=1)}),
    ("guest.segments.granularity", "protected-mode", "skylake_client", (), {"GUEST_DS_LIMIT": 0xFFFF_F000}),
    ("guest.segments.granularity", "real-mode", "skylake_client", (), {"GUEST_SS_LIMIT": 0x10_0000}),
    ("guest.segments.granularity", "long-mode", "skylake_client", (), {"GUEST_CS_LIMIT": 0xFFFF_FFFE}),
    ("guest.segments.tr_type", "long-mode", "skylake_client", (), {"GUEST_TR_AR_BYTES": ar(type=3, p=1)}),
    ("guest.segments.tr_type", "protected-mode", "skylake_client", (), {"GUEST_TR_AR_BYTES": ar(type=9, p=1)}),
    ("guest.segments.tr_s_bit", "long-mode", "skylake_client", (), {"GUEST_TR_AR_BYTES": TR | ar(s=1)}),
    ("guest.segments.tr_present", "long-mode", "skylake_client", (), {"GUEST_TR_AR_BYTES": TR & ~ar(p=1)}),
    ("guest.segments.tr_reserved_bits", "long-mode", "skylake_client", (), {"GUEST_TR_AR_BYTES": TR | 1 << 9}),
    ("guest.segments.tr_reserved_bits", "v8086", "skylake_client", (), {"GUEST_TR_AR_BYTES": TR | 1 << 31}),
    ("guest.segments.tr_granularity", "long-mode", "skylake_client", (), {"GUEST_TR_AR_BYTES": TR | ar(g=1)}),
    ("guest.segments.tr_granularity", "protected-mode", "skylake_client", (), {"GUEST_TR_LIMIT": 0x10_0FFF}),
    ("guest.segments.tr_usable", "long-mode", "skylake_client", (), {"GUEST_TR_AR_BYTES": TR | UNUSABLE}),
    ("guest.segments.ldtr_type", "long-mode", "skylake_client", (), LDTR_USABLE | {"GUEST_LDTR_AR_BYTES": TR}),
    ("guest.segments.ldtr_s_bit", "long-mode", "skylake_client", (),
     LDTR_USABLE | {"GUEST_LDTR_AR_BYTES": LDT | ar(s=1)}),
    ("guest.segments.ldtr_present", "long-mode", "skylake_client", (),
     LDTR_USABLE | {"GUEST_LDTR_AR_BYTES": LDT & ~ar(p=1)}),
    ("guest.segments.ldtr_reserved_bits", "protected-mode", "skylake_client", (),
     LDTR_USABLE | {"GUEST_LDTR_AR_BYTES": LDT | 1 << 11}),
    ("guest.segments.ldtr_granularity", "long-mode", "skylake_client", (),
     LDTR_USABLE | {"GUEST_LDTR_AR_BYTES": LDT | ar(g=1), "GUEST_LDTR_LIMIT": 0x1000}),
]

# (check id, base template, preset, features, the nearest fields that keep the check)
ACCEPTS: list[tuple[str, str, str, tuple[str, ...], Mapping[str, int]]] = [
    ("guest.segments.tr_selector_ti", "long-mode", "skylake_client", (), {"GUEST_TR_SELECTOR": 0x18 | 3}),
    ("guest.segments.ldtr_selector_ti", "long-mode", "skylake_client", (), LDTR_USABLE),
    ("guest.segments.ldtr_selector_ti", "long-mode", "skylake_client", (), {"GUEST_LDTR_SELECTOR": 0x20 | 4}),
    ("guest.segments.ss_rpl_equals_cs_rpl", "protected-mode", "skylake_client", ("unrestricted_guest",),
     {"GUEST_CS_SELECTOR": 0x08 | 3}),
    ("guest.segments.ss_rpl_equals_cs_rpl", "protected-mode", "skylake_client", (),
     {"GUEST_CS_SELECTOR": 0x08 | 3, "GUEST_SS_SELECTOR": 0x10 | 3, "GUEST_CS_AR_BYTES": CS_32 | ar(dpl=3),
      "GUEST_SS_AR_BYTES": DATA_32 | ar(dpl=3)}),
    ("guest.segments.ss_rpl_equals_cs_rpl", "v8086", "skylake_client", (),
     {"GUEST_CS_SELECTOR": 0xF003, "GUEST_CS_BASE": 0xF0030}),
    ("guest.segments.v8086_base", "v8086", "skylake_client", (), {"GUEST_DS_SELECTOR": 1, "GUEST_DS_BASE": 0x10}),
    ("guest.segments.v8086_base", "real-mode", "skylake_client", (), {"GUEST_DS_BASE": 0x10}),
    ("guest.segments.tr_fs_gs_base_canonical", "long-mode", "max", (), {"GUEST_FS_BASE": NONCANONICAL_48}),
    ("guest.segments.tr_fs_gs_base_canonical", "long-mode", "skylake_client", (),
     {"GUEST_TR_BASE": 0xFFFF_8000_0000_0000, "GUEST_GS_BASE": 0x7FFF_FFFF_FFFF}),
    ("guest.segments.ldtr_base_canonical", "long-mode", "skylake_client", (), {"GUEST_LDTR_BASE": NONCANONICAL_48}),
    ("guest.segments.ldtr_base_canonical", "long-mode", "max", (), LDTR_USABLE | {"GUEST_LDTR_BASE": NONCANONICAL_48}),
    ("guest.segments.cs_base_upper_bits", "long-mode", "skylake_client", (), {"GUEST_CS_BASE": 0xFFFF_F000}),
    ("guest.segments.ss_ds_es_base_upper_bits", "long-mode", "skylake_client", (),
     {"GUEST_DS_AR_BYTES": UNUSABLE, "GUEST_DS_BASE": 1 << 32}),
    ("guest.segments.ss_ds_es_base_upper_bits", "long-mode", "skylake_client", (), {"GUEST_FS_BASE": 1 << 32}),
    ("guest.segments.v8086_limit", "v8086", "skylake_client", (), {}),
    ("guest.segments.v8086_limit", "real-mode", "skylake_client", (), {"GUEST_ES_LIMIT": 0xFFFFF}),
    ("guest.segments.v8086_access_rights", "v8086", "skylake_client", (), {}),
    ("guest.segments.v8086_access_rights", "real-mode", "skylake_client", (), {}),
    ("guest.segments.cs_type", "real-mode", "skylake_client", (), {"GUEST_CS_AR_BYTES": ar(type=DATA, s=1, p=1)}),
    ("guest.segments.cs_type", "protected-mode", "skylake_client", (),
     {"GUEST_CS_AR_BYTES": ar(type=9, s=1, p=1, db=1, g=1)}),
    ("guest.segments.cs_type", "v8086", "skylake_client", (), {}),
    ("guest.segments.ss_type", "protected-mode", "skylake_client", (), {"GUEST_SS_AR_BYTES": DATA_32 | ar(type=7)}),
    ("guest.segments.ss_type", "long-mode", "skylake_client", (), {"GUEST_SS_AR_BYTES": UNUSABLE | ar(type=1)}),
    ("guest.segments.data_type", "protected-mode", "skylake_client", (),
     {"GUEST_DS_AR_BYTES": ar(type=CODE, s=1, p=1, db=1, g=1)}),
    ("guest.segments.data_type", "long-mode", "skylake_client", (), {"GUEST_ES_AR_BYTES": UNUSABLE}),
    ("guest.segments.s_bit", "long-mode", "skylake_client", (), {"GUEST_GS_AR_BYTES": UNUSABLE}),
    ("guest.segments.cs_dpl", "real-mode", "skylake_client", (), {"GUEST_CS_AR_BYTES": ar(type=DATA, s=1, p=1)}),
    ("guest.segments.cs_dpl", "long-mode", "skylake_client", (),
     {"GUEST_CS_AR_BYTES": ar(type=CONFORMING, s=1, p=1, l=1, g=1)}),
    ("guest.segments.ss_dpl_equals_rpl", "protected-mode", "skylake_client", ("unrestricted_guest",),
     {"GUEST_CS_AR_BYTES": ar(type=CONFORMING, s=1, p=1, db=1, g=1), "GUEST_SS_AR_BYTES": DATA_32 | ar(dpl=3)}),
    ("guest.segments.ss_dpl_zero", "protected-mode", "skylake_client", ("unrestricted_guest",),
     {"GUEST_CS_AR_BYTES": CS_32 | ar(dpl=3), "GUEST_SS_AR_BYTES": DATA_32 | ar(dpl=3)}),
    ("guest.segments.fred_ss_dpl", "long-mode", "max", (),
     {"GUEST_CS_SELECTOR": 0x08 | 1, "GUEST_CS_AR_BYTES": CS_64 | ar(dpl=1), "GUEST_SS_SELECTOR": 0x10 | 1,
      "GUEST_SS_AR_BYTES": DATA_32 | ar(dpl=1)}),
    ("guest.segments.fred_ss_dpl", "long-mode", "max", (),
     {"GUEST_CR4": HOST_CR4 | CR4_FRED, "GUEST_CS_SELECTOR": 0x08 | 3, "GUEST_CS_AR_BYTES": CS_64 | ar(dpl=3),
      "GUEST_SS_SELECTOR": 0x10 | 3, "GUEST_SS_AR_BYTES": DATA_32 | ar(dpl=3)}),
    ("guest.segments.fred_ss_dpl0_needs_64bit_cs", "long-mode", "max", (), {"GUEST_CR4": HOST_CR4 | CR4_FRED}),
    ("guest.segments.fred_ss_dpl0_needs_64bit_cs", "long-mode", "max", (), {"GUEST_CS_AR_BYTES": CS_32}),
    ("guest.segments.data_dpl", "protected-mode", "skylake_client", (),
     {"GUEST_DS_SELECTOR": 0x10 | 3, "GUEST_DS_AR_BYTES": ar(type=CONFORMING, s=1, p=1, db=1, g=1)}),
    ("guest.segments.data_dpl", "protected-mode", "skylake_client", ("unrestricted_guest",),
     {"GUEST_DS_SELECTOR": 0x10 | 3}),
    ("guest.segments.present", "long-mode", "skylake_client", (), {"GUEST_FS_AR_BYTES": UNUSABLE}),
    ("guest.segments.reserved_bits", "long-mode", "skylake_client", (), {"GUEST_ES_AR_BYTES": UNUSABLE | 1 << 17}),
    ("guest.segments.reserved_bits", "long-mode", "skylake_client", (), {"GUEST_ES_AR_BYTES": DATA_32 | ar(avl=1)}),
    ("guest.segments.cs_db", "protected-mode", "skylake_client", (), {"GUEST_CS_AR_BYTES": CS_32 | ar(l=1)}),
    ("guest.segments.cs_db", "long-mode", "skylake_client", (), {"GUEST_CS_AR_BYTES": CS_32}),
    ("guest.segments.granularity", "protected-mode", "skylake_client", (),
     {"GUEST_DS_LIMIT": 0xF_FFFF, "GUEST_DS_AR_BYTES": DATA_32 & ~ar(g=1)}),
    ("guest.segments.granularity", "long-mode", "skylake_client", (),
     {"GUEST_GS_AR_BYTES": UNUSABLE, "GUEST_GS_LIMIT": 0x10_0000}),
    ("guest.segments.tr_type", "protected-mode", "skylake_client", (), {"GUEST_TR_AR_BYTES": ar(type=3, p=1)}),
    ("guest.segments.tr_s_bit", "protected-mode", "skylake_client", (), {"GUEST_TR_AR_BYTES": ar(type=3, p=1)}),
    ("guest.segments.tr_present", "long-mode", "skylake_client", (), {"GUEST_TR_AR_BYTES": TR | ar(avl=1)}),
    ("guest.segments.tr_reserved_bits", "long-mode", "skylake_client", (), {"GUEST_TR_AR_BYTES": TR | ar(avl=1)}),
    ("guest.segments.tr_usable", "v8086", "skylake_client", (), {}),
    ("guest.segments.tr_granularity", "long-mode", "skylake_client", (),
     {"GUEST_TR_AR_BYTES": TR | ar(g=1), "GUEST_TR_LIMIT": 0xFFFF_FFFF}),
    ("guest.segments.ldtr_type", "long-mode", "skylake_client", (), {"GUEST_LDTR_AR_BYTES": UNUSABLE | ar(type=11)}),
    ("guest.segments.ldtr_s_bit", "long-mode", "skylake_client", (), {"GUEST_LDTR_AR_BYTES": UNUSABLE | ar(s=1)}),
    ("guest.segments.ldtr_present", "long-mode", "skylake_client", (), {"GUEST_LDTR_AR_BYTES": UNUSABLE}),
    ("guest.segments.ldtr_reserved_bits", "long-mode", "skylake_client", (),
     {"GUEST_LDTR_AR_BYTES": UNUSABLE | 1 << 11}),
    ("guest.segments.ldtr_granularity", "long-mode", "skylake_client", (),
     LDTR_USABLE | {"GUEST_LDTR_AR_BYTES": LDT | ar(g=1), "GUEST_LDTR_LIMIT": 0xFFF_FFFF}),
]


def _case_id(case: tuple[str, str, str, tuple[str, ...], Mapping[str, int]]) -> str:
    check_id, template, preset, _, fields = case
    return f"{check_id.removeprefix('guest.segments.')}-{template}-{preset}-{'+'.join(fields) or 'template'}"


@pytest.mark.parametrize("case", REJECTS, ids=map(_case_id, REJECTS))
def test_rejects_input_breaking_only_this_check(
        case: tuple[str, str, str, tuple[str, ...], Mapping[str, int]]) -> None:
    check_id, template, preset, features, fields = case
    vmcs, caps = base(template, preset, features)
    verdict = evaluate_vm_entry(vmcs.with_fields(fields), caps)
    assert {v.check_id for v in verdict.violations} == {check_id}
    assert verdict.outcome == INVALID_STATE
    assert all(v.message and v.qualification == 0 for v in verdict.violations)


@pytest.mark.parametrize("case", ACCEPTS, ids=map(_case_id, ACCEPTS))
def test_accepts_nearest_valid_input(case: tuple[str, str, str, tuple[str, ...], Mapping[str, int]]) -> None:
    check_id, template, preset, features, fields = case
    vmcs, caps = base(template, preset, features)
    assert check_id not in violated(vmcs.with_fields(fields), caps)


@pytest.mark.parametrize("template", ["long-mode", "protected-mode", "real-mode", "pae", "v8086"])
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_templates_pass_every_segment_check(template: str, preset: str) -> None:
    vmcs, caps = base(template, preset)
    assert not {i for i in violated(vmcs, caps) if i.startswith("guest.segments.")}


def test_every_guest_segments_row_is_tested() -> None:
    rows = {row.id for row in ENTRY_CHECKS if row.group == "guest_segments"}
    assert rows == {c[0] for c in REJECTS} == {c[0] for c in ACCEPTS}


def test_a_violation_names_each_failing_register() -> None:
    vmcs, caps = base("v8086")
    bad = vmcs.with_fields({"GUEST_ES_LIMIT": 0, "GUEST_GS_LIMIT": 0})
    messages = [v.message for v in evaluate_vm_entry(bad, caps).violations]
    assert len(messages) == 2
    assert "GUEST_ES_LIMIT" in messages[0] and "GUEST_GS_LIMIT" in messages[1]


def test_unrestricted_guest_counts_only_with_activate_secondary_controls() -> None:
    """With 'activate secondary controls' 0 the secondary controls (and 'unrestricted guest') count as 0."""
    vmcs, caps = base("real-mode")
    proc = vmcs["CPU_BASED_VM_EXEC_CONTROL"] & ~get_control("proc", "activate_secondary_controls").mask
    ids = violated(vmcs.with_fields({"CPU_BASED_VM_EXEC_CONTROL": proc,
                                     "GUEST_CS_AR_BYTES": ar(type=DATA, s=1, p=1)}), caps)
    assert "guest.segments.cs_type" in ids


@pytest.mark.parametrize("preset", ["skylake_client", "ivybridge_client"])
def test_fred_rules_need_a_processor_with_fred(preset: str) -> None:
    """Without FRED, CR4 bit 32 is reserved (the CR4 fixed-bit check's business) and no FRED rule applies."""
    vmcs, caps = base("long-mode", preset)
    bad = vmcs.with_fields({"GUEST_CR4": HOST_CR4 | CR4_FRED, "GUEST_CS_AR_BYTES": CS_32})
    assert not violated(bad, caps) & {"guest.segments.fred_ss_dpl", "guest.segments.fred_ss_dpl0_needs_64bit_cs"}


@pytest.mark.parametrize(("fact", "fields", "check_id"), [
    ("LINEAR_ADDRESS_WIDTH", {}, "guest.segments.tr_fs_gs_base_canonical"),
    ("LINEAR_ADDRESS_WIDTH", LDTR_USABLE, "guest.segments.ldtr_base_canonical"),
    ("CPUID_FRED", {"GUEST_CR4": HOST_CR4 | CR4_FRED}, "guest.segments.fred_ss_dpl"),
])
def test_not_evaluable_without_the_fact(fact: str, fields: Mapping[str, int], check_id: str) -> None:
    vmcs, caps = base("long-mode", "max")
    blind = attrs.evolve(caps, facts={k: v for k, v in caps.facts.items() if k != fact})
    verdict = evaluate_vm_entry(vmcs.with_fields(fields), blind)
    assert any(n.startswith(check_id + ":") for n in verdict.not_evaluable)
    assert check_id not in {v.check_id for v in verdict.violations}
