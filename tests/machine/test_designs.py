"""Per-design VMCSs (spec/machine/designs.toml): the controls each design sets, the MSR and I/O
bitmaps it writes to host memory, and that the exit rules let exactly the granted MSRs and ports
through."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtx import guest_ops as g
from vtx import spec
from vtx.errors import InputError, SpecError
from vtx.machine.designs import DESIGNS, get_design
from vtx.machine.designs.base import BITMAP_PAGES, EXITING_CONTROLS
from vtx.machine.designs.choices import CHOICES, PV_OPS, MsrGrant, io_bitmaps, load_choices, msr_bitmap
from vtx.machine.executor import guest_context, run
from vtx.machine.layout import LAYOUT
from vtx.machine.model import Machine
from vtx.machine.scenario import SIMPLE_OPS, build_machine, parse_scenario
from vtx.paging.formats import PAGE_SIZE
from vtx.paging.memory import HostPhysAddr
from vtx.spec import get_control
from vtx.vmx.exits.causes import IO_BITMAP_B, MSR_HIGH, MSR_LOW, MSR_OFFSETS
from vtx.vmx.exits.rules import Executes, GuestContext, decide
from vtx.vmx.vmcs import Vmcs


def entered(design: str, **vm: object) -> tuple[Machine, Vmcs, GuestContext]:
    """A one-VM machine under ``design`` after its first VM entry, the VMCS in force and the
    guest context the exit rules judge with."""
    s = parse_scenario({"tick": 0.0, "design": design, "vm": [{"name": "g", "program": [{"op": "cpuid"}], **vm}]})
    machine, trace = run(build_machine(s, design), 1)
    assert [e.kind for e in trace][-1] == "entry"
    lp = machine.processor(0)
    vmcs = lp.get_current_vmcs()
    return machine, vmcs, guest_context(vmcs, lp, machine.memory)


ENTERED = {d: entered(d) for d in DESIGNS}


def executes(design: str, op: g.GuestOp) -> bool:
    machine, vmcs, ctx = ENTERED[design]
    return isinstance(decide(op, vmcs, ctx, caps=machine.caps), Executes)


# ------------------------------------------------------------------ the table


def test_every_design_has_a_row_with_its_origin() -> None:
    assert set(CHOICES) == set(DESIGNS)
    assert all(c.origin and c.kinds for c in CHOICES.values())
    assert CHOICES["bare_metal"].unsure and not CHOICES["hosted"].unsure
    assert all(m.origin for c in CHOICES.values() for m in c.msrs)


def test_designs_build_different_vmcss() -> None:
    """KVM: unconditional I/O exiting and MSR bitmaps; Xen: I/O and MSR bitmaps; ESX (vtx's
    choice): unconditional I/O exiting, no MSR bitmaps."""
    uses = {d: {n for n in ("unconditional_io_exiting", "use_io_bitmaps", "use_msr_bitmaps")
                if ENTERED[d][1]["CPU_BASED_VM_EXEC_CONTROL"] & get_control("proc", n).mask} for d in DESIGNS}
    assert uses == {"hosted": {"unconditional_io_exiting", "use_msr_bitmaps"},
                    "bare_metal": {"unconditional_io_exiting"},
                    "hybrid": {"use_io_bitmaps", "use_msr_bitmaps"}}


def test_exiting_controls_are_every_control_some_design_sets() -> None:
    assert set(EXITING_CONTROLS) == {(c.field, c.name) for d in CHOICES.values() for c in d.controls}
    assert ("proc", "use_io_bitmaps") in EXITING_CONTROLS and ("proc", "hlt_exiting") in EXITING_CONTROLS


def _table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    (tmp_path / "machine").mkdir()
    (tmp_path / "machine" / "designs.toml").write_text(text)
    monkeypatch.setattr(spec, "SPEC_DIR", tmp_path)


DESIGN_ROW = '[[design]]\nname = "x"\nkinds = ["hvm"]\norigin = "o"\ncontrols = [{controls}]\n'
CITE = '[citations]\n"4.2.1" = { doc = "sdm", volume = "4", section = "2.1", title = "Architectural MSRs" }\n'


@pytest.mark.parametrize(("text", "rule"), [
    (DESIGN_ROW.format(controls='"proc.no_such_control"'), "controls.toml"),
    (CITE + DESIGN_ROW.format(controls='"proc.use_msr_bitmaps"') +
     '[[msr]]\ndesign = "x"\nname = "M"\nindex = 0x4000\naccess = "r"\ncite = "4.2.1"\norigin = "o"\n', "covers"),
    (CITE + DESIGN_ROW.format(controls='"proc.use_msr_bitmaps"') +
     '[[msr]]\ndesign = "x"\nname = "M"\nindex = 0x10\naccess = "w"\ncite = "4.2.1"\norigin = "o"\n', "covers"),
    (CITE + DESIGN_ROW.format(controls='"proc.hlt_exiting"') +
     '[[msr]]\ndesign = "x"\nname = "M"\nindex = 0x10\naccess = "r"\ncite = "4.2.1"\norigin = "o"\n', "MSR bitmaps"),
    (DESIGN_ROW.format(controls='"proc.unconditional_io_exiting"') + '[[port]]\ndesign = "x"\nport = 0x80\n',
     "I/O bitmaps"),
    (DESIGN_ROW.format(controls="") + '[[port]]\ndesign = "y"\nport = 0x80\n', "rows must name a"),
    (DESIGN_ROW.format(controls="") + '[[pv_op]]\nop = "cpuid"\nmechanism = "trap"\norigin = "o"\n', "mechanism"),
    (DESIGN_ROW.format(controls="") + '[[pv_op]]\nop = "cpuid"\nmechanism = "fast"\norigin = "o"\n', "mechanism"),
])
def test_bad_design_rows_are_spec_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str,
                                         rule: str) -> None:
    _table(tmp_path, monkeypatch, text)
    with pytest.raises(SpecError, match=rule):
        load_choices()


def test_a_good_table_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _table(tmp_path, monkeypatch, CITE + DESIGN_ROW.format(controls='"proc.use_msr_bitmaps"') +
           '[[msr]]\ndesign = "x"\nname = "M"\nindex = 0x10\naccess = "rw"\ncite = "4.2.1"\norigin = "o"\n')
    designs, ops = load_choices()
    assert designs["x"].msrs == (MsrGrant("M", 0x10, True, True, "o"),) and not ops


# ------------------------------------------------------------------ bitmaps in host memory


def _bit(page: bytes, index: int) -> int:
    return page[index // 8] >> (index % 8) & 1


def test_msr_bitmap_clears_exactly_the_granted_read_and_write_bits() -> None:
    """SDM Vol. 3C §26.6.9: read-low at byte 0, read-high at 1024, write-low 2048, write-high 3072."""
    page = msr_bitmap([MsrGrant("TSC", 0x10, True, False, ""), MsrGrant("FS", 0xC000_0100, True, True, "")])
    cleared = {n for n in range(PAGE_SIZE * 8) if not _bit(page, n)}
    assert cleared == {MSR_OFFSETS["read_low"] * 8 + 0x10, MSR_OFFSETS["read_high"] * 8 + 0x100,
                       MSR_OFFSETS["write_high"] * 8 + 0x100}


def test_io_bitmaps_clear_exactly_the_granted_ports() -> None:
    a, b = io_bitmaps([0x80, 0xED, 0x8001])
    assert {n for n in range(PAGE_SIZE * 8) if not _bit(a, n)} == {0x80, 0xED}
    assert {n for n in range(PAGE_SIZE * 8) if not _bit(b, n)} == {0x8001 - IO_BITMAP_B.lo}


@pytest.mark.parametrize("design", list(DESIGNS))
def test_bitmaps_are_written_at_the_layout_address_and_the_vmcs_points_at_them(design: str) -> None:
    machine, vmcs, _ = ENTERED[design]
    vm = machine.vms[0]
    assert vm.bitmaps == LAYOUT.bitmap_pages(0)
    choices = CHOICES[design]
    pages = dict(zip(BITMAP_PAGES, (msr_bitmap(choices.msrs), *io_bitmaps(choices.ports)), strict=True))
    for n, (field, content) in enumerate(pages.items()):
        at = vm.bitmaps + n * PAGE_SIZE
        assert machine.memory.read(HostPhysAddr(at), PAGE_SIZE) == content
        uses = (field == "MSR_BITMAP" and choices.uses("proc", "use_msr_bitmaps")) or (field != "MSR_BITMAP" and \
            choices.uses("proc", "use_io_bitmaps"))
        assert vmcs[field] == (at if uses else 0)


def test_each_vm_has_its_own_bitmap_pages() -> None:
    s = parse_scenario({"design": "hybrid", "vm": [{"name": "a"}, {"name": "b", "kind": "pv"}]})
    m = build_machine(s, "hybrid")
    assert m.service is not None
    bases = [vm.bitmaps for vm in m.all_vms]
    assert bases == [LAYOUT.bitmap_pages(n) for n in range(3)]
    assert all(b - a >= len(BITMAP_PAGES) * PAGE_SIZE for a, b in pairwise(bases))


# ------------------------------------------------------------------ exactly the granted MSRs and ports pass


@pytest.mark.parametrize("design", list(DESIGNS))
def test_the_exit_rules_let_exactly_the_granted_msrs_through(design: str) -> None:
    """Every MSR an MSR bitmap can cover, read and written: it executes without a VM exit iff the
    design grants that access; MSRs outside the bitmap ranges always exit (§26.6.9)."""
    machine, _, _ = ENTERED[design]
    grants = {(m.index, w) for m in CHOICES[design].msrs for w, ok in ((False, m.read), (True, m.write)) if ok}
    through = {(msr, w) for rng in (MSR_LOW, MSR_HIGH) for msr in range(rng.lo, rng.hi + 1) for w in (False, True)
               if executes(design, g.Wrmsr(msr) if w else g.Rdmsr(msr))}
    assert through == grants
    assert {msr for msr, _ in through} == get_design(design).msr_grants(machine.vms[0])
    assert not executes(design, g.Rdmsr(MSR_LOW.hi + 1)) and not executes(design, g.Wrmsr(MSR_HIGH.hi + 1))


SAMPLED_PORTS = sorted({*range(0x400), 0x7FFF, 0x8000, 0x8001, 0xCF8, 0xCFC, 0xFFFC, 0xFFFF})


@pytest.mark.parametrize("design", list(DESIGNS))
def test_the_exit_rules_let_exactly_the_granted_ports_through(design: str) -> None:
    machine, _, _ = ENTERED[design]
    grants = get_design(design).io_grants(machine.vms[0])
    assert grants == CHOICES[design].ports
    through = {p for p in SAMPLED_PORTS for inp in (True, False) if executes(design, g.Io(p, 1, input=inp))}
    assert through == grants
    # a wider access passes only if every byte's port is granted (§27.1.3)
    assert all(not executes(design, g.Io(p, 2, input=True)) for p in grants)


@given(port=st.integers(0, 0xFFFF), size=st.sampled_from([1, 2, 4]), design=st.sampled_from(sorted(DESIGNS)))
def test_any_port_access_passes_iff_all_its_ports_are_granted(port: int, size: int, design: str) -> None:
    machine, _, _ = ENTERED[design]
    grants = get_design(design).io_grants(machine.vms[0])
    expected = port + size - 1 <= 0xFFFF and all(p in grants for p in range(port, port + size))
    assert executes(design, g.Io(port, size, input=False)) == expected


def test_kvm_passes_tsc_reads_through_but_not_writes() -> None:
    assert executes("hosted", g.Rdmsr(LAYOUT.msr)) and not executes("hosted", g.Wrmsr(LAYOUT.msr, 1))
    assert not executes("hybrid", g.Rdmsr(LAYOUT.msr)) and not executes("bare_metal", g.Rdmsr(LAYOUT.msr))


def test_xen_passes_port_80_through_and_kvm_does_not() -> None:
    assert executes("hybrid", g.Io(0x80, 1, input=False)) and not executes("hosted", g.Io(0x80, 1, input=False))


def test_a_run_executes_a_granted_port_without_an_exit() -> None:
    s = parse_scenario({"tick": 0.0, "design": "hybrid", "vm": [{"name": "g", "program": [
        {"op": "out", "port": 0x80}, {"op": "out", "port": 0x81}]}]})
    _, trace = run(build_machine(s, "hybrid"), 50)
    assert [e.kind for e in trace if e.get("operation") == "io"] == ["executed", "exit"]


# ------------------------------------------------------------------ kinds


def test_classic_pv_guests_get_no_grants() -> None:
    s = parse_scenario({"design": "hybrid", "vm": [{"name": "c", "kind": "pv_classic"}]})
    m = build_machine(s, "hybrid")
    assert get_design("hybrid").io_grants(m.vms[0]) == frozenset() == get_design("hybrid").msr_grants(m.vms[0])


@pytest.mark.parametrize("design", ["hosted", "bare_metal"])
def test_only_the_hybrid_design_runs_classic_pv_guests(design: str) -> None:
    with pytest.raises(InputError, match=r"vm\[1\]\.kind") as e:
        parse_scenario({"designs": ["hybrid", design], "vm": [{"name": "a"}, {"name": "c", "kind": "pv_classic"}]})
    assert design in str(e.value)
    s = parse_scenario({"design": "hybrid", "vm": [{"name": "c", "kind": "pv_classic"}]})
    with pytest.raises(InputError, match=r"vm\[0\]\.kind"):
        build_machine(s, design)


def test_every_program_operation_has_a_classic_pv_form() -> None:
    assert set(SIMPLE_OPS) | {"rdmsr", "wrmsr", "in", "out", "map_page"} <= set(PV_OPS)
