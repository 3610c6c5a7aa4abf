"""Hosts, VMs and the cluster, as frozen values.

A :class:`Host` is a machine of the reference executor: a capability preset, memory and logical
processors. A :class:`ClusterVm` is a VM with memory, vCPUs, the VMX features its VMCS uses on top
of the hypervisor design's own (``needs``: secondary processor-based controls), an optional
anti-affinity group, and a CPU demand per time slot drawn from a seeded workload trace.

Memory is counted in MiB and demand in hundredths of a logical processor, so that capacity
checks and the z3 encoding use exact integers.
"""

from __future__ import annotations

import enum
import functools
import math
import random
from collections.abc import Mapping

import attrs

from vtx.machine.designs.base import EXITING_CONTROLS, FEATURES
from vtx.typecheck import checked
from vtx.vmx.capabilities import load_preset
from vtx.vmx.templates import FEATURE_FIELDS

NEEDS = tuple(FEATURE_FIELDS)
"""The features a VM may need: the secondary processor-based controls the VMCS templates can set."""
CENTI = 100
"""Demand is in hundredths of a logical processor."""
PATTERNS = ("flat", "diurnal", "bursty")
CREST = 14 / 24
"""Where in a diurnal trace the load peaks: mid-afternoon of a day-long trace."""


class PowerState(enum.Enum):
    ON = "on"
    OFF = "off"
    FAILED = "failed"


@functools.cache
def host_features(profile: str) -> frozenset[str]:
    """The features of :data:`NEEDS` the preset ``profile`` allows (an allowed-1 setting of the
    control). A feature the profile does not report is not offered: never silently allowed."""
    caps = load_preset(profile)
    return frozenset(n for n in NEEDS if caps.allows("proc2", n) is True)


@functools.cache
def design_missing(profile: str) -> tuple[str, ...]:
    """The controls every executor design needs (EPT, VPID and the exiting controls) that
    ``profile`` does not allow; a host must have none missing."""
    caps = load_preset(profile)
    wanted = (*(("proc2", f) for f in FEATURES), *EXITING_CONTROLS)
    return tuple(f"{field}.{name}" for field, name in wanted if caps.allows(field, name) is not True)


@attrs.frozen
class Host:
    """One physical host: a machine of the executor with its own preset."""

    name: str
    profile: str
    memory_mib: int
    logical_processors: int
    power: PowerState = PowerState.ON

    @property
    def features(self) -> frozenset[str]:
        return host_features(self.profile)

    @checked
    def vcpu_slots(self, overcommit: float) -> int:
        """The vCPUs it may carry: ``overcommit`` vCPUs per logical processor, rounded down."""
        return math.floor(overcommit * self.logical_processors + 1e-9)

    @property
    def cpu_centi(self) -> int:
        return self.logical_processors * CENTI


@attrs.frozen
class ClusterVm:
    """One VM: its size, the features its VMCS uses, its anti-affinity group ("" for none), the
    executor workload of its detailed run, and its CPU demand per slot (hundredths of an LP)."""

    name: str
    memory_mib: int
    vcpus: int
    needs: frozenset[str] = frozenset()
    group: str = ""
    workload: str = "mixed"
    demand: tuple[int, ...] = ()

    @checked
    def compatible(self, host: Host) -> bool:
        return self.needs <= host.features

    @checked
    def missing(self, host: Host) -> tuple[str, ...]:
        return tuple(sorted(self.needs - host.features))

    @property
    def peak_centi(self) -> int:
        return max(self.demand, default=0)


@attrs.frozen
class Cluster:
    """The hosts, the VMs, the vCPU:LP overcommit ratio and the number of time slots."""

    hosts: tuple[Host, ...]
    vms: tuple[ClusterVm, ...]
    overcommit: float
    slots: int

    @functools.cached_property
    def host_by_name(self) -> Mapping[str, Host]:
        return {h.name: h for h in self.hosts}

    @functools.cached_property
    def vm_by_name(self) -> Mapping[str, ClusterVm]:
        return {v.name: v for v in self.vms}


@checked
def demand_trace(rng: random.Random, *, slots: int, vcpus: int, load: float, peak: float,
                 pattern: str) -> tuple[int, ...]:
    """A seeded CPU demand trace (hundredths of an LP per slot) for a VM of ``vcpus`` whose vCPUs
    are busy ``load`` of the time on average and at most ``peak``: ``flat`` (noise around the
    mean), ``diurnal`` (the mean at night, rising to the peak in the afternoon: a half cosine over
    the day with its crest near :data:`CREST` of the trace, give or take an hour), ``bursty`` (the
    mean with rare bursts to the peak)."""
    crest = slots * (CREST + (rng.random() - 0.5) / 12)
    out = []
    for t in range(slots):
        if pattern == "diurnal":
            u = load + (peak - load) * max(0.0, math.cos(2 * math.pi * (t - crest) / max(slots, 1)))
        elif pattern == "bursty":
            u = peak if rng.random() < 0.08 else load
        else:
            u = load
        u *= 1 + 0.2 * (rng.random() - 0.5)
        out.append(round(min(max(u, 0.0), peak, 1.0) * vcpus * CENTI))
    return tuple(out)


