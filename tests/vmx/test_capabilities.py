"""Capabilities: allowed-0 / allowed-1, the TRUE_* rule, existence, input format, consistency."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vtx import spec
from vtx.errors import InputError
from vtx.vmx.capabilities import Capabilities, load_preset, preset_names, resolve_capabilities

# A pin-based control pair as a real processor reports it: allowed-0 (31:0) = 16H (bits 1, 2, 4
# are default1), allowed-1 (63:32) = 7FH. The TRUE MSR reports the same on processors that do
# not let software clear those bits.
PIN = 0x0000007F_00000016
PROC = 0xFFF9FFFE_0401E172
TRUE_PROC = 0xFFF9FFFE_04006172  # CR3-load/-store exiting (15, 16) may be cleared
BASIC_TRUE = 0x00DA0400_00000004  # bit 55: TRUE controls exist; revision id 4
BASIC_NO_TRUE = BASIC_TRUE & ~(1 << 55)


def caps_with(**msrs: int) -> Capabilities:
    return Capabilities.from_msrs(msrs)  # type: ignore[arg-type]


def test_allowed0_allowed1_split_a_control_pair() -> None:
    caps = caps_with(IA32_VMX_BASIC=BASIC_NO_TRUE, IA32_VMX_PINBASED_CTLS=PIN)
    assert caps.allowed0("pin") == 0x16
    assert caps.allowed1("pin") == 0x7F
    assert caps.requires("pin", "external_interrupt_exiting") is False
    assert caps.allows("pin", "activate_vmx_preemption_timer") is True   # bit 6
    assert caps.allows("pin", "process_posted_interrupts") is False      # bit 7: not in 7FH
    assert caps.control_value_allowed("pin", 0x16) is True
    assert caps.control_value_allowed("pin", 0x17) is True       # bit 0 is free
    assert caps.control_value_allowed("pin", 0x12) is False      # default1 bit 2 cleared
    assert caps.control_value_allowed("pin", 0x96) is False      # bit 7 not in 7FH
    assert caps.control_value_allowed("pin", 0x116) is False     # bit 8 not allowed


def test_true_msrs_are_authoritative_only_when_basic_bit_55_is_set() -> None:
    with_true = caps_with(IA32_VMX_BASIC=BASIC_TRUE, IA32_VMX_PROCBASED_CTLS=PROC,
                          IA32_VMX_TRUE_PROCBASED_CTLS=TRUE_PROC)
    assert with_true.control_msr("proc") == "IA32_VMX_TRUE_PROCBASED_CTLS"
    assert with_true.requires("proc", "cr3_load_exiting") is False
    without = caps_with(IA32_VMX_BASIC=BASIC_NO_TRUE, IA32_VMX_PROCBASED_CTLS=PROC,
                        IA32_VMX_TRUE_PROCBASED_CTLS=TRUE_PROC)
    assert without.control_msr("proc") == "IA32_VMX_PROCBASED_CTLS"
    assert without.requires("proc", "cr3_load_exiting") is True
    # proc2 has no TRUE MSR either way
    assert with_true.control_msr("proc2") == "IA32_VMX_PROCBASED_CTLS2"


def test_secondary_controls_are_all_zero_when_they_cannot_be_activated() -> None:
    proc_no_secondary = PROC & ~(1 << (32 + 31))
    caps = caps_with(IA32_VMX_BASIC=BASIC_NO_TRUE, IA32_VMX_PROCBASED_CTLS=proc_no_secondary,
                     IA32_VMX_PROCBASED_CTLS2=0xFFFFFFFF_00000000)
    assert caps.allowed1("proc2") == 0
    assert caps.allows("proc2", "enable_ept") is False


def test_unknown_msrs_are_not_evaluable_never_allowed() -> None:
    caps = caps_with(IA32_VMX_BASIC=BASIC_NO_TRUE, IA32_VMX_PROCBASED_CTLS=PROC)
    assert caps.allowed1("proc2") is None      # secondary controls may be active; MSR unknown
    assert caps.allows("proc2", "enable_ept") is None
    assert caps.allowed1("pin") is None
    ept = spec.VMCS_FIELDS["EPT_POINTER"]
    assert caps.field_exists(ept) is None
    assert caps.field_exists(spec.VMCS_FIELDS["GUEST_RIP"]) is True


def test_field_existence_follows_the_controls() -> None:
    caps = caps_with(IA32_VMX_BASIC=BASIC_NO_TRUE, IA32_VMX_PROCBASED_CTLS=PROC,
                     IA32_VMX_PROCBASED_CTLS2=(1 << (32 + 1)))  # only "enable EPT" allowed
    assert caps.field_exists(spec.VMCS_FIELDS["EPT_POINTER"]) is True
    assert caps.field_exists(spec.VMCS_FIELDS["VIRTUAL_PROCESSOR_ID"]) is False


@pytest.mark.parametrize("value", ["0xZZ", "-1", -1, 1 << 64, "ten", 1.5, [1]])
def test_malformed_msr_value_names_the_msr_and_rule(value: object) -> None:
    with pytest.raises(InputError, match="IA32_VMX_PINBASED_CTLS"):
        Capabilities.from_json({"IA32_VMX_PINBASED_CTLS": value})


def test_unknown_key_is_rejected_not_ignored() -> None:
    with pytest.raises(InputError, match=r"IA32_VMX_BOGUS.*unknown key"):
        Capabilities.from_json({"IA32_VMX_BOGUS": 1})
    with pytest.raises(InputError, match="not a VMX capability MSR"):
        Capabilities.from_msrs({0x3A: 5})


def test_overriding_an_msr_but_not_its_true_twin_is_rejected_with_advice() -> None:
    with pytest.raises(InputError, match=r"TRUE_PINBASED_CTLS allowed-1 bits differ.*give related MSRs"):
        Capabilities.from_json({"IA32_VMX_PINBASED_CTLS": PIN})  # over max, whose TRUE MSR differs


def test_inconsistent_pair_is_rejected() -> None:
    # allowed-0 bit 3 set (must be 1) but allowed-1 bit 3 clear (may not be 1)
    with pytest.raises(InputError, match="must be 1 but may not be 1"):
        Capabilities.from_json({"IA32_VMX_PINBASED_CTLS": 0x0000_0007_0000_0008})


def test_named_fact_beats_cpuid_leaf_beats_preset() -> None:
    base = load_preset("max")
    leaf = {"0x80000008": {"eax": "0x3027", "ebx": 0, "ecx": 0, "edx": 0}}  # 39 physical bits
    from_leaf = Capabilities.from_json({"cpuid": leaf}, base=base)
    assert from_leaf.fact("MAXPHYADDR") == 0x27
    both = Capabilities.from_json({"cpuid": leaf, "MAXPHYADDR": 46}, base=base)
    assert both.fact("MAXPHYADDR") == 46
    neither = Capabilities.from_json({}, base=base)
    assert neither.fact("MAXPHYADDR") == base.fact("MAXPHYADDR")


def test_values_may_be_hex_strings_in_any_case() -> None:
    empty = Capabilities.from_msrs({})
    a = Capabilities.from_json({"IA32_VMX_PINBASED_CTLS": "0x7F00000016"}, base=empty)
    b = Capabilities.from_json({"IA32_VMX_PINBASED_CTLS": "0X7f00000016"}, base=empty)
    assert a.msr("IA32_VMX_PINBASED_CTLS") == b.msr("IA32_VMX_PINBASED_CTLS") == PIN


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_is_consistent_and_round_trips(name: str) -> None:
    caps = load_preset(name)
    assert caps.consistency_problems() == []
    assert caps.description
    again = Capabilities.from_json(caps.to_json(), base=Capabilities.from_msrs({}), name=name)
    assert again.msrs == caps.msrs and again.facts == caps.facts and again.cpuid == caps.cpuid


def test_at_least_three_real_processor_presets_and_a_synthetic_max() -> None:
    names = preset_names()
    assert "max" in names
    real = [n for n in names if n != "max"]
    assert len(real) >= 3
    for n in real:
        assert load_preset(n).source, f"preset {n} must say where its values come from"
    assert "synthetic" in load_preset("max").description.lower()


def test_max_preset_allows_every_named_control() -> None:
    caps = load_preset("max")
    for control in spec.CONTROLS:
        assert caps.allows(control.field, control.name), (control.field, control.name)
    for field in spec.VMCS_FIELDS:
        if str(field.exists) != "seam":
            assert caps.field_exists(field), field.name


def test_resolve_order_command_line_over_file_over_preset(tmp_path: Path) -> None:
    msrs = tmp_path / "caps.json"
    msrs.write_text(json.dumps({"MAXPHYADDR": 40}))
    doc = {"profile": "max", "capabilities": {"MAXPHYADDR": 39, "PMU_GP_COUNTERS": 2}}
    caps = resolve_capabilities(msrs_file=msrs, document=doc)
    assert caps.fact("MAXPHYADDR") == 40
    assert caps.fact("PMU_GP_COUNTERS") == 2
    with pytest.raises(InputError, match="no such preset"):
        resolve_capabilities(profile="pentium-pro")


def test_bad_json_file_names_file_line_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"IA32_VMX_BASIC": 1,\n  oops}')
    with pytest.raises(InputError, match=r"bad\.json:2:3"):
        resolve_capabilities(msrs_file=bad)
