"""``vtx cluster [SCENARIO] [--json] [--time-limit S] [--no-executor] [--write-results [PATH]]``.

SCENARIO is a built-in name (``consolidation``, the default, or ``small``) or a TOML file
(docs/cluster.rst). Exit status: 0 every policy kept every placement rule and partitioning and
restarted every VM of the failed host; 1 one did not; 2 a bad scenario file (the message names
the file and key). ``--write-results`` also runs both built-ins and the placement table instances
and writes ``docs/results/cluster.json`` atomically, for the docs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
from pathlib import Path
from typing import Any

import z3

from vtx.cluster.report import placement_table, report_json, report_lines, run_report, subset
from vtx.cluster.scenario import BUILTIN, ClusterScenario, load_cluster_scenario, scenario_path
from vtx.fileio import atomic_write
from vtx.inputs import in_file
from vtx.spec import SPEC_DIR
from vtx.typecheck import checked

RESULTS = SPEC_DIR.parent / "docs" / "results" / "cluster.json"
TABLE_SIZES = (20, 50, 200)
"""The consolidation mix sampled at these sizes for the docs' hosts-used table (with both built-ins)."""
TABLE_LIMIT_S = 10.0
"""z3's time limit on each sampled instance of the table."""


@checked
def results(time_limit_s: float | None, executor: bool) -> dict[str, Any]:
    """Both built-in scenarios and the placement table, as written to ``docs/results/cluster.json``."""
    scenarios = {}
    rows = []
    for name in BUILTIN:
        scenario = load_cluster_scenario(scenario_path(name))
        data = report_json(run_report(scenario, time_limit_s=time_limit_s, executor=executor))
        scenarios[name] = data
        rows.append(data["placement"])
        if name == "consolidation":
            rows += [placement_table(subset(scenario.cluster, n, scenario.seed), f"{name} sample of {n}",
                                     time_limit_s=TABLE_LIMIT_S, seed=scenario.seed) for n in TABLE_SIZES]
    rows.sort(key=lambda r: r["vms"])
    return {"generated_by": "vtx cluster --write-results",
            "measured": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                        "platform": platform.platform(terse=True)},
            "z3": z3.get_version_string(), "instances": rows, "scenarios": scenarios}


def cmd_cluster(args: argparse.Namespace) -> int:
    """Run a cluster scenario and report."""
    path = scenario_path(args.scenario)
    with in_file(path):
        return _run(args, load_cluster_scenario(path))


def _run(args: argparse.Namespace, scenario: ClusterScenario) -> int:
    out = None
    if args.write_results is not None:
        out = results(args.time_limit, not args.no_executor)
        atomic_write(args.write_results, (json.dumps(out, indent=1) + "\n").encode())
    if out is not None and args.scenario in out["scenarios"]:
        data = out["scenarios"][args.scenario]
    else:
        data = report_json(run_report(scenario, time_limit_s=args.time_limit, executor=not args.no_executor))
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print("\n".join(report_lines(data)))
        if args.write_results is not None:
            print(f"  results written to {args.write_results}")
    return 0 if data["ok"] else 1


def _limit(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a number of seconds from 0.1 to 3600")
    return value


def add_parser(sub: Any) -> None:
    p = sub.add_parser("cluster", help="run a datacenter scenario: placement, HA, balancing, power")
    p.add_argument("scenario", nargs="?", default="consolidation",
                   help=f"a built-in scenario ({', '.join(BUILTIN)}) or a scenario TOML file (docs/cluster.rst)")
    p.add_argument("--json", action="store_true", help="print the machine-readable JSON result")
    p.add_argument("--time-limit", type=_limit, metavar="S", help="z3's placement time limit (default: the scenario's)")
    p.add_argument("--no-executor", action="store_true", help="cluster level only: no executor machines")
    p.add_argument("--write-results", nargs="?", const=RESULTS, type=Path, metavar="PATH",
                   help=f"also write the docs' results (built-ins and placement table) to PATH (default {RESULTS})")
    p.set_defaults(func=cmd_cluster)
