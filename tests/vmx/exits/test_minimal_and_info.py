"""The minimal-exit VMCS over every operation kind; exit recording, IDT vectoring and the
preemption-timer countdown."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtx import guest_ops as g
from vtx import spec
from vtx.errors import InputError
from vtx.paging.guest import AccessKind
from vtx.vmx.capabilities import load_preset
from vtx.vmx.exits import causes as C  # noqa: N812 - the cause tables
from vtx.vmx.exits.info import ExitInfo, during_delivery, record_exit
from vtx.vmx.exits.layouts import LAYOUTS
from vtx.vmx.exits.minimal import minimal_exit_vmcs
from vtx.vmx.exits.rules import Executes, GuestContext, GuestFault, decide, preemption_rate, preemption_timer_countdown

PRESETS = {name: load_preset(name) for name in ("skylake_client", "penryn_server", "max")}
MINIMAL = {name: minimal_exit_vmcs(caps) for name, caps in PRESETS.items()}
STATE = GuestContext(cr0=0x8000_0011, rflags=0x202)
U8, U16, U32, U64 = (st.integers(0, 2**n - 1) for n in (8, 16, 32, 64))

OPS: st.SearchStrategy[Any] = st.one_of(
    st.builds(g.Instruction, st.sampled_from(g.INSTRUCTION_MNEMONICS)),
    st.builds(g.LeafInstruction, st.sampled_from(g.LEAF_MNEMONICS), U32),
    st.builds(g.Invlpg, U64), st.builds(g.Invpcid),
    st.builds(g.MovToCr, st.sampled_from([0, 3, 4, 8]), U64), st.builds(g.MovFromCr, st.sampled_from([0, 3, 4, 8])),
    st.builds(g.Clts), st.builds(g.Lmsw, U16), st.builds(g.MovDr, st.integers(0, 7), st.booleans()),
    st.builds(g.Io, U16, st.sampled_from([1, 2, 4]), st.booleans(), st.booleans(), st.booleans()),
    st.builds(g.Rdmsr, U32), st.builds(g.Wrmsr, U32, U64),
    st.builds(g.MsrList, st.booleans(), st.lists(U32, max_size=3).map(tuple)),
    st.builds(g.DescriptorTable, st.sampled_from(g.DESCRIPTOR_MNEMONICS)),
    st.builds(g.Xsaves, st.booleans(), U64), st.builds(g.VmxField, st.booleans(), U16), st.builds(g.VmFunc, U8),
    st.builds(g.MemoryAccess, U64, st.integers(0, 2**39 - 1), st.sampled_from(list(AccessKind))),
    st.builds(g.Exception_, U8, st.one_of(st.none(), U32)),
    st.builds(g.Nmi), st.builds(g.ExternalInterrupt, U8), st.builds(g.Init), st.builds(g.Sipi, U8),
    st.builds(g.Smi, st.booleans()), st.builds(g.TripleFault), st.builds(g.TaskSwitch, U16),
    st.builds(g.InterruptWindow), st.builds(g.NmiWindow), st.builds(g.MonitorTrap), st.builds(g.ApicWrite,
                                                                                                st.integers(0, 4095)),
    st.builds(g.VirtualEoi, U8), st.builds(g.PmlLog), st.builds(g.BusLock), st.builds(g.NotifyWindow),
)
UNCONDITIONAL = {c.mnemonics[0] for c in C.CAUSES if c.op == "instruction" and c.when == "always"}
ALWAYS_EVENTS = {"triple_fault", "init", "task_switch"}


def expected_exit(op: Any, preset: str) -> bool:
    """The minimal-exit VMCS property: only the unconditional operations, the default-1 controls,
    MSRs outside the bitmap ranges, I/O that wraps past FFFFH, and VMREAD/VMWRITE (no VMCS
    shadowing) exit; GETSEC (CR4.SMXE = 0) and RSM (not in SMM) fault first."""
    caps = PRESETS[preset]
    if isinstance(op, g.Instruction):
        return op.mnemonic in UNCONDITIONAL and op.mnemonic not in ("getsec", "rsm")
    if isinstance(op, g.Rdmsr | g.Wrmsr):
        return not any(r.lo <= op.msr <= r.hi for r in (C.MSR_LOW, C.MSR_HIGH))
    if isinstance(op, g.Io):
        return op.port + op.size - 1 > C.IO_BITMAP_B.hi
    if isinstance(op, g.MovToCr | g.MovFromCr) and op.cr == 3:
        return bool(caps.requires("proc", "cr3_load_exiting" if isinstance(op, g.MovToCr) else "cr3_store_exiting"))
    return op.kind in ALWAYS_EVENTS or isinstance(op, g.VmxField)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@given(op=OPS)
def test_minimal_exit_vmcs_property(preset: str, op: Any) -> None:
    out = decide(op, MINIMAL[preset], STATE)
    assert isinstance(out, ExitInfo) == expected_exit(op, preset), out


def test_record_exit_and_idt_vectoring() -> None:
    """A #PF delivered through a task gate: the task-switch exit records the #PF as IDT vectoring."""
    info = decide(g.TaskSwitch(0x30, "task_gate"), MINIMAL["max"], STATE)
    assert isinstance(info, ExitInfo)
    page_fault = C.VECTORS["page_fault"]
    vectored = during_delivery(info, vector=page_fault, type="hardware_exception", error_code=0x6)
    vmcs = record_exit(MINIMAL["max"], vectored)
    assert LAYOUTS["idt_vectoring_info"].decode(vmcs["IDT_VECTORING_INFO_FIELD"]) == {
        "vector": page_fault, "type": 3, "error_code_valid": 1, "valid": 1}
    assert vmcs["IDT_VECTORING_ERROR_CODE"] == 0x6
    assert LAYOUTS["task_switch"].decode(vmcs["EXIT_QUALIFICATION"]) == {"selector": 0x30, "source": 3}
    assert vmcs["VM_EXIT_REASON"] == spec.get_exit_reason("TASK_SWITCH").number
    cpuid = decide(g.Instruction("cpuid", length=2), MINIMAL["max"], STATE)
    assert isinstance(cpuid, ExitInfo)
    assert record_exit(MINIMAL["max"], cpuid)["VM_EXIT_REASON"] == spec.get_exit_reason("CPUID").number


