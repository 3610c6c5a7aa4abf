"""The exit rules: each control makes the same operation exit when set and execute when clear;
every exit reason is produced (or listed as not modelled); minimal-exit VMCS properties."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtx import guest_ops as g
from vtx import spec
from vtx.paging.guest import AccessKind
from vtx.paging.memory import HostPhysAddr, PhysicalMemory
from vtx.spec import get_control
from vtx.vmx.capabilities import load_preset
from vtx.vmx.exits import causes as C  # noqa: N812 - the cause tables, read everywhere below
from vtx.vmx.exits.info import ExitInfo
from vtx.vmx.exits.layouts import LAYOUTS
from vtx.vmx.exits.minimal import IO_BITMAP_A_ADDR, IO_BITMAP_B_ADDR, MSR_BITMAP_ADDR, minimal_exit_vmcs
from vtx.vmx.exits.rules import DECISIONS, RULES, Executes, GuestContext, GuestFault, decide
from vtx.vmx.templates import build_template
from vtx.vmx.vmcs import Vmcs

MAX = load_preset("max")
PROTECTED = GuestContext(cr0=0x8000_0011, cpl=0)
ALL_SECONDARY = ["wbinvd_exiting", "rdrand_exiting", "rdseed_exiting", "descriptor_table_exiting", "enable_invpcid",
                 "enable_rdtscp", "enable_xsaves_xrstors", "enable_user_wait_and_pause"]
BASE = minimal_exit_vmcs(MAX)
PRODUCED: set[str] = set()


def with_control(vmcs: Vmcs, field: str, name: str, on: bool) -> Vmcs:
    cf = spec.CONTROL_FIELDS[field].vmcs_field
    c = get_control(field, name)
    value = vmcs.get(cf) | c.mask if on else vmcs.get(cf) & ~c.mask
    vmcs = vmcs.set(cf, value)
    if field == "proc2":
        vmcs = with_control(vmcs, "proc", "activate_secondary_controls", True)
    if field == "proc3":
        vmcs = with_control(vmcs, "proc", "activate_tertiary_controls", True)
    return vmcs


def exits(decision: object, reason: str) -> ExitInfo:
    assert isinstance(decision, ExitInfo), decision
    assert decision.reason.name == reason
    PRODUCED.add(reason)
    return decision


# (operation, control that makes it exit, enabling control or None, exit reason)
PER_CONTROL: list[tuple[Any, str, str, str | None, str]] = [
    (g.Instruction("hlt"), "proc", "hlt_exiting", None, "HLT"),
    (g.Invlpg(0x1234), "proc", "invlpg_exiting", None, "INVLPG"),
    (g.Invpcid(), "proc", "invlpg_exiting", "enable_invpcid", "INVPCID"),
    (g.Instruction("mwait"), "proc", "mwait_exiting", None, "MWAIT_INSTRUCTION"),
    (g.Instruction("monitor"), "proc", "monitor_exiting", None, "MONITOR_INSTRUCTION"),
    (g.Instruction("pause"), "proc", "pause_exiting", None, "PAUSE_INSTRUCTION"),
    (g.Instruction("rdpmc"), "proc", "rdpmc_exiting", None, "RDPMC"),
    (g.Instruction("rdtsc"), "proc", "rdtsc_exiting", None, "RDTSC"),
    (g.Instruction("rdtscp"), "proc", "rdtsc_exiting", "enable_rdtscp", "RDTSCP"),
    (g.Instruction("umwait"), "proc", "rdtsc_exiting", "enable_user_wait_and_pause", "UMWAIT"),
    (g.Instruction("tpause"), "proc", "rdtsc_exiting", "enable_user_wait_and_pause", "TPAUSE"),
    (g.Instruction("rdrand"), "proc2", "rdrand_exiting", None, "RDRAND"),
    (g.Instruction("rdseed"), "proc2", "rdseed_exiting", None, "RDSEED"),
    (g.Instruction("wbinvd"), "proc2", "wbinvd_exiting", None, "WBINVD"),
    (g.Instruction("wbnoinvd"), "proc2", "wbinvd_exiting", None, "WBINVD"),
    (g.Instruction("loadiwkey"), "proc3", "loadiwkey_exiting", None, "LOADIWKEY"),
    (g.MovDr(7, to_dr=True, gpr=3), "proc", "mov_dr_exiting", None, "DR_ACCESS"),
    (g.MovFromCr(3, gpr=2), "proc", "cr3_store_exiting", None, "CR_ACCESS"),
    (g.MovToCr(3, 0x5000, gpr=1), "proc", "cr3_load_exiting", None, "CR_ACCESS"),
    (g.MovToCr(8, 0x5), "proc", "cr8_load_exiting", None, "CR_ACCESS"),
    (g.MovFromCr(8), "proc", "cr8_store_exiting", None, "CR_ACCESS"),
    (g.DescriptorTable("lgdt", g.MemOperand(displacement=0x40, base=5)), "proc2", "descriptor_table_exiting", None,
     "GDTR_IDTR"),
    (g.DescriptorTable("str", None, reg=4), "proc2", "descriptor_table_exiting", None, "LDTR_TR"),
    (g.Nmi(), "pin", "nmi_exiting", None, "EXCEPTION_NMI"),
    (g.ExternalInterrupt(0x30), "pin", "external_interrupt_exiting", None, "EXTERNAL_INTERRUPT"),
    (g.MonitorTrap(), "proc", "monitor_trap_flag", None, "MONITOR_TRAP_FLAG"),
    (g.PreemptionTimer(), "pin", "activate_vmx_preemption_timer", None, "PREEMPTION_TIMER"),
    (g.BusLock(), "proc2", "vmm_bus_lock_detection", None, "BUS_LOCK"),
    (g.NotifyWindow(), "proc2", "instruction_timeout", None, "NOTIFY"),
    (g.ApicWrite(0x300), "proc2", "apic_register_virtualization", None, "APIC_WRITE"),
    (g.InterruptWindow(), "proc", "interrupt_window_exiting", None, "INTERRUPT_WINDOW"),
    (g.NmiWindow(), "proc", "nmi_window_exiting", None, "NMI_WINDOW"),
    (g.Io(0x60, 1, input=True), "proc", "unconditional_io_exiting", None, "IO_INSTRUCTION"),
    (g.Rdmsr(0x10), "proc", "use_msr_bitmaps", None, "MSR_READ"),
    (g.Wrmsr(0xC000_0080, 0x500), "proc", "use_msr_bitmaps", None, "MSR_WRITE"),
]


def _base_for(field: str, name: str, enable: str | None) -> Vmcs:
    vmcs = BASE
    if name == "unconditional_io_exiting":
        vmcs = with_control(vmcs, "proc", "use_io_bitmaps", False)
    if enable:
        vmcs = with_control(vmcs, "proc2", enable, True)
    return vmcs


CONTEXT = GuestContext(cr0=0x8000_0011, rflags=0x202)


@pytest.mark.parametrize(("op", "field", "name", "enable", "reason"), PER_CONTROL,
                         ids=[f"{r[1]}.{r[2]}-{r[4]}" for r in PER_CONTROL])
def test_control_decides_exit(op: Any, field: str, name: str, enable: str | None, reason: str) -> None:
    vmcs = _base_for(field, name, enable)
    inverted = name == "use_msr_bitmaps"  # the bitmap (all zero) makes RDMSR execute; clear, every RDMSR exits
    on, off = with_control(vmcs, field, name, not inverted), with_control(vmcs, field, name, inverted)
    exits(decide(op, on, CONTEXT), reason)
    assert isinstance(decide(op, off, CONTEXT), Executes)


@pytest.mark.parametrize("op", [g.Invpcid(), g.Instruction("rdtscp"), g.Xsaves(restore=False),
                                g.LeafInstruction("pconfig"), g.VmFunc(0), g.MsrList(write=False, msrs=(0x10,))])
def test_enable_control_clear_is_ud(op: Any) -> None:
    assert decide(op, BASE, CONTEXT) == GuestFault(C.VECTORS["invalid_opcode"])


UNCONDITIONAL_ROWS = [
    ("cpuid", "CPUID"), ("invd", "INVD"), ("xsetbv", "XSETBV"), ("vmcall", "VMCALL"), ("vmclear", "VMCLEAR"),
    ("vmlaunch", "VMLAUNCH"), ("vmptrld", "VMPTRLD"), ("vmptrst", "VMPTRST"), ("vmresume", "VMRESUME"),
    ("vmxoff", "VMOFF"), ("vmxon", "VMON"), ("invept", "INVEPT"), ("invvpid", "INVVPID"), ("seamcall", "SEAMCALL"),
    ("tdcall", "TDCALL")]


@pytest.mark.parametrize(("mnemonic", "reason"), UNCONDITIONAL_ROWS)
def test_unconditional_instructions_exit(mnemonic: str, reason: str) -> None:
    exits(decide(g.Instruction(mnemonic, length=3), BASE, CONTEXT), reason)


def test_getsec_and_rsm_exit_only_where_defined() -> None:
    smxe = spec.reg_bit("CR4", "SMXE").mask
    assert decide(g.Instruction("getsec"), BASE, CONTEXT) == GuestFault(C.VECTORS["invalid_opcode"])
    exits(decide(g.Instruction("getsec"), BASE, GuestContext(cr0=0x11, cr4=smxe)), "GETSEC")
    assert isinstance(decide(g.Instruction("rsm"), BASE, CONTEXT), GuestFault)
    exits(decide(g.Instruction("rsm"), BASE, GuestContext(in_smm=True)), "RSM")


@pytest.mark.parametrize("op", [g.TripleFault(), g.Init(), g.TaskSwitch(0x28, "call")])
def test_unconditional_events_exit(op: Any) -> None:
    info = exits(decide(op, BASE, CONTEXT), {"triple_fault": "TRIPLE_FAULT", "init": "INIT_SIGNAL",
                                             "task_switch": "TASK_SWITCH"}[op.kind])
    if isinstance(op, g.TaskSwitch):
        assert LAYOUTS["task_switch"].decode(info.qualification) == {"selector": 0x28, "source": 0}


def test_privilege_faults_come_before_exits() -> None:
    """§27.1.1: RDMSR at CPL 3 is #GP in the guest even with every MSR exiting; IN denied by IOPL
    and the TSS map is #GP even with unconditional I/O exiting; VMX instructions exit at CPL 3."""
    user = GuestContext(cr0=0x11, cpl=3)
    no_bitmaps = with_control(BASE, "proc", "use_msr_bitmaps", False)
    assert decide(g.Rdmsr(0x10), no_bitmaps, user) == GuestFault(13, 0)
    io_all = with_control(with_control(BASE, "proc", "use_io_bitmaps", False), "proc", "unconditional_io_exiting", True)
    assert decide(g.Io(0x60, 1, input=True), io_all, user) == GuestFault(13, 0)
    allowed = GuestContext(cr0=0x11, cpl=3, tss_io_allowed=frozenset({0x60}))
    exits(decide(g.Io(0x60, 1, input=True), io_all, allowed), "IO_INSTRUCTION")
    iopl3 = GuestContext(cr0=0x11, cpl=3, rflags=0x3002)
    exits(decide(g.Io(0x60, 1, input=True), io_all, iopl3), "IO_INSTRUCTION")
    exits(decide(g.Instruction("vmptrst"), BASE, user), "VMPTRST")
    assert decide(g.Instruction("vmptrst"), BASE, GuestContext(cr0=0)) == GuestFault(6)
    assert decide(g.Instruction("hlt"), with_control(BASE, "proc", "hlt_exiting", True), user) == GuestFault(13, 0)
    assert decide(g.Instruction("rdpmc"), BASE, user) == GuestFault(13, 0)
    pce = spec.reg_bit("CR4", "PCE").mask
    assert decide(g.Instruction("rdpmc"), BASE, GuestContext(cr0=0x11, cpl=3, cr4=pce)) == Executes()


