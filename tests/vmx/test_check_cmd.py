"""``vtx check`` / ``vtx template`` / ``vtx profiles`` from the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from vtx.cli import main


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def template(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str = "long-mode",
             profile: str = "skylake_client") -> dict[str, Any]:
    status, out, _ = run_cli(["template", name, "--profile", profile, "--json"], capsys)
    assert status == 0
    doc: dict[str, Any] = json.loads(out)
    return doc


def write(tmp_path: Path, doc: object) -> str:
    path = tmp_path / "vmcs.json"
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return str(path)


@pytest.mark.parametrize("name", ["long-mode", "protected-mode", "real-mode", "pae"])
def test_template_then_check_succeeds(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = template(tmp_path, capsys, name)
    status, out, _ = run_cli(["check", write(tmp_path, doc), "--profile", "skylake_client", "--json"], capsys)
    result = json.loads(out)
    assert status == 0 and result["outcome"] == "success" and result["violations"] == []
    assert result["error"] is None and result["exit_reason"] is None


def test_control_violation_reports_error_7_and_cites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = template(tmp_path, capsys)
    doc["fields"]["PIN_BASED_VM_EXEC_CONTROL"] = "0x0"
    doc["fields"]["HOST_CR0"] = "0x31"
    status, out, _ = run_cli(["check", write(tmp_path, doc), "--json"], capsys)
    result = json.loads(out)
    assert status == 1 and result["outcome"] == "VMfailValid" and result["error"] == 7
    assert [o["error"] for o in result["possible_outcomes"]] == [7, 8]
    ids = {v["id"] for v in result["violations"]}
    assert {"controls.pin_based.reserved_bits", "host.cr0.fixed_bits"} <= ids
    assert all("SDM Vol. 3C §28." in v["citation"] for v in result["violations"])


def test_guest_violation_is_an_entry_failure_with_full_reason(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    doc = template(tmp_path, capsys)
    doc["fields"]["GUEST_RFLAGS"] = "0x0"
    status, out, _ = run_cli(["check", write(tmp_path, doc), "--json"], capsys)
    result = json.loads(out)
    assert status == 1 and result["outcome"] == "entry_failure"
    assert (result["exit_reason"], result["exit_reason_full"], result["qualification"]) == (33, 0x80000021, 0)


@pytest.mark.parametrize("case", [
    ({"launch_state": "launched"}, "VMfailValid", 4, "basic.vmlaunch_clear"),
    ({"instruction": "VMRESUME"}, "VMfailValid", 5, "basic.vmresume_launched"),
    ({"blocking_by_mov_ss": True}, "VMfailValid", 26, "basic.mov_ss_blocking"),
    ({"current_vmcs": False}, "VMfailInvalid", None, "basic.current_vmcs"),
    ({"shadow_vmcs": True}, "VMfailInvalid", None, "basic.not_shadow_vmcs"),
])
def test_basic_checks_from_processor_state(case: tuple[dict[str, object], str, int | None, str], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    processor, outcome, error, basic_id = case
    doc = template(tmp_path, capsys)
    doc["processor"] = processor
    status, out, _ = run_cli(["check", write(tmp_path, doc), "--json"], capsys)
    result = json.loads(out)
    assert status == 1 and result["outcome"] == outcome and result["error"] == error
    assert result["violations"][0]["id"] == basic_id


def test_high_form_merges_and_must_agree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = template(tmp_path, capsys)
    doc["fields"]["TSC_OFFSET_HIGH"] = "0x1"
    assert run_cli(["check", write(tmp_path, doc)], capsys)[0] == 0
    doc["fields"]["TSC_OFFSET"] = "0x2_0000_0000"
    status, _, err = run_cli(["check", write(tmp_path, doc)], capsys)
    assert status == 2 and "TSC_OFFSET_HIGH" in err and "contradicts" in err


@pytest.mark.parametrize(("mutate", "needle"), [
    (lambda d: d["fields"].update(GUEST_CR9=1), "GUEST_CR9"),
    (lambda d: d["fields"].update(VIRTUAL_PROCESSOR_ID="0x10000"), "VIRTUAL_PROCESSOR_ID"),
    (lambda d: d["fields"].update(GUEST_RIP="0xzz"), "GUEST_RIP"),
    (lambda d: d.update(bogus=1), "bogus"),
    (lambda d: d.update(processor={"instruction": "VMRUN"}), "processor.instruction"),
    (lambda d: d.update(memory=[{"address": 1, "size": 9, "value": 0}]), "memory[0].size"),
])
def test_bad_input_exits_2_naming_the_problem(mutate: Any, needle: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    doc = template(tmp_path, capsys)
    mutate(doc)
    status, _, err = run_cli(["check", write(tmp_path, doc)], capsys)
    assert status == 2 and needle in err and "Traceback" not in err


def test_unsupported_field_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = template(tmp_path, capsys, profile="penryn_server")
    doc["fields"]["EPT_POINTER"] = "0x1000"
    status, _, err = run_cli(["check", write(tmp_path, doc)], capsys)
    assert status == 2 and "EPT_POINTER" in err and "does not support" in err


def test_bad_json_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_cli(["check", write(tmp_path, '{"fields": {,}')], capsys)
    assert status == 2 and "vmcs.json:1:" in err


def test_profiles_lists_presets_with_msrs(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(["profiles", "--json"], capsys)
    profiles = json.loads(out)
    assert status == 0 and "skylake_client" in profiles
    assert profiles["skylake_client"]["IA32_VMX_BASIC"] == "0xda040000000004"


def test_check_works_as_an_installed_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = template(tmp_path, capsys)
    proc = subprocess.run([sys.executable, "-m", "vtx.cli", "check", write(tmp_path, doc)], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0 and "outcome: success" in proc.stdout


def test_svm_template_then_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(["template", "long-mode", "--arch", "svm", "--json"], capsys)
    doc = json.loads(out)
    assert status == 0 and doc["arch"] == "svm"
    status, out, _ = run_cli(["check", write(tmp_path, doc), "--json"], capsys)
    assert status == 0 and json.loads(out)["outcome"] == "success"
    doc["fields"]["save.efer"] = "0x0"
    status, out, _ = run_cli(["check", write(tmp_path, doc), "--json"], capsys)
    result = json.loads(out)
    assert status == 1 and result["outcome"] == "VMEXIT_INVALID"
    assert any(v["id"] == "save.efer_svme" for v in result["violations"])


def test_unknown_arch_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_cli(["check", write(tmp_path, {"arch": "arm", "fields": {}})], capsys)
    assert status == 2 and "arch" in err
