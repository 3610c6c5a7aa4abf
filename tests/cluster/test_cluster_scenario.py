"""Cluster scenario files: the built-ins load; a bad file names the file, the key and the rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vtx.cluster.model import NEEDS
from vtx.cluster.power import host_power, load_power
from vtx.cluster.scenario import BUILTIN, load_cluster_scenario, parse_cluster_scenario, scenario_path
from vtx.errors import InputError

BASE = {"host": [{"name": "h", "count": 2, "profile": "skylake_client", "memory_gib": 16, "logical_processors": 8}],
        "vm": [{"name": "v", "count": 3, "memory_gib": 2}]}


def doc(**over: Any) -> dict[str, Any]:
    return {**BASE, **over}


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_scenarios_load(name: str) -> None:
    s = load_cluster_scenario(scenario_path(name))
    assert s.cluster.vms and s.cluster.hosts and all(len(v.demand) == s.cluster.slots for v in s.cluster.vms)


def test_consolidation_is_a_thousand_lightly_loaded_servers() -> None:
    s = load_cluster_scenario(scenario_path("consolidation"))
    assert len(s.cluster.vms) == 1000
    mean = sum(sum(v.demand) / (len(v.demand) * v.vcpus * 100) for v in s.cluster.vms) / 1000
    assert mean < 0.2


def test_count_expands_names_and_traces_are_seeded() -> None:
    a, b = parse_cluster_scenario(doc(seed=3)), parse_cluster_scenario(doc(seed=3))
    assert [h.name for h in a.cluster.hosts] == ["h-0", "h-1"]
    assert [v.name for v in a.cluster.vms] == ["v-0", "v-1", "v-2"]
    assert a.cluster.vms == b.cluster.vms
    assert a.cluster.vms != parse_cluster_scenario(doc(seed=4)).cluster.vms


@pytest.mark.parametrize(("data", "where", "rule"), [
    (doc(slotz=3), "slotz", "did you mean slots?"),
    (doc(vm=[{"name": "v", "memroy_gib": 2}]), "vm[0].memroy_gib", "did you mean memory_gib?"),
    (doc(vm=[{"name": "v", "memory_gib": 0.0001}]), "vm[0].memory_gib", "must be a number"),
    (doc(vm=[{"name": "v", "memory_gib": 1.0001}]), "vm[0].memory_gib", "whole number of MiB"),
    (doc(vm=[{"name": "v", "memory_gib": 1, "needs": ["warp_drive"]}]), "vm[0].needs", "list of features"),
    (doc(vm=[{"name": "v", "memory_gib": 1, "load": 0.5, "peak": 0.2}]), "vm[0].peak", "from 0.5 to 1"),
    (doc(vm=[{"name": "h-0", "memory_gib": 1}]), "vm[0].name", "h-0 is already"),
    (doc(host=[{"name": "p", "profile": "penryn_server", "memory_gib": 8, "logical_processors": 2}]),
     "host[0].profile", "design needs"),
    (doc(host=[{"name": "p", "profile": "amd_genoa_server", "memory_gib": 8, "logical_processors": 2}]),
     "host[0].profile", "design needs"),
    (doc(host=[{"name": "p", "profile": "nope", "memory_gib": 8, "logical_processors": 2}]),
     "host[0].profile", "must be one of"),
    (doc(ha={"fail": "ghost"}), "ha.fail", "must name a host"),
    (doc(balance={"low": 0.9, "high": 0.5}), "balance", "low <= target <= high"),
    (doc(executor={"design": "nope"}), "executor.design", "must be one of"),
    (doc(vm=[]), "vm", "non-empty array"),
    (doc(slots=True), "slots", "must be an integer"),
])
def test_bad_scenarios_name_the_key_and_rule(data: dict[str, Any], where: str, rule: str) -> None:
    with pytest.raises(InputError) as e:
        parse_cluster_scenario(data)
    assert e.value.where == where and rule in e.value.rule


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[[host]]\nname = "h"\nprofile = "skylake_client"\nmemory_gib = 8\nlogical_processors = 2\n'
                    '[[vm]]\nname = "v"\nmemory_gib = 1\nvcpu = 2\n')
    with pytest.raises(InputError) as e:
        load_cluster_scenario(path)
    assert e.value.where == f"{path}: vm[0].vcpu" and "did you mean vcpus?" in e.value.rule
    path.write_text("not = [toml")
    with pytest.raises(InputError, match="not TOML"):
        load_cluster_scenario(path)


def test_needs_are_the_template_features_and_presets_decide_them() -> None:
    assert "enable_pml" in NEEDS and "use_tsc_scaling" in NEEDS
    s = parse_cluster_scenario(doc(host=[
        {"name": "i", "profile": "ivybridge_client", "memory_gib": 8, "logical_processors": 2},
        {"name": "r", "profile": "raptorlake_client", "memory_gib": 8, "logical_processors": 2}]))
    ivy, raptor = s.cluster.hosts
    assert "enable_pml" not in ivy.features and "use_tsc_scaling" in raptor.features


def test_power_rows_are_linear_between_idle_and_peak() -> None:
    for row in load_power().values():
        assert row.watts(0.0) == row.idle_w and row.watts(1.0) == row.peak_w and row.watts(2.0) == row.peak_w
        assert row.idle_w <= row.watts(0.5) <= row.peak_w
    with pytest.raises(InputError, match="no power row"):
        host_power("penryn_server")


def test_ha_needs_a_run_of_two_slots() -> None:
    with pytest.raises(InputError, match="at least 2 slots"):
        parse_cluster_scenario(doc(slots=1, ha={}))
    assert parse_cluster_scenario(doc(slots=2, ha={})).ha is not None
