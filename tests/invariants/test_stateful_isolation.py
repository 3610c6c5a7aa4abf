"""Adversarial guests on every reference design: partitioning and isolation hold after every step.

A hypothesis state machine per design (hosted, bare-metal, hybrid) builds a machine from a drawn
scenario (:func:`vtx.strategies.scenarios`), then interleaves two rules: *advance* runs the
reference executor a few scheduler steps, *inject* splices a hostile program
(:func:`vtx.strategies.adversarial_programs`: loads, stores and fetches at every guest-physical
address the guest can form, through its identity paging and through page-table entries it
rewrites itself) into a vCPU at its next instruction. After every rule the machine must satisfy
:func:`vtx.invariants.check_partitioning` and the new part of the trace
:func:`vtx.invariants.check_isolation`: whatever the guests do, no access leaves its VM's partition
and no EPT leaf reaches another VM or the hypervisor.

Bounded for the ``ci`` profile (:data:`RUNS` machines of at most :data:`STEPS` rules each: a few
seconds per design); ``HYPOTHESIS_PROFILE=deep`` runs many more. :func:`run_design` is what the
property-throughput benchmark (``bench/bench_properties.py``) times.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, ClassVar

import attrs
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from vtx import strategies as vst
from vtx.invariants import check_isolation, check_partitioning, mutations
from vtx.machine.designs import DESIGNS
from vtx.machine.executor import run
from vtx.machine.layout import LAYOUT
from vtx.machine.model import Machine, Trace
from vtx.machine.scenario import build_machine, parse_scenario

DEEP = os.environ.get("HYPOTHESIS_PROFILE") == "deep"
RUNS = 400 if DEEP else 25
"""Machines per design (hypothesis examples of the state machine)."""
STEPS = 40 if DEEP else 10
"""Rules per machine at most."""
VMX_KINDS = ("hvm", "pv")
"""The guest kinds that run under a VMCS with the designs' identity paging (what the hostile
programs rewrite)."""


class AdversarialGuests(RuleBasedStateMachine):
    """One machine under ``design``, advanced and attacked rule by rule."""

    design: ClassVar[str] = "hosted"
    mutate: ClassVar[Callable[[Machine], Machine] | None] = None
    """A seeded bug (:mod:`vtx.invariants.mutations`) applied to the built machine, to show the test bites."""
    examples: ClassVar[int] = 0
    """Rules run so far by every instance of this class (the benchmark's count)."""

    def __init__(self) -> None:
        super().__init__()
        self.machine: Machine | None = None
        self.trace: Trace = ()
        self.injected = 0

    @initialize(doc=st.deferred(lambda: vst.scenarios(max_vms=3, max_vcpus=2, max_length=6, steps=50,
                                                      kinds=VMX_KINDS)))
    def build(self, doc: dict[str, Any]) -> None:
        doc = {**doc, "designs": [self.design]}
        self.machine = build_machine(parse_scenario(doc), self.design)
        if type(self).mutate is not None:
            self.machine = type(self).mutate(self.machine)  # type: ignore[misc]

    @rule(steps=st.integers(1, 40))
    def advance(self, steps: int) -> None:
        assert self.machine is not None
        self.machine, self.trace = run(self.machine, steps)
        type(self).examples += 1

    @rule(data=st.data(), which=st.integers(0, 63))
    def inject(self, data: st.DataObject, which: int) -> None:
        """Splice a hostile program into one vCPU, at its next instruction."""
        assert self.machine is not None
        vcpus = [v for vm in self.machine.vms if vm.kind in VMX_KINDS for v in vm.vcpus if v.failed is None]
        if not vcpus:
            return
        vcpu = vcpus[which % len(vcpus)]
        vm = self.machine.vms[vcpu.vm]
        hostile = data.draw(vst.adversarial_programs(vm, caps=self.machine.caps, max_length=6), label="hostile")
        program = (*vcpu.program[:vcpu.pc], *hostile, *vcpu.program[vcpu.pc:])
        self.machine = self.machine.with_vcpu(attrs.evolve(vcpu, program=program))
        self.trace = ()
        self.injected += len(hostile)
        type(self).examples += 1

    @invariant()
    def partitioned(self) -> None:
        if self.machine is not None:
            assert check_partitioning(self.machine) == ()

    @invariant()
    def isolated(self) -> None:
        if self.machine is not None:
            assert check_isolation(self.machine, self.trace) == ()


def machine_for(design: str, mutate: Callable[[Machine], Machine] | None = None) -> type[AdversarialGuests]:
    """The state machine class of ``design`` (with a seeded bug, ``mutate``)."""
    return type(f"AdversarialGuests_{design}", (AdversarialGuests,),
                {"design": design, "examples": 0, "mutate": staticmethod(mutate) if mutate else None})


def run_design(design: str, *, runs: int = RUNS, steps: int = STEPS,
               mutate: Callable[[Machine], Machine] | None = None) -> int:
    """Run the state machine of ``design`` for ``runs`` machines of up to ``steps`` rules; the
    number of rules run (each followed by both invariants)."""
    cls = machine_for(design, mutate)
    phases = [Phase.generate] if mutate else list(Phase)  # a seeded bug: no need to shrink its failure
    run_state_machine_as_test(cls, settings=settings(max_examples=runs, stateful_step_count=steps, deadline=None,
                                                     derandomize=True, phases=phases))
    return cls.examples


@pytest.mark.parametrize("design", sorted(DESIGNS))
def test_adversarial_guests_keep_partitioning_and_isolation(design: str) -> None:
    assert run_design(design) > 0


@pytest.mark.parametrize("bug", [mutations.writable_vmcs_mapping, mutations.ept_leaf_maps_ept_table])
def test_the_state_machine_flags_a_seeded_bug(bug: Callable[[Machine], Machine]) -> None:
    with pytest.raises(AssertionError):
        run_design("hosted", runs=3, steps=3, mutate=bug)


def test_the_hostile_programs_reach_far() -> None:
    """The attack is real: on the default scenario, an injected program makes the executor touch
    guest-physical addresses beyond the VM's memory (EPT violations the design must handle) and in
    regions the guest mapped by rewriting its own page tables."""
    cls = machine_for("hosted")
    state = cls()
    state.build({"profile": "skylake_client", "vm": [{"name": "a", "program": [], "memory_mib": 2}]})
    assert state.machine is not None
    vm = state.machine.vms[0]
    program = vst.adversarial_programs(vm, caps=state.machine.caps, max_length=12)

    exits: set[str] = set()
    glas: set[int] = set()

    @given(program)
    @settings(max_examples=20, derandomize=True, deadline=None)
    def attack(hostile: tuple[Any, ...]) -> None:
        assert state.machine is not None
        vcpu = state.machine.vms[0].vcpus[0]
        machine = state.machine.with_vcpu(attrs.evolve(vcpu, program=(*hostile, *vcpu.program)))
        machine, trace = run(machine, 200)
        assert check_partitioning(machine) == () and check_isolation(machine, trace) == ()
        exits.update(str(e.get("reason")) for e in trace if e.kind == "exit")
        glas.update(int(e.get("gva")) for e in trace if e.kind == "access")

    attack()
    assert "EPT_VIOLATION" in exits  # beyond its memory: the design emulates, never maps
    assert any(g >= LAYOUT.identity_bytes for g in glas)  # through a page-table entry the guest rewrote
