"""PAUSE-loop exiting (SDM Vol. 3C §27.1.3): the first-PAUSE-in-a-loop rule with explicit TSC values."""

from __future__ import annotations

import pytest

from vtx import guest_ops as g
from vtx import spec
from vtx.errors import InputError
from vtx.spec import get_control
from vtx.vmx.capabilities import load_preset
from vtx.vmx.exits.info import ExitInfo
from vtx.vmx.exits.minimal import minimal_exit_vmcs
from vtx.vmx.exits.rules import Executes, GuestContext, decide, pause_loop
from vtx.vmx.vmcs import Vmcs

GAP, WINDOW = 128, 4096


def _ple(vmcs: Vmcs, *, pause_exiting: bool = False, ple: bool = True) -> Vmcs:
    proc, proc2 = (spec.CONTROL_FIELDS[k].vmcs_field for k in ("proc", "proc2"))
    secondary = get_control("proc", "activate_secondary_controls").mask
    pause = get_control("proc", "pause_exiting").mask
    vmcs = vmcs.set(proc, (vmcs.get(proc) | secondary) & ~pause | (pause if pause_exiting else 0))
    ple_bit = get_control("proc2", "pause_loop_exiting").mask
    vmcs = vmcs.set(proc2, vmcs.get(proc2) | ple_bit if ple else vmcs.get(proc2) & ~ple_bit)
    return vmcs.with_fields({"PLE_GAP": GAP, "PLE_WINDOW": WINDOW})


BASE = _ple(minimal_exit_vmcs(load_preset("max")))
PAUSE = g.Instruction("pause", length=2)

# (tsc, previous PAUSE at CPL 0, loop start, first of a loop, loop start after, exits)
LOOP_ROWS = [
    (1000, None, None, True, 1000, False),  # first PAUSE since VM entry
    (1000 + GAP, 1000, 1000, False, 1000, False),  # exactly PLE_Gap after the previous one: same loop
    (1001 + GAP, 1000, 1000, True, 1001 + GAP, False),  # more than PLE_Gap after: a new loop
    (1000 + WINDOW, 1000 + WINDOW - 1, 1000, False, 1000, False),  # exactly PLE_Window into the loop
    (1001 + WINDOW, 1000 + WINDOW, 1000, False, 1000, True),  # more than PLE_Window into the loop: exit
    (1001 + WINDOW + GAP + 1, 1000 + WINDOW, 1000, True, 1001 + WINDOW + GAP + 1, False),  # gap resets the loop
]


@pytest.mark.parametrize("row", LOOP_ROWS)
def test_pause_loop_rule(row: tuple[int, int | None, int | None, bool, int, bool]) -> None:
    tsc, last, start, first, after, exit_ = row
    s = GuestContext(tsc=tsc, last_pause_tsc=last, pause_loop_start=start)
    step = pause_loop(BASE, s)
    assert (step.first, step.loop_start, step.exits) == (first, after, exit_)
    out = decide(PAUSE, BASE, s)
    assert isinstance(out, ExitInfo) == exit_, out
    if isinstance(out, ExitInfo):
        assert out.reason.name == "PAUSE_INSTRUCTION" and out.instruction_length == 2


# (cpl, PAUSE exiting, PAUSE-loop exiting, exits) for a PAUSE deep in a long loop
CONTROL_ROWS = [
    (0, False, True, True),
    (3, False, True, False),  # PAUSE-loop exiting applies at CPL 0 only
    (3, True, True, True),  # PAUSE exiting applies at every CPL and takes precedence
    (0, True, False, True),
    (0, False, False, False),
]


@pytest.mark.parametrize(("cpl", "pause_exiting", "ple", "exit_"), CONTROL_ROWS)
def test_pause_controls(cpl: int, pause_exiting: bool, ple: bool, exit_: bool) -> None:
    vmcs = _ple(BASE, pause_exiting=pause_exiting, ple=ple)
    s = GuestContext(cpl=cpl, tsc=10 * WINDOW, last_pause_tsc=10 * WINDOW - 1, pause_loop_start=0)
    out = decide(PAUSE, vmcs, s)
    assert isinstance(out, ExitInfo) if exit_ else out == Executes()


def test_a_walking_spin_loop_exits_once_past_the_window() -> None:
    """A guest spinning with PAUSE every GAP ticks exits at the first PAUSE more than PLE_Window
    ticks after the loop's first one, and not before."""
    s = GuestContext(tsc=0)
    exited_at = None
    for tsc in range(0, 2 * WINDOW, GAP):
        s = GuestContext(tsc=tsc, last_pause_tsc=s.last_pause_tsc, pause_loop_start=s.pause_loop_start)
        step = pause_loop(BASE, s)
        if step.exits:
            exited_at = tsc
            break
        s = GuestContext(tsc=tsc, last_pause_tsc=tsc, pause_loop_start=step.loop_start)
    assert exited_at == (WINDOW // GAP + 1) * GAP


def test_tsc_going_backwards_is_bad_input() -> None:
    with pytest.raises(InputError):
        pause_loop(BASE, GuestContext(tsc=5, last_pause_tsc=6, pause_loop_start=0))
