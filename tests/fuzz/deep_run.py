"""Run the fuzz suite surface by surface and record what was tried: ``python tests/fuzz/deep_run.py``.

Each surface's tests run under a hypothesis profile (``deep``: 10,000 inputs per test), with
hypothesis's statistics; the inputs tried, failures and time per surface are written atomically
to ``docs/results/fuzz.json``, which the docs render (:doc:`inputs`). ``--only NAME`` runs some
surfaces and keeps the others' last record.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from vtx.fileio import atomic_write

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "results" / "fuzz.json"
SURFACES = {
    "check (VMX and SVM JSON)": "test_fuzz_check.py",
    "translate JSON": "test_fuzz_translate.py",
    "capabilities / --msrs / presets": "test_fuzz_capabilities.py",
    "explain dumps": "test_fuzz_explain.py",
    "scenario TOML (run, verify)": "test_fuzz_scenario.py",
    "cluster TOML (cluster)": "test_fuzz_cluster.py",
    "snapshot files (snapshot show / check)": "test_fuzz_snapshot.py",
    "Python entry points": "test_fuzz_api.py",
}
_COUNTS = re.compile(r"(\d+) passing examples?, (\d+) failing examples?, (\d+) invalid examples?")


def run_surface(name: str, file: str, profile: str) -> dict[str, Any]:
    """Run one surface's test file; the inputs hypothesis tried and the tests that failed."""
    start = time.monotonic()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--hypothesis-show-statistics",
           f"--hypothesis-profile={profile}", str(ROOT / "tests" / "fuzz" / file)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    passing = failing = 0
    for match in _COUNTS.finditer(done.stdout):
        passing += int(match[1])
        failing += int(match[2])
    failed_tests = re.findall(r"^FAILED (\S+)", done.stdout, re.MULTILINE)
    return {"surface": name, "file": f"tests/fuzz/{file}", "profile": profile, "inputs": passing + failing,
            "failing_inputs": failing, "failed_tests": failed_tests, "exit_status": done.returncode,
            "seconds": round(time.monotonic() - start, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default="deep", help="hypothesis profile (tests/conftest.py)")
    parser.add_argument("--only", action="append", choices=sorted(SURFACES), help="run only these surfaces")
    args = parser.parse_args(argv)
    for name in args.only or list(SURFACES):
        row = run_surface(name, SURFACES[name], args.profile)
        row["measured"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        print(f"{name:34} {row['inputs']:8,} inputs  {row['failing_inputs']} failing  {row['seconds']:8.1f} s")
        old = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"surfaces": []}  # others' rows too
        kept = {s["surface"]: s for s in old.get("surfaces", []) if s["surface"] in SURFACES}
        kept[name] = row
        data = {"machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                            "platform": platform.platform()}, "surfaces": [kept[n] for n in SURFACES if n in kept]}
        atomic_write(RESULTS, (json.dumps(data, indent=2) + "\n").encode())
    final = json.loads(RESULTS.read_text()).get("surfaces", []) if RESULTS.exists() else []
    return 0 if all(s["exit_status"] == 0 for s in final) else 1


if __name__ == "__main__":
    raise SystemExit(main())
