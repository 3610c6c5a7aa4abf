"""Placement: first-fit decreasing and z3 respect every rule; z3 is never worse than its start,
never below its proved bound, and agrees with brute force on instances small enough to enumerate."""

from __future__ import annotations

import itertools

import pytest
from cluster_strategies import GIB, clusters
from hypothesis import assume, given, settings

from vtx.cluster import placement
from vtx.cluster.ffd import first_fit_decreasing
from vtx.cluster.model import Cluster, ClusterVm, Host, Placement, placement_violations
from vtx.cluster.placement import lower_bound, place_optimal
from vtx.cluster.report import subset
from vtx.cluster.scenario import load_cluster_scenario, scenario_path


def brute_force_hosts(cluster: Cluster) -> int | None:
    """The fewest hosts of any valid placement, by trying every assignment."""
    best = None
    for choice in itertools.product(range(len(cluster.hosts)), repeat=len(cluster.vms)):
        p = Placement({v.name: cluster.hosts[h].name for v, h in zip(cluster.vms, choice, strict=True)})
        if not placement_violations(cluster, p) and (best is None or len(p.hosts_used) < best):
            best = len(p.hosts_used)
    return best


@settings(max_examples=25)
@given(clusters())
def test_every_placement_respects_capacity_compatibility_and_anti_affinity(cluster: Cluster) -> None:
    start, unplaced = first_fit_decreasing(cluster)
    assume(not unplaced)
    assert placement_violations(cluster, start) == ()
    result = place_optimal(cluster, time_limit_s=1.0, start=start)
    assert placement_violations(cluster, result.placement) == ()
    assert lower_bound(cluster) <= result.lower_bound <= result.hosts <= len(start.hosts_used)
    assert result.proved_optimal == (result.hosts == result.lower_bound)


@settings(max_examples=20)
@given(clusters(max_hosts=3, max_vms=5))
def test_z3_optimum_and_lower_bound_agree_with_brute_force(cluster: Cluster) -> None:
    start, unplaced = first_fit_decreasing(cluster)
    assume(not unplaced)
    best = brute_force_hosts(cluster)
    assert best is not None
    assert lower_bound(cluster) <= best
    result = place_optimal(cluster, time_limit_s=5.0, start=start)
    assert result.status in ("optimal", "bound")
    assert result.hosts == best


def test_z3_beats_first_fit_decreasing_and_proves_it() -> None:
    # FFD puts 4+4 on the first host, 3+3+3 on the second and the last 3 on a third;
    # 4+3+3 twice fits two hosts, which the memory bound proves optimal
    hosts = tuple(Host(f"h{i}", "skylake_client", 10 * GIB, 8) for i in range(4))
    vms = tuple(ClusterVm(f"v{i}", gib * GIB, 1) for i, gib in enumerate((4, 4, 3, 3, 3, 3)))
    cluster = Cluster(hosts, vms, 1.0, 1)
    start, _ = first_fit_decreasing(cluster)
    assert len(start.hosts_used) == 3
    result = place_optimal(cluster, time_limit_s=10.0, start=start)
    assert (result.hosts, result.lower_bound, result.status, result.proof) == (2, 2, "optimal", "lower bound")
    assert placement_violations(cluster, result.placement) == ()


def test_compatibility_confines_vms_to_hosts_with_their_features() -> None:
    hosts = (Host("ivy", "ivybridge_client", 64 * GIB, 8), Host("sky", "skylake_client", 64 * GIB, 8))
    vms = (ClusterVm("pml", GIB, 1, frozenset({"enable_pml"})), ClusterVm("plain", GIB, 1))
    cluster = Cluster(hosts, vms, 1.0, 1)
    result = place_optimal(cluster, time_limit_s=5.0)
    assert result.placement.assignment["pml"] == "sky"
    bad = Placement({"pml": "ivy", "plain": "ivy"})
    assert any("lacks enable_pml" in v for v in placement_violations(cluster, bad))


def test_anti_affinity_group_needs_as_many_hosts_as_members() -> None:
    hosts = tuple(Host(f"h{i}", "skylake_client", 64 * GIB, 16) for i in range(4))
    vms = tuple(ClusterVm(f"dc{i}", GIB, 1, group="dc") for i in range(3))
    cluster = Cluster(hosts, vms, 1.0, 1)
    assert lower_bound(cluster) == 3
    result = place_optimal(cluster, time_limit_s=5.0)
    assert result.hosts == 3 and placement_violations(cluster, result.placement) == ()


def test_consolidation_scenario_z3_never_worse_than_ffd_under_a_time_limit() -> None:
    scenario = load_cluster_scenario(scenario_path("consolidation"))
    cluster = subset(scenario.cluster, 300, scenario.seed)
    start, unplaced = first_fit_decreasing(cluster)
    assert not unplaced
    result = place_optimal(cluster, time_limit_s=3.0, start=start, seed=scenario.seed)
    assert result.seconds < 6
    assert lower_bound(cluster) <= result.lower_bound <= result.hosts <= len(start.hosts_used)
    assert placement_violations(cluster, result.placement) == ()


def test_neighbourhood_search_improves_a_start_with_few_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(placement, "EXACT_VMS", 0)  # the large-instance path, with no global descent at all:
    monkeypatch.setattr(placement, "GLOBAL_SHARE", 0.0)  # only the neighbourhood search improves the start
    hosts = tuple(Host(f"h{i}", "skylake_client", 10 * GIB, 8) for i in range(3))
    vms = tuple(ClusterVm(f"v{i}", gib * GIB, 1) for i, gib in enumerate((4, 4, 3, 3, 3, 3)))
    cluster = Cluster(hosts, vms, 1.0, 1)
    result = placement.place_optimal(cluster, time_limit_s=3.0)
    assert result.hosts == 2 and placement_violations(cluster, result.placement) == ()


def test_z3_proves_ffd_optimal_where_the_bound_cannot() -> None:
    # three 6-GiB VMs on 10-GiB hosts: the memory bound says 2, but no host takes two of them
    hosts = tuple(Host(f"h{i}", "skylake_client", 10 * GIB, 8) for i in range(4))
    cluster = Cluster(hosts, tuple(ClusterVm(f"v{i}", 6 * GIB, 1) for i in range(3)), 1.0, 1)
    assert lower_bound(cluster) == 2
    result = place_optimal(cluster, time_limit_s=10.0)
    assert (result.hosts, result.lower_bound, result.status, result.proof) == (3, 3, "optimal", "unsat")