def test_descriptor_table_privilege_and_umip() -> None:
    vmcs = minimal_exit_vmcs(PRESETS["max"])
    user = GuestContext(cr0=0x11, cpl=3)
    umip = GuestContext(cr0=0x11, cpl=3, cr4=spec.reg_bit("CR4", "UMIP").mask)
    assert decide(g.DescriptorTable("lgdt"), vmcs, user) == GuestFault(13, 0)
    assert decide(g.DescriptorTable("sgdt"), vmcs, user) == Executes()
    assert decide(g.DescriptorTable("sgdt"), vmcs, umip) == GuestFault(13, 0)


@given(value=U32, before=st.integers(0, 2**40), delta=st.integers(0, 2**20), rate=st.integers(0, 31))
def test_preemption_timer_countdown(value: int, before: int, delta: int, rate: int) -> None:
    new, expired = preemption_timer_countdown(value, before, before + delta, rate)
    ticks = ((before + delta) >> rate) - (before >> rate)
    assert new == max(value - ticks, 0) and expired == (new == 0)
    assert ticks <= (delta >> rate) + 1


def test_preemption_timer_rate_and_bad_input() -> None:
    assert preemption_rate(PRESETS["skylake_client"]) == PRESETS["skylake_client"].msr_field(
        "IA32_VMX_MISC", "preemption_timer_rate")
    assert preemption_timer_countdown(1, 0, 1 << 5, 5) == (0, True)
    assert preemption_timer_countdown(2, 0, (1 << 5) - 1, 5) == (2, False)
    with pytest.raises(InputError):
        preemption_timer_countdown(1, 10, 9, 0)