def _sorted(assignment: Mapping[str, str]) -> Mapping[str, str]:
    return dict(sorted(assignment.items()))


@checked
@attrs.frozen
class Placement:
    """Which host each VM runs on (VM name -> host name)."""

    assignment: Mapping[str, str] = attrs.field(converter=_sorted)

    @functools.cached_property
    def by_host(self) -> Mapping[str, tuple[str, ...]]:
        """The VMs on each host that has any, by name."""
        out: dict[str, list[str]] = {}
        for v, h in self.assignment.items():
            out.setdefault(h, []).append(v)
        return {h: tuple(vs) for h, vs in sorted(out.items())}

    @property
    def hosts_used(self) -> tuple[str, ...]:
        return tuple(self.by_host)

    def on(self, host: str) -> tuple[str, ...]:
        """The VMs on ``host``, by name."""
        return self.by_host.get(host, ())

    def moved(self, vm: str, host: str) -> Placement:
        return Placement({**self.assignment, vm: host})


@attrs.frozen
class Usage:
    """What a host carries: memory (MiB), vCPUs and the anti-affinity groups present."""

    memory_mib: int = 0
    vcpus: int = 0
    groups: frozenset[str] = frozenset()

    @checked
    def plus(self, vm: ClusterVm) -> Usage:
        return Usage(self.memory_mib + vm.memory_mib, self.vcpus + vm.vcpus,
                     self.groups | ({vm.group} if vm.group else set()))

    @checked
    def admits(self, vm: ClusterVm, host: Host, overcommit: float) -> bool:
        """``vm`` fits beside what the host carries: memory, vCPU slots, compatibility, anti-affinity."""
        return (vm.compatible(host) and self.memory_mib + vm.memory_mib <= host.memory_mib
                and self.vcpus + vm.vcpus <= host.vcpu_slots(overcommit)
                and not (vm.group and vm.group in self.groups))


@checked
def usage(cluster: Cluster, placement: Placement, host: str, *, without: str = "") -> Usage:
    """The usage of ``host`` under ``placement`` (leaving VM ``without`` out)."""
    u = Usage()
    for name in placement.on(host):
        if name != without:
            u = u.plus(cluster.vm_by_name[name])
    return u


@checked
def placement_violations(cluster: Cluster, placement: Placement, *,
                         down: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """Every way ``placement`` breaks the rules, independently of the policy that produced it:
    each VM (except those known to be ``down``: stranded by a failure) on exactly one powered host
    that exists, memory and vCPU capacity, capability compatibility and anti-affinity. Empty when
    it is valid."""
    out = []
    for vm in cluster.vms:
        if vm.name not in placement.assignment and vm.name not in down:
            out.append(f"{vm.name}: not placed")
    for vm_name, host_name in placement.assignment.items():
        maybe_vm, host = cluster.vm_by_name.get(vm_name), cluster.host_by_name.get(host_name)
        if maybe_vm is None or host is None:
            out.append(f"{vm_name}: unknown VM or host {host_name!r}")
            continue
        vm = maybe_vm
        if host.power is not PowerState.ON:
            out.append(f"{vm_name}: on host {host_name}, which is {host.power.value}")
        if not vm.compatible(host):
            out.append(f"{vm_name}: host {host_name} ({host.profile}) lacks {', '.join(vm.missing(host))}")
    for host_name in placement.hosts_used:
        host = cluster.host_by_name.get(host_name)
        if host is None:
            continue
        vms = [cluster.vm_by_name[v] for v in placement.on(host_name) if v in cluster.vm_by_name]
        memory, vcpus = sum(v.memory_mib for v in vms), sum(v.vcpus for v in vms)
        if memory > host.memory_mib:
            out.append(f"{host_name}: {memory} MiB of VMs > {host.memory_mib} MiB")
        if vcpus > host.vcpu_slots(cluster.overcommit):
            out.append(f"{host_name}: {vcpus} vCPUs > {host.vcpu_slots(cluster.overcommit)} "
                       f"({cluster.overcommit}:1 over {host.logical_processors} LPs)")
        groups = [v.group for v in vms if v.group]
        for g in sorted({g for g in groups if groups.count(g) > 1}):
            out.append(f"{host_name}: {groups.count(g)} VMs of anti-affinity group {g}")
    return tuple(out)


@checked
def with_power(cluster: Cluster, host: str, power: PowerState) -> Cluster:
    """``cluster`` with ``host`` powered on, off or failed."""
    hosts = tuple(attrs.evolve(h, power=power) if h.name == host else h for h in cluster.hosts)
    return attrs.evolve(cluster, hosts=hosts)


@checked
def host_load(cluster: Cluster, placement: Placement, host: str, slot: int) -> float:
    """The CPU load of ``host`` in ``slot``: its VMs' demand over its logical processors (above 1
    the host is saturated)."""
    demand = sum(cluster.vm_by_name[v].demand[slot] for v in placement.on(host))
    return demand / cluster.host_by_name[host].cpu_centi
