"""Cluster scenarios: hosts, VMs and their workload traces, and the HA, balancing and executor
settings, read from TOML (the format is documented in docs/cluster.rst).

A bad file is an :class:`~vtx.errors.InputError` naming the file, the key (``vm[2].memory_gib``),
the value and the rule; a misspelt key is named with the nearest known one. ``vtx cluster`` turns
it into exit status 2.
"""

from __future__ import annotations

import difflib
import math
import random
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from vtx.cluster.model import NEEDS, PATTERNS, Cluster, ClusterVm, Host, demand_trace, design_missing
from vtx.cluster.power import host_power
from vtx.errors import InputError
from vtx.inputs import in_file, listed, read_text, shown
from vtx.machine.designs import DESIGNS
from vtx.machine.scenario import WORKLOADS
from vtx.spec import SPEC_DIR
from vtx.typecheck import checked
from vtx.vmx.capabilities import preset_names

CLUSTER_DIR = SPEC_DIR / "cluster"
BUILTIN = ("consolidation", "small")
"""The built-in scenarios, ``spec/cluster/<name>.toml``; ``vtx cluster NAME`` runs one."""
MIB_PER_GIB = 1024
MAX_VMS = 10_000
MAX_HOSTS = 2_000
MAX_SLOTS = 1_000

TOP_KEYS = ("name", "description", "seed", "slots", "slot_minutes", "overcommit", "time_limit_s",
            "host", "vm", "ha", "balance", "executor")
HOST_KEYS = ("name", "count", "profile", "memory_gib", "logical_processors")
VM_KEYS = ("name", "count", "memory_gib", "vcpus", "needs", "group", "load", "peak", "pattern", "workload")
HA_KEYS = ("fail", "at_slot", "snapshot_every")
BALANCE_KEYS = ("high", "low", "target")
EXECUTOR_KEYS = ("design", "detail_hosts", "detail_vms", "steps_per_slot", "check_every_step")


@attrs.frozen
class HaSpec:
    """Host ``fail`` ("" for the busiest) fails at slot ``at_slot``; VMs are snapshotted every
    ``snapshot_every`` slots."""

    fail: str
    at_slot: int
    snapshot_every: int


@attrs.frozen
class BalanceSpec:
    """Live-migrate off a host whose load exceeds ``high``, onto hosts that stay at or below
    ``target``; evacuate and power hosts down while the cluster's load is below ``low``."""

    high: float = 0.8
    low: float = 0.4
    target: float = 0.7


@attrs.frozen
class ExecutorSpec:
    """``detail_hosts`` of the hosts in use (0: all of them; the HA host is always one) are
    machines of the executor under ``design``, each running ``detail_vms`` of its VMs in full
    detail for ``steps_per_slot`` scheduler steps per slot; partitioning is checked on each at the
    end of every slot, or after every step with ``check_every_step``."""

    design: str = "bare_metal"
    detail_hosts: int = 0
    detail_vms: int = 2
    steps_per_slot: int = 20
    check_every_step: bool = False


@attrs.frozen
class ClusterScenario:
    name: str
    description: str
    seed: int
    cluster: Cluster
    slot_minutes: int
    time_limit_s: float
    ha: HaSpec | None
    balance: BalanceSpec
    executor: ExecutorSpec


# ------------------------------------------------------------------ reading values


def _known(data: object, allowed: tuple[str, ...], where: str) -> Mapping[str, Any]:
    """``data`` as a table whose keys are all in ``allowed``; a misspelt key names the nearest."""
    if not isinstance(data, dict):
        raise InputError(where or "input", shown(data), "must be a table")
    for key in data:
        if key not in allowed:
            near = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean {near[0]}? " if near else ""
            raise InputError(f"{where}{key}", shown(data[key]), f"unknown key ({hint}known: {listed(allowed, 20)})")
    return data


def _number(data: Mapping[str, Any], key: str, where: str, default: float | None, *, low: float, high: float,
            integer: bool = False) -> float:
    value = data.get(key, default)
    if value is None:
        raise InputError(f"{where}{key}", "missing", "required key")
    kinds = int if integer else int | float
    if not isinstance(value, kinds) or isinstance(value, bool) or not low <= value <= high or \
            (isinstance(value, float) and not math.isfinite(value)):
        kind = "an integer" if integer else "a number"
        raise InputError(f"{where}{key}", shown(value), f"must be {kind} from {low:g} to {high:g}")
    return value


