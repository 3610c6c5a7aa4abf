"""The VMCS value and VMREAD / VMWRITE (SDM Vol. 3C §26.11.2 and §32.3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtx.bits import mask
from vtx.errors import InputError, NotEvaluable
from vtx.outcomes import VmFailValid, VmSucceed
from vtx.spec import VMCS_FIELDS, VmcsField
from vtx.vmx.capabilities import Capabilities, load_preset
from vtx.vmx.vmcs import LaunchState, Vmcs, vmread, vmwrite

MAX = load_preset("max")
MISC_BIT29 = 1 << 29


def misc(caps: Capabilities, *, vmwrite_any: bool) -> Capabilities:
    value = caps.msrs["IA32_VMX_MISC"]
    value = value | MISC_BIT29 if vmwrite_any else value & ~MISC_BIT29
    return Capabilities.from_json({"IA32_VMX_MISC": value}, base=caps)


NO_ANY = misc(MAX, vmwrite_any=False)
SUPPORTED = [f for f in VMCS_FIELDS if MAX.field_exists(f)]


def error_number(outcome: object) -> int:
    assert isinstance(outcome, VmFailValid)
    return outcome.error.number


# ----------------------------------------------------------------------------- construction


def test_from_fields_accepts_names_encodings_and_hex_strings() -> None:
    vmcs = Vmcs.from_fields({"GUEST_RIP": 0x1000, 0x681C: "0x2000", "0x6800": "0X80000031"})
    assert vmcs["GUEST_RIP"] == 0x1000
    assert vmcs["GUEST_RSP"] == 0x2000
    assert vmcs[0x6800] == 0x80000031
    assert vmcs.nonzero_fields() == {"GUEST_CR0": 0x80000031, "GUEST_RSP": 0x2000, "GUEST_RIP": 0x1000}
    assert vmcs.launch_state is LaunchState.CLEAR


def test_unknown_field_name_is_an_error_naming_it() -> None:
    with pytest.raises(InputError, match="GUEST_CR9"):
        Vmcs.from_fields({"GUEST_CR9": 0})
    with pytest.raises(InputError, match="0x6801"):
        Vmcs.from_fields({0x6801: 0})  # natural-width fields have no high access


def test_value_wider_than_field_is_an_error_naming_field_and_rule() -> None:
    with pytest.raises(InputError, match=r"VIRTUAL_PROCESSOR_ID.*0x10000.*wider than the 16-bit field"):
        Vmcs.from_fields({"VIRTUAL_PROCESSOR_ID": 0x10000})
    with pytest.raises(InputError, match=r"GUEST_ES_LIMIT.*wider than the 32-bit"):
        Vmcs.from_fields({"GUEST_ES_LIMIT": 1 << 32})
    with pytest.raises(InputError, match="GUEST_RIP"):
        Vmcs.from_fields({"GUEST_RIP": -1})
    with pytest.raises(InputError, match=r"GUEST_RIP.*integer or hex string"):
        Vmcs.from_fields({"GUEST_RIP": "0xZZ"})


def test_high_name_is_not_a_field_for_from_fields() -> None:
    with pytest.raises(InputError, match="high access"):
        Vmcs.from_fields({"EPT_POINTER_HIGH": 1})


def test_writes_keep_the_region_header_and_launch_state() -> None:
    vmcs = Vmcs(revision_id=4, shadow=True, abort_indicator=7, launch_state=LaunchState.LAUNCHED)
    new, _ = vmwrite(vmcs.with_fields({"GUEST_RIP": 1}), MAX, VMCS_FIELDS["GUEST_RSP"].encoding, 2)
    assert (new.revision_id, new.shadow, new.abort_indicator, new.launch_state) == (
        4, True, 7, LaunchState.LAUNCHED)
    assert (new["GUEST_RIP"], new["GUEST_RSP"]) == (1, 2)
    with pytest.raises(InputError, match="abort"):
        Vmcs(abort_indicator=1 << 32)


def test_revision_identifier_is_31_bits() -> None:
    assert Vmcs(revision_id=0x7FFF_FFFF).revision_id == 0x7FFF_FFFF
    with pytest.raises(InputError, match="revision"):
        Vmcs(revision_id=0x8000_0000)


# ----------------------------------------------------------------------------- VMREAD/VMWRITE errors


@pytest.mark.parametrize("encoding", [
    0x0001,          # bit 0 (high access) on a 16-bit field
    0x4001,          # ... on a 32-bit field
    0x6801,          # ... on a natural-width field
    0x1000,          # reserved bit 12
    0x8000_0000,     # reserved bits 31:15
    0x0C0E,          # an index no host-state 16-bit field uses
    1 << 32 | 0x681E,  # 64-bit mode: bits 63:32 of the encoding operand set
])
def test_unsupported_component_is_error_12(encoding: int) -> None:
    vmcs = Vmcs()
    assert error_number(vmread(vmcs, MAX, encoding)) == 12
    new, outcome = vmwrite(vmcs, MAX, encoding, 1)
    assert error_number(outcome) == 12
    assert new is vmcs


def test_field_the_processor_lacks_is_error_12() -> None:
    no_vpid = Capabilities.from_json({"IA32_VMX_PROCBASED_CTLS2": MAX.msrs["IA32_VMX_PROCBASED_CTLS2"]
                                      & ~(1 << (32 + 5))}, base=MAX)
    vpid = VMCS_FIELDS["VIRTUAL_PROCESSOR_ID"].encoding
    assert error_number(vmread(Vmcs(), no_vpid, vpid)) == 12
    assert isinstance(vmread(Vmcs(), MAX, vpid), VmSucceed)


def test_read_only_field_rejects_vmwrite_unless_misc_bit_29() -> None:
    qual = VMCS_FIELDS["EXIT_QUALIFICATION"].encoding
    _, outcome = vmwrite(Vmcs(), NO_ANY, qual, 5)
    assert error_number(outcome) == 13
    new, outcome = vmwrite(Vmcs(), misc(MAX, vmwrite_any=True), qual, 5)
    assert outcome == VmSucceed()
    assert new["EXIT_QUALIFICATION"] == 5
    # reading a read-only field is always allowed
    assert vmread(new, NO_ANY, qual) == VmSucceed(5)


def test_unknown_existence_is_not_evaluable() -> None:
    partial = Capabilities.from_msrs({"IA32_VMX_BASIC": 0x00DA0400_00000004})
    with pytest.raises(NotEvaluable, match="EPT_POINTER"):
        vmread(Vmcs(), partial, VMCS_FIELDS["EPT_POINTER"].encoding)
    with pytest.raises(NotEvaluable, match="IA32_VMX_MISC"):
        vmwrite(Vmcs(), partial, VMCS_FIELDS["EXIT_QUALIFICATION"].encoding, 1)


# ----------------------------------------------------------------------------- widths and high access


def test_high_access_reads_and_writes_bits_63_32() -> None:
    eptp = VMCS_FIELDS["EPT_POINTER"]
    assert eptp.high_encoding == eptp.encoding + 1
    vmcs, _ = vmwrite(Vmcs(), MAX, eptp.encoding, 0x1111_2222_3333_4444)
    assert vmread(vmcs, MAX, eptp.encoding + 1) == VmSucceed(0x1111_2222)
    vmcs, outcome = vmwrite(vmcs, MAX, eptp.encoding + 1, 0xFFFF_FFFF_0000_AAAA)
    assert outcome == VmSucceed()
    assert vmcs.get(eptp) == 0x0000_AAAA_3333_4444  # source bits 63:32 ignored, low half kept


def test_write_truncates_to_the_field_and_read_zero_extends() -> None:
    vpid = VMCS_FIELDS["VIRTUAL_PROCESSOR_ID"]
    vmcs, _ = vmwrite(Vmcs(), MAX, vpid.encoding, 0xFFFF_FFFF_0001_2345)
    assert vmcs.get(vpid) == 0x2345
    assert vmread(vmcs, MAX, vpid.encoding) == VmSucceed(0x2345)


def test_32_bit_operand_clears_upper_half_of_64_bit_field_and_reads_low_half() -> None:
    eptp = VMCS_FIELDS["EPT_POINTER"]
    vmcs = Vmcs().set(eptp, 0xAAAA_BBBB_CCCC_DDDD)
    assert vmread(vmcs, MAX, eptp.encoding, operand_bits=32) == VmSucceed(0xCCCC_DDDD)
    vmcs, _ = vmwrite(vmcs, MAX, eptp.encoding, 0x1234_5678, operand_bits=32)
    assert vmcs.get(eptp) == 0x1234_5678


def test_operand_size_is_32_or_64() -> None:
    with pytest.raises(InputError, match="operand"):
        vmread(Vmcs(), MAX, VMCS_FIELDS["GUEST_RIP"].encoding, operand_bits=16)


# ----------------------------------------------------------------------------- properties


@given(st.sampled_from(SUPPORTED), st.integers(0, mask(64)))
def test_write_then_read_returns_the_value_masked_to_the_width(field: VmcsField, value: int) -> None:
    caps = misc(MAX, vmwrite_any=True)
    vmcs, outcome = vmwrite(Vmcs(), caps, field.encoding, value)
    assert outcome == VmSucceed()
    assert vmread(vmcs, caps, field.encoding) == VmSucceed(value & mask(field.bits))


@given(st.sampled_from(SUPPORTED), st.sampled_from(SUPPORTED), st.integers(0, mask(64)))
def test_a_write_changes_no_other_field(target: VmcsField, other: VmcsField, value: int) -> None:
    base = Vmcs().set(other, 0x5A & mask(other.bits))
    vmcs = base.set(target, value & mask(target.bits))
    if other != target:
        assert vmcs.get(other) == base.get(other)
    assert base.get(target) == (0x5A & mask(target.bits) if other == target else 0)


@given(st.sampled_from([f for f in SUPPORTED if f.high_encoding is not None]),
       st.integers(0, mask(64)), st.integers(0, mask(64)))
def test_full_and_high_writes_compose(field: VmcsField, full: int, high: int) -> None:
    assert field.high_encoding is not None
    caps = misc(MAX, vmwrite_any=True)
    vmcs, _ = vmwrite(Vmcs(), caps, field.encoding, full)
    vmcs, _ = vmwrite(vmcs, caps, field.high_encoding, high)
    assert vmcs.get(field) == (high & mask(32)) << 32 | (full & mask(32))
