"""Load balancing and power management: live migration off overloaded hosts, evacuation of
lightly loaded ones.

* **Relieve**: while a host's load is above ``high``, its busiest VM that can move (a VM run in
  detail needs dirty-page tracking on its host) is live-migrated to the least loaded powered host
  that can take it (capacity, compatibility, anti-affinity) and stays at or below ``target``; if
  none can, a powered-off host is switched on for it.
* **Consolidate**: while the cluster's load (demand over the powered hosts' capacity) is below
  ``low``, the least loaded host is evacuated, if every one of its VMs can move to another host
  that stays at or below ``target``, and powered off; the first host that cannot be evacuated
  ends it for the slot.

VMs run in detail in the executor move with :func:`vtx.machine.migration.migrate`; the others are
moved at the cluster level.
"""

from __future__ import annotations

import attrs

from vtx.cluster import hosts
from vtx.cluster.model import ClusterVm, Host, PowerState, usage, with_power
from vtx.cluster.scenario import BalanceSpec
from vtx.cluster.state import ClusterState
from vtx.errors import InputError
from vtx.typecheck import checked


@attrs.frozen
class Migration:
    """One live migration: when, which VM, from where to where, why (``relieve`` or
    ``evacuate``), and the executor's report for a VM run in detail."""

    slot: int
    vm: str
    src: str
    dst: str
    reason: str
    report: hosts.MigrationReport | None = None


@checked
def move(state: ClusterState, vm: ClusterVm, dst: Host, slot: int, reason: str) -> tuple[ClusterState, Migration]:
    """Live-migrate ``vm`` to ``dst``."""
    src = state.placement.assignment[vm.name]
    machines, report = state.machines, None
    if machines is not None and machines.host_of(vm.name) is not None:
        try:
            machines, report = hosts.live_migrate(machines, vm.name, dst)
        except hosts.IncompatibleHost:  # admits() consulted the image: this would be a bug
            raise
        except InputError:  # the destination's executor layout is full: followed at the cluster level only
            machines = hosts.drop(machines, vm.name)
    state = attrs.evolve(state, placement=state.placement.moved(vm.name, dst.name), machines=machines)
    return state, Migration(slot, vm.name, src, dst.name, reason, report)


def _destination(state: ClusterState, vm: ClusterVm, slot: int, target: float, *,
                 exclude: frozenset[str] = frozenset()) -> Host | None:
    ranked = sorted((h for h in state.powered() if h.name not in exclude),
                    key=lambda h: (state.load(h.name, slot), h.name))
    return next((h for h in ranked if state.admits(vm, h, slot=slot, target=target)), None)


@checked
def relieve(state: ClusterState, slot: int, spec: BalanceSpec) -> tuple[ClusterState, list[Migration], list[str]]:
    """Migrate VMs off every host above ``spec.high``; returns the state, the migrations and the
    hosts powered on for them."""
    migrations: list[Migration] = []
    powered_on: list[str] = []
    for host in list(state.powered()):
        tried: set[str] = set()
        while state.load(host.name, slot) > spec.high:
            vms = sorted((vm for v in state.placement.on(host.name) if v not in tried
                          and state.movable(vm := state.cluster.vm_by_name[v])),
                         key=lambda v: (-v.demand[slot], v.name))
            if not vms:
                break
            vm = vms[0]
            tried.add(vm.name)
            dst = _destination(state, vm, slot, spec.target, exclude=frozenset({host.name}))
            if dst is None:
                for spare in (h for h in state.cluster.hosts if h.power is PowerState.OFF):
                    trial = attrs.evolve(state, cluster=with_power(state.cluster, spare.name, PowerState.ON))
                    if trial.admits(vm, trial.cluster.host_by_name[spare.name], slot=slot, target=spec.target):
                        state, dst = trial, trial.cluster.host_by_name[spare.name]
                        powered_on.append(spare.name)
                        break
            if dst is None:
                continue
            state, m = move(state, vm, dst, slot, "relieve")
            migrations.append(m)
    return state, migrations, powered_on


@checked
def cluster_load(state: ClusterState, slot: int) -> float:
    powered = state.powered()
    capacity = sum(h.cpu_centi for h in powered)
    demand = sum(state.cluster.vm_by_name[v].demand[slot] for v in state.placement.assignment)
    return demand / capacity if capacity else 0.0


def _evacuation(state: ClusterState, victim: Host, slot: int, target: float) -> list[tuple[ClusterVm, Host]] | None:
    """Where each VM of ``victim`` would go (largest first, each to the least loaded host that can
    take it and stays at or below ``target``), or None if one of them cannot go anywhere."""
    others = [h for h in state.powered() if h.name != victim.name]
    used = {h.name: usage(state.cluster, state.placement, h.name) for h in others}
    load = {h.name: state.load(h.name, slot) for h in others}
    plan = []
    for vm in sorted((state.cluster.vm_by_name[v] for v in state.placement.on(victim.name)),
                     key=lambda v: (-v.memory_mib, v.name)):
        dst = next((h for h in sorted(others, key=lambda h: (load[h.name], h.name))
                    if used[h.name].admits(vm, h, state.cluster.overcommit) and not state.missing(vm, h)
                    and load[h.name] + vm.demand[slot] / h.cpu_centi <= target + 1e-9), None)
        if dst is None or not state.movable(vm):
            return None
        used[dst.name] = used[dst.name].plus(vm)
        load[dst.name] += vm.demand[slot] / dst.cpu_centi
        plan.append((vm, dst))
    return plan


@checked
def consolidate(state: ClusterState, slot: int, spec: BalanceSpec) -> tuple[ClusterState, list[Migration], list[str]]:
    """Evacuate and power off hosts, least loaded first, while the cluster's load is below
    ``spec.low``, stopping at the first host whose VMs cannot all move; returns the state, the
    migrations and the hosts powered off."""
    migrations: list[Migration] = []
    powered_off: list[str] = []
    while cluster_load(state, slot) < spec.low and len(state.powered()) > 1:
        victim = min(state.powered(), key=lambda h: (state.load(h.name, slot), h.name))
        plan = _evacuation(state, victim, slot, spec.target)
        if plan is None:
            break
        for vm, dst in plan:
            state, m = move(state, vm, dst, slot, "evacuate")
            migrations.append(m)
        machines = None if state.machines is None else hosts.remove_host(state.machines, victim.name)
        state = attrs.evolve(state, cluster=with_power(state.cluster, victim.name, PowerState.OFF), machines=machines)
        powered_off.append(victim.name)
    return state, migrations, powered_off
