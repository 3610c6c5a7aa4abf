"""Live migration: pre-copy rounds driven by architectural dirty tracking, then stop-and-copy.

Round 0 sends every page the guest has while the VM keeps running; each later round sends the
pages written during the previous one, learnt from the processor (:mod:`vtx.machine.dirty`: the
page-modification log, or the EPT dirty flags) — after collecting, the hypervisor clears the dirty
flags and invalidates with INVEPT on every processor, so the next write is seen again (SDM Vol. 3C
§30.3.4 "Accessed and Dirty Flags for EPT", §30.3.6 "Page-Modification Logging", §30.4.3.4
"Guidelines for Use of the INVEPT Instruction"). When a round's dirty set is at most
``stop_threshold`` pages, or after ``max_rounds`` rounds, the VM is paused, the last dirty pages
and the vCPU state (its VMCS as fields) are sent, and the VM is restored on the destination
(:func:`vtx.machine.snapshot.restore_vm`). Downtime counts the source machine's steps while the
VM is paused: the modelled link moves ``pages_per_step`` pages per step
(``spec/machine/snapshot.toml``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from vtx.errors import InputError, SpecError
from vtx.machine.dirty import MODES, drain_pml, ept_dirty_pages, first_vmcs, leaf_entries, store_entries
from vtx.machine.executor import interrupt, run
from vtx.machine.memory_map import backing_hpa
from vtx.machine.model import Event, Machine, Trace, Vm
from vtx.machine.snapshot import (
    DeviceState,
    IncompatibleHost,
    VmImage,
    compute_requirements,
    missing_capabilities,
    pause_vm,
    restore_vm,
    save_vm,
)
from vtx.outcomes import VmSucceed
from vtx.paging.ept import DIRTY, ENTRY_BYTES, EPTP_FIELDS
from vtx.paging.formats import PAGE_OFFSET_BITS, PAGE_SIZE
from vtx.paging.memory import HostPhysAddr
from vtx.spec import CAPABILITY_MSRS, VMCS_FIELDS, _Table, get_control
from vtx.typecheck import checked
from vtx.vmx import instructions as ins
from vtx.vmx.vmcs import Vmcs

PAGES_PER_STEP: int = _Table("machine/snapshot.toml").data["migration"]["pages_per_step"]
"""Pages the modelled link moves per scheduler step (a modelling choice, ``spec/machine/snapshot.toml``)."""
INVEPT_SINGLE_CONTEXT = next(t for t, cap in ins._INVEPT_TYPES.items() if cap == "invept_single_context")
_EPT_CAP = "IA32_VMX_EPT_VPID_CAP"
_AD = EPTP_FIELDS["accessed_dirty"].mask
_PML = get_control("proc2", "enable_pml")


# ------------------------------------------------------------------ the hypervisor's dirty tracking


@checked
def clear_dirty(machine: Machine, vm: Vm, pages: Iterable[int]) -> tuple[Machine, tuple[Event, ...]]:
    """Clear the EPT dirty flag of ``pages`` (guest-physical page numbers) of ``vm`` and invalidate:
    every processor running a guest is interrupted (it exits to the hypervisor), then each executes
    INVEPT single-context for the VM's EPTP, so no cached translation lets a later write skip the
    dirty flag."""
    leaves = leaf_entries(machine, vm)
    updates = {leaves[p]: machine.memory.read_int(HostPhysAddr(leaves[p]), ENTRY_BYTES) & ~DIRTY
               for p in pages if p in leaves}
    machine = attrs.evolve(machine, memory=store_entries(machine.memory, updates))
    eptp = first_vmcs(machine, vm).get(VMCS_FIELDS["EPT_POINTER"])
    events: list[Event] = []
    for i in range(len(machine.lps)):
        machine, kicked = interrupt(machine, i)
        events += kicked
        processor, outcome = ins.invept(machine.processor(i), machine.caps, INVEPT_SINGLE_CONTEXT, eptp)
        if not isinstance(outcome, VmSucceed):
            raise SpecError("migration", f"INVEPT {eptp:#x}", f"the hypervisor's INVEPT failed: {outcome}")
        machine = machine.with_lp(i, processor)
        events.append(Event(machine.step, "vmx", i, vm.name, None,
                            (("instruction", "invept"), ("type", "single-context"), ("eptp", eptp),
                             ("outcome", str(outcome)))))
    return machine, tuple(events)


@checked
def collect(machine: Machine, vm_index: int, mode: str) -> tuple[Machine, frozenset[int], tuple[Event, ...]]:
    """The guest-physical page numbers VM ``vm_index`` wrote since the last collection — ``pml``:
    drained from every vCPU's log plus those drained on log-full exits; ``ept_dirty``: the EPT leaf
    entries with the dirty flag — with their dirty flags cleared and the EPT invalidated."""
    if mode == "pml":
        for c in range(len(machine.vm(vm_index).vcpus)):
            machine = drain_pml(machine, vm_index, c)
        vm = machine.vm(vm_index)
        pages = vm.logged
        machine = machine.with_vm(attrs.evolve(vm, logged=frozenset()))
    else:
        pages = ept_dirty_pages(machine, machine.vm(vm_index))
    machine, events = clear_dirty(machine, machine.vm(vm_index), pages)
    return machine, pages, events


@checked
def tracking_missing(machine: Machine, vm_index: int, mode: str) -> list[str]:
    """What dirty tracking in ``mode`` needs that VM ``vm_index``'s VMCS or processor lacks: EPT A/D
    flags in its EPTP, the "enable PML" control (mode ``pml``), INVEPT single-context."""
    vmcs = first_vmcs(machine, machine.vm(vm_index))
    caps = machine.caps
    fields = CAPABILITY_MSRS[_EPT_CAP].bitfields
    missing = []

    def cap_text(name: str) -> str:
        return f"EPT: {fields[name].title} ({_EPT_CAP} bit {fields[name].bits.lo})"

    if not vmcs.get(VMCS_FIELDS["EPT_POINTER"]) & _AD:
        missing.append(cap_text("accessed_dirty"))
    if mode == "pml" and not vmcs.get(VMCS_FIELDS["SECONDARY_VM_EXEC_CONTROL"]) & _PML.mask:
        missing.append(f"Secondary processor-based VM-execution controls: enable_pml "
                       f"({caps.control_msr('proc2')} allowed-1 bit {_PML.bit})")
    for name in ("invept", "invept_single_context"):
        if not caps.msr_field(_EPT_CAP, name):
            missing.append(cap_text(name))
    return missing


# ------------------------------------------------------------------ the report


@attrs.frozen
class Round:
    """One pre-copy round: the pages sent at its start; then the machine ran ``steps`` steps (fewer
    than asked once every vCPU is done) and the VM wrote ``dirty`` (guest-physical page numbers),
    which the next round or stop-and-copy sends."""

    number: int
    pages_sent: int
    steps: int
    dirty: frozenset[int]


@attrs.frozen
class MigrationReport:
    """Rounds, pages sent per round and in stop-and-copy, downtime in steps, whether the dirty set
    fell to the threshold (``converged``) or the round limit stopped pre-copy."""

    vm: str
    mode: str
    rounds: tuple[Round, ...]
    final_pages: int
    downtime_steps: int
    converged: bool
    pml_full_exits: int

    @property
    def total_pages(self) -> int:
        return sum(r.pages_sent for r in self.rounds) + self.final_pages

    def to_json(self) -> dict[str, Any]:
        return {"vm": self.vm, "mode": self.mode, "converged": self.converged,
                "rounds": [{"round": r.number, "pages_sent": r.pages_sent, "steps": r.steps, "dirty": len(r.dirty)}
                           for r in self.rounds],
                "stop_and_copy_pages": self.final_pages, "total_pages": self.total_pages,
                "downtime_steps": self.downtime_steps, "pml_full_exits": self.pml_full_exits}


@attrs.frozen
class MigrationResult:
    """The machines after migration (the VM paused on ``src``, restored on ``dst``), the report,
    the source's trace during migration and the image restored (memory as sent)."""

    src: Machine
    dst: Machine
    report: MigrationReport
    trace: Trace = attrs.field(repr=False)
    image: VmImage = attrs.field(repr=False)


