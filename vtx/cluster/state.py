"""The state the management plane acts on: the cluster (with each host's power state), where every
VM runs, and the executor machines behind the hosts (None when a run is at cluster level only)."""

from __future__ import annotations

import attrs

from vtx.cluster import hosts
from vtx.cluster.ffd import host_order
from vtx.cluster.model import Cluster, ClusterVm, Host, Placement, PowerState, host_load, usage
from vtx.typecheck import checked


@attrs.frozen
class ClusterState:
    cluster: Cluster
    placement: Placement
    machines: hosts.HostMachines | None = None

    def powered(self) -> list[Host]:
        return [h for h in host_order(self.cluster.hosts) if h.power is PowerState.ON]

    @checked
    def load(self, host: str, slot: int) -> float:
        return host_load(self.cluster, self.placement, host, slot)

    @checked
    def missing(self, vm: ClusterVm, host: Host) -> tuple[str, ...]:
        """What ``vm`` needs that ``host`` lacks: its declared needs, and for a VM run in detail,
        what its last image needs (:func:`vtx.machine.snapshot.missing_capabilities`)."""
        executor = () if self.machines is None else self.machines.missing(vm.name, host)
        return (*vm.missing(host), *executor)

    def movable(self, vm: ClusterVm) -> bool:
        """Whether ``vm`` can be live-migrated: a VM run in detail needs dirty-page tracking on its
        host (:func:`vtx.cluster.hosts.tracking_mode`)."""
        m = self.machines
        return m is None or m.host_of(vm.name) is None or hosts.tracking_mode(m, vm.name) is not None

    @checked
    def admits(self, vm: ClusterVm, host: Host, *, slot: int | None = None, target: float = 1.0) -> bool:
        """``vm`` may join ``host``: capacity, compatibility (declared and executor-level),
        anti-affinity, and (given a slot) the host's load stays at or below ``target``."""
        if host.power is not PowerState.ON or self.placement.assignment.get(vm.name) == host.name:
            return False
        if not usage(self.cluster, self.placement, host.name).admits(vm, host, self.cluster.overcommit):
            return False
        if self.missing(vm, host):
            return False
        if slot is None:
            return True
        return self.load(host.name, slot) + vm.demand[slot] / host.cpu_centi <= target + 1e-9
