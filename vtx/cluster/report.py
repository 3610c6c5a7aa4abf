"""The report of a cluster scenario: placement by first-fit decreasing and by z3, the day under
each policy (hosts powered over time, migrations, the HA restart, energy, invariant checks), and
the consolidation ratio with the energy of the servers it retires. As JSON (``--json`` and
``docs/results/cluster.json``) and as text."""

from __future__ import annotations

import random
from typing import Any

import attrs

from vtx.cluster.ffd import first_fit_decreasing
from vtx.cluster.model import CENTI, Cluster
from vtx.cluster.placement import PlacementResult, place_optimal
from vtx.cluster.power import LEGACY, POWER_TABLE, energy_kwh, host_power, load_power
from vtx.cluster.scenario import ClusterScenario
from vtx.cluster.simulation import POLICIES, SECONDS_PER_MINUTE, PolicyRun, simulate
from vtx.errors import InputError
from vtx.typecheck import checked

PROOFS = {"unsat": "z3 found no placement on one host fewer", "lower bound": "it meets the lower bound"}


@attrs.frozen
class ScenarioReport:
    scenario: ClusterScenario
    ffd_hosts: int
    placement: PlacementResult
    runs: tuple[PolicyRun, ...]
    time_limit_s: float

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.runs)


@checked
def run_report(scenario: ClusterScenario, *, time_limit_s: float | None = None,
               executor: bool = True) -> ScenarioReport:
    """Place the scenario's VMs (first-fit decreasing, then z3 from it) and run the day under every policy."""
    start, unplaced = first_fit_decreasing(scenario.cluster)
    if unplaced:
        raise InputError(f"vm {unplaced[0]}", "unplaced", "no host can take it (capacity, compatibility or "
                         "anti-affinity): add hosts")
    limit = scenario.time_limit_s if time_limit_s is None else time_limit_s
    result = place_optimal(scenario.cluster, time_limit_s=limit, start=start, seed=scenario.seed)
    runs = tuple(simulate(scenario, result.placement, p, executor=executor) for p in POLICIES)
    return ScenarioReport(scenario, len(start.hosts_used), result, runs, limit)


@checked
def legacy_energy_kwh(scenario: ClusterScenario) -> float:
    """The energy of the day with one physical server per VM (the ``legacy_server`` power row),
    each at its VM's own utilisation."""
    row = host_power(LEGACY)
    seconds = scenario.slot_minutes * SECONDS_PER_MINUTE
    return round(sum(energy_kwh(row.watts(d / (vm.vcpus * CENTI)), seconds)
                     for vm in scenario.cluster.vms for d in vm.demand), 3)


@checked
def placement_json(name: str, cluster: Cluster, ffd_hosts: int, result: PlacementResult,
                   limit: float) -> dict[str, Any]:
    return {"instance": name, "vms": len(cluster.vms), "host_pool": len(cluster.hosts), "vm_types": result.types,
            "ffd_hosts": ffd_hosts, "z3_hosts": result.hosts, "lower_bound": result.lower_bound,
            "status": result.status, "proof": result.proof, "proved_optimal": result.proved_optimal,
            "seconds": result.seconds,
            "time_limit_s": limit}


@checked
def run_json(run: PolicyRun) -> dict[str, Any]:
    ha = None
    if run.ha is not None:
        ha = {"host": run.ha.host, "slot": run.ha.slot, "snapshot_slot": run.ha.snapshot_slot,
              "restarted": sum(r.host is not None for r in run.ha.restarts), "stranded": list(run.ha.stranded),
              "powered_on": list(run.ha.powered_on),
              "slots_lost": max((r.slots_lost for r in run.ha.restarts), default=0),
              "executor_steps_lost": {r.vm: r.steps_lost for r in run.ha.restarts if r.steps_lost is not None},
              "restarts": [{"vm": r.vm, "host": r.host, "reason": r.reason} for r in run.ha.restarts]}
    detailed = [m for m in run.migrations if m.report is not None]
    return {"policy": run.policy, "energy_kwh": run.energy_kwh, "migrations": len(run.migrations),
            "migrations_in_executor": len(detailed),
            "migration_downtime_steps": [m.report.downtime_steps for m in detailed if m.report is not None],
            "hosts_on": [r.hosts_on for r in run.slots], "load": [r.load for r in run.slots],
            "saturated_host_slots": sum(r.saturated for r in run.slots),
            "placement_violations": list(run.placement_violations),
            "partitioning_violations": list(run.partitioning_violations),
            "partitioning_checks": run.partitioning_checks, "executor_steps": run.executor_steps,
            "detailed_vms": run.detailed_vms, "ha": ha, "ok": run.ok}


