"""The executor machines behind the hosts: the only module of the cluster model that touches the
reference executor.

The hosts in use (all of them, or a sample: :func:`sample`) are each a
:class:`~vtx.machine.model.Machine` of its own preset, built with
:func:`vtx.machine.scenario.build_machine` under the scenario's design. A sample of a host's VMs
runs there in full detail (the first ``detail_vms`` by name; the rest, and the VMs of hosts not in
the sample, are accounted for at the cluster level only): each is a guest of the scenario's
workload whose VMCS also turns on the features the VM ``needs``. Each slot every machine runs
``steps_per_slot`` scheduler steps and partitioning is checked on it
(:func:`vtx.invariants.check_partitioning`), as after every migration and restart. Snapshots are
real images (:func:`~vtx.machine.snapshot.save_vm`), HA restarts restore them
(:func:`~vtx.machine.snapshot.restore_vm`), balancing moves detailed VMs with
:func:`~vtx.machine.migration.migrate`, and a detailed VM's compatibility with a host is what its
image needs (:func:`~vtx.machine.snapshot.missing_capabilities`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from vtx.cluster.model import Cluster, Host, Placement
from vtx.errors import InputError
from vtx.invariants import check_partitioning
from vtx.machine.dirty import MODES
from vtx.machine.executor import run
from vtx.machine.migration import MigrationReport, migrate, tracking_missing
from vtx.machine.model import Machine
from vtx.machine.scenario import boot_machine, build_machine, parse_scenario
from vtx.machine.snapshot import (
    IncompatibleHost,
    VmImage,
    missing_capabilities,
    pause_vm,
    restore_vm,
    resume_vm,
    save_vm,
)
from vtx.spec import get_control
from vtx.typecheck import checked
from vtx.vmx.capabilities import load_preset
from vtx.vmx.templates import FEATURE_FIELDS
from vtx.vmx.vmcs import Vmcs

EXECUTOR_LPS = 2
"""Logical processors of each executor machine (the host's own count is a cluster-level figure)."""
EXECUTOR_MIB = 4
"""Guest memory of a detailed VM in the executor (its cluster-level memory is the VM's own figure)."""
MAX_VCPUS = 2
"""vCPUs of a detailed VM in the executor (at most this many of its own)."""
MIGRATION = {"steps_per_round": 8, "max_rounds": 4, "stop_threshold": 2}
"""The pre-copy settings of the live migrations balancing performs."""


@attrs.frozen
class Snapshot:
    """A detailed VM's last snapshot: the slot and machine step it was taken at, and the image."""

    slot: int
    step: int
    image: VmImage


@attrs.frozen
class HostMachines:
    """The machine of each host that has one, where each detailed VM runs, and their last snapshots."""

    design: str
    steps_per_slot: int
    machines: Mapping[str, Machine] = attrs.field(factory=dict)
    detailed: Mapping[str, str] = attrs.field(factory=dict)
    snapshots: Mapping[str, Snapshot] = attrs.field(factory=dict)
    seed: int = 0

    def host_of(self, vm: str) -> str | None:
        return self.detailed.get(vm)

    def missing(self, vm: str, host: Host) -> tuple[str, ...]:
        """What a detailed VM's last image needs that ``host``'s preset lacks; () for other VMs."""
        snap = self.snapshots.get(vm)
        return () if snap is None else missing_capabilities(snap.image, load_preset(host.profile))


def _program_length(slots: int, steps_per_slot: int) -> int:
    return max(1, min(10_000, slots * steps_per_slot // 2))


def _with_needs(machine: Machine, index: int, needs: frozenset[str]) -> Machine:
    """VM ``index`` of ``machine`` with the secondary controls ``needs`` turned on in each vCPU's
    VMCS, with the fields the templates give each (``vtx.vmx.templates.FEATURE_FIELDS``)."""
    if not needs:
        return machine
    regions = dict(machine.regions)
    for vcpu in machine.vms[index].vcpus:
        vmcs = regions[vcpu.vmcs_addr]
        assert isinstance(vmcs, Vmcs)
        fields = {name: value for need in sorted(needs) for name, value in FEATURE_FIELDS[need].items()}
        mask = 0
        for need in needs:
            mask |= get_control("proc2", need).mask
        fields["SECONDARY_VM_EXEC_CONTROL"] = vmcs["SECONDARY_VM_EXEC_CONTROL"] | mask
        regions[vcpu.vmcs_addr] = vmcs.with_fields(fields)
    return attrs.evolve(machine, regions=regions)


def sample(placement: Placement, count: int, first: str | None) -> tuple[str, ...]:
    """``count`` of the hosts ``placement`` uses (0: all): ``first`` if given, then hosts spread
    evenly over the others in name order, so that every kind of host tends to be among them."""
    used = [h for h in placement.hosts_used if h != first]
    head = [first] if first in placement.hosts_used else []
    if count == 0 or count >= len(used) + len(head):
        return (*head, *used)
    rest = max(0, count - len(head))
    return (*head, *(used[k * len(used) // rest] for k in range(rest)))


@checked
def boot(cluster: Cluster, placement: Placement, *, design: str, detail_vms: int, steps_per_slot: int,
         seed: int, hosts: Sequence[str]) -> HostMachines:
    """A machine for each of ``hosts`` (which ``placement`` uses), running its first ``detail_vms``
    VMs in detail, each snapshotted at slot 0."""
    hm = HostMachines(design, steps_per_slot, seed=seed)
    machines = {}
    detailed = {}
    for host_name in hosts:
        names = sorted(placement.on(host_name))[:detail_vms]
        if not names:
            continue
        host = cluster.host_by_name[host_name]
        vms = [cluster.vm_by_name[n] for n in names]
        doc: dict[str, Any] = {
            "seed": seed, "profile": host.profile, "logical_processors": min(EXECUTOR_LPS, host.logical_processors),
            "design": design,
            "vm": [{"name": v.name, "vcpus": min(v.vcpus, MAX_VCPUS), "memory_mib": EXECUTOR_MIB,
                    "workload": v.workload, "length": _program_length(cluster.slots, steps_per_slot)} for v in vms]}
        try:
            machine = build_machine(parse_scenario(doc), design)
        except InputError as e:
            raise InputError(f"host {host_name}", e.value, f"its executor machine cannot be built: {e}") from e
        for index, v in enumerate(vms):
            machine = _with_needs(machine, index, v.needs)
            detailed[v.name] = host_name
        machines[host_name] = machine
    return take_snapshots(attrs.evolve(hm, machines=machines, detailed=detailed), 0)


@checked
def take_snapshots(hm: HostMachines, slot: int) -> HostMachines:
    """Every detailed VM paused, saved and resumed: its snapshot at ``slot``."""
    machines = dict(hm.machines)
    snapshots = dict(hm.snapshots)
    for vm, host in sorted(hm.detailed.items()):
        machine = machines[host]
        index = next(v.index for v in machine.vms if v.name == vm)
        machine, _ = pause_vm(machine, index)
        snapshots[vm] = Snapshot(slot, machine.step, save_vm(machine, index))
        machines[host] = resume_vm(machine, index)
    return attrs.evolve(hm, machines=machines, snapshots=snapshots)


@checked
def partitioning(hm: HostMachines, host: str) -> list[str]:
    """The partitioning violations of ``host``'s machine, as messages naming the host."""
    machine = hm.machines.get(host)
    return [] if machine is None else [f"{host}: {v}" for v in check_partitioning(machine)]


@checked
def run_slot(hm: HostMachines, *, every_step: bool = False) -> tuple[HostMachines, list[str], int, int]:
    """Every machine run for a slot's steps, partitioning checked on each at the end of the slot
    (``every_step``: after every scheduler step). Returns the machines, the violations, the steps
    run and the checks made."""
    machines = {}
    violations: list[str] = []
    steps = checks = 0
    for host, before in sorted(hm.machines.items()):
        after = before
        for _ in range(hm.steps_per_slot if every_step else 1):
            after, _ = run(after, 1 if every_step else hm.steps_per_slot)
            violations += [f"{host} at step {after.step}: {v}" for v in check_partitioning(after)]
            checks += 1
        machines[host] = after
        steps += after.step - before.step
    return attrs.evolve(hm, machines=machines), violations, steps, checks


@checked
def remove_host(hm: HostMachines, host: str) -> HostMachines:
    """``host``'s machine is gone (the host failed, or was powered off once empty); detailed VMs
    still on it live on only in their snapshots."""
    machines = {h: m for h, m in hm.machines.items() if h != host}
    detailed = {v: h for v, h in hm.detailed.items() if h != host}
    return attrs.evolve(hm, machines=machines, detailed=detailed)


@checked
def steps_since_snapshot(hm: HostMachines, vm: str) -> int | None:
    """Executor steps the machine of detailed VM ``vm`` has run since the VM's last snapshot."""
    host, snap = hm.detailed.get(vm), hm.snapshots.get(vm)
    return None if host is None or snap is None else hm.machines[host].step - snap.step


def _target(hm: HostMachines, host: Host) -> Machine:
    machine = hm.machines.get(host.name)
    if machine is not None:
        return machine
    return boot_machine(load_preset(host.profile), hm.design, logical_processors=min(EXECUTOR_LPS,
                        host.logical_processors), seed=hm.seed, tick=0.05)


@checked
def restart(hm: HostMachines, vm: str, host: Host) -> HostMachines:
    """Detailed VM ``vm`` restarted on ``host`` from its last snapshot (restore_vm).
    IncompatibleHost when the image needs what the host lacks; InputError when the host's layout
    is full."""
    machine = restore_vm(_target(hm, host), hm.snapshots[vm].image)
    return attrs.evolve(hm, machines={**hm.machines, host.name: machine}, detailed={**hm.detailed, vm: host.name})


@checked
def tracking_mode(hm: HostMachines, vm: str) -> str | None:
    """How the source of detailed VM ``vm`` can track its dirty pages for live migration (the
    page-modification log, else a scan of the EPT dirty flags), or None if it cannot: then the VM
    cannot be live-migrated."""
    src = hm.machines[hm.detailed[vm]]
    index = next(v.index for v in src.vms if v.name == vm)
    return next((mode for mode in MODES if not tracking_missing(src, index, mode)), None)


@checked
def live_migrate(hm: HostMachines, vm: str, dst: Host) -> tuple[HostMachines, MigrationReport]:
    """Detailed VM ``vm`` live-migrated to ``dst`` with the executor's pre-copy migration (dirty
    tracking by :func:`tracking_mode`); the source keeps the VM paused. IncompatibleHost or
    InputError (layout full) refuse it."""
    src_name = hm.detailed[vm]
    src = hm.machines[src_name]
    index = next(v.index for v in src.vms if v.name == vm)
    mode = tracking_mode(hm, vm)
    if mode is None:
        raise InputError(f"vm {vm}", src.caps.name, "its host cannot track dirty pages: no live migration")
    result = migrate(src, index, _target(hm, dst), mode=mode, **MIGRATION)
    machines = {**hm.machines, src_name: result.src, dst.name: result.dst}
    return attrs.evolve(hm, machines=machines, detailed={**hm.detailed, vm: dst.name}), result.report


@checked
def drop(hm: HostMachines, vm: str) -> HostMachines:
    """``vm`` is no longer followed in detail (its destination could not take it in the executor)."""
    return attrs.evolve(hm, detailed={v: h for v, h in hm.detailed.items() if v != vm})


__all__ = ["HostMachines", "IncompatibleHost", "MigrationReport", "Snapshot", "boot", "drop", "live_migrate",
           "partitioning", "remove_host", "restart", "run_slot", "steps_since_snapshot", "take_snapshots",
           "tracking_mode"]
