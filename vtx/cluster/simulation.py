"""A scenario's day under one policy, slot by slot.

Policies: ``static`` (the placement is kept all day), ``balance`` (live-migrate off hosts above
the high threshold) and ``power`` (balance, and evacuate and power hosts down while the cluster's
load is low). In every policy the HA event of the scenario happens: a host fails and its VMs
restart elsewhere from the snapshots taken at the start of every ``snapshot_every``-th slot
(slot 0 included). Each slot: the HA event if due, snapshots if due, the policy's moves, the placement checked
against every rule (:func:`~vtx.cluster.model.placement_violations`), the executor machines run
and partitioning checked on each (:mod:`vtx.cluster.hosts`), and the energy
the powered hosts draw (:mod:`vtx.cluster.power`).
"""

from __future__ import annotations

import attrs

from vtx.cluster import hosts
from vtx.cluster.balance import Migration, cluster_load, consolidate, relieve
from vtx.cluster.ha import HaReport, busiest, fail_and_restart
from vtx.cluster.model import Placement, PowerState, placement_violations, with_power
from vtx.cluster.power import energy_kwh, host_power
from vtx.cluster.scenario import ClusterScenario
from vtx.cluster.state import ClusterState
from vtx.typecheck import checked

POLICIES = ("static", "balance", "power")
SECONDS_PER_MINUTE = 60.0


@attrs.frozen
class SlotRecord:
    """One slot: hosts powered, the cluster's load, hosts saturated (load above 1), watts drawn,
    migrations made."""

    slot: int
    hosts_on: int
    load: float
    saturated: int
    watts: float
    migrations: int


@attrs.frozen
class PolicyRun:
    policy: str
    slots: tuple[SlotRecord, ...]
    migrations: tuple[Migration, ...]
    ha: HaReport | None
    energy_kwh: float
    placement_violations: tuple[str, ...]
    partitioning_violations: tuple[str, ...]
    executor_steps: int
    partitioning_checks: int
    detailed_vms: int
    final: Placement

    @property
    def ok(self) -> bool:
        return not self.placement_violations and not self.partitioning_violations and not (
            self.ha and self.ha.stranded)


@checked
def initial_state(scenario: ClusterScenario, placement: Placement, *, executor: bool,
                  fail: str | None = None) -> ClusterState:
    """The cluster with exactly the hosts ``placement`` uses powered, and the machines of the
    sample of them run in detail (``fail``, the host that will fail, among them)."""
    used = set(placement.hosts_used)
    cluster = scenario.cluster
    for h in cluster.hosts:
        cluster = with_power(cluster, h.name, PowerState.ON if h.name in used else PowerState.OFF)
    machines = None
    if executor and scenario.executor.detail_vms:
        e = scenario.executor
        machines = hosts.boot(cluster, placement, design=e.design, detail_vms=e.detail_vms,
                              steps_per_slot=e.steps_per_slot, seed=scenario.seed,
                              hosts=hosts.sample(placement, e.detail_hosts, fail))
    return ClusterState(cluster, placement, machines)


@checked
def simulate(scenario: ClusterScenario, placement: Placement, policy: str, *, executor: bool = True) -> PolicyRun:
    """Run the scenario's day from ``placement`` under ``policy``."""
    ha = scenario.ha
    fail = (ha.fail or busiest(placement)) if ha else None
    state = initial_state(scenario, placement, executor=executor, fail=fail)
    records: list[SlotRecord] = []
    migrations: list[Migration] = []
    report: HaReport | None = None
    bad_placements: list[str] = []
    bad_partitions: list[str] = []
    steps = checks = 0
    detailed = 0 if state.machines is None else len(state.machines.detailed)
    last_snapshot = 0
    seconds = scenario.slot_minutes * SECONDS_PER_MINUTE
    energy = 0.0
    for slot in range(scenario.cluster.slots):
        moved: list[Migration] = []
        if ha is not None and fail is not None and slot == ha.at_slot:
            state, report = fail_and_restart(state, fail, slot, last_snapshot)
        if ha is not None and slot % ha.snapshot_every == 0 and slot:  # snapshots at the start of the slot
            last_snapshot = slot
            if state.machines is not None:
                state = attrs.evolve(state, machines=hosts.take_snapshots(state.machines, slot))
        if policy in ("balance", "power"):
            state, made, _ = relieve(state, slot, scenario.balance)
            moved += made
        if policy == "power":
            state, made, _ = consolidate(state, slot, scenario.balance)
            moved += made
        down = frozenset(report.stranded if report else ())
        bad_placements += [f"slot {slot}: {v}" for v in placement_violations(state.cluster, state.placement, down=down)]
        if state.machines is not None:
            for m in moved:  # partitioning on both ends of every migration
                for host in (m.src, m.dst):
                    bad_partitions += [f"slot {slot} after moving {m.vm}: {v}"
                                       for v in hosts.partitioning(state.machines, host)]
                    checks += 1
            machines, violations, ran, checked = hosts.run_slot(state.machines,
                                                                every_step=scenario.executor.check_every_step)
            state = attrs.evolve(state, machines=machines)
            bad_partitions += [f"slot {slot}: {v}" for v in violations]
            steps += ran
            checks += checked
        powered = state.powered()
        loads = [state.load(h.name, slot) for h in powered]
        watts = float(sum(host_power(h.profile).watts(load) for h, load in zip(powered, loads, strict=True)))
        energy += energy_kwh(watts, seconds)
        records.append(SlotRecord(slot, len(powered), round(cluster_load(state, slot), 4),
                                  sum(load > 1 for load in loads), round(watts, 1), len(moved)))
        migrations += moved
    return PolicyRun(policy, tuple(records), tuple(migrations), report, round(energy, 3), tuple(bad_placements),
                     tuple(bad_partitions), steps, checks, detailed, state.placement)