@checked
def report_json(report: ScenarioReport) -> dict[str, Any]:
    s = report.scenario
    e = s.executor
    return {
        "scenario": s.name, "description": s.description, "vms": len(s.cluster.vms), "host_pool": len(s.cluster.hosts),
        "slots": s.cluster.slots, "slot_minutes": s.slot_minutes, "overcommit": s.cluster.overcommit,
        "placement": placement_json(s.name, s.cluster, report.ffd_hosts, report.placement, report.time_limit_s),
        "consolidation_ratio": round(len(s.cluster.vms) / max(1, report.placement.hosts), 2),
        "legacy_energy_kwh": legacy_energy_kwh(s),
        "executor": {"design": e.design, "detail_hosts": e.detail_hosts, "detail_vms": e.detail_vms,
                     "steps_per_slot": e.steps_per_slot, "check_every_step": e.check_every_step},
        "power_model": {"table": f"spec/{POWER_TABLE}",
                        "unsure": sorted(p for p, row in load_power().items() if row.unsure)},
        "policies": [run_json(r) for r in report.runs], "ok": report.ok}


@checked
def report_lines(data: dict[str, Any]) -> list[str]:
    """The text report of :func:`report_json`'s data."""
    p = data["placement"]
    verdict = {"optimal": f"proved optimal: {PROOFS.get(p.get('proof', ''), '')}",
               "bound": "optimal: first-fit decreasing meets the lower bound",
               "timeout": f"time limit reached; lower bound {p['lower_bound']}"}[p["status"]]
    lines = [f"vtx cluster {data['scenario']}: {data['description']}",
             f"  {data['vms']} VMs, {data['host_pool']} hosts in the pool, {data['slots']} slots of "
             f"{data['slot_minutes']} min, {data['overcommit']} vCPUs per LP",
             f"  placement: first-fit decreasing {p['ffd_hosts']} hosts; z3 {p['z3_hosts']} hosts ({verdict}) "
             f"in {p['seconds']:.1f} s; lower bound {p['lower_bound']}",
             f"  consolidation: {data['vms']} servers onto {p['z3_hosts']} hosts, {data['consolidation_ratio']}:1",
             f"  one server per VM would use {data['legacy_energy_kwh']:.1f} kWh over the day"]
    e = data["executor"]
    lines.append(f"  executor: {e['design']} design, {e['detail_hosts'] or 'all'} hosts as machines, "
                 f"{e['detail_vms']} VMs each in detail, {e['steps_per_slot']} steps per slot, partitioning "
                 f"checked after every {'step' if e['check_every_step'] else 'slot'}")
    for r in data["policies"]:
        on = r["hosts_on"]
        lines.append(f"  policy {r['policy']:8} {r['energy_kwh']:9.1f} kWh, hosts on {min(on)}..{max(on)} "
                     f"(mean {sum(on) / len(on):.1f}), {r['migrations']} migrations "
                     f"({r['migrations_in_executor']} in the executor), {r['saturated_host_slots']} saturated "
                     f"host-slots")
        if r["ha"]:
            h = r["ha"]
            lines.append(f"    HA: {h['host']} failed at slot {h['slot']}; {h['restarted']} VMs restarted from the "
                         f"slot-{h['snapshot_slot']} snapshots ({h['slots_lost']} slots lost; executor steps lost "
                         f"{sorted(set(h['executor_steps_lost'].values())) or 'n/a'}), "
                         f"{len(h['stranded'])} stranded, powered on {', '.join(h['powered_on']) or 'none'}")
        checks = "OK" if not r["placement_violations"] and not r["partitioning_violations"] else "VIOLATED"
        lines.append(f"    invariants {checks}: placement rules every slot; partitioning "
                     f"{r['partitioning_checks']} checks over {r['executor_steps']} executor steps "
                     f"({r['detailed_vms']} VMs in detail)")
        lines += [f"      {v}" for v in (r["placement_violations"] + r["partitioning_violations"])[:5]]
    lines.append(f"  power model {data['power_model']['table']} (UNSURE estimates: "
                 f"{', '.join(data['power_model']['unsure'])})")
    return lines


@checked
def subset(cluster: Cluster, count: int, seed: int) -> Cluster:
    """``cluster`` with a seeded sample of ``count`` of its VMs (a smaller instance of the same mix)."""
    vms = random.Random(seed).sample(list(cluster.vms), min(count, len(cluster.vms)))
    return attrs.evolve(cluster, vms=tuple(sorted(vms, key=lambda v: v.name)))


@checked
def placement_table(cluster: Cluster, name: str, *, time_limit_s: float, seed: int) -> dict[str, Any]:
    """One row of the docs' hosts-used table: first-fit decreasing against z3 on ``cluster``."""
    start, unplaced = first_fit_decreasing(cluster)
    if unplaced:
        raise InputError(f"instance {name}", f"VM {unplaced[0]}", "unplaced by first-fit decreasing")
    result = place_optimal(cluster, time_limit_s=time_limit_s, start=start, seed=seed)
    return placement_json(name, cluster, len(start.hosts_used), result, time_limit_s)
