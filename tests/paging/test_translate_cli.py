"""``vtx translate``: the public JSON format, exit codes and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from vtx.cli import main

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "translate-ept.json"


def doc(**over: Any) -> dict[str, Any]:
    d: dict[str, Any] = json.loads(EXAMPLE.read_text())
    d.update(over)
    return d


def run(tmp_path: Path, d: object, *extra: str) -> int:
    f = tmp_path / "in.json"
    f.write_text(json.dumps(d))
    return main(["translate", str(f), *extra])


def test_example_is_an_ept_violation_with_24_references(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["translate", str(EXAMPLE), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["outcome"] == "ept_violation" and out["exit_reason"] == 48
    assert out["qualification"] == "0x7aa" and out["gpa"] == "0x5234" and out["gla"] == "0x1234"
    assert len(out["references"]) == 24 and out["error_code"] is None and out["exit_info_1"] is None
    assert out["references"][4] == {"space": "guest", "level": 4, "address": "0x1000", "value": "0x2027",
                                    "memory_type": "WB"}


def test_read_succeeds_with_exit_0_and_human_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(tmp_path, doc(access={"address": "0x1234", "kind": "read"})) == 0
    text = capsys.readouterr().out
    assert "24 memory reference(s)" in text and "=> ok" in text and "hpa 0x9234" in text
    assert "guest PML4E" in text and "ept   PTE" in text


def test_without_eptp_guest_physical_is_host_physical(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = doc()
    del d["eptp"]
    assert run(tmp_path, d, "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["gpa"] == out["hpa"] == "0x5234" and len(out["references"]) == 4


def test_page_fault_reports_the_error_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = doc(access={"address": "0x1234", "kind": "read"})
    del d["eptp"]
    d["memory"].append({"address": "0x4008", "size": 8, "value": "0x5063"})  # supervisor page
    assert run(tmp_path, d, "--json") == 1
    out = json.loads(capsys.readouterr().out)
    assert out["outcome"] == "page_fault" and out["error_code"] == "0x5"


def test_non_canonical_address_is_general_protection(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(tmp_path, doc(access={"address": "0x800000000000"}), "--json") == 1
    assert json.loads(capsys.readouterr().out)["outcome"] == "general_protection"


def test_misconfiguration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = doc()
    d["memory"].append({"address": "0x103028", "size": 8, "value": "0x9032"})
    assert run(tmp_path, d, "--json") == 1
    out = json.loads(capsys.readouterr().out)
    assert out["outcome"] == "ept_misconfig" and out["exit_reason"] == 49 and out["qualification"] is None


def test_svm_nested_paging(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = doc(arch="svm", ncr3="0x100000", host={"cr0": "0x80000011", "cr4": "0x20", "efer": "0xd00"})
    del d["eptp"]
    # the EPT tables of the example read as nested tables: R/W/X = P/RW/US
    assert run(tmp_path, d, "--json") == 1
    out = json.loads(capsys.readouterr().out)
    assert out["outcome"] == "npf" and out["exit_info_2"] == "0x5234" and out["exit_reason"] == "0x400"
    assert int(out["exit_info_1"], 16) & (1 << 32)


def test_bytes_memory_items(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = {"arch": "vmx", "guest": {"cr0": "0x11"}, "memory": [{"address": 0, "bytes": "ff00"}],
         "access": {"address": "0x10", "kind": "fetch"}}
    assert run(tmp_path, d, "--json") == 0
    assert json.loads(capsys.readouterr().out)["hpa"] == "0x10"


@pytest.mark.parametrize(("change", "key"), [
    ({"arch": "arm"}, "arch"),
    ({"eptp": "0x100000"}, "eptp"),
    ({"access": {"kind": "read"}}, "access.address"),
    ({"access": {"address": 1, "kind": "jump"}}, "access.kind"),
    ({"memory": [{"address": 0, "size": 9, "value": 0}]}, "memory[0].size"),
    ({"memory": [{"address": 0, "size": 1, "value": 256}]}, "memory[0].value"),
    ({"guest": {"cr0": "nope"}}, "guest.cr0"),
    ({"guest": {"cr0": 0, "cr9": 0}}, "guest.cr9"),
    ({"fields": {"GUEST_CR9": 0}}, "fields.GUEST_CR9"),
    ({"fields": {"SECONDARY_VM_EXEC_CONTROL": "0x400000"}, "profile": "skylake_client"},
     "fields.SECONDARY_VM_EXEC_CONTROL"),
    ({"ncr3": 0}, "ncr3"),
    ({"guest": {"cr0": "0x80000011", "pat": "0x2"}}, "guest.pat"),
    ({"access": {"address": 1, "kind": "fetch", "shadow_stack": True}}, "access.shadow_stack"),
    ({"access": {"address": 1, "asynchronous": 1}}, "access.asynchronous"),
    ({"access": {"address": 1, "size": 0}}, "access.size"),
    ({"bogus": 1}, "bogus"),
    ({"profile": "nope"}, "profile"),
])
def test_bad_input_exits_2_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         change: dict[str, Any], key: str) -> None:
    assert run(tmp_path, doc(**change)) == 2
    err = capsys.readouterr().err
    assert err.startswith("vtx: error:") and key in err and "Traceback" not in err


def test_pae_under_ept_takes_pdptes_from_fields(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = doc(guest={"cr0": "0x80000011", "cr3": "0x1000", "cr4": "0x20", "efer": "0"},
            fields={"GUEST_PDPTR0": "0x3001"}, access={"address": "0x1234"})
    assert run(tmp_path, d, "--json") == 0
    assert len(json.loads(capsys.readouterr().out)["references"]) == 2 * 5 + 4
    d["fields"] = {"GUEST_PDPTR0": "0x3003"}
    assert run(tmp_path, d) == 2
    assert "GUEST_PDPTR" in capsys.readouterr().err


def test_installed_command_runs_on_a_file() -> None:
    proc = subprocess.run([sys.executable, "-c", "import sys; from vtx.cli import main; sys.exit(main())",
                           "translate", str(EXAMPLE), "--json"], capture_output=True, text=True, check=False)
    assert proc.returncode == 1 and json.loads(proc.stdout)["outcome"] == "ept_violation"


def test_memory_types_in_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = doc(access={"address": "0x1234", "kind": "read"})
    d["guest"]["pat"] = "0x0007040600070404"  # PAT0 = WT
    assert run(tmp_path, d, "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["memory_type"], out["ept_memory_type"], out["pat_memory_type"], out["ignore_pat"]) == \
        ("WT", "WB", "WT", False)
    assert {r["memory_type"] for r in out["references"] if r["space"] == "ept"} == {"WB"}
    del d["eptp"]
    assert run(tmp_path, d, "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["memory_type"] is None and {r["memory_type"] for r in out["references"]} == {None}


def test_access_crossing_a_page_reports_the_second_part(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = doc(access={"address": "0x1ffc", "kind": "read", "size": 8})
    assert run(tmp_path, d, "--json") == 1  # the next page (PTE 2) is not mapped
    out = json.loads(capsys.readouterr().out)
    assert out["outcome"] == "page_fault" and out["gla"] == "0x2000" and len(out["references"]) == 24 + 20
    d["memory"].append({"address": "0x4010", "size": 8, "value": "0x6067"})
    d["memory"].append({"address": "0x103030", "size": 8, "value": "0xa037"})
    assert run(tmp_path, d, "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["second"] == {"gla": "0x2000", "gpa": "0x6000", "hpa": "0xa000", "memory_type": "WB"}
    assert len(out["references"]) == 48


def test_shadow_stack_and_asynchronous_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = doc(access={"address": "0x1234", "kind": "write", "asynchronous": True})
    assert run(tmp_path, d, "--json") == 1
    assert int(json.loads(capsys.readouterr().out)["qualification"], 16) & (1 << 16)
    d = doc(access={"address": "0x1234", "kind": "write", "shadow_stack": True})
    assert run(tmp_path, d, "--json") == 1  # the guest PTE is writable: not a shadow-stack page
    out = json.loads(capsys.readouterr().out)
    assert out["outcome"] == "page_fault" and int(out["error_code"], 16) & (1 << 6)


def test_tertiary_controls_reach_the_walk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = doc(access={"address": "0x1234", "kind": "read"})
    d["memory"].append({"address": "0x103028", "size": 8, "value": hex(0x9035 | (1 << 57))})  # verify guest paging
    assert run(tmp_path, d, "--json") == 0  # the control is 0: bit 57 is ignored
    capsys.readouterr()
    d["fields"] = {"TERTIARY_VM_EXEC_CONTROL": "0x8"}  # guest-paging verification
    assert run(tmp_path, d, "--json") == 1
    assert int(json.loads(capsys.readouterr().out)["qualification"], 16) & (1 << 15)
    d["profile"] = "skylake_client"
    assert run(tmp_path, d) == 2
    assert "fields.TERTIARY_VM_EXEC_CONTROL" in capsys.readouterr().err
