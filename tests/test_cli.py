"""The ``vtx`` command: exit codes and messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vtx.cli import main


def test_verify_succeeds_and_reports_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["vmcs_fields"] > 200 and out["profile"] == "max"


def test_field_lookup_by_name_and_high_encoding(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["field", "0x201b", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["name"] == "EPT_POINTER_HIGH" and out["width"] == "64"


@pytest.mark.parametrize("argv", [
    ["field", "GUEST_CR9"],
    ["verify", "--profile", "pentium-pro"],
    ["capabilities", "--profile", "nope"],
])
def test_bad_input_exits_2_with_a_message_not_a_traceback(argv: list[str],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("vtx: error:") and "Traceback" not in err


def test_bad_msrs_file_names_the_msr_and_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "cpu.json"
    f.write_text(json.dumps({"IA32_VMX_MISC": "0xnope"}))
    assert main(["capabilities", "--msrs", str(f)]) == 2
    err = capsys.readouterr().err
    assert "IA32_VMX_MISC" in err and "integer or hex string" in err


def test_capabilities_lists_presets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["capabilities", "--list"]) == 0
    assert "skylake_client" in capsys.readouterr().out.split()
