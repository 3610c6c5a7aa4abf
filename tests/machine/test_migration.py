"""Live migration: pre-copy driven by EPT dirty flags or page-modification logging, stop-and-copy,
and the PML log-full exit."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_snapshot import fresh

from vtx.errors import InputError
from vtx.machine.dirty import ept_dirty_pages, pml_entries
from vtx.machine.executor import run
from vtx.machine.migration import collect, migrate
from vtx.machine.scenario import DEFAULT_SCENARIO, build_machine, load_scenario, parse_scenario
from vtx.machine.snapshot import HOST_OWNED, IncompatibleHost, guest_visible, save_vm
from vtx.paging.formats import PAGE_SIZE
from vtx.spec import VMCS_FIELDS
from vtx.vmx.exits.causes import PML_ENTRIES
from vtx.vmx.vmcs import Vmcs

MIB = 1 << 20


def writer(stores: list[tuple[int, int]], *, memory_mib: int = 4, profile: str = "skylake_client") -> Any:
    """One vCPU storing ``value`` to data page ``page`` (upper half of guest memory) for each pair."""
    base = memory_mib * MIB // 2
    program = [{"op": "store", "gva": base + page * PAGE_SIZE + 8 * (n % 8), "value": value}
               for n, (page, value) in enumerate(stores)]
    return parse_scenario({"seed": 2, "logical_processors": 1, "tick": 0, "profile": profile,
                           "vm": [{"name": "g", "memory_mib": memory_mib, "program": program}]})


def guest_state(fields: Any) -> dict[str, int]:
    return {k: v for k, v in fields.items()
            if VMCS_FIELDS[k].type.value in ("guest", "control") and k not in HOST_OWNED | {"EPT_POINTER"}}


@settings(max_examples=10, deadline=None)
@given(stores=st.lists(st.tuples(st.integers(0, 40), st.integers(1, 1 << 32)), min_size=1, max_size=40),
       steps=st.integers(3, 30), rounds=st.integers(1, 5), threshold=st.integers(0, 6),
       design=st.sampled_from(("hosted", "bare_metal", "hybrid")))
def test_destination_equals_source_at_switch_over(*, stores: list[tuple[int, int]], steps: int, rounds: int,
                                                  threshold: int, design: str) -> None:
    """For generated write patterns during pre-copy: the pages sent (assembled over the rounds)
    and the destination's memory equal the source's at switch-over, and so does the vCPU state;
    PML and EPT-dirty tracking report the same dirty pages each round; and the guest, resumed on
    the destination, continues the trace it would have had without migrating."""
    sc = writer(stores)
    results = {}
    for mode in ("pml", "ept_dirty"):
        results[mode] = migrate(build_machine(sc, design), 0, fresh(design), steps_per_round=steps,
                                max_rounds=rounds, stop_threshold=threshold, mode=mode)
    r = results["pml"]
    at_switch = save_vm(r.src, 0)
    on_dst = save_vm(r.dst, 0)
    assert r.image.memory == at_switch.memory == on_dst.memory
    for s, d in zip(at_switch.vcpus, on_dst.vcpus, strict=True):
        assert (s.pc, s.pending_vector, s.rax, s.yielded) == (d.pc, d.pending_vector, d.rax, d.yielded)
        assert guest_state(s.fields) == guest_state(d.fields)
    assert [x.dirty for x in r.report.rounds] == [x.dirty for x in results["ept_dirty"].report.rounds]
    assert r.report.total_pages >= len(at_switch.memory) and r.report.downtime_steps >= 1
    _whole, reference = run(build_machine(sc, design), 3000)
    end, after = run(r.dst, 3000)
    assert end.all_done
    assert guest_visible(r.trace + after, "g") == guest_visible(reference, "g")


def test_pre_copy_sends_each_round_what_the_last_one_dirtied() -> None:
    sc = writer([(p % 12, p + 1) for p in range(60)])
    r = migrate(build_machine(sc, "hosted"), 0, fresh("hosted"), steps_per_round=20, max_rounds=3, stop_threshold=0)
    rounds = r.report.rounds
    assert rounds[0].pages_sent == len(build_machine(sc, "hosted").vms[0].mapped)  # round 0: everything
    for prev, cur in itertools.pairwise(rounds):
        assert cur.pages_sent >= len(prev.dirty)
    assert r.report.total_pages == sum(x.pages_sent for x in rounds) + r.report.final_pages
    assert not r.report.converged and len(rounds) == 3
    assert all(v.paused for v in r.src.vms[0].vcpus)
    assert any(e.get("instruction") == "invept" for e in r.trace)


def test_an_idle_vm_converges_at_once() -> None:
    sc = writer([(0, 1)])
    src, _ = run(build_machine(sc, "hosted"), 200)
    assert src.all_done
    r = migrate(src, 0, fresh("hosted"), steps_per_round=10, max_rounds=5, stop_threshold=0)
    assert r.report.converged and len(r.report.rounds) == 1 and r.report.final_pages == 0


def test_migration_needs_dirty_tracking_and_a_capable_destination() -> None:
    ivy = writer([(0, 1)], profile="ivybridge_client")
    with pytest.raises(IncompatibleHost) as e:
        migrate(build_machine(ivy, "hosted"), 0, fresh("hosted"), steps_per_round=5, max_rounds=2,
                stop_threshold=0, mode="ept_dirty")
    assert e.value.missing == ("EPT: Accessed and dirty flags for EPT supported (IA32_VMX_EPT_VPID_CAP bit 21)",)
    raptor = writer([(0, 1)], profile="raptorlake_client")
    with pytest.raises(IncompatibleHost) as e:
        migrate(build_machine(raptor, "hosted"), 0, fresh("hosted", profile="raptorlake_client"), steps_per_round=5,
                max_rounds=2, stop_threshold=0, mode="pml")
    assert e.value.missing == ("Secondary processor-based VM-execution controls: enable_pml "
                               "(IA32_VMX_PROCBASED_CTLS2 allowed-1 bit 17)",)
    ok = migrate(build_machine(raptor, "hosted"), 0, fresh("hosted", profile="raptorlake_client"), steps_per_round=5,
                 max_rounds=2, stop_threshold=0, mode="ept_dirty")
    assert save_vm(ok.dst, 0).memory == save_vm(ok.src, 0).memory
    with pytest.raises(IncompatibleHost, match="enable_pml"):
        migrate(build_machine(writer([(0, 1)]), "hosted"), 0, fresh("hosted", profile="raptorlake_client"),
                steps_per_round=5, max_rounds=2, stop_threshold=0)
    with pytest.raises(InputError, match="mode"):
        migrate(build_machine(writer([(0, 1)]), "hosted"), 0, fresh("hosted"), steps_per_round=5, max_rounds=2,
                stop_threshold=0, mode="bitmap")
    with pytest.raises(InputError, match="steps_per_round"):
        migrate(build_machine(writer([(0, 1)]), "hosted"), 0, fresh("hosted"), steps_per_round=0, max_rounds=2,
                stop_threshold=0)


def test_pml_full_exit_when_the_log_fills() -> None:
    """Storing to more than 512 distinct pages: the processor logs 512 guest-physical addresses
    (index 511 down to 0, then 0xFFFF), the next page that becomes dirty finds the index outside
    0-511 and exits with PML_FULL before the store happens; the hypervisor drains the 512 entries
    and resets the index; the store is retried and completes."""
    pages = PML_ENTRIES + 40
    sc = writer([(p, p + 1) for p in range(pages)], memory_mib=7)
    m = build_machine(sc, "hosted")
    mapped_at_start = len(m.vms[0].mapped)
    end, trace = run(m, 20 * pages)
    assert end.all_done
    full = [e for e in trace if e.kind == "exit" and e.get("reason") == "PML_FULL"]
    assert len(full) == 1
    vmcs = full[0].vmcs
    assert isinstance(vmcs, Vmcs) and vmcs["GUEST_PML_INDEX"] == 0xFFFF
    stores_before = sum(1 for e in trace[:trace.index(full[0])] if e.kind == "access")
    assert stores_before + mapped_at_start >= PML_ENTRIES  # 512 pages were dirtied before the exit
    handled = trace[trace.index(full[0]) + 1]
    assert handled.kind == "handled" and handled.get("action") == "pml_drain" and not handled.get("advance")
    vm = end.vms[0]
    assert len(vm.logged) == PML_ENTRIES
    after = end.regions[vm.vcpus[0].vmcs_addr]
    assert isinstance(after, Vmcs)
    logged = vm.logged | {gpa >> 12 for gpa in pml_entries(end.memory, after)}
    assert logged == ept_dirty_pages(end, vm)  # the log and the dirty flags agree
    assert all(vm.is_backed(p * PAGE_SIZE) for p in logged)
    _, drained, _ = collect(end, 0, "pml")
    assert drained == logged


@pytest.mark.parametrize("design", ["hosted", "bare_metal", "hybrid"])
def test_default_scenario_vms_migrate(design: str) -> None:
    sc = load_scenario(DEFAULT_SCENARIO)
    for index in range(len(sc.vms)):
        src, _ = run(build_machine(sc, design), 150)
        r = migrate(src, index, fresh(design), steps_per_round=50, max_rounds=4, stop_threshold=2)
        name = sc.vms[index].name
        assert save_vm(r.dst, 0).memory == save_vm(r.src, index).memory, name
        end, _ = run(r.dst, 3000)
        assert not any(v.failed for v in end.vms[0].vcpus), name