def test_mov_dr_exit_takes_priority_over_cpl() -> None:
    """§27.1.3: MOV-DR exits take priority over the #GP for CPL > 0."""
    user = GuestContext(cr0=0x11, cpl=3)
    exits(decide(g.MovDr(0, to_dr=True), with_control(BASE, "proc", "mov_dr_exiting", True), user), "DR_ACCESS")
    assert decide(g.MovDr(0, to_dr=True), BASE, user) == GuestFault(13, 0)


def test_cr0_mask_shadow_rules() -> None:
    ts, pe, mp = (spec.reg_bit("CR0", b).mask for b in ("TS", "PE", "MP"))
    vmcs = BASE.with_fields({"CR0_GUEST_HOST_MASK": ts | pe, "CR0_READ_SHADOW": ts | pe})
    guest = GuestContext(cr0=0x8000_0011)
    assert decide(g.MovFromCr(0), vmcs, guest) == Executes(0x8000_0011 | ts)
    info = exits(decide(g.MovToCr(0, 0x8000_0011, gpr=6), vmcs, guest), "CR_ACCESS")
    assert LAYOUTS["cr_access"].decode(info.qualification)["gpr"] == 6
    assert decide(g.MovToCr(0, 0x8000_0019 | mp, gpr=6), vmcs, guest) == Executes(0x8000_0011 | mp)
    exits(decide(g.Clts(), vmcs, guest), "CR_ACCESS")
    shadow_clear = vmcs.with_fields({"CR0_READ_SHADOW": pe})
    assert decide(g.Clts(), shadow_clear, GuestContext(cr0=0x19)) == Executes(0x19)
    assert decide(g.Clts(), BASE, GuestContext(cr0=0x19)) == Executes(0x11)
    lmsw = exits(decide(g.Lmsw(0x9, memory=0x7000), vmcs.with_fields({"CR0_READ_SHADOW": 0}), guest), "CR_ACCESS")
    assert LAYOUTS["cr_access"].decode(lmsw.qualification) == {
        "cr_number": 0, "access_type": 3, "lmsw_operand_type": 1, "gpr": 0, "lmsw_source": 0x9}
    assert lmsw.guest_linear_address == 0x7000
    assert decide(g.Lmsw(0x0), BASE, GuestContext(cr0=0x13)) == Executes(0x11)  # LMSW never clears PE


