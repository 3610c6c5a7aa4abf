"""``vtx explain`` on dumps written in each format (tests/dumps/data/, built from vtx templates and
printed in the line formats of Linux KVM 4.19 / 6.6, Xen and QEMU; none is a copied report)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vtx.cli import main
from vtx.dumps import explain_dump, read_dumps
from vtx.dumps.explain import FIXES, NOT_EVALUABLE
from vtx.vmx.entry.catalogue import ENTRY_CHECKS

DATA = Path(__file__).parent / "data"
PROFILE = ["--profile", "skylake_client"]


def explain_json(name: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    status = main(["explain", str(DATA / name), *PROFILE, "--json"])
    doc: dict[str, Any] = json.loads(capsys.readouterr().out)
    return status, doc


def failing(dump: dict[str, Any]) -> list[str]:
    return [v["id"] for v in dump["violations"] if v["status"] == "fail"]


# One fault per major guest-state group, each in its own format and log-prefix style.
@pytest.mark.parametrize(("name", "fmt", "check", "group"), [
    ("kvm_4_19_guest_regs.log", "kvm", "guest.cr4.fixed_bits", "guest_regs"),
    ("xen_guest_segments.log", "xen", "guest.segments.tr_type", "guest_segments"),
    ("kvm_guest_dtr.log", "kvm", "guest.dtr.limit_upper_bits", "guest_dtr"),
    ("qemu_guest_rflags.log", "qemu", "guest.rflags.reserved_bits", "guest_rip_rflags"),
    ("kvm_guest_non_register.log", "kvm", "guest.interruptibility.sti_and_mov_ss", "guest_non_register"),
    ("kvm_guest_pdptes.log", "kvm", "guest.pdptes.fields", "guest_pdptes"),
])
def test_one_fault_per_guest_group(name: str, fmt: str, check: str, group: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    status, doc = explain_json(name, capsys)
    [dump] = doc["dumps"]
    assert status == 1 and dump["format"] == fmt
    assert failing(dump) == [check] and ENTRY_CHECKS[check].group == group
    v = dump["violations"][0]
    assert v["citation"] == str(ENTRY_CHECKS[check].citation) and v["fix"] == FIXES[check].text
    assert all(value is not None for value in v["fields"].values())
    assert dump["failed"] == 1 and dump["passed"] > 0
    assert dump["not_evaluable"] == sum(x["status"] == NOT_EVALUABLE for x in dump["violations"])


def test_clean_dump_passes_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    status, doc = explain_json("kvm_6_6_ok.log", capsys)
    [dump] = doc["dumps"]
    assert status == 0 and failing(dump) == [] and dump["line"] == 2
    assert dump["passed"] + dump["not_evaluable"] == len([c for c in ENTRY_CHECKS if c.group != "basic"])


def test_several_faults_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    status, doc = explain_json("kvm_several.log", capsys)
    [dump] = doc["dumps"]
    assert status == 1
    assert set(failing(dump)) == {"controls.pin_based.reserved_bits", "host.cr0.fixed_bits",
                                  "guest.segments.cs_type", "guest.rflags.reserved_bits"}
    assert failing(dump) == sorted(failing(dump), key=[c.id for c in ENTRY_CHECKS].index)  # catalogue order


def test_missing_fields_are_not_evaluable_and_named(capsys: pytest.CaptureFixture[str]) -> None:
    status, doc = explain_json("kvm_missing.log", capsys)
    [dump] = doc["dumps"]
    assert status == 0 and failing(dump) == []
    by_id = {v["id"]: v for v in dump["violations"]}
    pin = by_id["controls.pin_based.reserved_bits"]
    assert pin["status"] == NOT_EVALUABLE and pin["fields"] == {"PIN_BASED_VM_EXEC_CONTROL": None}
    assert "PIN_BASED_VM_EXEC_CONTROL" in pin["message"]
    cr0 = by_id["guest.cr0.fixed_bits"]  # GUEST_CR0 is given, the secondary controls are not
    assert cr0["fields"]["GUEST_CR0"] == "0x80000031" and cr0["fields"]["SECONDARY_VM_EXEC_CONTROL"] is None
    assert "guest.rflags.reserved_bits" not in by_id  # evaluated from what the dump gives: passes


def test_missing_field_is_never_guessed_as_zero() -> None:
    """A dump without PIN_BASED_VM_EXEC_CONTROL would fail the reserved-bit check if it were read as 0."""
    [dump] = read_dumps((DATA / "kvm_missing.log").read_text()).dumps
    result = explain_dump(dump, profile="skylake_client")
    assert "controls.pin_based.reserved_bits" in {r.id for r in result.not_evaluable}
    assert not result.failures


def test_processor_state_the_dump_lacks_is_not_evaluable() -> None:
    [dump] = read_dumps((DATA / "kvm_6_6_ok.log").read_text()).dumps
    result = {r.id: r for r in explain_dump(dump, profile="skylake_client").results}
    assert "vmm_ia32e_mode" in result["address_space.vmm_in_ia32e"].message


def test_two_dumps_in_one_file(capsys: pytest.CaptureFixture[str]) -> None:
    status, doc = explain_json("two_dumps.log", capsys)
    first, second = doc["dumps"]
    assert status == 1
    assert (first["format"], first["line"], failing(first)) == ("kvm", 1, [])
    assert (second["format"], failing(second)) == ("xen", ["guest.segments.tr_usable"])
    assert second["line"] == 42


def test_garbage_exits_2_with_the_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", str(DATA / "garbage.txt")]) == 2
    assert "garbage.txt:1: no dump could be read" in capsys.readouterr().err


def test_unreadable_dump_is_reported_with_its_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cut.log"
    path.write_text("boot\n[ 1.0] kvm_intel: *** Guest State ***\n[ 1.1] kvm_intel: CR0: actual=\n")
    assert main(["explain", str(path)]) == 2
    assert "cut.log:2: no dump could be read: a kvm/xen dump starts here" in capsys.readouterr().err


def test_value_wider_than_its_field_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "wide.log"
    path.write_text("*** Guest State ***\nCS:   sel=0x10008, attr=0x0a09b, limit=0xffffffff, base=0x0\n")
    assert main(["explain", str(path)]) == 2
    err = capsys.readouterr().err
    assert "wide.log:2" in err and "GUEST_CS_SELECTOR" in err


def test_vtx_json_dump_is_complete(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["template", "long-mode", *PROFILE, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    doc["fields"]["GUEST_RFLAGS"] = "0x0"
    path = tmp_path / "vmcs.json"
    path.write_text(json.dumps(doc))
    status, out = main(["explain", str(path), "--json"]), json.loads(capsys.readouterr().out)
    [dump] = out["dumps"]
    assert status == 1 and dump["format"] == "vtx-json" and failing(dump) == ["guest.rflags.reserved_bits"]
    assert all(v is not None for r in dump["violations"] for v in r["fields"].values())


def test_text_report_is_readable(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", str(DATA / "kvm_several.log"), *PROFILE]) == 1
    out = capsys.readouterr().out
    assert out.startswith("dump 1: kvm at line 1, profile skylake_client; exit reason 0x80000021 (basic reason 33")
    assert "  FAIL host.cr0.fixed_bits  SDM Vol. 3C §28.2.2" in out and "HOST_CR0=0x31" in out
    assert "fix: Write the VMM's own CR0" in out and "  4 failed, " in out
    assert max(len(line) for line in out.splitlines() if line.startswith("      ")) <= 120


def test_output_is_stable(capsys: pytest.CaptureFixture[str]) -> None:
    first = explain_json("two_dumps.log", capsys)
    assert explain_json("two_dumps.log", capsys) == first
