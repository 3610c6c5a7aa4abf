"""The spec/ catalogues: every row cross-checked, counts as the README states them."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from vtx import spec
from vtx.errors import InputError, SpecError
from vtx.spec import ENCODING, FieldType, FieldWidth
from vtx.vmx.entry.catalogue import ENTRY_CHECKS

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_count(label: str) -> int:
    m = re.search(rf"^\| {re.escape(label)} \| (\d+) \|", README.read_text(), re.MULTILINE)
    assert m, f"README must state the number of {label} in its catalogue table"
    return int(m.group(1))


def test_public_counts_match_the_readme() -> None:
    assert len(spec.VMCS_FIELDS) == readme_count("VMCS fields (full-width encodings)")
    assert len(spec.EXIT_REASONS) == readme_count("Basic exit reasons")
    assert len(spec.VM_INSTRUCTION_ERRORS) == readme_count("VM-instruction errors")
    assert len(spec.CONTROLS) == readme_count("Named VMX controls")
    assert len(spec.CAPABILITY_MSRS) == readme_count("Capability MSRs")
    assert len(ENTRY_CHECKS) == readme_count("VM-entry checks (one per SDM rule)")


# ----------------------------------------------------------------------------- fields


@pytest.mark.parametrize("field", list(spec.VMCS_FIELDS), ids=lambda f: f.name)
def test_every_field_encoding_agrees_with_width_type_and_index(field: spec.VmcsField) -> None:
    enc = field.encoding
    assert ENCODING.access_type.get(enc) == 0, "rows are full-width encodings"
    assert enc & ENCODING.reserved_mask == 0
    assert ENCODING.decode_width(enc) is field.width
    assert ENCODING.decode_type(enc) is field.type
    assert ENCODING.compose(field.width, field.type, field.index) == enc
    assert re.fullmatch(r"[A-Z][A-Z0-9_]*", field.name)
    assert field.title and field.citation.title
    assert (field.high_encoding is not None) == (field.width is FieldWidth.W64)


def test_encoding_layout_matches_the_sdm_table() -> None:
    # SDM Vol. 3C §26.11.2: width 14:13, type 11:10, index 9:1, access type 0
    assert (ENCODING.width.lo, ENCODING.width.hi) == (13, 14)
    assert (ENCODING.type.lo, ENCODING.type.hi) == (10, 11)
    assert (ENCODING.index.lo, ENCODING.index.hi) == (1, 9)
    assert ENCODING.compose(FieldWidth.NATURAL, FieldType.GUEST, 0) == 0x6800   # guest CR0
    assert ENCODING.compose(FieldWidth.W64, FieldType.CONTROL, 13, high=True) == 0x201B  # EPTP high


@pytest.mark.parametrize(("name", "encoding"), [
    ("VIRTUAL_PROCESSOR_ID", 0x0000), ("GUEST_ES_SELECTOR", 0x0800), ("HOST_TR_SELECTOR", 0x0C0C),
    ("IO_BITMAP_A", 0x2000), ("EPT_POINTER", 0x201A), ("GUEST_PHYSICAL_ADDRESS", 0x2400),
    ("VMCS_LINK_POINTER", 0x2800), ("HOST_IA32_EFER", 0x2C02), ("PIN_BASED_VM_EXEC_CONTROL", 0x4000),
    ("CPU_BASED_VM_EXEC_CONTROL", 0x4002), ("SECONDARY_VM_EXEC_CONTROL", 0x401E),
    ("VM_INSTRUCTION_ERROR", 0x4400), ("VM_EXIT_REASON", 0x4402), ("GUEST_INTERRUPTIBILITY_INFO", 0x4824),
    ("GUEST_ACTIVITY_STATE", 0x4826), ("VMX_PREEMPTION_TIMER_VALUE", 0x482E),
    ("HOST_IA32_SYSENTER_CS", 0x4C00), ("CR0_GUEST_HOST_MASK", 0x6000), ("EXIT_QUALIFICATION", 0x6400),
    ("GUEST_LINEAR_ADDRESS", 0x640A), ("GUEST_CR0", 0x6800), ("GUEST_RIP", 0x681E),
    ("GUEST_INTR_SSP_TABLE", 0x682C), ("HOST_RIP", 0x6C16), ("HOST_INTR_SSP_TABLE", 0x6C1C),
    ("TERTIARY_VM_EXEC_CONTROL", 0x2034), ("TSC_MULTIPLIER", 0x2032),
])
def test_well_known_encodings(name: str, encoding: int) -> None:
    """A sample of encodings from SDM Vol. 3D Appendix B and Linux's enum vmcs_field."""
    assert spec.VMCS_FIELDS[name].encoding == encoding


def test_resolve_names_encodings_and_high_forms() -> None:
    f = spec.VMCS_FIELDS["EPT_POINTER"]
    assert spec.VMCS_FIELDS.resolve("EPT_POINTER") == (f, False)
    assert spec.VMCS_FIELDS.resolve("ept_pointer_high") == (f, True)
    assert spec.VMCS_FIELDS.resolve(0x201B) == (f, True)
    assert spec.VMCS_FIELDS.resolve("0x201a") == (f, False)
    for bad in ("GUEST_RIP_HIGH", "0xZZ", "NOPE", 0x201C + 0x10000):
        with pytest.raises(InputError):
            spec.VMCS_FIELDS.resolve(bad)


# ----------------------------------------------------------------------------- other tables