def test_cr3_target_values() -> None:
    vmcs = with_control(BASE, "proc", "cr3_load_exiting", True).with_fields(
        {"CR3_TARGET_COUNT": 2, "CR3_TARGET_VALUE1": 0x5000, "CR3_TARGET_VALUE2": 0x6000})
    assert decide(g.MovToCr(3, 0x5000), vmcs, CONTEXT) == Executes(0x5000)
    exits(decide(g.MovToCr(3, 0x6000), vmcs, CONTEXT), "CR_ACCESS")  # beyond the count


def test_tpr_shadow_and_threshold() -> None:
    vmcs = with_control(BASE, "proc", "use_tpr_shadow", True).with_fields(
        {"TPR_THRESHOLD": 4, "VIRTUAL_APIC_PAGE_ADDR": 0x40_0000})
    assert decide(g.MovToCr(8, 5), vmcs, CONTEXT) == Executes(0x50)
    info = exits(decide(g.MovToCr(8, 3), vmcs, CONTEXT), "TPR_BELOW_THRESHOLD")
    assert info.trap and info.value == 0x30
    memory = PhysicalMemory().write_int(HostPhysAddr(0x40_0000 + C.VTPR_OFFSET), 1, 0x70)
    assert decide(g.MovFromCr(8), vmcs, GuestContext(memory=memory)) == Executes(7)


