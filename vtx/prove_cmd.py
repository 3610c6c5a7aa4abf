"""``vtx prove [SCENARIO.toml] [--json] [--write-results]``: the invariants of every design of a
scenario (default: the built-in default scenario), each with its verdict and time.

z3 invariants (partitioning, isolation, TLB isolation, I/O / MSR grants) are proved for every
guest-physical address, access, port, MSR and PCID of the machine after the scenario's run, and
inductively for every exit-handler action of the design; hypothesis-checked ones (encapsulation,
hardware independence) are differential runs: a clone of each VM (snapshot save + restore) must
show its guest what the original shows, and the scenario run on a host with another layout must
show every guest the same. Exit status: 0 all proved / held, 1 anything refuted, unknown, vacuous
or failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import attrs
import z3

from vtx.fileio import atomic_write
from vtx.invariants import INVARIANTS, check_all
from vtx.machine.executor import run
from vtx.machine.layout import LAYOUT
from vtx.machine.scenario import DEFAULT_SCENARIO, Scenario, build_machine, load_scenario
from vtx.machine.snapshot import clone_vm, guest_visible
from vtx.proofs.handlers import prove_handlers
from vtx.proofs.machine import prove_machine
from vtx.proofs.result import ProofResult
from vtx.typecheck import checked

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results" / "proofs.json"
GOOD = frozenset({"proved", "held"})


def first_difference(a: Any, b: Any) -> str:
    """The first observation (per vCPU, in order) where two guest-visible runs differ."""
    for (vcpu, seen), (_, other) in zip(a, b, strict=False):
        for n, (x, y) in enumerate(zip(seen, other, strict=False)):
            if x != y:
                return f"vCPU {vcpu}, observation {n}: {x} vs {y}"
        if len(seen) != len(other):
            return f"vCPU {vcpu}: {len(seen)} vs {len(other)} observations"
    return f"{len(a)} vs {len(b)} vCPUs observed"


@checked
def encapsulation(scenario: Scenario, design: str) -> ProofResult:
    """Each VM cloned (paused, saved, restored under a new name) before the run shows its guest
    exactly what the original shows."""
    start = time.perf_counter()
    machine = build_machine(scenario, design)
    examples = 0
    for index, vm in enumerate(machine.vms):
        copy = f"{vm.name}-copy"
        _, trace = run(clone_vm(machine, index, copy), scenario.steps * 2)
        examples += 1
        seen, copied = guest_visible(trace, vm.name), guest_visible(trace, copy)
        if seen != copied:
            return ProofResult("encapsulation", design, "failed", time.perf_counter() - start,
                               f"{copy} (restored from a snapshot of {vm.name}) observed a different run: "
                               f"{first_difference(seen, copied)}", True, True, examples)
    return ProofResult("encapsulation", design, "held", time.perf_counter() - start, None, False, examples > 0,
                       examples)


@checked
def hardware_independence(scenario: Scenario, design: str) -> ProofResult:
    """The scenario run on a host whose layout places VMXON / VMCS regions, EPT tables and guest
    backing elsewhere shows every guest the same as on the reference layout."""
    start = time.perf_counter()
    moved = attrs.evolve(LAYOUT, vmcs=LAYOUT.vmcs + 0x10_0000, ept=LAYOUT.ept + 0x80_0000,
                         backing=LAYOUT.backing + 0x4000_0000, vmxon=LAYOUT.vmxon + 0x2_0000)
    _, here = run(build_machine(scenario, design), scenario.steps)
    _, there = run(build_machine(scenario, design, moved), scenario.steps)
    for vm in scenario.vms:
        seen, moved_seen = guest_visible(here, vm.name), guest_visible(there, vm.name)
        if seen != moved_seen:
            return ProofResult("hardware_independence", design, "failed", time.perf_counter() - start,
                               f"{vm.name} observed a different run on the moved host: "
                               f"{first_difference(seen, moved_seen)}", True, True, len(scenario.vms))
    return ProofResult("hardware_independence", design, "held", time.perf_counter() - start, None, False, True,
                       len(scenario.vms))


@checked
def prove_design(scenario: Scenario, design: str) -> tuple[list[ProofResult], list[ProofResult], list[str]]:
    """(machine proofs + hypothesis checks, handler steps, concrete violations) for one design."""
    machine, trace = run(build_machine(scenario, design), scenario.steps)
    violations = [str(v) for v in check_all(machine, trace)]
    results = [*prove_machine(machine), encapsulation(scenario, design), hardware_independence(scenario, design)]
    return results, list(prove_handlers(design)), violations


def _ok(r: ProofResult) -> bool:
    return r.verdict in GOOD and (r.non_vacuous or r.verdict == "held")


def _line(r: ProofResult, kind: str) -> str:
    if kind == "hypothesis" and r.verdict == "held":
        status = f"held over {r.conjuncts} examples"
    elif r.verdict == "proved":
        status = "proved" + ("" if r.non_vacuous else " (VACUOUS: hypotheses unsatisfiable)")
    else:
        status = r.verdict
    text = f"    {r.invariant:24} {status:32} {r.seconds:7.2f} s"
    if r.counterexample:
        text += f"\n      {'counterexample' if r.verdict in ('refuted', 'failed') else 'reason'}: {r.counterexample}"
        if r.verdict == "refuted":
            text += f"\n      replayed on the concrete model: {'yes' if r.replayed else 'NO'}"
    return text


def prove_scenario(path: Path | None) -> tuple[int, list[str], dict[str, Any]]:
    """(exit status, report lines, JSON report) of every design of the scenario at ``path``
    (None: the built-in default scenario)."""
    scenario = load_scenario(path or DEFAULT_SCENARIO)
    name = str(path) if path is not None else DEFAULT_SCENARIO.name
    kinds = {i.name: i.kind for i in INVARIANTS}
    report: dict[str, Any] = {"scenario": name, "designs": []}
    lines = [f"vtx prove {name}"]
    status = 0
    for design in scenario.designs:
        results, handlers, violations = prove_design(scenario, design)
        lines.append(f"  {design}")
        for r in results:
            lines.append(_line(r, kinds.get(r.invariant, "z3")))
        proved = sum(_ok(h) for h in handlers)
        steps = f"{proved}/{len(handlers)} handler actions proved"
        lines.append(f"    {'inductive steps':24} {steps:32} {sum(h.seconds for h in handlers):7.2f} s")
        lines += [_line(h, "z3") for h in handlers if not _ok(h)]
        lines += [f"    concrete check: {v}" for v in violations]
        if violations or not all(_ok(r) or r.verdict == "not run" for r in results) or proved < len(handlers):
            status = 1
        report["designs"].append({"design": design, "invariants": [r.to_json() for r in results],
                                  "handlers": [h.to_json() for h in handlers], "concrete_violations": violations})
    report["status"] = status
    return status, lines, report


def cmd_prove(args: argparse.Namespace) -> int:
    """Prove the invariants of every design of a scenario and report (exit 0 / 1 / 2)."""
    status, lines, report = prove_scenario(args.scenario)
    if args.write_results:
        report["z3"] = z3.get_version_string()
        report["measured"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(RESULTS, (json.dumps(report, indent=2) + "\n").encode())
        lines.append(f"  wrote {RESULTS}")
    print(json.dumps(report, indent=2) if args.json else "\n".join(lines))
    return status


def prove_report() -> tuple[int, list[str], dict[str, Any]]:
    """The default scenario's proofs, for ``vtx verify``."""
    return prove_scenario(None)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("prove", help="prove the isolation invariants of a scenario's designs")
    p.add_argument("scenario", type=Path, nargs="?", help="scenario TOML file (default: the built-in scenario)")
    p.add_argument("--json", action="store_true", help="print the machine-readable JSON result")
    p.add_argument("--write-results", action="store_true", help=f"write {RESULTS.relative_to(RESULTS.parents[2])}")
    p.set_defaults(func=cmd_prove)
