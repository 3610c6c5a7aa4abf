"""First-fit decreasing: the baseline placement.

VMs are taken most constrained first (the fewest compatible hosts), then largest first (by
the larger of their memory and vCPU shares of the biggest host), so that a VM that needs a rare
feature is not shut out by VMs that could have gone anywhere; each goes to the first open host it
fits on (memory, vCPU slots, compatibility, anti-affinity), and a new host is powered on, largest
first, only when none fits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from vtx.cluster.model import Cluster, ClusterVm, Host, Placement, PowerState, Usage, usage
from vtx.typecheck import checked


@checked
def size_order(cluster: Cluster, vms: Iterable[ClusterVm]) -> list[ClusterVm]:
    """``vms`` most constrained first, then largest first; ties by name, so the order is deterministic."""
    memory = max((h.memory_mib for h in cluster.hosts), default=1)
    slots = max((h.vcpu_slots(cluster.overcommit) for h in cluster.hosts), default=1)
    able = {needs: sum(needs <= h.features for h in cluster.hosts) for needs in {v.needs for v in cluster.vms}}
    return sorted(vms, key=lambda v: (able.get(v.needs, 0), -max(v.memory_mib / memory, v.vcpus / slots), v.name))


@checked
def host_order(hosts: Iterable[Host]) -> list[Host]:
    """The order in which hosts are powered on: largest first, then by name."""
    return sorted(hosts, key=lambda h: (-h.memory_mib, -h.logical_processors, h.name))


@checked
def first_fit_decreasing(cluster: Cluster, vms: Sequence[ClusterVm] | None = None, *,
                         start: Placement | None = None) -> tuple[Placement, tuple[str, ...]]:
    """Place ``vms`` (default: every VM of the cluster) on the powered hosts, keeping the VMs of
    ``start`` where they are and preferring the hosts ``start`` already uses; returns the placement
    and the names of the VMs no host could take."""
    start = start or Placement({})
    todo = size_order(cluster, cluster.vms if vms is None else vms)
    powered = [h for h in host_order(cluster.hosts) if h.power is PowerState.ON]
    open_hosts = [h for h in powered if h.name in start.hosts_used]
    closed = [h for h in powered if h.name not in start.hosts_used]
    used: dict[str, Usage] = {h.name: usage(cluster, start, h.name) for h in open_hosts}
    assignment = dict(start.assignment)
    unplaced = []
    for vm in todo:
        host = next((h for h in open_hosts if used[h.name].admits(vm, h, cluster.overcommit)), None)
        if host is None:
            host = next((h for h in closed if Usage().admits(vm, h, cluster.overcommit)), None)
            if host is None:
                unplaced.append(vm.name)
                continue
            closed.remove(host)
            open_hosts.append(host)
            used[host.name] = Usage()
        used[host.name] = used[host.name].plus(vm)
        assignment[vm.name] = host.name
    return Placement(assignment), tuple(unplaced)
