"""The SVM intercepts: each intercept makes its operation exit when set and execute when clear;
every #VMEXIT code is produced with its EXITINFO decoded, or listed as not modelled; the
minimal-intercept VMCB and permission-map properties."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtx import guest_ops as g
from vtx import spec
from vtx.errors import NotEvaluable
from vtx.paging.guest import AccessKind
from vtx.paging.memory import HostPhysAddr, PhysicalMemory
from vtx.svm import intercepts as I  # noqa: N812 - the module under test, read everywhere below
from vtx.svm.minimal import minimal_intercept_vmcb
from vtx.svm.spec import CONSTANTS, EXIT_CODES, get_intercept
from vtx.svm.spec import reg_bit as svm_reg_bit
from vtx.svm.templates import IOPM_BASE, MSRPM_BASE
from vtx.svm.vmcb import Vmcb
from vtx.svm.vmrun import SvmVmexit
from vtx.vmx.capabilities import load_preset
from vtx.vmx.exits.rules import Executes, GuestFault

CAPS = load_preset("amd_genoa_server")
NO_DECODE = attrs.evolve(CAPS, facts={**CAPS.facts, "CPUID_Fn8000_000A_EDX": 0})
BASE = minimal_intercept_vmcb(CAPS)
SVME = svm_reg_bit("AMD_EFER", "SVME").mask
PE_PG = spec.reg_bit("CR0", "PE").mask | spec.reg_bit("CR0", "PG").mask
STATE = I.SvmGuestContext(cr0=PE_PG, efer=SVME, rflags=0x202, rip=0x1000)
PRODUCED: set[str] = set()


def with_intercept(vmcb: Vmcb, name: str, on: bool = True) -> Vmcb:
    i = get_intercept(name)
    word = vmcb.get(i.field)
    return vmcb.with_fields({i.field.name: word | i.mask if on else word & ~i.mask})


def exits(decision: object, code: str) -> SvmVmexit:
    assert isinstance(decision, SvmVmexit), decision
    assert decision.code.name == code
    PRODUCED.add(code)
    return decision


def decide(op: Any, vmcb: Vmcb = BASE, state: I.SvmGuestContext = STATE, caps: Any = CAPS) -> Any:
    return I.decide(op, vmcb, state, caps=caps)


# One operation per (kind, mnemonic) for the rows decided by an intercept bit alone.
SAMPLES: dict[tuple[str, str | None], Any] = {
    **{("instruction", m): g.Instruction(m) for m in g.INSTRUCTION_MNEMONICS},
    **{("svm_instruction", m): g.SvmInstruction(m) for m in g.SVM_INSTRUCTION_MNEMONICS},
    **{("descriptor_table", m): g.DescriptorTable(m) for m in g.DESCRIPTOR_MNEMONICS},
    ("invlpg", None): g.Invlpg(0xFFFF_8000_0000_1000), ("invpcid", None): g.Invpcid(),
    ("nmi", None): g.Nmi(), ("external_interrupt", None): g.ExternalInterrupt(0x20), ("init", None): g.Init(),
    ("smi", None): g.Smi(), ("triple_fault", None): g.TripleFault(), ("task_switch", None): g.TaskSwitch(0x28),
    ("software_interrupt", None): g.SoftwareInterrupt(0x80),
}
INTERCEPT_ROWS = [(c, m) for c in I.CAUSES if c.intercept is not None for m in (c.mnemonics or (None,))]


@pytest.mark.parametrize(("cause", "mnemonic"), INTERCEPT_ROWS,
                         ids=[f"{c.op}-{m}-{c.intercept.name}" for c, m in INTERCEPT_ROWS])  # type: ignore[union-attr]
def test_intercept_bit_decides_exit(cause: I.SvmCause, mnemonic: str | None) -> None:
    op = SAMPLES[(cause.op, mnemonic)]
    assert cause.intercept is not None
    on, off = with_intercept(BASE, cause.intercept.name), with_intercept(BASE, cause.intercept.name, False)
    exits(decide(op, on), cause.intercept.exit.name)
    assert not isinstance(decide(op, off), SvmVmexit)


def test_faults_before_intercepts_and_exit_first() -> None:
    """§15.9: #GP for CPL and #UD come before the intercept; RSM, XSETBV and VMMCALL check the
    intercept first (VMMCALL is #UD unless intercepted)."""
    user = I.SvmGuestContext(cr0=PE_PG, efer=SVME, cpl=3)
    hlt = with_intercept(BASE, "INTERCEPT_HLT")
    assert decide(g.Instruction("hlt"), hlt, user) == GuestFault(13, 0)
    assert decide(g.SvmInstruction("vmrun"), BASE, user) == GuestFault(13, 0)
    assert decide(g.SvmInstruction("vmrun"), BASE, I.SvmGuestContext(cr0=PE_PG)) == GuestFault(6)
    assert decide(g.SvmInstruction("vmmcall"), BASE) == GuestFault(6)
    exits(decide(g.SvmInstruction("vmmcall"), with_intercept(BASE, "INTERCEPT_VMMCALL"), user), "VMEXIT_VMMCALL")
    exits(decide(g.Instruction("rsm"), with_intercept(BASE, "INTERCEPT_RSM")), "VMEXIT_RSM")
    assert decide(g.Instruction("rsm"), BASE) == GuestFault(6)
    exits(decide(g.Instruction("xsetbv"), with_intercept(BASE, "INTERCEPT_XSETBV"), user), "VMEXIT_XSETBV")
    assert decide(g.Instruction("xsetbv"), BASE, user) == GuestFault(13, 0)
    assert decide(g.Instruction("vmxon"), BASE) == GuestFault(6)
    assert decide(g.Instruction("rdrand"), BASE) == Executes()


def test_cr_intercepts_and_exit_info() -> None:
    """CR reads and writes with decode assists: EXITINFO1 bit 63 (MOV) and the GPR; CLTS / LMSW
    report bit 63 = 0; without decode assists EXITINFO1 is 0."""
    mov = exits(decide(g.MovToCr(4, 0x20, gpr=9), with_intercept(BASE, "INTERCEPT_CR4_WRITE")), "VMEXIT_CR4_WRITE")
    assert I.EXIT_INFO["mov_crdr"].decode(mov.exit_info_1) == {"gpr": 9, "mov": 1}
    for cr in (0, 3, 4, 8):
        exits(decide(g.MovToCr(cr, 0x80000011 if cr == 0 else 0), with_intercept(BASE, f"INTERCEPT_CR{cr}_WRITE")),
              f"VMEXIT_CR{cr}_WRITE")
        read = exits(decide(g.MovFromCr(cr, gpr=2), with_intercept(BASE, f"INTERCEPT_CR{cr}_READ")),
                     f"VMEXIT_CR{cr}_READ")
        assert I.EXIT_INFO["mov_crdr"].decode(read.exit_info_1) == {"gpr": 2, "mov": 1}
    clts = exits(decide(g.Clts(), with_intercept(BASE, "INTERCEPT_CR0_WRITE")), "VMEXIT_CR0_WRITE")
    assert I.EXIT_INFO["mov_crdr"].decode(clts.exit_info_1)["mov"] == 0
    plain = decide(g.MovToCr(4, 0x20, gpr=9), with_intercept(BASE, "INTERCEPT_CR4_WRITE"), caps=NO_DECODE)
    assert isinstance(plain, SvmVmexit) and plain.exit_info_1 == 0
    with pytest.raises(NotEvaluable):
        decide(g.MovToCr(4, 0), with_intercept(BASE, "INTERCEPT_CR4_WRITE"), caps=load_preset("max"))


def test_selective_cr0_write() -> None:
    """The selective CR0 write intercept sees MOV to CR0 and LMSW changing a bit other than TS / MP;
    CLTS never; the general CR0 write intercept wins."""
    sel = with_intercept(BASE, "INTERCEPT_SELECTIVE_CR0")
    ts, mp, em = (spec.reg_bit("CR0", b).mask for b in ("TS", "MP", "EM"))
    assert decide(g.MovToCr(0, PE_PG | ts | mp), sel) == Executes(PE_PG | ts | mp)
    exits(decide(g.MovToCr(0, PE_PG | em), sel), "VMEXIT_CR0_SEL_WRITE")
    exits(decide(g.Lmsw(spec.reg_bit("CR0", "PE").mask | em), sel), "VMEXIT_CR0_SEL_WRITE")
    assert decide(g.Lmsw(spec.reg_bit("CR0", "PE").mask | ts), sel) == Executes(PE_PG | ts)
    assert decide(g.Clts(), sel, I.SvmGuestContext(cr0=PE_PG | ts, efer=SVME)) == Executes(PE_PG)
    exits(decide(g.MovToCr(0, PE_PG | em), with_intercept(sel, "INTERCEPT_CR0_WRITE")), "VMEXIT_CR0_WRITE")


def test_sev_es_write_traps() -> None:
    """In an SEV-ES guest the CR and EFER write traps exit after the write, EXITINFO1 = new value;
    without SEV-ES they are ignored."""
    sev_es = BASE.with_fields({"control.misc_ctl": svm_reg_bit("MISC_CTL", "SEV_ES_ENABLE").mask})
    for cr in (0, 3, 4, 8):
        vmcb = with_intercept(sev_es, f"TRAP_CR{cr}_WRITE")
        value = PE_PG if cr == 0 else 0x5
        trap = exits(decide(g.MovToCr(cr, value), vmcb), f"VMEXIT_CR{cr}_WRITE_TRAP")
        assert trap.exit_info_1 == value
        assert decide(g.MovToCr(cr, value), with_intercept(BASE, f"TRAP_CR{cr}_WRITE")) == Executes(value)
    efer = exits(decide(g.Wrmsr(I.EFER_MSR, 0xD01), with_intercept(sev_es, "TRAP_EFER_WRITE")),
                 "VMEXIT_EFER_WRITE_TRAP")
    assert efer.exit_info_1 == 0xD01
    exits(decide(g.Clts(), with_intercept(sev_es, "TRAP_CR0_WRITE")), "VMEXIT_CR0_WRITE_TRAP")


@pytest.mark.parametrize("dr", range(8))
def test_dr_intercepts(dr: int) -> None:
    for to_dr, kind in ((False, "READ"), (True, "WRITE")):
        info = exits(decide(g.MovDr(dr, to_dr, gpr=5), with_intercept(BASE, f"INTERCEPT_DR{dr}_{kind}")),
                     f"VMEXIT_DR{dr}_{kind}")
        assert I.EXIT_INFO["mov_crdr"].decode(info.exit_info_1) == {"gpr": 5, "mov": 0}
        assert decide(g.MovDr(dr, to_dr), BASE) == Executes()


def _memory(*bits: tuple[int, int]) -> PhysicalMemory:
    memory = PhysicalMemory()
    for base, index in bits:
        address = HostPhysAddr(base + index // 8)
        memory = memory.write_int(address, 1, memory.read_int(address, 1) | 1 << index % 8)
    return memory


def test_ioio_exit_info() -> None:
    """EXITINFO1 of IOIO (§15.10.2): port, type, string, REP, size, address size, segment;
    EXITINFO2 the next rIP; the IOIO intercept clear lets every access execute."""
    state = I.SvmGuestContext(cr0=PE_PG, efer=SVME, rip=0x4000, memory=_memory((IOPM_BASE, 0x3F9)))
    op = g.Io(0x3F8, 2, input=False, string=True, rep=True, address_size=32, segment=0, length=2)
    info = exits(decide(op, BASE, state), "VMEXIT_IOIO")
    assert I.EXIT_INFO["ioio"].decode(info.exit_info_1) == {
        "type": 0, "str": 1, "rep": 1, "sz8": 0, "sz16": 1, "sz32": 0, "a16": 0, "a32": 1, "a64": 0, "seg": 0,
        "port": 0x3F8}
    assert info.exit_info_2 == 0x4002
    inp = exits(decide(g.Io(0x3F9, 1, input=True), BASE, state), "VMEXIT_IOIO")
    assert I.EXIT_INFO["ioio"].decode(inp.exit_info_1)["type"] == 1
    assert decide(op, with_intercept(BASE, "INTERCEPT_IOIO_PROT", False), state) == Executes()
    assert decide(g.Io(0x3F8, 1, input=True), BASE, state) == Executes()


def test_msr_exit_info() -> None:
    top = I.MAPS.msr_ranges[-1]
    state = I.SvmGuestContext(cr0=PE_PG, efer=SVME, memory=_memory(
        (MSRPM_BASE + top[1], I.MAPS.bits_per_msr * (top[0].hi - top[0].lo) + I.MAPS.read_bit)))
    read = exits(decide(g.Rdmsr(top[0].hi), BASE, state), "VMEXIT_MSR")
    assert decide(g.Wrmsr(top[0].hi), BASE, state) == Executes()
    assert read.exit_info_1 == I.MSR_ACCESS["read"] == 0
    write = exits(decide(g.Wrmsr(0xC002_0000, 1)), "VMEXIT_MSR")
    assert write.exit_info_1 == I.MSR_ACCESS["write"] == 1
    assert decide(g.Rdmsr(0xC002_0000), with_intercept(BASE, "INTERCEPT_MSR_PROT", False)) == Executes()
    assert decide(g.Rdmsr(0x10), Vmcb()) == Executes()  # no intercepts at all


def test_exception_intercepts() -> None:
    """Every vector 0-31 has its intercept; EXITINFO1 the error code, EXITINFO2 (#PF) the address."""
    for vector in range(32):
        vmcb = with_intercept(BASE, f"INTERCEPT_EXCEPTION_{vector}")
        info = exits(decide(g.Exception_(vector, error_code=0x18), vmcb), f"VMEXIT_EXCP{vector}")
        assert info.exit_info_1 == 0x18
        assert info.exit_info_2 == 0
        assert decide(g.Exception_(vector), BASE) == Executes()
    pf = exits(decide(g.Exception_(14, error_code=0x6, qualification=0xDEAD_B000),
                      with_intercept(BASE, "INTERCEPT_EXCEPTION_14")), "VMEXIT_EXCP14")
    assert (pf.exit_info_1, pf.exit_info_2) == (0x6, 0xDEAD_B000)
    assert decide(g.Exception_(0x40), BASE) == Executes()


def test_plain_exit_info() -> None:
    """INVLPG reports the address, INTn the vector (decode assists), a task switch the selector and
    its source in EXITINFO2 (§15.14.1)."""
    inv = exits(decide(g.Invlpg(0x7000), with_intercept(BASE, "INTERCEPT_INVLPG")), "VMEXIT_INVLPG")
    assert inv.exit_info_1 == 0x7000
    swint = exits(decide(g.SoftwareInterrupt(0x80), with_intercept(BASE, "INTERCEPT_INTn")), "VMEXIT_SWINT")
    assert swint.exit_info_1 == 0x80
    task = with_intercept(BASE, "INTERCEPT_TASK_SWITCH")
    for source, iret, jmp in (("iret", 1, 0), ("jmp", 0, 1), ("call", 0, 0)):
        ts = exits(decide(g.TaskSwitch(0x30, source), task), "VMEXIT_TASK_SWITCH")
        assert ts.exit_info_1 == 0x30
        decoded = I.EXIT_INFO["task_switch"].decode(ts.exit_info_2)
        assert (decoded["iret"], decoded["jmp"], decoded["has_error_code"]) == (iret, jmp, 0)


def _int_ctl(**bits: int) -> int:
    return sum(svm_reg_bit("INT_CTL", name).bits.put(0, value) for name, value in bits.items())


def test_vintr() -> None:
    vintr = with_intercept(BASE, "INTERCEPT_VINTR")
    pending = vintr.with_fields({"control.int_ctl": _int_ctl(V_IRQ=1, V_INTR_PRIO=5, V_TPR=3)})
    exits(decide(g.InterruptWindow(), pending), "VMEXIT_VINTR")
    assert decide(g.InterruptWindow(), vintr) == Executes()
    assert decide(g.InterruptWindow(), pending, I.SvmGuestContext(cr0=PE_PG, rflags=0x2)) == Executes()
    masked = vintr.with_fields({"control.int_ctl": _int_ctl(V_IRQ=1, V_INTR_PRIO=2, V_TPR=3)})
    assert decide(g.InterruptWindow(), masked) == Executes()
    ignore = vintr.with_fields({"control.int_ctl": _int_ctl(V_IRQ=1, V_INTR_PRIO=2, V_TPR=3, V_IGN_TPR=1)})
    exits(decide(g.InterruptWindow(), ignore), "VMEXIT_VINTR")


def test_hlt_idle_hlt_mwait_invlpgb_buslock() -> None:
    idle = with_intercept(BASE, "INTERCEPT_IDLE_HLT")
    exits(decide(g.Instruction("hlt"), idle), "VMEXIT_IDLE_HLT")
    assert decide(g.Instruction("hlt"), idle.with_fields({"control.int_ctl": _int_ctl(V_IRQ=1)})) == Executes()
    exits(decide(g.Instruction("hlt"), with_intercept(idle, "INTERCEPT_HLT")), "VMEXIT_HLT")
    armed = I.SvmGuestContext(cr0=PE_PG, efer=SVME, monitor_armed=True)
    cond = with_intercept(BASE, "INTERCEPT_MWAIT_COND")
    for op in (g.Instruction("mwait"), g.SvmInstruction("mwaitx")):
        exits(decide(op, cond, armed), "VMEXIT_MWAIT_CONDITIONAL")
        assert decide(op, cond) == Executes()
        exits(decide(op, with_intercept(cond, "INTERCEPT_MWAIT")), "VMEXIT_MWAIT")
    illegal = g.SvmInstruction("invlpgb", illegal=True)
    exits(decide(illegal, with_intercept(BASE, "INTERCEPT_INVLPGB_ILLEGAL")), "VMEXIT_INVLPGB_ILLEGAL")
    assert decide(illegal, BASE) == GuestFault(13, 0)
    exits(decide(illegal, with_intercept(BASE, "INTERCEPT_INVLPGB")), "VMEXIT_INVLPGB")
    bus = with_intercept(BASE, "INTERCEPT_BUSLOCK")
    exits(decide(g.BusLock(), bus), "VMEXIT_BUSLOCK")
    assert decide(g.BusLock(), bus.with_fields({"control.bus_lock_counter": 2})) == Executes()


def test_every_exit_code_is_produced_or_not_modelled() -> None:
    """Every #VMEXIT code of exit_codes.toml has a cause row or a not-modelled row (never both),
    and every caused code is produced, with its EXITINFO checked, by the tests of this module."""
    skipped = {n.exit.name for n in I.NOT_MODELLED}
    caused = {e.name for c in I.CAUSES for e in c.exits}
    assert not skipped & caused
    assert {e.name for e in EXIT_CODES} == skipped | caused
    PRODUCED.clear()
    for cause, mnemonic in INTERCEPT_ROWS:
        test_intercept_bit_decides_exit(cause, mnemonic)
    for dr in range(8):
        test_dr_intercepts(dr)
    for test in (test_faults_before_intercepts_and_exit_first, test_cr_intercepts_and_exit_info,
                 test_selective_cr0_write, test_sev_es_write_traps, test_ioio_exit_info, test_msr_exit_info,
                 test_exception_intercepts, test_plain_exit_info, test_vintr, test_hlt_idle_hlt_mwait_invlpgb_buslock):
        test()
    assert caused <= PRODUCED, sorted(caused - PRODUCED)


def test_every_operation_has_a_row_and_every_rule_exists() -> None:
    for kind, cls in g.ALL_OP_KINDS.items():
        mnemonics: tuple[str | None, ...] = (None,)
        if cls is g.Instruction:
            mnemonics = g.INSTRUCTION_MNEMONICS
        elif cls is g.SvmInstruction:
            mnemonics = g.SVM_INSTRUCTION_MNEMONICS
        elif cls is g.DescriptorTable:
            mnemonics = g.DESCRIPTOR_MNEMONICS
        for m in mnemonics:
            assert I.causes_of(kind, m) is not None, (kind, m)
    assert {c.when.removeprefix("rule:") for c in I.CAUSES if c.when.startswith("rule:")} == set(I.RULES)


# ------------------------------------------------------------------ minimal-intercept VMCB properties

U8, U16, U32, U64 = (st.integers(0, 2**n - 1) for n in (8, 16, 32, 64))
OPS: st.SearchStrategy[Any] = st.one_of(
    st.builds(g.Instruction, st.sampled_from(g.INSTRUCTION_MNEMONICS)),
    st.builds(g.SvmInstruction, st.sampled_from(g.SVM_INSTRUCTION_MNEMONICS), illegal=st.booleans()),
    st.builds(g.SoftwareInterrupt, U8), st.builds(g.LeafInstruction, st.sampled_from(g.LEAF_MNEMONICS), U32),
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
    st.builds(g.InterruptWindow), st.builds(g.NmiWindow), st.builds(g.MonitorTrap), st.builds(g.PreemptionTimer),
    st.builds(g.ApicWrite, st.integers(0, 4095)), st.builds(g.VirtualEoi, U8), st.builds(g.PmlLog),
    st.builds(g.BusLock), st.builds(g.NotifyWindow),
)
PRESETS = {name: load_preset(name) for name in ("amd_genoa_server", "amd_vermeer_client")}
MINIMAL = {name: minimal_intercept_vmcb(caps) for name, caps in PRESETS.items()}


def _in_msrpm(msr: int) -> bool:
    return any(r.lo <= msr <= r.hi for r, _ in I.MAPS.msr_ranges)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@given(op=OPS, cpl=st.sampled_from([0, 3]))
def test_minimal_intercept_vmcb_property(preset: str, op: Any, cpl: int) -> None:
    """Under the minimal-intercept VMCB only VMRUN (its intercept must stay set) and RDMSR /
    WRMSR of MSRs outside the MSRPM ranges exit (at CPL 0; at CPL 3 both fault first)."""
    state = I.SvmGuestContext(cr0=PE_PG, efer=SVME, cpl=cpl, rflags=0x3202)
    out = I.decide(op, MINIMAL[preset], state, caps=PRESETS[preset])
    vmrun = isinstance(op, g.SvmInstruction) and op.mnemonic == "vmrun"
    outside = isinstance(op, g.Rdmsr | g.Wrmsr) and not _in_msrpm(op.msr)
    expected = cpl == 0 and (vmrun or outside)
    assert isinstance(out, SvmVmexit) == expected, out
    if expected:
        assert out.code.name == ("VMEXIT_VMRUN" if isinstance(op, g.SvmInstruction) else "VMEXIT_MSR")


@given(port=U16, size=st.sampled_from([1, 2, 4]), bit=st.integers(0, 0xFFFF + 3))
def test_iopm_property(port: int, size: int, bit: int) -> None:
    """An access exits iff the IOPM bit of any of its ports is set (no wrap: the map has bits past FFFFh)."""
    state = I.SvmGuestContext(cr0=PE_PG, efer=SVME, memory=_memory((IOPM_BASE, bit)))
    expected = port <= bit < port + size
    assert isinstance(decide(g.Io(port, size, input=True), BASE, state), SvmVmexit) == expected


@given(msr=st.one_of(*(st.integers(r.lo, r.hi) for r, _ in I.MAPS.msr_ranges), U32),
       write=st.booleans(), set_bit=st.booleans(), other=st.booleans())
def test_msrpm_property(msr: int, write: bool, set_bit: bool, other: bool) -> None:
    """RDMSR / WRMSR exit iff the MSR's read / write bit is set or the MSR lies outside the ranges;
    the other direction's bit does not matter."""
    bits = []
    for rng, offset in I.MAPS.msr_ranges:
        if rng.lo <= msr <= rng.hi:
            pair = I.MAPS.bits_per_msr * (msr - rng.lo)
            if set_bit:
                bits.append((MSRPM_BASE + offset, pair + (I.MAPS.write_bit if write else I.MAPS.read_bit)))
            if other:
                bits.append((MSRPM_BASE + offset, pair + (I.MAPS.read_bit if write else I.MAPS.write_bit)))
    state = I.SvmGuestContext(cr0=PE_PG, efer=SVME, memory=_memory(*bits))
    op: Any = g.Wrmsr(msr) if write else g.Rdmsr(msr)
    expected = not _in_msrpm(msr) or set_bit
    assert isinstance(decide(op, BASE, state), SvmVmexit) == expected


def test_permission_map_layout() -> None:
    """The map sizes agree with VMRUN's constants; the three MSR ranges fit in the MSRPM."""
    assert (I.MAPS.iopm_size, I.MAPS.msrpm_size) == (12 * 1024, 8 * 1024)
    assert (CONSTANTS.iopm_size, CONSTANTS.msrpm_size) == (I.MAPS.iopm_size, I.MAPS.msrpm_size)
    last = max(off for _, off in I.MAPS.msr_ranges) + I.MAPS.bits_per_msr * 0x2000 // 8
    assert last <= I.MAPS.msrpm_size
    assert I.iopm_intercepts(BASE, _memory((IOPM_BASE, 0x10002)), 0xFFFF, 4)
