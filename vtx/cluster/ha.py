"""HA: a host fails mid-run and its VMs restart elsewhere from their last snapshots.

The failed host's VMs are restarted largest first, each on the least loaded surviving powered host
that can take it (capacity, compatibility, anti-affinity), or else on a powered-off host switched on
for it. A VM run in detail in the executor restarts from its real image
(:func:`vtx.machine.snapshot.restore_vm`), and only on a host its image is compatible with. What is
lost is the work since the snapshot: slots of the trace, and for detailed VMs the executor steps
their machine ran after the image was taken. A VM no host can take is reported as stranded,
never placed on a host that cannot run it.
"""

from __future__ import annotations

import attrs

from vtx.cluster import hosts
from vtx.cluster.ffd import size_order
from vtx.cluster.model import Host, Placement, PowerState, with_power
from vtx.cluster.state import ClusterState
from vtx.errors import InputError
from vtx.typecheck import checked


@attrs.frozen
class Restart:
    """One VM of the failed host: where it restarted (None: stranded, ``reason`` says why), the
    slots of work lost since its snapshot, and for a detailed VM the executor steps lost."""

    vm: str
    host: str | None
    slots_lost: int
    steps_lost: int | None = None
    reason: str = ""


@attrs.frozen
class HaReport:
    host: str
    slot: int
    snapshot_slot: int
    restarts: tuple[Restart, ...]
    powered_on: tuple[str, ...]

    @property
    def stranded(self) -> tuple[str, ...]:
        return tuple(r.vm for r in self.restarts if r.host is None)


@checked
def busiest(placement: Placement) -> str | None:
    """The host carrying the most VMs (ties: the first by name): the default host to fail."""
    used = placement.hosts_used
    return min(used, key=lambda h: (-len(placement.on(h)), h)) if used else None


@checked
def fail_and_restart(state: ClusterState, host: str, slot: int, snapshot_slot: int) -> tuple[ClusterState, HaReport]:
    """``host`` fails at ``slot``; its VMs restart from the snapshots of ``snapshot_slot``."""
    victims = size_order(state.cluster, [state.cluster.vm_by_name[v] for v in state.placement.on(host)])
    lost_steps = {} if state.machines is None else {
        v.name: hosts.steps_since_snapshot(state.machines, v.name) for v in victims}
    machines = None if state.machines is None else hosts.remove_host(state.machines, host)
    assignment = {v: h for v, h in state.placement.assignment.items() if h != host}
    state = attrs.evolve(state, cluster=with_power(state.cluster, host, PowerState.FAILED),
                         placement=attrs.evolve(state.placement, assignment=assignment), machines=machines)
    restarts: list[Restart] = []
    powered_on: list[str] = []
    for vm in victims:
        steps = lost_steps.get(vm.name)
        candidates = sorted(state.powered(), key=lambda h: (state.load(h.name, slot), h.name))
        spare = [h for h in state.cluster.hosts if h.power is PowerState.OFF]
        chosen = next((h for h in candidates if state.admits(vm, h)), None)
        if chosen is None:
            for h in spare:
                trial = attrs.evolve(state, cluster=with_power(state.cluster, h.name, PowerState.ON))
                if trial.admits(vm, trial.cluster.host_by_name[h.name]):
                    state, chosen = trial, trial.cluster.host_by_name[h.name]
                    powered_on.append(h.name)
                    break
        if chosen is None:
            restarts.append(Restart(vm.name, None, slot - snapshot_slot, steps,
                                    "no surviving host has the capacity, features and anti-affinity room"))
            continue
        state = _restart_on(state, vm.name, chosen, steps is not None)
        restarts.append(Restart(vm.name, chosen.name, slot - snapshot_slot, steps))
    return state, HaReport(host, slot, snapshot_slot, tuple(restarts), tuple(powered_on))


def _restart_on(state: ClusterState, vm: str, host: Host, detailed: bool) -> ClusterState:
    machines = state.machines
    if machines is not None and detailed:
        try:
            machines = hosts.restart(machines, vm, host)
        except hosts.IncompatibleHost:  # admits() consulted the image: this would be a bug
            raise
        except InputError:  # the host's executor layout is full: followed at the cluster level only
            machines = hosts.drop(machines, vm)
    return attrs.evolve(state, placement=state.placement.moved(vm, host.name), machines=machines)
