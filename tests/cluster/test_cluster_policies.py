"""The policies over a day: every placement they produce keeps every rule in every slot, HA never
restarts a VM on a host that cannot run it, and partitioning holds on every executor machine
after every slot, migration and restart."""

from __future__ import annotations

import tomllib

from cluster_strategies import clusters
from hypothesis import assume, given, settings

from vtx.cluster.ffd import first_fit_decreasing
from vtx.cluster.ha import fail_and_restart
from vtx.cluster.model import Cluster, PowerState
from vtx.cluster.scenario import (
    BalanceSpec,
    ClusterScenario,
    ExecutorSpec,
    HaSpec,
    parse_cluster_scenario,
    scenario_path,
)
from vtx.cluster.simulation import POLICIES, initial_state, simulate
from vtx.machine.snapshot import missing_capabilities
from vtx.vmx.capabilities import load_preset


def scenario_of(cluster: Cluster) -> ClusterScenario:
    return ClusterScenario("random", "", 1, cluster, 60, 1.0, HaSpec("", cluster.slots // 2, 2),
                           BalanceSpec(0.7, 0.4, 0.6), ExecutorSpec())


@settings(max_examples=25)
@given(clusters(max_hosts=8, max_vms=16))
def test_every_policy_keeps_every_placement_rule_in_every_slot(cluster: Cluster) -> None:
    start, unplaced = first_fit_decreasing(cluster)
    assume(not unplaced)
    scenario = scenario_of(cluster)
    for policy in POLICIES:
        run = simulate(scenario, start, policy, executor=False)
        assert run.placement_violations == ()
        assert run.ha is not None
        final = run.final
        for restart in run.ha.restarts:
            vm = cluster.vm_by_name[restart.vm]
            if restart.host is None:  # stranded: no surviving host could take it even when empty
                assert restart.vm not in final.assignment and restart.reason
                continue
            assert restart.host != run.ha.host and vm.compatible(cluster.host_by_name[restart.host])
        if policy == "static":
            assert run.migrations == ()


def small(slots: int, steps: int) -> ClusterScenario:
    with scenario_path("small").open("rb") as f:
        data = tomllib.load(f)
    data["slots"] = slots
    data["ha"] = {"at_slot": slots // 2, "snapshot_every": 2}
    data["executor"] = {**data["executor"], "steps_per_slot": steps}
    return parse_cluster_scenario(data)


def test_partitioning_holds_on_every_machine_through_migrations_and_restarts() -> None:
    scenario = small(10, 6)
    start, _ = first_fit_decreasing(scenario.cluster)
    for policy in ("static", "power"):
        run = simulate(scenario, start, policy)
        assert run.partitioning_violations == () and run.placement_violations == ()
        assert run.partitioning_checks >= run.executor_steps > 0  # every machine, every step
        assert run.ha is not None and not run.ha.stranded
        detailed = [r for r in run.ha.restarts if r.steps_lost is not None]
        assert detailed and all((r.steps_lost or 0) > 0 and r.slots_lost == 1 for r in detailed)
        if policy == "power":
            assert any(m.report is not None for m in run.migrations)


def test_restarted_images_are_compatible_with_their_new_hosts() -> None:
    scenario = small(6, 4)
    start, _ = first_fit_decreasing(scenario.cluster)
    state = initial_state(scenario, start, executor=True, fail="raptor-0")
    assert state.machines is not None
    state, report = fail_and_restart(state, "raptor-0", 3, 0)
    assert state.cluster.host_by_name["raptor-0"].power is PowerState.FAILED
    assert "raptor-0" not in state.placement.hosts_used and not report.stranded
    machines = state.machines
    assert machines is not None
    for r in report.restarts:
        snap = machines.snapshots.get(r.vm)
        if snap is not None and r.host is not None:
            caps = load_preset(state.cluster.host_by_name[r.host].profile)
            assert missing_capabilities(snap.image, caps) == ()
            assert r.vm in {v.name for v in machines.machines[r.host].vms}
