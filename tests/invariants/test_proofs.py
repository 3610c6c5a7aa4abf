"""z3 proofs: the reference designs' default machines are proved (non-vacuously); each invariant
is refuted with a replayed counterexample for a seeded bug; handler steps are inductive."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import pytest
import z3

from invariants.conftest import default_machine
from invariants.test_predicates import classic_machine, remap, rewrite_pte, with_vmcs
from vtx import cli, prove_cmd
from vtx.invariants import check_all, ownership
from vtx.invariants.ownership import ENABLE_EPT, USE_IO_BITMAPS, USE_MSR_BITMAPS
from vtx.machine import executor, snapshot
from vtx.machine.executor import run
from vtx.machine.memory_map import LEAF_BITS, backing_hpa
from vtx.machine.model import Vm
from vtx.machine.scenario import DEFAULT_SCENARIO, load_scenario, parse_scenario
from vtx.paging.ept import ACCESSED, DIRTY, EptWalk, walk_ept
from vtx.paging.guest import RW
from vtx.paging.memory import HostPhysAddr, PhysicalMemory
from vtx.proofs import prove_machine
from vtx.proofs.handlers import _PAGE_MASK, DESIGN_ACTIONS, EFFECTS, State, bv, map_backed, prove_handlers, prove_step
from vtx.proofs.result import ProofResult

DESIGNS = ("hosted", "bare_metal", "hybrid")


def by_name(results: tuple[ProofResult, ...]) -> dict[str, ProofResult]:
    return {r.invariant: r for r in results}


@pytest.mark.parametrize("design", DESIGNS)
def test_prove_machine_proves_every_z3_invariant_of_the_default_machine(design: str) -> None:
    results = by_name(prove_machine(default_machine(design)))
    for name in ("partitioning", "isolation", "tlb_isolation", "io_msr_grants"):
        r = results[name]
        assert (r.verdict, r.non_vacuous, r.counterexample) == ("proved", True, None), r
        assert r.conjuncts >= 1


def test_partitioning_refuted_for_a_leaf_into_another_vm() -> None:
    m = default_machine("hosted")
    bad = remap(m, 1, 0x30_0000, m.vms[0].backing + 0x5000)
    r = by_name(prove_machine(bad))["partitioning"]
    assert r.verdict == "refuted" and r.replayed, r
    assert r.counterexample is not None and "web's partition" in r.counterexample
    assert "guest-physical 0x30" in r.counterexample and "hpa=0x10005" in r.counterexample
    assert "executor replay: batch.0" in r.counterexample and "reached host 0x10005000" in r.counterexample


def test_isolation_refuted_for_a_mapping_of_an_ept_table() -> None:
    m = default_machine("bare_metal")
    bad = remap(m, 0, 0x30_0000, m.vms[0].ept_root)
    r = by_name(prove_machine(bad))["isolation"]
    assert r.verdict == "refuted" and r.replayed and "ept_table" in str(r.counterexample), r


def test_isolation_refuted_for_a_vcpu_without_ept() -> None:
    m = default_machine("bare_metal")
    proc2 = m.regions[m.vms[0].vcpus[0].vmcs_addr]["SECONDARY_VM_EXEC_CONTROL"]
    bad = with_vmcs(m, 0, {"SECONDARY_VM_EXEC_CONTROL": proc2 & ~ENABLE_EPT.mask})
    r = by_name(prove_machine(bad))["isolation"]
    assert r.verdict == "refuted" and "EPT disabled" in str(r.counterexample)


def test_tlb_isolation_refuted_for_shared_vpids_without_ept_and_replayed_in_the_tlb_model() -> None:
    m = default_machine("hosted")
    proc2 = m.regions[m.vms[0].vcpus[0].vmcs_addr]["SECONDARY_VM_EXEC_CONTROL"] & ~ENABLE_EPT.mask
    bad = with_vmcs(with_vmcs(m, 1, {"VIRTUAL_PROCESSOR_ID": 1, "SECONDARY_VM_EXEC_CONTROL": proc2}), 0,
                    {"SECONDARY_VM_EXEC_CONTROL": proc2})
    r = by_name(prove_machine(bad))["tlb_isolation"]
    assert r.verdict == "refuted" and r.replayed and "serves" in str(r.counterexample), r
    # with EPT the shared VPID does not leak: combined mappings carry the EP4TA
    assert by_name(prove_machine(with_vmcs(m, 1, {"VIRTUAL_PROCESSOR_ID": 1})))["tlb_isolation"].verdict == "proved"


def test_io_msr_grants_refuted_for_zeroed_bitmaps() -> None:
    m = default_machine("hosted")
    vmcs = m.regions[m.vms[0].vcpus[0].vmcs_addr]
    ports = with_vmcs(m, 0, {"CPU_BASED_VM_EXEC_CONTROL": vmcs["CPU_BASED_VM_EXEC_CONTROL"] | USE_IO_BITMAPS.mask,
                             "IO_BITMAP_A": 0x7000_0000, "IO_BITMAP_B": 0x7000_1000})
    r = by_name(prove_machine(ports))["io_msr_grants"]
    assert r.verdict == "refuted" and r.replayed and "I/O port" in str(r.counterexample), r
    msrs = with_vmcs(m, 0, {"CPU_BASED_VM_EXEC_CONTROL": vmcs["CPU_BASED_VM_EXEC_CONTROL"] | USE_MSR_BITMAPS.mask,
                            "MSR_BITMAP": 0x7000_0000})
    r = by_name(prove_machine(msrs))["io_msr_grants"]
    assert r.verdict == "refuted" and r.replayed and "MSR" in str(r.counterexample), r


def test_classic_pv_refuted_for_a_writable_page_table_frame() -> None:
    """The frame stays the guest's own, so partitioning is still proved; isolation is not."""
    m = classic_machine()
    vm = m.vms[1]
    bad = rewrite_pte(m, (min(vm.page_tables) << 12) - vm.backing, lambda e: e | RW)
    results = by_name(prove_machine(bad))
    assert results["partitioning"].verdict == "proved" and results["partitioning"].non_vacuous
    r = results["isolation"]
    assert r.verdict == "refuted" and r.replayed and "writable page-table frame" in str(r.counterexample), r