# ------------------------------------------------------------------ migrate


def _vmcs(machine: Machine, address: int) -> Vmcs:
    vmcs = machine.regions[address]
    assert isinstance(vmcs, Vmcs)
    return vmcs


def _read_pages(machine: Machine, vm: Vm, pages: Iterable[int]) -> dict[int, bytes]:
    return {p: machine.memory.read(HostPhysAddr(backing_hpa(vm, p << PAGE_OFFSET_BITS)), PAGE_SIZE) for p in pages}


def _positive(name: str, value: object, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise InputError(name, repr(value), f"must be an integer >= {low}")
    return value


def _refuse(src: Machine, vm: int, dst: Machine, mode: str) -> str:
    """The VM's name, once migrating it in ``mode`` is possible; InputError / IncompatibleHost otherwise."""
    if mode not in MODES:
        raise InputError("mode", repr(mode), f"must be one of {', '.join(MODES)}")
    if not 0 <= vm < len(src.vms):
        raise InputError("vm", repr(vm), f"no such VM: the source has {len(src.vms)}")
    target = src.vms[vm]
    if target.kind not in ("hvm", "pv"):
        raise InputError(f"vm {target.name!r}", target.kind, "only VMs in VMX non-root operation have EPT dirty "
                         "tracking")
    if any(v.name == target.name for v in dst.vms):
        raise InputError(f"vm {target.name!r}", "name taken", "the destination already has a VM of that name")
    missing = tracking_missing(src, vm, mode)
    if missing:
        raise IncompatibleHost(target.name, src.caps.name, missing)
    fields = [_vmcs(src, v.vmcs_addr).nonzero_fields() for v in target.vcpus]
    probe = VmImage(0, target.name, target.kind, target.memory_bytes, (), {}, DeviceState(),
                    compute_requirements(fields, target.memory_bytes))
    missing = list(missing_capabilities(probe, dst.caps))
    if missing:
        raise IncompatibleHost(target.name, dst.caps.name, missing)
    return target.name


def migrate(src: Machine, vm: int, dst: Machine, *, steps_per_round: int, max_rounds: int, stop_threshold: int,
            mode: str = "pml", pages_per_step: int = PAGES_PER_STEP) -> MigrationResult:
    """Live-migrate guest VM ``vm`` of ``src`` to ``dst`` (see the module docstring). Refuses with
    :class:`~vtx.machine.snapshot.IncompatibleHost` when the source cannot track dirty pages in
    ``mode`` or the destination lacks a capability the VM needs, before anything is sent."""
    for key, value, low in (("steps_per_round", steps_per_round, 1), ("max_rounds", max_rounds, 1),
                            ("stop_threshold", stop_threshold, 0), ("pages_per_step", pages_per_step, 1)):
        _positive(key, value, low)
    name = _refuse(src, vm, dst, mode)
    machine = src
    trace: list[Event] = []
    # start log-dirty mode: empty the logs, clear every dirty flag, invalidate
    machine, _, events = collect(machine, vm, mode)
    machine, events2 = clear_dirty(machine, machine.vms[vm], machine.vms[vm].mapped)
    trace += events + events2
    sent = _read_pages(machine, machine.vms[vm], machine.vms[vm].mapped)
    rounds: list[Round] = []
    to_send = len(sent)
    converged = False
    for number in range(max_rounds):
        start = machine.step
        machine, ran = run(machine, steps_per_round)
        trace += ran
        machine, dirty, events = collect(machine, vm, mode)
        trace += events
        rounds.append(Round(number, to_send, machine.step - start, dirty))
        pending = dirty | (machine.vms[vm].mapped - set(sent))
        if len(dirty) <= stop_threshold:
            converged = True
            break
        if number + 1 == max_rounds:
            break
        sent.update(_read_pages(machine, machine.vms[vm], pending))
        to_send = len(pending)
    # stop-and-copy
    machine, events = pause_vm(machine, vm)
    trace += events
    machine, last, events = collect(machine, vm, mode)
    trace += events
    final = pending | last | (machine.vms[vm].mapped - set(sent))
    sent.update(_read_pages(machine, machine.vms[vm], final))
    image = attrs.evolve(save_vm(machine, vm), memory={p: sent[p] for p in sorted(machine.vms[vm].mapped)})
    downtime = -(-(len(final) + len(image.vcpus)) // pages_per_step)
    machine, ran = run(machine, downtime)
    trace += ran
    restored = restore_vm(dst, image)
    full = sum(1 for e in trace if e.kind == "exit" and e.get("reason") == "PML_FULL" and e.vm == name)
    report = MigrationReport(name, mode, tuple(rounds), len(final), downtime, converged, full)
    return MigrationResult(machine, restored, report, tuple(trace), image)


__all__ = ["PAGES_PER_STEP", "MigrationReport", "MigrationResult", "Round", "clear_dirty", "collect", "migrate",
           "tracking_missing"]