def _with_memory(*bits: tuple[int, int]) -> GuestContext:
    memory = PhysicalMemory()
    for base, index in bits:
        address = HostPhysAddr(base + index // 8)
        memory = memory.write_int(address, 1, memory.read_int(address, 1) | 1 << index % 8)
    return GuestContext(cr0=0x11, memory=memory)


def test_exception_bitmap_and_pfec() -> None:
    pf = C.VECTORS["page_fault"]
    vmcs = BASE.with_fields({"EXCEPTION_BITMAP": 1 << pf | 1 << C.VECTORS["breakpoint"],
                             "PAGE_FAULT_ERROR_CODE_MASK": 0x2, "PAGE_FAULT_ERROR_CODE_MATCH": 0x2})
    info = exits(decide(g.Exception_(pf, error_code=0x3, qualification=0xDEAD000), vmcs, CONTEXT), "EXCEPTION_NMI")
    assert LAYOUTS["interruption_info"].decode(info.interruption_info) == {
        "vector": pf, "type": 3, "error_code_valid": 1, "nmi_unblocking": 0, "valid": 1}
    assert info.qualification == 0xDEAD000 and info.to_fields()["VM_EXIT_INTR_ERROR_CODE"] == 0x3
    assert decide(g.Exception_(pf, error_code=0x1), vmcs, CONTEXT) == Executes()
    inverse = vmcs.with_fields({"EXCEPTION_BITMAP": 0})
    exits(decide(g.Exception_(pf, error_code=0x1), inverse, CONTEXT), "EXCEPTION_NMI")
    bp = exits(decide(g.Exception_(3, software=True, length=1), vmcs, CONTEXT), "EXCEPTION_NMI")
    assert LAYOUTS["interruption_info"].decode(bp.interruption_info)["type"] == 6 and bp.instruction_length == 1
    assert decide(g.Exception_(C.VECTORS["general_protection"], 0), vmcs, CONTEXT) == Executes()
    debug = vmcs.with_fields({"EXCEPTION_BITMAP": 1 << C.VECTORS["debug"]})
    single_step = LAYOUTS["debug_exception"].encode(bs=1, b0_b3=0b0101)
    db = exits(decide(g.Exception_(C.VECTORS["debug"], qualification=single_step), debug, CONTEXT), "EXCEPTION_NMI")
    assert LAYOUTS["debug_exception"].decode(db.qualification) == {"b0_b3": 0b0101, "bd": 0, "bs": 1, "rtm": 0}
    assert "VM_EXIT_INTR_ERROR_CODE" not in db.to_fields()


def test_nmi_and_external_interrupt_info() -> None:
    nmi = exits(decide(g.Nmi(), with_control(BASE, "pin", "nmi_exiting", True), CONTEXT), "EXCEPTION_NMI")
    assert LAYOUTS["interruption_info"].decode(nmi.interruption_info)["type"] == 2
    ext = with_control(with_control(BASE, "pin", "external_interrupt_exiting", True), "exit",
                       "acknowledge_interrupt_on_exit", True)
    info = exits(decide(g.ExternalInterrupt(0x41), ext, CONTEXT), "EXTERNAL_INTERRUPT")
    assert LAYOUTS["interruption_info"].decode(info.interruption_info)["vector"] == 0x41
    posted = with_control(ext, "pin", "process_posted_interrupts", True).with_fields({"POSTED_INTR_NV": 0x41})
    assert decide(g.ExternalInterrupt(0x41), posted, CONTEXT) == Executes()


def test_windows_respect_blocking() -> None:
    iw = with_control(BASE, "proc", "interrupt_window_exiting", True)
    sti = spec.reg_bit("VMCS_INTERRUPTIBILITY", "BLOCKING_BY_STI").mask
    assert decide(g.InterruptWindow(), iw, GuestContext(rflags=0x2)) == Executes()
    assert decide(g.InterruptWindow(), iw, GuestContext(rflags=0x202, interruptibility=sti)) == Executes()
    nw = with_control(BASE, "proc", "nmi_window_exiting", True)
    nmi_block = spec.reg_bit("VMCS_INTERRUPTIBILITY", "BLOCKING_BY_NMI").mask
    assert decide(g.NmiWindow(), nw, GuestContext(interruptibility=nmi_block)) == Executes()


def test_signals_and_smi() -> None:
    info = exits(decide(g.Sipi(0x9A), BASE, GuestContext(activity_state=C.WAIT_FOR_SIPI)), "SIPI_SIGNAL")
    assert LAYOUTS["sipi"].decode(info.qualification) == {"vector": 0x9A}
    assert decide(g.Sipi(0x9A), BASE, CONTEXT) == Executes()
    exits(decide(g.Smi(after_io=True), BASE, GuestContext(dual_monitor=True)), "IO_SMI")
    exits(decide(g.Smi(), BASE, GuestContext(dual_monitor=True)), "OTHER_SMI")
    assert decide(g.Smi(), BASE, CONTEXT) == Executes()


def test_bitmaps_of_leaves_xss_vmcs_shadowing_vmfunc() -> None:
    encls = with_control(BASE, "proc2", "enable_encls_exiting", True).with_fields({"ENCLS_EXITING_BITMAP": 1 << 63})
    exits(decide(g.LeafInstruction("encls", leaf=100), encls, CONTEXT), "ENCLS")
    assert decide(g.LeafInstruction("encls", leaf=2), encls, CONTEXT) == Executes()
    enclv = with_control(BASE, "proc2", "enable_enclv_exiting", True).with_fields({"ENCLV_EXITING_BITMAP": 1})
    exits(decide(g.LeafInstruction("enclv", leaf=0), enclv, CONTEXT), "ENCLV")
    pconfig = with_control(BASE, "proc2", "enable_pconfig", True).with_fields({"PCONFIG_EXITING_BITMAP": 2})
    exits(decide(g.LeafInstruction("pconfig", leaf=1), pconfig, CONTEXT), "PCONFIG")
    xss = with_control(BASE, "proc2", "enable_xsaves_xrstors", True).with_fields({"XSS_EXIT_BITMAP": 1 << 8})
    exits(decide(g.Xsaves(restore=False, requested=1 << 8), xss, CONTEXT), "XSAVES")
    exits(decide(g.Xsaves(restore=True, requested=1 << 8 | 1), xss, CONTEXT), "XRSTORS")
    assert decide(g.Xsaves(restore=True, requested=1), xss, CONTEXT) == Executes()
    exits(decide(g.VmxField(False, 0x6800), BASE, CONTEXT), "VMREAD")
    shadow = with_control(BASE, "proc2", "vmcs_shadowing", True).with_fields(
        {"VMREAD_BITMAP": 0x50_0000, "VMWRITE_BITMAP": 0x51_0000})
    assert decide(g.VmxField(False, 0x6800), shadow, CONTEXT) == Executes()
    exits(decide(g.VmxField(True, 0x6800), shadow, _with_memory((0x51_0000, 0x6800))), "VMWRITE")
    exits(decide(g.VmxField(False, 1 << 40), shadow, CONTEXT), "VMREAD")
    vmfunc = with_control(BASE, "proc2", "enable_vm_functions", True).with_fields({"VM_FUNCTION_CONTROL": 1})
    assert decide(g.VmFunc(0), vmfunc, CONTEXT) == Executes()
    exits(decide(g.VmFunc(1), vmfunc, CONTEXT), "VMFUNC")


def test_msr_lists() -> None:
    vmcs = with_control(BASE, "proc3", "enable_msr_list_instructions", True)
    exits(decide(g.MsrList(write=True, msrs=(0x10, 0x4000_0000)), vmcs, CONTEXT), "WRMSRLIST")
    exits(decide(g.MsrList(write=False, msrs=(0x10,)), with_control(vmcs, "proc", "use_msr_bitmaps", False), CONTEXT),
          "RDMSRLIST")
    assert decide(g.MsrList(write=False, msrs=(0x10,)), vmcs, CONTEXT) == Executes()


def test_apic_eoi_pml() -> None:
    vid = with_control(BASE, "proc2", "virtual_interrupt_delivery", True).with_fields({"EOI_EXIT_BITMAP1": 1 << 2})
    info = exits(decide(g.VirtualEoi(66), vid, CONTEXT), "EOI_INDUCED")
    assert LAYOUTS["eoi_induced"].decode(info.qualification) == {"vector": 66}
    assert decide(g.VirtualEoi(65), vid, CONTEXT) == Executes()
    write = exits(decide(g.ApicWrite(0x380), vid, CONTEXT), "APIC_WRITE")
    assert write.qualification == 0x380 and write.trap
    pml = build_template("long-mode", MAX, features=["enable_pml"])
    exits(decide(g.PmlLog(), pml.with_fields({"GUEST_PML_INDEX": 0xFFFF}), CONTEXT), "PML_FULL")
    assert decide(g.PmlLog(), pml.with_fields({"GUEST_PML_INDEX": 511}), CONTEXT) == Executes()


def test_apic_access_and_ept() -> None:
    apic = build_template("long-mode", MAX, features=["virtualize_apic_accesses"])
    op = g.MemoryAccess(0xFFFF_8000_0000_0B00, 0x0020_0B00, AccessKind.WRITE)
    info = exits(decide(op, apic, CONTEXT), "APIC_ACCESS")
    assert LAYOUTS["apic_access"].decode(info.qualification) == {"offset": 0xB00, "access_type": 1, "asynchronous": 0}
    tpr = with_control(apic, "proc", "use_tpr_shadow", True)
    assert decide(g.MemoryAccess(0, 0x0020_0000 + C.VTPR_OFFSET), tpr, CONTEXT) == Executes()
    assert decide(g.MemoryAccess(0, 0x0030_0000), apic, CONTEXT) == Executes()
    ept = build_template("long-mode", MAX, features=["enable_ept"])
    violation = exits(decide(g.MemoryAccess(0x1000, 0x9000, AccessKind.FETCH), ept, CONTEXT, caps=MAX), "EPT_VIOLATION")
    assert violation.guest_physical_address == 0x9000 and violation.guest_linear_address == 0x1000
    assert violation.qualification & 0x4  # instruction fetch (Table 29-7 bit 2, from vtx.paging.ept)
    root = ept["EPT_POINTER"] & ~0xFFF
    write_only = GuestContext(memory=PhysicalMemory().write_int(HostPhysAddr(root), 8, 0x2))  # W without R
    misconfig = exits(decide(g.MemoryAccess(0x1000, 0x9000), ept, write_only, caps=MAX), "EPT_MISCONFIG")
    assert misconfig.guest_physical_address == 0x9000 and misconfig.qualification == 0


def test_io_qualification_and_instruction_info() -> None:
    vmcs = BASE.with_fields({"IO_BITMAP_B": IO_BITMAP_B_ADDR})
    state = _with_memory((IO_BITMAP_B_ADDR, 0x8001 - 0x8000))
    op = g.Io(0x8000, 2, input=False, string=True, rep=True, address_size=32, segment=0, length=2)
    info = exits(decide(op, vmcs, state), "IO_INSTRUCTION")
    assert LAYOUTS["io_instruction"].decode(info.qualification) == {
        "size": 1, "direction": 0, "string": 1, "rep": 1, "operand_encoding": 0, "port": 0x8000}
    assert LAYOUTS["info_ins_outs"].decode(info.instruction_info) == {"address_size": 1, "segment": 0}
    assert info.instruction_length == 2


def test_descriptor_table_information() -> None:
    vmcs = with_control(BASE, "proc2", "descriptor_table_exiting", True)
    op = g.DescriptorTable("lidt", g.MemOperand(segment=2, base=4, index=None, displacement=0x18, address_size=64))
    info = exits(decide(op, vmcs, CONTEXT), "GDTR_IDTR")
    assert info.qualification == 0x18
    assert LAYOUTS["info_descriptor_table"].decode(info.instruction_info) == {
        "scaling": 0, "address_size": 2, "operand_size": 1, "segment": 2, "index": 0, "index_invalid": 1,
        "base": 4, "base_invalid": 0, "identity": 3}
    reg = exits(decide(g.DescriptorTable("ltr", None, reg=9), vmcs, CONTEXT), "LDTR_TR")
    decoded = LAYOUTS["info_ldtr_tr"].decode(reg.instruction_info)
    assert (decoded["reg1"], decoded["mem_reg"], decoded["identity"]) == (9, 1, 3)


def test_dr_and_invlpg_qualifications() -> None:
    info = exits(decide(g.MovDr(6, to_dr=False, gpr=11), with_control(BASE, "proc", "mov_dr_exiting", True), CONTEXT),
                 "DR_ACCESS")
    assert LAYOUTS["dr_access"].decode(info.qualification) == {"dr_number": 6, "direction": 1, "gpr": 11}
    inv = exits(decide(g.Invlpg(0xFFFF_8000_1234_5000), with_control(BASE, "proc", "invlpg_exiting", True), CONTEXT),
                "INVLPG")
    assert inv.qualification == 0xFFFF_8000_1234_5000


def test_every_exit_reason_is_produced_or_not_modelled() -> None:
    """Every basic exit reason has a cause row or a not-modelled row (never both), and every
    caused reason is produced, with its information checked, by the tests of this module."""
    skipped = {n.exit.name for n in C.NOT_MODELLED}
    caused = {c.exit.name for c in C.CAUSES}
    assert not skipped & caused
    assert {r.name for r in spec.EXIT_REASONS} == skipped | caused
    PRODUCED.clear()
    for row in PER_CONTROL:
        test_control_decides_exit(*row)
    for mnemonic, reason in UNCONDITIONAL_ROWS:
        test_unconditional_instructions_exit(mnemonic, reason)
    for op in (g.TripleFault(), g.Init(), g.TaskSwitch(0x28, "call")):
        test_unconditional_events_exit(op)
    for test in (test_getsec_and_rsm_exit_only_where_defined, test_cr0_mask_shadow_rules, test_tpr_shadow_and_threshold,
                 test_exception_bitmap_and_pfec, test_nmi_and_external_interrupt_info, test_signals_and_smi,
                 test_bitmaps_of_leaves_xss_vmcs_shadowing_vmfunc, test_msr_lists, test_apic_eoi_pml,
                 test_apic_access_and_ept, test_io_qualification_and_instruction_info,
                 test_descriptor_table_information, test_dr_and_invlpg_qualifications):
        test()
    assert caused <= PRODUCED, sorted(caused - PRODUCED)


def test_every_rule_name_is_implemented() -> None:
    """A ``rule:`` row names a predicate of RULES, or its operation has its own decision function."""
    for cause in C.CAUSES:
        if cause.when.startswith("rule:"):
            name = cause.when.removeprefix("rule:")
            assert name in RULES or cause.op in DECISIONS or cause.op == "memory", cause
    assert {c.op for c in C.CAUSES} == set(g.OP_KINDS)


# ------------------------------------------------------------------ minimal-exit VMCS properties

UNCONDITIONAL = {c.mnemonics[0] for c in C.CAUSES if c.op == "instruction" and c.when == "always"
                 and c.privilege in ("none", "cpl0", "vmx")}


@pytest.mark.parametrize("preset", ["skylake_client", "penryn_server", "max"])
def test_minimal_vmcs_only_unconditional_exit(preset: str) -> None:
    caps = load_preset(preset)
    vmcs = minimal_exit_vmcs(caps)
    for mnemonic in g.INSTRUCTION_MNEMONICS:
        out = decide(g.Instruction(mnemonic), vmcs, PROTECTED)
        assert isinstance(out, ExitInfo) == (mnemonic in UNCONDITIONAL), mnemonic
    default1 = caps.requires("proc", "cr3_load_exiting")
    assert isinstance(decide(g.MovToCr(3, 0x1000), vmcs, PROTECTED), ExitInfo) == default1


@given(port=st.integers(0, 0xFFFF), size=st.sampled_from([1, 2, 4]), bit=st.integers(0, 0xFFFF))
def test_io_bitmap_property(port: int, size: int, bit: int) -> None:
    base = IO_BITMAP_A_ADDR if bit <= C.IO_BITMAP_A.hi else IO_BITMAP_B_ADDR
    lo = C.IO_BITMAP_A.lo if bit <= C.IO_BITMAP_A.hi else C.IO_BITMAP_B.lo
    state = GuestContext(cr0=0x11, memory=_with_memory((base, bit - lo)).memory)
    expected = port + size - 1 > 0xFFFF or port <= bit <= port + size - 1
    assert isinstance(decide(g.Io(port, size, input=True), BASE, state), ExitInfo) == expected


@given(msr=st.one_of(st.integers(0, 0x1FFF), st.integers(0xC000_0000, 0xC000_1FFF), st.integers(0, 2**32 - 1)),
       write=st.booleans(), set_bit=st.booleans(), bitmaps=st.booleans())
def test_msr_bitmap_property(msr: int, write: bool, set_bit: bool, bitmaps: bool) -> None:
    in_low, in_high = C.MSR_LOW.lo <= msr <= C.MSR_LOW.hi, C.MSR_HIGH.lo <= msr <= C.MSR_HIGH.hi
    state = PROTECTED
    if set_bit and (in_low or in_high):
        half = "low" if in_low else "high"
        offset = C.MSR_OFFSETS[("write_" if write else "read_") + half]
        state = GuestContext(cr0=0x11, memory=_with_memory(
            (MSR_BITMAP_ADDR + offset, msr - (C.MSR_LOW.lo if in_low else C.MSR_HIGH.lo))).memory)
    vmcs = BASE if bitmaps else with_control(BASE, "proc", "use_msr_bitmaps", False)
    op: Any = g.Wrmsr(msr) if write else g.Rdmsr(msr)
    expected = not bitmaps or not (in_low or in_high) or set_bit
    assert isinstance(decide(op, vmcs, state), ExitInfo) == expected


@given(guest=st.integers(0, 2**64 - 1), mask=st.integers(0, 2**64 - 1), shadow=st.integers(0, 2**64 - 1),
       cr=st.sampled_from([0, 4]))
def test_cr_read_returns_shadow_for_host_owned_bits(guest: int, mask: int, shadow: int, cr: int) -> None:
    vmcs = BASE.with_fields({f"CR{cr}_GUEST_HOST_MASK": mask, f"CR{cr}_READ_SHADOW": shadow})
    state = GuestContext(cr0=guest) if cr == 0 else GuestContext(cr4=guest)
    out = decide(g.MovFromCr(cr), vmcs, state)
    assert out == Executes((guest & ~mask) | (shadow & mask))
    for b in range(64):
        assert (out.value >> b & 1) == ((shadow if mask >> b & 1 else guest) >> b & 1)  # type: ignore[union-attr]


def test_vmx_instruction_information() -> None:
    """Table 29-14 layout: VMREAD with register operands; VMPTRLD with a memory operand reports
    the displacement as the exit qualification; RDRAND its destination and operand size."""
    vmread = exits(decide(g.VmxField(False, 0x6800, reg=3, encoding_reg=10), BASE, CONTEXT), "VMREAD")
    assert LAYOUTS["info_vmx"].decode(vmread.instruction_info) == {
        "scaling": 0, "reg1": 3, "address_size": 0, "mem_reg": 1, "segment": 0, "index": 0, "index_invalid": 0,
        "base": 0, "base_invalid": 0, "reg2": 10}
    mem = g.MemOperand(segment=4, base=7, index=2, scale=3, displacement=0x80, address_size=32)
    vmptrld = exits(decide(g.Instruction("vmptrld", memory=mem), BASE, CONTEXT), "VMPTRLD")
    assert vmptrld.qualification == 0x80
    decoded = LAYOUTS["info_vmx"].decode(vmptrld.instruction_info)
    assert (decoded["scaling"], decoded["address_size"], decoded["segment"], decoded["index"], decoded["base"],
            decoded["index_invalid"], decoded["base_invalid"], decoded["mem_reg"]) == (3, 1, 4, 2, 7, 0, 0, 0)
    invept = exits(decide(g.Instruction("invept", memory=mem, reg=5), BASE, CONTEXT), "INVEPT")
    assert LAYOUTS["info_vmx"].decode(invept.instruction_info)["reg2"] == 5
    rdrand = exits(decide(g.Instruction("rdrand", reg=9, operand_size=32),
                          with_control(BASE, "proc2", "rdrand_exiting", True), CONTEXT), "RDRAND")
    assert LAYOUTS["info_rdrand_rdseed"].decode(rdrand.instruction_info) == {"destination": 9, "operand_size": 1}
    invpcid = with_control(with_control(BASE, "proc2", "enable_invpcid", True), "proc", "invlpg_exiting", True)
    inv = exits(decide(g.Invpcid(type_reg=12, memory=mem), invpcid, CONTEXT), "INVPCID")
    assert LAYOUTS["info_vmx"].decode(inv.instruction_info)["reg2"] == 12 and inv.qualification == 0x80


APIC_PAGE = 0x0020_0000  # the template's APIC_ACCESS_ADDR for "virtualize_apic_accesses"


@pytest.mark.parametrize(("controls", "offset", "size", "access", "virtualized"), [
    ((), 0x80, 4, AccessKind.READ, False),                                   # no TPR shadow: every access exits
    (("use_tpr_shadow",), 0x80, 4, AccessKind.READ, True),
    (("use_tpr_shadow",), 0x80, 4, AccessKind.FETCH, False),
    (("use_tpr_shadow",), 0x82, 4, AccessKind.READ, False),                  # crosses the low 4 bytes
    (("use_tpr_shadow",), 0x20, 4, AccessKind.READ, False),                  # ID needs APIC-register virtualization
    (("use_tpr_shadow", "apic_register_virtualization"), 0x20, 4, AccessKind.READ, True),
    (("use_tpr_shadow", "apic_register_virtualization"), 0x390, 4, AccessKind.READ, False),  # TMCCT
    (("use_tpr_shadow", "apic_register_virtualization"), 0x100, 4, AccessKind.WRITE, False),  # ISR is read-only
    (("use_tpr_shadow", "virtual_interrupt_delivery"), 0xB0, 4, AccessKind.WRITE, True),
    (("use_tpr_shadow", "virtual_interrupt_delivery"), 0xB0, 4, AccessKind.READ, False),
])
def test_apic_access_virtualization(controls: tuple[str, ...], offset: int, size: int, access: AccessKind,
                                    virtualized: bool) -> None:
    vmcs = build_template("long-mode", MAX, features=["virtualize_apic_accesses"])
    for name in controls:
        vmcs = with_control(vmcs, "proc" if name == "use_tpr_shadow" else "proc2", name, True)
    out = decide(g.MemoryAccess(0x1000, APIC_PAGE + offset, access, size=size), vmcs, CONTEXT)
    assert (isinstance(out, ExitInfo) and out.reason.name == "APIC_ACCESS") != virtualized, out


def test_virtualized_apic_writes() -> None:
    vmcs = with_control(build_template("long-mode", MAX, features=["virtualize_apic_accesses"]), "proc",
                        "use_tpr_shadow", True)
    regvirt = with_control(vmcs, "proc2", "apic_register_virtualization", True).with_fields({"TPR_THRESHOLD": 3})
    write = exits(decide(g.MemoryAccess(0, APIC_PAGE + 0x380, AccessKind.WRITE, value=5), regvirt, CONTEXT),
                  "APIC_WRITE")
    assert LAYOUTS["apic_write"].decode(write.qualification) == {"offset": 0x380} and write.trap
    tpr = exits(decide(g.MemoryAccess(0, APIC_PAGE + 0x80, AccessKind.WRITE, value=0x20), regvirt, CONTEXT),
                "TPR_BELOW_THRESHOLD")
    assert tpr.value == 0x20
    assert decide(g.MemoryAccess(0, APIC_PAGE + 0x80, AccessKind.WRITE, value=0x40), regvirt, CONTEXT) == Executes(0x40)
    vid = with_control(regvirt, "proc2", "virtual_interrupt_delivery", True)
    assert decide(g.MemoryAccess(0, APIC_PAGE + 0xB0, AccessKind.WRITE), vid, CONTEXT) == Executes()
    exits(decide(g.MemoryAccess(0, APIC_PAGE + 0xB0, AccessKind.WRITE), regvirt, CONTEXT), "APIC_WRITE")