def test_exit_reasons_are_in_range_and_entry_failures_are_33_34_41() -> None:
    basic = spec.EXIT_REASON_FORMAT["basic_exit_reason"].bits
    for r in spec.EXIT_REASONS:
        assert 0 <= r.number <= basic.mask
    assert {r.number for r in spec.EXIT_REASONS if r.entry_failure} == {33, 34, 41}
    assert spec.EXIT_REASON_FORMAT["failed_vmentry"].bits.lo == 31


def test_vm_instruction_errors_are_1_to_28_less_the_reserved() -> None:
    assert {e.number for e in spec.VM_INSTRUCTION_ERRORS} == set(range(1, 29)) - {14, 21, 27}
    assert spec.VM_INSTRUCTION_ERRORS[12].name == "UNSUPPORTED_VMCS_COMPONENT"
    assert spec.VM_INSTRUCTION_ERRORS[13].name == "VMWRITE_READ_ONLY_VMCS_COMPONENT"
    assert spec.VM_INSTRUCTION_ERRORS[7].name == "ENTRY_INVALID_CONTROL_FIELD"
    assert spec.VM_INSTRUCTION_ERRORS[8].name == "ENTRY_INVALID_HOST_STATE_FIELD"


def test_capability_msrs_are_480h_to_493h() -> None:
    assert sorted(m.index for m in spec.CAPABILITY_MSRS) == list(range(0x480, 0x494))


def test_every_control_field_names_its_vmcs_field_and_msrs() -> None:
    for cf in spec.CONTROL_FIELDS:
        assert cf.vmcs_field.type is FieldType.CONTROL
        assert cf.default1 & ~((1 << cf.width) - 1) == 0
        bits = [c.bit for c in spec.CONTROLS if c.field == cf.key]
        assert len(bits) == len(set(bits))


@pytest.mark.parametrize(("field", "name", "bit"), [
    ("pin", "external_interrupt_exiting", 0), ("pin", "nmi_exiting", 3), ("pin", "virtual_nmis", 5),
    ("pin", "activate_vmx_preemption_timer", 6), ("pin", "process_posted_interrupts", 7),
    ("proc", "hlt_exiting", 7), ("proc", "use_tpr_shadow", 21), ("proc", "use_msr_bitmaps", 28),
    ("proc", "activate_secondary_controls", 31), ("proc", "activate_tertiary_controls", 17),
    ("proc2", "enable_ept", 1), ("proc2", "enable_vpid", 5), ("proc2", "unrestricted_guest", 7),
    ("proc2", "vmcs_shadowing", 14), ("proc2", "enable_pml", 17), ("proc2", "use_tsc_scaling", 25),
    ("exit", "host_address_space_size", 9), ("exit", "acknowledge_interrupt_on_exit", 15),
    ("exit", "load_ia32_efer", 21), ("entry", "ia32e_mode_guest", 9), ("entry", "load_ia32_efer", 15),
    ("proc3", "loadiwkey_exiting", 0), ("proc3", "ipi_virtualization", 4),
])
def test_well_known_control_bits(field: str, name: str, bit: int) -> None:
    """A sample of control bits from SDM Vol. 3C §26.6-26.8 and Linux's asm/vmx.h."""
    assert spec.get_control(field, name).bit == bit


def test_citations_name_the_pinned_edition() -> None:
    assert spec.SDM.number == "325462-086US"
    for f in spec.VMCS_FIELDS:
        if f.citation.document is spec.SDM:
            assert f.citation.volume == "3D" and f.citation.section.startswith("B.")
    assert str(spec.VMCS_FIELDS["GUEST_CR0"].citation).startswith("SDM Vol. 3D §B.4")


# ----------------------------------------------------------------------------- the loader's cross-checks


@pytest.fixture
def spec_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    dst = tmp_path / "spec"
    shutil.copytree(spec.SPEC_DIR, dst)
    monkeypatch.setattr(spec, "SPEC_DIR", dst)
    return dst


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_loader_rejects_an_encoding_that_contradicts_its_width(spec_copy: Path) -> None:
    _edit(spec_copy / "vmx/fields.toml", "encoding = 0x6800", "encoding = 0x4800")
    with pytest.raises(SpecError, match=r"GUEST_CR0.*disagrees with width"):
        spec._load_fields()


def test_loader_rejects_a_duplicate_encoding(spec_copy: Path) -> None:
    _edit(spec_copy / "vmx/fields.toml", "encoding = 0x6802", "encoding = 0x6800")
    with pytest.raises(SpecError, match="duplicate"):
        spec._load_fields()


def test_loader_rejects_an_unknown_citation(spec_copy: Path) -> None:
    text = (spec_copy / "vmx/errors.toml").read_text()
    first_cite = re.search(r'^cite = "([^"]+)"', text, re.MULTILINE)
    assert first_cite
    _edit(spec_copy / "vmx/errors.toml", first_cite.group(0), 'cite = "nowhere"')
    with pytest.raises(SpecError, match="cite must name"):
        spec._load_errors()


def test_loader_rejects_error_number_zero(spec_copy: Path) -> None:
    _edit(spec_copy / "vmx/errors.toml", "number = 1\n", "number = 0\n")
    with pytest.raises(SpecError, match="numbers start at 1"):
        spec._load_errors()


def test_loader_rejects_malformed_toml(spec_copy: Path) -> None:
    (spec_copy / "vmx/errors.toml").write_text("[[error]\n")
    with pytest.raises(SpecError, match="not valid TOML"):
        spec._load_errors()