def _int(data: Mapping[str, Any], key: str, where: str, default: int | None, *, low: int, high: int) -> int:
    return int(_number(data, key, where, default, low=low, high=high, integer=True))


def _choice(data: Mapping[str, Any], key: str, where: str, default: str | None, choices: tuple[str, ...]) -> str:
    value = data.get(key, default)
    if value not in choices:
        raise InputError(f"{where}{key}", shown(value), f"must be one of {listed(choices, 20)}")
    return str(value)


def _flag(data: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise InputError(f"{where}{key}", shown(value), "must be true or false")
    return value


def _text(data: Mapping[str, Any], key: str, where: str, default: str) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or len(value) > 200:
        raise InputError(f"{where}{key}", shown(value), "must be a string of at most 200 characters")
    return value


def _mib(data: Mapping[str, Any], where: str, *, high: float) -> int:
    gib = _number(data, "memory_gib", where, None, low=1 / MIB_PER_GIB, high=high)
    mib = gib * MIB_PER_GIB
    if mib != int(mib):
        raise InputError(f"{where}memory_gib", shown(gib), "must be a whole number of MiB (a multiple of 1/1024)")
    return int(mib)


def _expand(name: str, count: int) -> list[str]:
    return [name] if count == 1 else [f"{name}-{k:0{len(str(count - 1))}d}" for k in range(count)]


def _tables(data: Mapping[str, Any], key: str) -> list[Any]:
    raw = data.get(key)
    if not isinstance(raw, list) or not raw:
        raise InputError(key, shown(raw), f"must be a non-empty array of [[{key}]] tables")
    return raw


# ------------------------------------------------------------------ parsing


def parse_cluster_scenario(data: Mapping[str, Any]) -> ClusterScenario:
    """The scenario of a decoded TOML document."""
    _known(data, TOP_KEYS, "")
    seed = _int(data, "seed", "", 0, low=0, high=2**63 - 1)
    slots = _int(data, "slots", "", 24, low=1, high=MAX_SLOTS)
    overcommit = _number(data, "overcommit", "", 2.0, low=0.1, high=64)
    executor = _parse_executor(data.get("executor", {}))
    hosts: list[Host] = []
    names: set[str] = set()
    for n, raw in enumerate(_tables(data, "host")):
        hosts += _parse_hosts(raw, f"host[{n}].", names, executor.design)
        if len(hosts) > MAX_HOSTS:
            raise InputError("host", f"{len(hosts)} hosts", f"at most {MAX_HOSTS}")
    vms: list[ClusterVm] = []
    for n, raw in enumerate(_tables(data, "vm")):
        vms += _parse_vms(raw, f"vm[{n}].", names, seed, slots)
        if len(vms) > MAX_VMS:
            raise InputError("vm", f"{len(vms)} VMs", f"at most {MAX_VMS}")
    ha = None
    if "ha" in data:
        raw = _known(data["ha"], HA_KEYS, "ha.")
        if slots < 2:
            raise InputError("ha", f"{slots} slot", "a host can fail mid-run only in a run of at least 2 slots")
        fail = _text(raw, "fail", "ha.", "")
        if fail and fail not in {h.name for h in hosts}:
            raise InputError("ha.fail", shown(fail), "must name a host (after count expansion: NAME-00, ...)")
        ha = HaSpec(fail, _int(raw, "at_slot", "ha.", slots // 2, low=1, high=slots - 1),
                    _int(raw, "snapshot_every", "ha.", min(4, slots), low=1, high=slots))
    raw = _known(data.get("balance", {}), BALANCE_KEYS, "balance.")
    balance = BalanceSpec(*(float(_number(raw, k, "balance.", d, low=0.0, high=1.0))
                            for k, d in zip(BALANCE_KEYS, (0.8, 0.4, 0.7), strict=True)))
    if not balance.low <= balance.target <= balance.high:
        raise InputError("balance", f"low {balance.low}, target {balance.target}, high {balance.high}",
                         "must satisfy low <= target <= high")
    return ClusterScenario(_text(data, "name", "", "cluster"), _text(data, "description", "", ""), seed,
                           Cluster(tuple(hosts), tuple(vms), float(overcommit), slots),
                           _int(data, "slot_minutes", "", 60, low=1, high=24 * 60),
                           float(_number(data, "time_limit_s", "", 20, low=0.1, high=3600)), ha, balance, executor)


def _parse_executor(raw: object) -> ExecutorSpec:
    raw = _known(raw, EXECUTOR_KEYS, "executor.")
    return ExecutorSpec(_choice(raw, "design", "executor.", "bare_metal", tuple(DESIGNS)),
                        _int(raw, "detail_hosts", "executor.", 0, low=0, high=MAX_HOSTS),
                        _int(raw, "detail_vms", "executor.", 2, low=0, high=16),
                        _int(raw, "steps_per_slot", "executor.", 20, low=1, high=10_000),
                        _flag(raw, "check_every_step", "executor.", False))


def _unique(name: object, where: str, names: set[str], count: int) -> list[str]:
    if not isinstance(name, str) or not name or not name.replace("-", "a").replace("_", "a").isalnum():
        raise InputError(f"{where}name", shown(name), "must be a non-empty name of letters, digits, - and _")
    expanded = _expand(name, count)
    clash = next((e for e in expanded if e in names), None)
    if clash is not None:
        raise InputError(f"{where}name", shown(name), f"{clash} is already a host or VM name")
    names.update(expanded)
    return expanded


def _parse_hosts(raw: object, where: str, names: set[str], design: str) -> list[Host]:
    raw = _known(raw, HOST_KEYS, where)
    count = _int(raw, "count", where, 1, low=1, high=MAX_HOSTS)
    profile = _choice(raw, "profile", where, None, tuple(preset_names()))
    missing = design_missing(profile)
    if missing:
        raise InputError(f"{where}profile", shown(profile), f"the {design} design needs {', '.join(missing)}")
    host_power(profile, f"{where}profile")
    memory = _mib(raw, where, high=1 << 20)
    lps = _int(raw, "logical_processors", where, None, low=1, high=1024)
    return [Host(n, profile, memory, lps) for n in _unique(raw.get("name"), where, names, count)]


def _parse_vms(raw: object, where: str, names: set[str], seed: int, slots: int) -> list[ClusterVm]:
    raw = _known(raw, VM_KEYS, where)
    count = _int(raw, "count", where, 1, low=1, high=MAX_VMS)
    memory = _mib(raw, where, high=1 << 16)
    vcpus = _int(raw, "vcpus", where, 1, low=1, high=256)
    needs = raw.get("needs", [])
    if not isinstance(needs, list) or any(n not in NEEDS for n in needs):
        bad = needs if not isinstance(needs, list) else next(n for n in needs if n not in NEEDS)
        raise InputError(f"{where}needs", shown(bad), f"must be a list of features from {listed(NEEDS, 30)}")
    group = _text(raw, "group", where, "")
    load = float(_number(raw, "load", where, 0.1, low=0.0, high=1.0))
    peak = float(_number(raw, "peak", where, max(load, 0.3), low=load, high=1.0))
    pattern = _choice(raw, "pattern", where, "diurnal", PATTERNS)
    workload = _choice(raw, "workload", where, "mixed", WORKLOADS)
    return [ClusterVm(name, memory, vcpus, frozenset(needs), group, workload,
                      demand_trace(random.Random(f"{seed}/{name}"), slots=slots, vcpus=vcpus, load=load, peak=peak,
                                   pattern=pattern))
            for name in _unique(raw.get("name"), where, names, count)]


@checked
def scenario_path(name_or_path: str) -> Path:
    """A built-in scenario's file for its name, else the path as given."""
    return CLUSTER_DIR / f"{name_or_path}.toml" if name_or_path in BUILTIN else Path(name_or_path)


@checked
def load_cluster_scenario(path: Path) -> ClusterScenario:
    """The scenario in TOML file ``path``; every InputError names the file."""
    with in_file(path):
        try:
            data = tomllib.loads(read_text(path))
        except tomllib.TOMLDecodeError as e:
            raise InputError(str(path), "not TOML", str(e)) from e
        return parse_cluster_scenario(data)
