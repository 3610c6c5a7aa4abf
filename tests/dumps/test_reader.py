"""The dump readers: log prefixes, formats and the field mapping of spec/dumps/vmcs_dump.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from vtx.dumps import read_dumps
from vtx.dumps.formats import CONVERSIONS, LINES
from vtx.dumps.reader import strip_prefix
from vtx.spec import VMCS_FIELDS

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize(("raw", "text", "xen"), [
    ("[  812.334455] kvm_intel: CR3 = 0x1000", "CR3 = 0x1000", False),
    ("<3>[   55.000001] kvm_intel: CR3 = 0x1000", "CR3 = 0x1000", False),
    ("[Tue Mar  5 10:00:00 2024] kvm_intel: CR3 = 0x1000", "CR3 = 0x1000", False),
    ("Mar  5 10:00:01 hv01 kernel: [ 123.000001] CR3 = 0x1000", "CR3 = 0x1000", False),
    ("2024-03-05T10:00:01.123+01:00 hv01 kernel: kvm_intel: CR3 = 0x1000", "CR3 = 0x1000", False),
    ("(XEN) [2024-03-05 10:00:00.123]   CS: 0008 0a09b ffffffff 0000000000000000",
     "CS: 0008 0a09b ffffffff 0000000000000000", True),
    ("CR0: actual=0x31, shadow=0x0, gh_mask=0", "CR0: actual=0x31, shadow=0x0, gh_mask=0", False),
])
def test_strip_prefix(raw: str, text: str, xen: bool) -> None:
    assert strip_prefix(raw) == (text, xen)


def test_every_line_row_maps_to_real_fields() -> None:
    for row in LINES:
        assert set(row.regex.groupindex) <= set(VMCS_FIELDS.keys())


@pytest.mark.parametrize(("flags", "ar"), [
    (0x00A09B00, 0xA09B),  # 64-bit code
    (0x00C09300, 0xC093),  # flat data
    (0x00008B00, 0x008B),  # busy 64-bit TSS
    (0x00000000, 0x10000),  # not present: unusable
    (0x000F9300, 0x0093),  # limit 19:16 of the descriptor is not an access-rights bit
])
def test_qemu_segment_flags_to_access_rights(flags: int, ar: int) -> None:
    assert CONVERSIONS["qemu_segment"](flags) == ar


def test_kvm_4_19_and_6_6_layouts_give_the_same_fields() -> None:
    [old] = read_dumps((DATA / "kvm_4_19_guest_regs.log").read_text()).dumps
    [new] = read_dumps((DATA / "kvm_several.log").read_text()).dumps
    assert {"PIN_BASED_VM_EXEC_CONTROL", "VM_ENTRY_CONTROLS", "SECONDARY_VM_EXEC_CONTROL"} <= set(old.fields)
    assert set(old.fields) - {"TERTIARY_VM_EXEC_CONTROL"} <= set(new.fields)
    assert new.fields["TERTIARY_VM_EXEC_CONTROL"] == 0 and "TERTIARY_VM_EXEC_CONTROL" not in old.fields


def test_effective_efer_is_not_the_vmcs_field() -> None:
    text = "*** Guest State ***\nEFER= 0x0000000000000d01 (effective)\nPAT = 0x0007040600070406\n"
    [dump] = read_dumps(text).dumps
    assert "GUEST_IA32_EFER" not in dump.fields and dump.fields["GUEST_IA32_PAT"] == 0x0007040600070406
    [dump] = read_dumps("*** Guest State ***\nEFER= 0x0000000000000d01\n").dumps
    assert dump.fields["GUEST_IA32_EFER"] == 0xD01


def test_xen_dump_is_recognised_without_its_prefix() -> None:
    text = (DATA / "xen_guest_segments.log").read_text().replace("(XEN) ", "")
    [dump] = read_dumps(text).dumps
    assert dump.format == "xen" and dump.fields["GUEST_TR_AR_BYTES"] == 0x89
    assert dump.fields["VM_EXIT_REASON"] == 0x80000021 and dump.lines["VM_EXIT_REASON"] == 1


def test_qemu_dump_fields_and_reported_error() -> None:
    [dump] = read_dumps((DATA / "qemu_guest_rflags.log").read_text()).dumps
    assert dump.format == "qemu" and dump.reported == 0x80000021
    assert dump.fields["GUEST_CS_AR_BYTES"] == 0xA09B and dump.fields["GUEST_LDTR_AR_BYTES"] == 0x10000
    assert dump.fields["GUEST_GDTR_LIMIT"] == 0xFFFF and dump.fields["GUEST_RFLAGS"] == 0
    assert not any(f.startswith(("HOST_", "VM_")) or "CONTROL" in f for f in dump.fields)


def test_dumps_split_at_each_start() -> None:
    result = read_dumps((DATA / "two_dumps.log").read_text())
    assert [(d.format, d.line) for d in result.dumps] == [("kvm", 1), ("xen", 42)] and not result.problems


def test_garbage_is_a_problem_at_its_first_line() -> None:
    result = read_dumps("\n\nnot a dump\n")
    assert not result.dumps and result.problems[0][0] == 3


def test_invalid_json_names_its_line() -> None:
    result = read_dumps('{\n  "fields": {\n}')
    assert not result.dumps and result.problems[0][0] == 3