def test_map_step_is_inductive() -> None:
    r = prove_step("map", map_backed, "ept_in_partition")
    assert (r.verdict, r.non_vacuous) == ("proved", True), r


def test_handlers_without_ept_effects_are_inductive() -> None:
    quiet = {action: EFFECTS["halt"] for action in EFFECTS}  # map replaced: only the unchanged-EPT steps
    results = prove_handlers("hybrid", effects=quiet)
    assert {r.invariant for r in results} >= {"handler:map", "handler:ring_notify", "handler:mmu_update"}
    assert all(r.verdict == "proved" and r.non_vacuous for r in results)


def test_handler_step_refuted_for_a_map_that_ignores_the_backed_range() -> None:
    def unchecked(s: State, gpa: z3.BitVecRef) -> tuple[z3.BoolRef, State]:
        leaf = ((s.base + gpa) & bv(_PAGE_MASK)) | bv(LEAF_BITS)
        return z3.BoolVal(True), attrs.evolve(s, ept=z3.Store(s.ept, z3.Extract(63, 12, gpa), leaf))

    r = prove_step("map", unchecked, "other_vm_unmapped")
    assert r.verdict == "refuted" and "other_vm_unmapped" in str(r.counterexample), r


def test_encapsulation_holds_and_is_refuted_for_a_snapshot_that_drops_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    scenario = load_scenario(DEFAULT_SCENARIO)
    scenario = attrs.evolve(scenario, vms=scenario.vms[:1], steps=200)
    assert prove_cmd.encapsulation(scenario, "bare_metal").verdict == "held"
    real = snapshot.save_vm

    def forgetful(machine: object, vm: int) -> snapshot.VmImage:
        image = real(machine, vm)  # type: ignore[arg-type]
        return attrs.evolve(image, memory={n: bytes(len(p)) for n, p in image.memory.items()})

    monkeypatch.setattr(snapshot, "save_vm", forgetful)
    r = prove_cmd.encapsulation(scenario, "bare_metal")
    assert r.verdict == "failed" and "copy" in str(r.counterexample)


