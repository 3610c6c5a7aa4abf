"""``vtx cluster``: the report, exit codes, and the results file written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vtx.cli import main
from vtx.cluster import cluster_cmd


def test_small_scenario_reports_placement_policies_and_checks(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cluster", "small", "--no-executor", "--time-limit", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["placement"]["z3_hosts"] <= out["placement"]["ffd_hosts"]
    assert out["placement"]["proved_optimal"]
    assert [p["policy"] for p in out["policies"]] == ["static", "balance", "power"]
    assert all(p["ok"] and len(p["hosts_on"]) == out["slots"] for p in out["policies"])
    assert out["legacy_energy_kwh"] > max(p["energy_kwh"] for p in out["policies"])


@pytest.mark.parametrize(("argv", "message"), [
    (["cluster", "no/such.toml"], "no/such.toml: unreadable"),
    (["cluster", "small", "--time-limit", "0"], None),
])
def test_bad_input_exits_2_without_a_traceback(argv: list[str], message: str | None,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    if message is None:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
    else:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_misspelt_key_exits_2_naming_file_and_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.toml"
    path.write_text('sedd = 1\n[[host]]\nname = "h"\nprofile = "skylake_client"\nmemory_gib = 8\n'
                    'logical_processors = 2\n[[vm]]\nname = "v"\nmemory_gib = 1\n')
    assert main(["cluster", str(path)]) == 2
    assert f"{path}: sedd" in capsys.readouterr().err


def test_write_results_writes_the_docs_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cluster_cmd, "BUILTIN", ("small",))
    monkeypatch.setattr(cluster_cmd, "TABLE_SIZES", ())
    out = tmp_path / "cluster.json"
    assert main(["cluster", "small", "--no-executor", "--time-limit", "5", "--write-results", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [r["instance"] for r in data["instances"]] == ["small"] and "small" in data["scenarios"]
    assert not list(tmp_path.glob(".*.tmp"))
