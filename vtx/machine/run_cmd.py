"""``vtx run SCENARIO.toml [--trace] [--json]`` and the scenario part of ``vtx verify``.

Exit status: 0 every vCPU of every design ran its program to the end; 1 a VM entry failed or a
run did not finish within the scenario's steps; 2 a bad scenario file (the message names the key).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

import attrs

from vtx.inputs import in_file
from vtx.machine.cost import COSTS, price
from vtx.machine.designs import get_design
from vtx.machine.executor import run
from vtx.machine.model import Machine, Trace
from vtx.machine.scenario import DEFAULT_SCENARIO, Scenario, build_machine, load_scenario
from vtx.typecheck import checked


@attrs.frozen
class RunReport:
    """One design's run of a scenario, summarised from its trace."""

    design: str
    machine: Machine
    trace: Trace

    @property
    def finished(self) -> bool:
        return self.machine.all_done and not self.failed

    @property
    def failed(self) -> list[str]:
        return [f"{vm.name}.{v.index}: {v.failed}" for vm in self.machine.vms for v in vm.vcpus if v.failed]

    def summary(self) -> dict[str, Any]:
        kinds = Counter(e.kind for e in self.trace)
        exits = Counter(str(e.get("reason")) for e in self.trace if e.kind == "exit")
        handlers = Counter(str(e.get("handler")) for e in self.trace if e.kind == "handled")
        switches = [s for e in self.trace for s in e.get("switches", ())]
        counts, cycles = price(switches)
        return {
            "design": self.design, "organisation": get_design(self.design).organisation,
            "steps": self.machine.step, "finished": self.finished, "failed": self.failed,
            "entries": kinds["entry"], "exits": sum(exits.values()), "exits_by_reason": dict(sorted(exits.items())),
            "handled_by": dict(sorted(handlers.items())), "translations": kinds["access"],
            "executed_without_exit": kinds["executed"], "injected": kinds["inject"], "migrations": kinds["migrate"],
            "world_switches": dict(sorted(counts.items())), "cycles": cycles,
        }


@checked
def run_scenario(scenario: Scenario) -> list[RunReport]:
    """Run ``scenario`` once under each of its designs."""
    reports = []
    for design in scenario.designs:
        machine, trace = run(build_machine(scenario, design), scenario.steps)
        reports.append(RunReport(design, machine, trace))
    return reports


@checked
def report_lines(reports: list[RunReport]) -> list[str]:
    lines = []
    for r in reports:
        s = r.summary()
        status = "finished" if s["finished"] else "NOT finished " + "; ".join(s["failed"])
        lines.append(f"  {s['design']:11} {s['organisation']}")
        lines.append(f"    {s['steps']} steps, {status}; {s['entries']} entries, {s['exits']} exits, "
                     f"{s['translations']} translations, {s['injected']} injected, {s['migrations']} migrations")
        lines.append("    exits: " + ", ".join(f"{k} {v}" for k, v in s["exits_by_reason"].items()))
        lines.append("    handled by: " + ", ".join(f"{k} {v}" for k, v in s["handled_by"].items()))
        lines.append("    world switches: " + ", ".join(f"{k} {v}" for k, v in s["world_switches"].items())
                     + f"; modelled cycles {s['cycles']:,}")
    unsure = sorted(c.name for c in COSTS.values() if c.unsure)
    lines.append(f"  cost model spec/machine/costs.toml (UNSURE estimates: {', '.join(unsure)})")
    return lines


@checked
def scenario_json(scenario_path: Path, reports: list[RunReport], *, trace: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"file": str(scenario_path), "runs": [r.summary() for r in reports]}
    if trace:
        for entry, r in zip(out["runs"], reports, strict=True):
            entry["trace"] = [e.to_json() for e in r.trace]
    return out


def verify_report() -> tuple[list[RunReport], list[str], dict[str, Any]]:
    """The built-in default scenario run under every design, for ``vtx verify``."""
    reports = run_scenario(load_scenario(DEFAULT_SCENARIO))
    lines = [f"reference executor: default scenario {DEFAULT_SCENARIO.name}", *report_lines(reports)]
    return reports, lines, scenario_json(DEFAULT_SCENARIO, reports)


def cmd_run(args: argparse.Namespace) -> int:
    """Run a scenario under each of its designs and report."""
    scenario = load_scenario(args.scenario)
    with in_file(args.scenario):
        reports = run_scenario(scenario)
    if args.json:
        print(json.dumps(scenario_json(args.scenario, reports, trace=args.trace), indent=2))
    else:
        for r in reports:
            if args.trace:
                print(f"# trace of {r.design}")
                for e in r.trace:
                    print(e)
        print(f"vtx run {args.scenario}")
        for line in report_lines(reports):
            print(line)
    return 0 if all(r.finished for r in reports) else 1


def add_parser(sub: Any) -> None:
    p = sub.add_parser("run", help="run a scenario on the reference executor")
    p.add_argument("scenario", type=Path, help="scenario TOML file (format: docs/executor.rst)")
    p.add_argument("--trace", action="store_true", help="print every trace event")
    p.add_argument("--json", action="store_true", help="print the machine-readable JSON result")
    p.set_defaults(func=cmd_run)