def test_prove_cli_bad_input_exits_2(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["prove", "/nonexistent/scenario.toml"]) == 2
    assert "unreadable" in capsys.readouterr().err


@pytest.mark.parametrize("design", DESIGNS)
def test_handler_effects_agree_with_the_executor(design: str) -> None:
    """Every action traced is in DESIGN_ACTIONS; after each ``map`` the VM's EPT leaf for the page
    is what the symbolic effect writes (up to the accessed / dirty flags), evaluated at the
    concrete backing and address."""
    machine = default_machine(design)
    mapped = 0
    for _ in range(3):
        before = machine
        machine, trace = run(machine, 150)
        for e in trace:
            if e.kind == "handled":
                assert e.get("action") in DESIGN_ACTIONS[design], e
        for vm_before, vm in zip(before.vms, machine.vms, strict=True):
            for page in sorted(vm.mapped - vm_before.mapped):
                gpa = page << 12
                state = State(z3.K(z3.BitVecSort(52), bv(0)), bv(vm.backing), bv(vm.memory_bytes),
                              *(bv(0) for _ in range(4)))
                pre, after = map_backed(state, bv(gpa))
                expected = z3.simplify(z3.Select(after.ept, bv(page, 52))).as_long()
                assert z3.is_true(z3.simplify(pre))
                ept = ownership(machine).vms[vm.index].views[0].ept
                walked = walk_ept(ept, machine.memory, gpa, [])
                # the processor may since have set the accessed / dirty flags (SDM Vol. 3C §30.3.4)
                assert isinstance(walked, EptWalk) and walked.leaf & ~(ACCESSED | DIRTY) == expected
                mapped += 1
    assert mapped > 0


@pytest.mark.parametrize("mutate", ["none", "other_vm", "ept_table", "vmcs"])
def test_range_analysis_and_z3_agree(mutate: str) -> None:
    """The concrete predicates (a range analysis over EPT leaves) and z3 agree on small machines."""
    m = default_machine("hybrid")
    target = {"none": None, "other_vm": m.vms[0].backing + 0x7000, "ept_table": m.vms[2].ept_root,
              "vmcs": m.vms[0].vcpus[0].vmcs_addr}[mutate]
    machine = m if target is None else remap(m, 1, 0x31_0000, target)
    found = {v.invariant for v in check_all(machine)}
    for r in prove_machine(machine):
        assert (r.verdict == "proved") == (r.invariant not in found), (r, found)


def test_prove_cli_json_on_a_small_scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "one.toml"
    scenario.write_text('design = "bare_metal"\nsteps = 200\n[[vm]]\nname = "solo"\nworkload = "compute"\n'
                        'length = 6\n')
    assert cli.main(["prove", str(scenario), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (design,) = report["designs"]
    verdicts = {r["invariant"]: r["verdict"] for r in design["invariants"]}
    assert verdicts == {"partitioning": "proved", "isolation": "proved", "tlb_isolation": "proved",
                        "io_msr_grants": "proved", "encapsulation": "held", "hardware_independence": "held"}
    assert all(h["verdict"] == "proved" for h in design["handlers"]) and design["concrete_violations"] == []


def test_hardware_independence_holds_and_is_refuted_for_a_design_leaking_host_addresses(
        monkeypatch: pytest.MonkeyPatch) -> None:
    scenario = parse_scenario({"design": "bare_metal", "steps": 100,
                               "vm": [{"name": "solo", "program": [{"op": "load", "gva": 0x30_0000}]}]})
    assert prove_cmd.hardware_independence(scenario, "bare_metal").verdict == "held"
    real = executor.map_backed

    def leaky(memory: PhysicalMemory, vm: Vm, levels: Any, gpa: int) -> tuple[PhysicalMemory, Vm]:
        """A handler bug: the freshly backed page starts with its host-physical address."""
        memory, vm = real(memory, vm, levels, gpa)
        return memory.write_int(HostPhysAddr(backing_hpa(vm, gpa & ~0xFFF)), 8, backing_hpa(vm, gpa)), vm

    monkeypatch.setattr(executor, "map_backed", leaky)
    r = prove_cmd.hardware_independence(scenario, "bare_metal")
    assert r.verdict == "failed" and "solo" in str(r.counterexample)
