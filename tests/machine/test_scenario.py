"""Scenario files, `vtx run`, `vtx verify` and the cost table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vtx import guest_ops as g
from vtx.cli import main
from vtx.errors import InputError
from vtx.machine.cost import COSTS, SWITCH_KINDS, price
from vtx.machine.layout import LAYOUT
from vtx.machine.model import LinearAccess
from vtx.machine.scenario import DEFAULT_SCENARIO, LENGTHS, parse_op, parse_scenario
from vtx.paging.guest import AccessKind

GOOD = """
seed = 4
steps = 300
logical_processors = 2
design = "hosted"

[[vm]]
name = "a"
program = [{op = "cpuid"}, {op = "out"}, {op = "store", gva = 0x300000, value = 5}, {op = "hlt"}]
"""

BAD = [
    ("bogus = 1\n" + GOOD, "bogus", "unknown key"),
    (GOOD.replace('design = "hosted"', 'design = "kvm"'), "design", "must be one of"),
    (GOOD.replace("logical_processors = 2", "logical_processors = 0"), "logical_processors", "integer"),
    (GOOD.replace("seed = 4", 'seed = "x"'), "seed", "integer"),
    (GOOD.replace("steps = 300", 'profile = "pentium"\nsteps = 300'), "profile", "known presets"),
    (GOOD.replace('name = "a"', 'name = "a"\nvcpus = 99'), "vm[0].vcpus", "integer"),
    (GOOD.replace('name = "a"', 'name = "a"\nworkload = "io"'), "vm[0].program", "not both"),
    (GOOD.replace('name = "a"', 'name = "a"\nkind = "xen"'), "vm[0].kind", "must be one of"),
    (GOOD.replace('{op = "cpuid"}', '{op = "cpuidx"}'), "vm[0].program[0].op", "must be one of"),
    (GOOD.replace('{op = "out"}', '{op = "out", size = 3}'), "vm[0].program[1].size", "1, 2 or 4"),
    (GOOD.replace('{op = "out"}', '{op = "out", colour = 1}'), "vm[0].program[1].colour", "unknown key"),
    (GOOD.replace('{op = "cpuid"}', '{op = "ring_notify"}'), "vm[0].program[0].op", "PV guest"),
    (GOOD.replace("[[vm]]", "[[vmm]]"), "vmm", "unknown key"),
    ("seed = 1\n", "vm", "non-empty array"),
    (GOOD.replace('design = "hosted"', 'designs = ["hosted", "esx"]'), "designs[1]", "must be one of"),
    (GOOD.replace('name = "a"', 'name = "a"\nmemory_mib = 64'), "vm[0].memory_mib", "integer"),
    ('tick = 1.5\n' + GOOD, "tick", "probability"),
]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "key", "rule"), BAD)
def test_bad_scenario_exits_2_naming_the_key(tmp_path: Path, text: str, key: str, rule: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(write(tmp_path, text))]) == 2
    err = capsys.readouterr().err
    assert f"scenario.toml: {key}:" in err and rule in err


def test_not_toml_exits_2_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(write(tmp_path, "[[vm]\n"))]) == 2
    assert "scenario.toml" in capsys.readouterr().err


def test_good_scenario_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(write(tmp_path, GOOD)), "--trace"]) == 0
    out = capsys.readouterr().out
    assert "IO_INSTRUCTION 1" in out and "CPUID 1" in out and "finished" in out
    assert "exit" in out and "vmlaunch" in out


def test_run_json_has_trace_with_translations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(write(tmp_path, GOOD)), "--json", "--trace"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (only,) = doc["runs"]
    accesses = [e for e in only["trace"] if e["kind"] == "access"]
    assert accesses and {"gva", "gpa", "hpa"} <= set(accesses[0])


@pytest.mark.parametrize(("item", "expected"), [
    ({"op": "cpuid"}, g.Instruction("cpuid", length=LENGTHS["cpuid"])),
    ({"op": "rdmsr", "msr": 0x10}, g.Rdmsr(0x10, length=LENGTHS["rdmsr"])),
    ({"op": "wrmsr", "msr": 0x10, "value": 3}, g.Wrmsr(0x10, 3, length=LENGTHS["wrmsr"])),
    ({"op": "in", "port": 0x60, "size": 2}, g.Io(0x60, 2, input=True, length=LENGTHS["in"])),
    ({"op": "load", "gva": 0x1000, "size": 4}, LinearAccess(0x1000, AccessKind.READ, 4)),
    ({"op": "mmio_write", "offset": 8, "value": 1}, LinearAccess(LAYOUT.mmio_gpa + 8, AccessKind.WRITE, 8, 1)),
])
def test_program_items(item: dict[str, object], expected: object) -> None:
    assert parse_op(item, "x", LAYOUT, "hvm") == (expected,)


def test_instruction_lengths_come_from_the_encodings() -> None:
    assert LENGTHS["vmcall"] == 3 and LENGTHS["hlt"] == 1 and LENGTHS["cpuid"] == 2


def test_programs_end_with_hlt() -> None:
    s = parse_scenario({"vm": [{"program": [{"op": "cpuid"}]}, {"workload": "memory", "length": 3}]})
    assert all(p[-1] == g.Instruction("hlt", length=LENGTHS["hlt"]) for v in s.vms for p in v.programs)


def test_parse_errors_are_input_errors() -> None:
    with pytest.raises(InputError, match=r"vm\[0\]\.workload"):
        parse_scenario({"vm": [{"workload": "spin"}]})


# ------------------------------------------------------------------ cost model


def test_cost_rows_cover_every_switch_kind_and_cite_a_reference() -> None:
    assert set(SWITCH_KINDS) <= set(COSTS)
    assert all(c.reference.title and c.cycles > 0 for c in COSTS.values())
    assert not COSTS["vm_round_trip"].unsure and COSTS["dom0_round_trip"].unsure


def test_price_counts_and_sums() -> None:
    counts, cycles = price(["vm_round_trip", "vm_round_trip", "dom0_round_trip"])
    assert counts["vm_round_trip"] == 2
    assert cycles == 2 * COSTS["vm_round_trip"].cycles + COSTS["dom0_round_trip"].cycles


# ------------------------------------------------------------------ the CLI from a fresh process


def test_vtx_run_and_verify_from_a_fresh_process(tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", "import sys; from vtx.cli import main; sys.exit(main())"]
    proc = subprocess.run([*cmd, "run", str(DEFAULT_SCENARIO)], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "hosted" in proc.stdout and "bare_metal" in proc.stdout and "hybrid" in proc.stdout
    proc = subprocess.run([*cmd, "verify"], capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "load and cross-check" in proc.stdout and "reference executor" in proc.stdout
    assert "modelled cycles" in proc.stdout
    proc = subprocess.run([*cmd, "verify", "--json"], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          check=False)
    doc = json.loads(proc.stdout)
    assert doc["vmcs_fields"] > 0 and [r["design"] for r in doc["scenario"]["runs"]] == ["hosted", "bare_metal",
                                                                                         "hybrid"]
    bad = write(tmp_path, GOOD.replace('design = "hosted"', 'design = "kvm"'))
    proc = subprocess.run([*cmd, "run", str(bad)], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          check=False)
    assert proc.returncode == 2 and "design" in proc.stderr
