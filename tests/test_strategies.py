"""The public strategies of :mod:`vtx.strategies` produce what their docstrings promise: consistent
capability profiles, VMCSs that pass every VM-entry check, VMCSs that break exactly the named check,
page tables and EPT hierarchies that translate as built, and scenarios the executor accepts."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from vtx import strategies as vst
from vtx.kvm.boot import CR0, CR4, EFER, MODE, RFLAGS, P
from vtx.machine.executor import run
from vtx.machine.model import LinearAccess
from vtx.machine.scenario import build_machine, parse_scenario
from vtx.paging.ept import R, W, X, translate_gpa
from vtx.paging.guest import Access, AccessKind, PagingFeatures, PagingState, translate
from vtx.paging.outcomes import EptMisconfig, EptViolation, Translated
from vtx.vmx.capabilities import Capabilities, load_preset
from vtx.vmx.entry import evaluate_vm_entry

MAX = load_preset("max")
SKYLAKE = load_preset("skylake_client")


@given(vst.capabilities())
def test_capabilities_are_consistent_and_only_withdraw_optional_controls(caps: Capabilities) -> None:
    assert caps.consistency_problems() == []
    base = load_preset(caps.name.removesuffix("-varied"))
    for key in ("pin", "proc", "proc2", "exit", "entry"):
        a0, a1, b0, b1 = caps.allowed0(key), caps.allowed1(key), base.allowed0(key), base.allowed1(key)
        if b1 is None:
            continue
        assert a1 is not None and a0 is not None and b0 is not None
        assert a1 & ~b1 == 0 and a0 & b0 == a0  # nothing gained; no must-be-1 bit added


@given(st.sampled_from([MAX, SKYLAKE, load_preset("penryn_server")]).flatmap(
    lambda caps: st.tuples(st.just(caps), vst.vmcs_states(caps))))
def test_vmcs_states_pass_every_entry_check(case: tuple[Capabilities, object]) -> None:
    caps, vmcs = case
    verdict = evaluate_vm_entry(vmcs, caps)  # type: ignore[arg-type]
    assert verdict.succeeds, verdict.violations


@given(vst.capabilities(vary=True).flatmap(lambda caps: st.tuples(st.just(caps), vst.vmcs_states(caps))))
@settings(max_examples=20)
def test_vmcs_states_pass_on_varied_profiles(case: tuple[Capabilities, object]) -> None:
    caps, vmcs = case
    assert evaluate_vm_entry(vmcs, caps).succeeds  # type: ignore[arg-type]


def test_breakable_checks_are_many_and_catalogued() -> None:
    ids = vst.breakable_checks(MAX)
    assert len(ids) >= 80
    assert "guest.cr0.fixed_bits" in ids and "basic.cpl" not in ids


@given(vst.vmcs_breaking(MAX))
def test_vmcs_breaking_breaks_exactly_the_named_check(case: tuple[object, str]) -> None:
    vmcs, check_id = case
    verdict = evaluate_vm_entry(vmcs, MAX)  # type: ignore[arg-type]
    assert {v.check_id for v in verdict.violations} == {check_id}
    assert not verdict.succeeds


@pytest.mark.parametrize("check_id", ["guest.cr0.fixed_bits", "host.cr4.fixed_bits",
                                      "controls.pin_based.reserved_bits"])
def test_vmcs_breaking_a_named_check(check_id: str) -> None:
    @given(vst.vmcs_breaking(SKYLAKE, check_id))
    @settings(max_examples=10)
    def inner(case: tuple[object, str]) -> None:
        vmcs, got = case
        assert got == check_id
        assert {v.check_id for v in evaluate_vm_entry(vmcs, SKYLAKE).violations} == {check_id}  # type: ignore[arg-type]
    inner()


def test_vmcs_breaking_rejects_a_check_of_processor_state() -> None:
    @given(vst.vmcs_breaking(MAX, "basic.cpl"))
    @settings(max_examples=1)
    def inner(case: tuple[object, str]) -> None:
        raise AssertionError("never drawn")
    with pytest.raises(InvalidArgument, match=r"basic\.cpl"):
        inner()


@given(vst.guest_page_tables())
def test_guest_page_tables_translate_their_last_mapping(case: vst.GuestMappings) -> None:
    """The last mapping written wins: where its leaf and the tables above it are present and set
    no reserved bit, the 4-level walk translates its linear address to its guest-physical one."""
    tables, glas, mappings = case
    assert glas[:len(mappings)] == [m.gla for m in mappings]
    last = mappings[-1]
    state = PagingState(CR0, tables.root, CR4, EFER, RFLAGS)
    out = translate(state, PagingFeatures(52, True), tables.memory, last.gla, Access(AccessKind.READ))
    if isinstance(out, Translated):
        assert out.gpa == last.gpa + (last.gla & (last.size - 1)) and out.page_size == last.size
    if not last.leaf_bits & P:
        assert not isinstance(out, Translated)
    depth = next(n for n, lv in enumerate(MODE.levels, 1) if lv.page_size == last.size)
    if len(out.references) == depth and all(r.value & P and not r.value >> 63 for r in out.references):
        assert isinstance(out, Translated)  # present all the way, no reserved bit (XD with NXE = 0)


@given(vst.ept_hierarchies(misconfigured=True), st.data())
def test_ept_hierarchies_translate_as_built(h: vst.EptHierarchy, data: st.DataObject) -> None:
    for m in h.mappings:
        offset = data.draw(st.integers(0, m.size - 1))
        out = translate_gpa(h.ept, h.memory, m.gpa + offset, AccessKind.READ)
        if m.misconfig:
            assert isinstance(out, EptMisconfig)
        elif m.permissions & R:
            assert isinstance(out, Translated) and out.hpa == m.hpa + offset and out.page_size == m.size
        else:
            assert isinstance(out, EptViolation)
        assert not any(m.hpa <= t < m.hpa + m.size for t in h.tables)  # frames never overlap tables
    unmapped = max(m.gpa + m.size for m in h.mappings)
    if h.mapping(unmapped) is None and unmapped >> h.ept.address_bits == 0:
        assert isinstance(translate_gpa(h.ept, h.memory, unmapped, AccessKind.READ), EptViolation)


def test_ept_hierarchies_draw_every_page_size_and_permission() -> None:
    sizes, perms = set(), set()

    @given(vst.ept_hierarchies())
    @settings(max_examples=120, derandomize=True)
    def collect(h: vst.EptHierarchy) -> None:
        for m in h.mappings:
            sizes.add(m.size)
            perms.add(m.permissions)
    collect()
    assert sizes == {4096, 2 << 20, 1 << 30}
    assert perms == {R | W | X, R, R | W, R | X, X}


@given(vst.scenarios(steps=60), st.sampled_from(["hosted", "bare_metal", "hybrid"]))
@settings(max_examples=15)
def test_scenarios_parse_build_and_run(doc: dict[str, object], design: str) -> None:
    scenario = parse_scenario(doc)
    machine, trace = run(build_machine(scenario, design), 60)
    assert machine.step <= 60 and all(e.kind != "entry" or e.get("checks") == "pass" for e in trace)


@given(vst.guest_programs(max_length=6))
def test_guest_programs_are_executor_steps(program: tuple[object, ...]) -> None:
    assert len(program) <= 12


def test_adversarial_programs_reach_beyond_memory_and_remap_paging() -> None:
    scenario = parse_scenario({"vm": [{"name": "a", "program": []}], "profile": "skylake_client"})
    vm = build_machine(scenario, "hosted").vms[0]
    seen: set[int] = set()

    @given(vst.adversarial_programs(vm, caps=SKYLAKE))
    @settings(max_examples=60, derandomize=True)
    def collect(program: tuple[object, ...]) -> None:
        for step in program:
            assert isinstance(step, LinearAccess) and step.gva % 8 == 0
            seen.add(step.gva)
    collect()
    assert any(g >= vm.memory_bytes for g in seen)
    assert any(g >= 1 << 30 for g in seen)  # a region the guest remapped with its own page tables
