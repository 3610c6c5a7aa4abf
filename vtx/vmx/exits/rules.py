"""The exit rules: whether a guest operation in VMX non-root operation executes, faults in the
guest, or causes a VM exit, and with which exit information.

:func:`decide` first applies the faults that have priority over VM exits (SDM Vol. 3C §27.1.1
"Relative Priority of Faults and VM Exits": #UD, faults based on privilege level, and #GP from
the TSS I/O-permission check), then the condition of ``spec/vmx/exit_causes.toml`` for the
operation (§27.1.2, §27.1.3, §27.2), reading bitmaps from host-physical memory at the VMCS
addresses; operations that do not exit report what they do where VMX changes it (§27.3 "Changes
to Instruction Behavior in VMX Non-Root Operation": CR0/CR4 guest/host masks, TPR shadow).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from vtx import guest_ops as g
from vtx.bits import mask
from vtx.conditions import ControlAllowed
from vtx.errors import InputError, NotEvaluable
from vtx.paging.ept import LinearInfo, translate_gpa
from vtx.paging.formats import PAGE_OFFSET_BITS
from vtx.paging.guest import AccessKind
from vtx.paging.memory import HostPhysAddr, PhysicalMemory
from vtx.paging.outcomes import EptMisconfig, EptViolation, Translated
from vtx.spec import (
    CONTROL_FIELDS,
    CONTROLS,
    ENCODING,
    EXIT_REASONS,
    VMCS_FIELDS,
    Control,
    get_control,
    get_exit_reason,
    reg_bit,
)
from vtx.typecheck import checked
from vtx.vmx.capabilities import Capabilities
from vtx.vmx.eptp import ept_in_force
from vtx.vmx.exits import causes as C  # noqa: N812 - the cause tables, read everywhere below
from vtx.vmx.exits.info import ExitInfo
from vtx.vmx.exits.layouts import LAYOUTS
from vtx.vmx.operation import MemoryReader
from vtx.vmx.vmcs import Vmcs

_F = VMCS_FIELDS
_CR0 = {b: reg_bit("CR0", b).mask for b in ("PE", "MP", "EM", "TS")}
_LMSW_BITS = sum(_CR0.values())
_CR4_PCE, _CR4_TSD, _CR4_UMIP, _CR4_SMXE = (reg_bit("CR4", b).mask for b in ("PCE", "TSD", "UMIP", "SMXE"))
_RFLAGS_IOPL, _RFLAGS_VM = reg_bit("RFLAGS", "IOPL").bits, reg_bit("RFLAGS", "VM").mask
_RFLAGS_IF = reg_bit("RFLAGS", "IF").mask
_RFLAGS_FIXED1 = reg_bit("RFLAGS", "FIXED1").mask
_STI, _MOV_SS, _NMI_BLOCK = (reg_bit("VMCS_INTERRUPTIBILITY", b).mask
                             for b in ("BLOCKING_BY_STI", "BLOCKING_BY_MOV_SS", "BLOCKING_BY_NMI"))
_EFER_LMA = reg_bit("IA32_EFER", "LMA").mask
_FIELD_INDEX_BITS = ENCODING.width.hi + 1  # VMREAD/VMWRITE bitmaps are indexed by encoding bits 14:0
_PAGE = PAGE_OFFSET_BITS
_Q = LAYOUTS


def _gate(key: str) -> Control | None:
    """The control that activates control field ``key`` (secondary, tertiary), from controls.toml."""
    for term in CONTROL_FIELDS[key].enabled_by.terms:
        if isinstance(term, ControlAllowed):
            return get_control(term.field, term.control)
    return None


_GATES = {key: _gate(key) for key in CONTROL_FIELDS.keys()}  # noqa: SIM118 - iterating yields records


_CONTROL_BITS = {(c.field, c.name): (CONTROL_FIELDS[c.field].vmcs_field, c.mask, _GATES[c.field]) for c in CONTROLS}
"""Each control's VMCS field, mask and activating control, by (field key, control name), for :func:`is_set`."""


def is_set(vmcs: Vmcs, control: Control) -> bool:
    """Whether ``control`` is 1 and in effect (a secondary or tertiary control counts only while
    its control field is activated, SDM Vol. 3C §26.6.2 "Processor-Based VM-Execution Controls")."""
    field, bit, gate = _CONTROL_BITS[control.field, control.name]
    if gate is not None and not is_set(vmcs, gate):
        return False
    return bool(vmcs.get(field) & bit)


def ctl(field: str, name: str) -> Control:
    """The control ``name`` of control field ``field`` (``ctl("proc", "hlt_exiting")``)."""
    return get_control(field, name)


@attrs.frozen
class GuestContext:
    """The guest state the exit rules read: CPL, RFLAGS, CR0, CR4, IA32_EFER, CS.L, the
    interruptibility and activity state, SMM and dual-monitor status, the ports the TSS
    I/O-permission bitmap allows, host-physical memory (bitmaps, virtual-APIC page, EPT), and
    the TSC values PAUSE-loop exiting compares."""

    cpl: int = 0
    rflags: int = _RFLAGS_FIXED1
    cr0: int = 0
    cr4: int = 0
    efer: int = 0
    cs_l: bool = True
    interruptibility: int = 0
    activity_state: int = 0
    in_smm: bool = False
    dual_monitor: bool = False
    tss_io_allowed: frozenset[int] = frozenset()
    memory: PhysicalMemory = attrs.field(factory=PhysicalMemory, repr=False)
    tsc: int = 0
    last_pause_tsc: int | None = None
    """The TSC at the previous PAUSE at CPL 0 since VM entry (None: this is the first)."""
    pause_loop_start: int | None = None
    """The TSC at the most recent PAUSE considered the first of a loop."""
    dr7: int = 0
    iret_unblocked_nmi: bool = False
    """The operation is a fault (or EPT violation) during an IRET that unblocked NMIs: "virtual NMIs" is
    1 and virtual-NMI blocking was in effect, or "NMI exiting" is 0 and blocking by NMI was in effect
    (§29.2.3 "Information About NMI Unblocking Due to IRET")."""


@attrs.frozen
class Executes:
    """The operation executes in the guest; ``value`` is what VMX makes it read or write where it
    differs from bare hardware (a CR0/CR4 read, the new CR0/CR4, the VTPR), else None."""

    value: int | None = None


@attrs.frozen
class GuestFault:
    """A fault delivered in the guest before any VM exit is considered (§27.1.1)."""

    vector: int
    error_code: int | None = None


Decision = Executes | GuestFault | ExitInfo

_GP = GuestFault(C.VECTORS["general_protection"], 0)
_UD = GuestFault(C.VECTORS["invalid_opcode"])
_DB = GuestFault(C.VECTORS["debug"])


# ------------------------------------------------------------------ faults before exits


def _mnemonic(op: g.GuestOp) -> str | None:
    return getattr(op, "mnemonic", None)


def _io_denied(op: g.Io, s: GuestContext) -> bool:
    """Protected mode with CPL > IOPL (or virtual-8086 mode) consults the TSS I/O map."""
    if not s.cr0 & _CR0["PE"]:
        return False
    if s.cpl <= _RFLAGS_IOPL.get(s.rflags) and not s.rflags & _RFLAGS_VM:
        return False
    return not all((op.port + i) in s.tss_io_allowed for i in range(op.size))


_LOADS = frozenset({"lgdt", "lidt", "lldt", "ltr"})


def _is_vmx_ud(s: GuestContext) -> bool:
    """VMX instructions are #UD outside protected mode, in virtual-8086 mode and in compatibility mode."""
    return not s.cr0 & _CR0["PE"] or bool(s.rflags & _RFLAGS_VM) or bool(s.efer & _EFER_LMA and not s.cs_l)


def _descriptor_fault(op: g.DescriptorTable, s: GuestContext) -> GuestFault | None:
    """#UD for LLDT/LTR/SLDT/STR in real-address or virtual-8086 mode; else #GP(0) at CPL > 0 for the
    loads, and for the stores with CR4.UMIP = 1."""
    if op.mnemonic in C.UD_OUTSIDE_PROTECTED and (not s.cr0 & _CR0["PE"] or s.rflags & _RFLAGS_VM):
        return _UD
    return _GP if s.cpl and (op.mnemonic in _LOADS or s.cr4 & _CR4_UMIP) else None


_PRIVILEGE: dict[str, Callable[[Any, GuestContext], GuestFault | None]] = {
    "none": lambda op, s: None,
    "cpl0": lambda op, s: _GP if s.cpl else None,
    "cpl0_ud": lambda op, s: _UD if s.cpl else None,
    "cpl0_unless_pce": lambda op, s: _GP if s.cpl and not s.cr4 & _CR4_PCE else None,
    "cpl0_if_tsd": lambda op, s: _GP if s.cpl and s.cr4 & _CR4_TSD else None,
    "getsec": lambda op, s: None if s.cr4 & _CR4_SMXE else _UD,
    "smm": lambda op, s: None if s.in_smm else _UD,
    "vmx": lambda op, s: _UD if _is_vmx_ud(s) else None,
    "io": lambda op, s: _GP if _io_denied(op, s) else None,
    "descriptor": _descriptor_fault,
    "mov_dr": lambda op, s: _GP if s.cpl else (_DB if s.dr7 & C.DR7_GENERAL_DETECT else None),
}



def privilege_fault(privilege: str, op: g.GuestOp, state: GuestContext) -> GuestFault | None:
    """The fault a check named in exit_causes.toml (``privilege``) raises before the exit
    condition is evaluated, if any (§27.1.1): #GP(0) at CPL > 0 for privileged instructions
    (RDPMC only with CR4.PCE = 0, RDTSC/RDTSCP only with CR4.TSD = 1, SGDT/SIDT/SLDT/STR only
    with CR4.UMIP = 1), #UD at CPL > 0 for MONITOR/MWAIT, the I/O-permission check, and the #UD
    conditions of GETSEC, RSM and the VMX instructions."""
    return _PRIVILEGE[privilege](op, state)


# ------------------------------------------------------------------ bitmaps


def _bit(memory: PhysicalMemory, base: int, index: int) -> bool:
    return bool(memory.read_int(HostPhysAddr(base + index // 8), 1) >> (index % 8) & 1)


@checked
def io_bitmap_exits(vmcs: Vmcs, memory: PhysicalMemory, port: int, size: int) -> bool:
    """With "use I/O bitmaps": exit iff the access wraps past FFFFH or a bit is set for any byte's
    port in bitmap A (ports 0000H-7FFFH) or B (8000H-FFFFH) (§26.6.4, §27.1.3)."""
    last = port + size - 1
    if last > C.IO_BITMAP_B.hi:
        return True
    for p in range(port, last + 1):
        lo, field = (C.IO_BITMAP_A.lo, "IO_BITMAP_A") if p <= C.IO_BITMAP_A.hi else (C.IO_BITMAP_B.lo, "IO_BITMAP_B")
        if _bit(memory, vmcs.get(_F[field]), p - lo):
            return True
    return False


@checked
def msr_bitmap_exits(vmcs: Vmcs, memory: PhysicalMemory, msr: int, write: bool) -> bool:
    """With "use MSR bitmaps": exit iff the MSR lies outside 00000000H-00001FFFH and
    C0000000H-C0001FFFH, or its bit is set in the read or write bitmap of its range (§26.6.9)."""
    for rng, half in ((C.MSR_LOW, "low"), (C.MSR_HIGH, "high")):
        if rng.lo <= msr <= rng.hi:
            offset = C.MSR_OFFSETS[("write_" if write else "read_") + half]
            return _bit(memory, vmcs.get(_F["MSR_BITMAP"]) + offset, msr - rng.lo)
    return True


def _msr_exits(vmcs: Vmcs, s: GuestContext, msr: int, write: bool) -> bool:
    if not is_set(vmcs, ctl("proc", "use_msr_bitmaps")):
        return True
    return msr_bitmap_exits(vmcs, s.memory, msr, write)


# ------------------------------------------------------------------ CR0 / CR4 masks and shadows


def _mask_shadow(vmcs: Vmcs, cr: int) -> tuple[int, int]:
    return vmcs.get(_F[f"CR{cr}_GUEST_HOST_MASK"]), vmcs.get(_F[f"CR{cr}_READ_SHADOW"])


@checked
def read_cr(vmcs: Vmcs, cr: int, actual: int) -> int:
    """MOV from CR0/CR4 returns the read shadow for host-owned bits (set in the guest/host mask)
    and the register for guest-owned bits (§26.6.6)."""
    mask, shadow = _mask_shadow(vmcs, cr)
    return (actual & ~mask) | (shadow & mask)


def _cr_qual(access: str, cr: int = 0, gpr: int = 0, **extra: int) -> int:
    return _Q["cr_access"].encode(cr_number=cr, access_type=access, gpr=gpr, **extra)


_EXIT_REASONS = {r.name: r for r in EXIT_REASONS}
""":func:`~vtx.spec.get_exit_reason`, as a table."""


def _exit(reason: str, op: Any = None, **info: Any) -> ExitInfo:
    return ExitInfo(_EXIT_REASONS.get(reason) or get_exit_reason(reason), instruction_length=getattr(op, "length", 0),
                    **info)


def _mov_to_cr(op: g.MovToCr, vmcs: Vmcs, s: GuestContext) -> Decision:
    """MOV to CR0/CR4 exits iff a host-owned bit differs from the read shadow, and otherwise
    writes only guest-owned bits (§26.6.6, §27.3); MOV to CR3 exits with "CR3-load exiting" unless
    the value equals one of the first CR3_TARGET_COUNT target values (§26.6.7); MOV to CR8 exits with
    "CR8-load exiting", and with "use TPR shadow" writes VTPR instead, exiting trap-like (TPR
    below threshold) when VTPR[7:4] drops below TPR_THRESHOLD[3:0] without virtual-interrupt
    delivery (§31.1.2)."""
    qual = _cr_qual("mov_to_cr", op.cr, op.gpr)
    if op.cr in (0, 4):
        mask, shadow = _mask_shadow(vmcs, op.cr)
        if (op.value ^ shadow) & mask:
            return _exit("CR_ACCESS", op, qualification=qual)
        actual = s.cr0 if op.cr == 0 else s.cr4
        return Executes((actual & mask) | (op.value & ~mask))
    if op.cr == 3:
        if is_set(vmcs, ctl("proc", "cr3_load_exiting")):
            count = vmcs.get(_F["CR3_TARGET_COUNT"])
            targets = [vmcs.get(f) for f in C.CR3_TARGETS[:count]]
            if op.value not in targets:
                return _exit("CR_ACCESS", op, qualification=qual)
        return Executes(op.value)
    if is_set(vmcs, ctl("proc", "cr8_load_exiting")):
        return _exit("CR_ACCESS", op, qualification=qual)
    if not is_set(vmcs, ctl("proc", "use_tpr_shadow")):
        return Executes(op.value)
    return _tpr_virtualization(vmcs, C.VTPR_PRIORITY.put(0, C.CR8_PRIORITY.get(op.value)), op)


def _mov_from_cr(op: g.MovFromCr, vmcs: Vmcs, s: GuestContext) -> Decision:
    """CR0/CR4 reads never exit (shadowed host-owned bits); CR3/CR8 reads exit with the store-
    exiting controls; with "use TPR shadow" a CR8 read returns VTPR[7:4]."""
    qual = _cr_qual("mov_from_cr", op.cr, op.gpr)
    if op.cr in (0, 4):
        return Executes(read_cr(vmcs, op.cr, s.cr0 if op.cr == 0 else s.cr4))
    control = {3: "cr3_store_exiting", 8: "cr8_store_exiting"}[op.cr]
    if is_set(vmcs, ctl("proc", control)):
        return _exit("CR_ACCESS", op, qualification=qual)
    if op.cr == 8 and is_set(vmcs, ctl("proc", "use_tpr_shadow")):
        return Executes(C.CR8_PRIORITY.put(0, C.VTPR_PRIORITY.get(read_vtpr(vmcs, s.memory))))
    return Executes()


def _clts(op: g.Clts, vmcs: Vmcs, s: GuestContext) -> Decision:
    """CLTS exits iff TS is host-owned and set in the read shadow; host-owned TS stays unchanged."""
    mask, shadow = _mask_shadow(vmcs, 0)
    ts = _CR0["TS"]
    if mask & shadow & ts:
        return _exit("CR_ACCESS", op, qualification=_cr_qual("clts"))
    return Executes(s.cr0 if mask & ts else s.cr0 & ~ts)


def _lmsw(op: g.Lmsw, vmcs: Vmcs, s: GuestContext) -> Decision:
    """LMSW exits iff it would set a host-owned PE that is clear in the shadow, or change a
    host-owned MP/EM/TS from its shadow value; otherwise it writes guest-owned bits 3:0 (never
    clearing PE) (§27.1.3, §27.3)."""
    mask, shadow = _mask_shadow(vmcs, 0)
    pe = _CR0["PE"]
    others = _LMSW_BITS & ~pe
    if (mask & pe and not shadow & pe and op.value & pe) or (mask & others & (op.value ^ shadow)):
        qual = _cr_qual("lmsw", lmsw_operand_type=int(op.memory is not None), lmsw_source=op.value)
        return _exit("CR_ACCESS", op, qualification=qual, guest_linear_address=op.memory)
    writable = _LMSW_BITS & ~mask
    new = (s.cr0 & ~writable) | (op.value & writable) | (s.cr0 & pe)
    return Executes(new)


# ------------------------------------------------------------------ instruction information


_ADDRESS_SIZES = {16: "a16", 32: "a32", 64: "a64"}
_IO_SIZES = {1: "byte", 2: "word", 4: "dword"}


@checked
def memory_operand_info(layout: str, mem: g.MemOperand, **extra: int | str) -> int:
    """Instruction information for a memory operand (scaling, address size, segment, index and base)."""
    return _Q[layout].encode(
        scaling=mem.scale, address_size=_ADDRESS_SIZES[mem.address_size], segment=mem.segment,
        index=mem.index or 0, index_invalid=int(mem.index is None), base=mem.base or 0,
        base_invalid=int(mem.base is None), **extra)


def _descriptor_info(op: g.DescriptorTable) -> int:
    layout = "info_descriptor_table" if op.mnemonic in ("lgdt", "lidt", "sgdt", "sidt") else "info_ldtr_tr"
    if op.memory is None:
        return _Q[layout].encode(reg1=op.reg, mem_reg=1, identity=op.mnemonic)
    extra: dict[str, int | str] = {"identity": op.mnemonic}
    if layout == "info_descriptor_table":
        extra["operand_size"] = int(op.operand_size == 32)
    return memory_operand_info(layout, op.memory, **extra)


# ------------------------------------------------------------------ the rules


def _rule_io(op: g.Io, vmcs: Vmcs, s: GuestContext) -> bool:
    if is_set(vmcs, ctl("proc", "use_io_bitmaps")):
        return io_bitmap_exits(vmcs, s.memory, op.port, op.size)
    return is_set(vmcs, ctl("proc", "unconditional_io_exiting"))


def _io_exit(op: g.Io) -> ExitInfo:
    qual = _Q["io_instruction"].encode(size=_IO_SIZES[op.size], direction=int(op.input), string=int(op.string),
                                       rep=int(op.rep), operand_encoding=int(op.immediate), port=op.port)
    info = _Q["info_ins_outs"].encode(address_size=_ADDRESS_SIZES[op.address_size],
                                      segment=op.segment) if op.string else 0
    return _exit("IO_INSTRUCTION", op, qualification=qual, instruction_info=info)


def _exception(op: g.Exception_, vmcs: Vmcs, s: GuestContext) -> Decision:
    """The exception bitmap decides; for #PF, bit 14 decides when (error code AND PFEC_MASK) =
    PFEC_MATCH, and its inverse otherwise (§26.6.3)."""
    exits = bool(vmcs.get(_F["EXCEPTION_BITMAP"]) >> op.vector & 1)
    if op.vector == C.VECTORS["page_fault"]:
        match = (op.error_code or 0) & vmcs.get(_F["PAGE_FAULT_ERROR_CODE_MASK"]) == vmcs.get(
            _F["PAGE_FAULT_ERROR_CODE_MATCH"])
        exits = exits == match
    if not exits:
        return Executes()
    kind = "software_exception" if op.software else "hardware_exception"
    unblocking = s.iret_unblocked_nmi and op.vector not in C.NMI_UNBLOCKING_UNDEFINED
    info = _Q["interruption_info"].encode(vector=op.vector, type=kind, nmi_unblocking=int(unblocking),
                                          error_code_valid=int(op.error_code is not None), valid=1)
    return _exit("EXCEPTION_NMI", op, qualification=op.qualification, interruption_info=info,
                 interruption_error_code=op.error_code or 0)


def _external_interrupt(op: g.ExternalInterrupt, vmcs: Vmcs, s: GuestContext) -> Decision:
    """Exits with "external-interrupt exiting", except the posted-interrupt notification vector
    under "process posted interrupts"; the interruption information is valid only with
    "acknowledge interrupt on exit" (§27.2, §29.2.2)."""
    if not is_set(vmcs, ctl("pin", "external_interrupt_exiting")):
        return Executes()
    if is_set(vmcs, ctl("pin", "process_posted_interrupts")) and op.vector == vmcs.get(_F["POSTED_INTR_NV"]):
        return Executes()
    info = 0
    if vmcs.get(_F["VM_EXIT_CONTROLS"]) & ctl("exit", "acknowledge_interrupt_on_exit").mask:
        info = _Q["interruption_info"].encode(vector=op.vector, type="external_interrupt", valid=1)
    return _exit("EXTERNAL_INTERRUPT", interruption_info=info)


def _memory(op: g.MemoryAccess, vmcs: Vmcs, s: GuestContext, caps: Capabilities | None) -> Decision:
    """EPT first (violation 48, misconfiguration 49), then the APIC-access page by the physical
    address the access reaches (§30.3.3, §31.4). UNSURE: with EPT the APIC-access page is
    recognised by the host-physical address the EPT walk produced."""
    hpa = op.physical
    if is_set(vmcs, ctl("proc2", "enable_ept")):
        if caps is None:
            raise NotEvaluable("EPT", "enabled", "an EPT walk needs the capability profile (MAXPHYADDR, EPT caps)")
        ept = ept_in_force(vmcs, caps)
        out = translate_gpa(ept, s.memory, op.physical, op.access,
                            linear=LinearInfo(op.linear, final=not op.paging_structure),
                            paging_structure=op.paging_structure, nmi_unblocking=s.iret_unblocked_nmi)
        if isinstance(out, EptViolation):
            return _exit("EPT_VIOLATION", qualification=out.qualification, guest_linear_address=out.gla,
                         guest_physical_address=out.gpa)
        if isinstance(out, EptMisconfig):
            return _exit("EPT_MISCONFIG", guest_physical_address=out.gpa)
        if isinstance(out, Translated):
            hpa = out.hpa
    apic = vmcs.get(_F["APIC_ACCESS_ADDR"])
    if is_set(vmcs, ctl("proc2", "virtualize_apic_accesses")) and hpa >> _PAGE == apic >> _PAGE:
        return _apic_page_access(op, vmcs, hpa & ((1 << _PAGE) - 1))
    return Executes()


def _register_at(offset: int, size: int, registers: frozenset[int]) -> int | None:
    """The register of ``registers`` whose low 4 bytes contain the whole access, if any."""
    start = offset - offset % C.APIC_REGISTER_STRIDE
    inside = start in registers and offset + size <= start + C.APIC_REGISTER_BYTES
    return start if inside else None


@checked
def is_apic_access_virtualized(vmcs: Vmcs, offset: int, size: int, access: AccessKind) -> bool:
    """Whether an access to the APIC-access page is virtualized instead of exiting (§31.4.2,
    §31.4.3): never a fetch; VTPR with "use TPR shadow"; with APIC-register virtualization the
    listed registers; with virtual-interrupt delivery also EOI and ICR-low writes."""
    if access is AccessKind.FETCH or not is_set(vmcs, ctl("proc", "use_tpr_shadow")):
        return False
    regvirt = is_set(vmcs, ctl("proc2", "apic_register_virtualization"))
    registers = {C.VTPR_OFFSET}
    if access is AccessKind.WRITE:
        if regvirt:
            registers |= C.APIC_WRITES
        if is_set(vmcs, ctl("proc2", "virtual_interrupt_delivery")):
            registers |= C.APIC_VID_WRITES
    elif regvirt:
        registers |= C.APIC_READS
    return _register_at(offset, size, frozenset(registers)) is not None


def _apic_page_access(op: g.MemoryAccess, vmcs: Vmcs, offset: int) -> Decision:
    """An access to the APIC-access page: an APIC-access exit (44) unless virtualized; a
    virtualized write to VTPR runs TPR virtualization, to EOI with virtual-interrupt delivery EOI
    virtualization, and to any other register ends in a trap-like APIC-write exit (56)."""
    if not is_apic_access_virtualized(vmcs, offset, op.size, op.access):
        kind = {AccessKind.READ: "linear_read", AccessKind.WRITE: "linear_write", AccessKind.FETCH: "linear_fetch"}
        qual = _Q["apic_access"].encode(offset=offset, access_type=kind[op.access])
        return _exit("APIC_ACCESS", qualification=qual, guest_linear_address=op.linear)
    if op.access is not AccessKind.WRITE:
        return Executes()
    register = offset - offset % C.APIC_REGISTER_STRIDE
    if register == C.VTPR_OFFSET:
        return _tpr_virtualization(vmcs, op.value & mask(8 * C.APIC_REGISTER_BYTES), op)
    if register == C.APIC_EOI and is_set(vmcs, ctl("proc2", "virtual_interrupt_delivery")):
        return Executes()
    return _exit("APIC_WRITE", qualification=_Q["apic_write"].encode(offset=register), trap=True)


@checked
def is_tpr_below_threshold(vmcs: Vmcs, vtpr: int) -> bool:
    """Without virtual-interrupt delivery, VTPR[7:4] < TPR_THRESHOLD[3:0] (§31.1.2 "TPR Virtualization")."""
    return (not is_set(vmcs, ctl("proc2", "virtual_interrupt_delivery"))
            and C.VTPR_PRIORITY.get(vtpr) < C.TPR_THRESHOLD.get(vmcs.get(_F["TPR_THRESHOLD"])))


@checked
def read_vtpr(vmcs: Vmcs, memory: MemoryReader) -> int:
    """VTPR: the byte at offset 80H of the virtual-APIC page (§31.1.1)."""
    return memory.read_int(HostPhysAddr(vmcs.get(_F["VIRTUAL_APIC_PAGE_ADDR"]) + C.VTPR_OFFSET), 1)


def _tpr_virtualization(vmcs: Vmcs, vtpr: int, op: Any) -> Decision:
    """After VTPR is written: a trap-like TPR-below-threshold exit when VTPR is below the threshold."""
    if is_tpr_below_threshold(vmcs, vtpr):
        return _exit("TPR_BELOW_THRESHOLD", op, trap=True, value=vtpr)
    return Executes(vtpr)


def _leaf_bitmap(op: g.LeafInstruction, vmcs: Vmcs) -> bool:
    """Bit n of the ENCLS/ENCLV/PCONFIG-exiting bitmap for leaf n, bit 63 for every leaf >= 63."""
    return bool(vmcs.get(C.LEAF_BITMAPS[op.mnemonic]) >> min(op.leaf, C.LEAF_LAST_BIT) & 1)


def _vmcs_shadowing(op: g.VmxField, vmcs: Vmcs, s: GuestContext) -> bool:
    """Without VMCS shadowing VMREAD/VMWRITE exit; with it, they exit iff encoding bits 63:15 are
    not all 0 or the encoding's bit is set in the VMREAD / VMWRITE bitmap (§27.1.3)."""
    if not is_set(vmcs, ctl("proc2", "vmcs_shadowing")) or op.encoding >> _FIELD_INDEX_BITS:
        return True
    bitmap = vmcs.get(_F["VMWRITE_BITMAP" if op.write else "VMREAD_BITMAP"])
    return _bit(s.memory, bitmap, op.encoding)


@attrs.frozen
class PauseLoop:
    """One PAUSE under "PAUSE-loop exiting": whether it is the first PAUSE of a loop, the TSC at
    the loop's first PAUSE after it, and whether it exits."""

    first: bool
    loop_start: int
    exits: bool


@checked
def pause_loop(vmcs: Vmcs, s: GuestContext) -> PauseLoop:
    """The PAUSE-loop rule at TSC ``s.tsc`` (§27.1.3, PAUSE): a PAUSE is the first of a loop if it is
    the first at CPL 0 since VM entry or more than PLE_Gap ticks after the previous PAUSE at CPL 0;
    otherwise it exits if more than PLE_Window ticks passed since the loop's first PAUSE. The caller
    keeps ``s.tsc`` as the next ``last_pause_tsc`` and ``loop_start`` as the next ``pause_loop_start``."""
    last, start = s.last_pause_tsc, s.pause_loop_start
    if last is not None and s.tsc < last:
        raise InputError("tsc", s.tsc, f"the TSC only advances: the previous PAUSE was at {last}")
    first = last is None or start is None or s.tsc - last > vmcs.get(C.PLE_GAP)
    loop_start = s.tsc if first or start is None else start
    return PauseLoop(first, loop_start, not first and s.tsc - loop_start > vmcs.get(C.PLE_WINDOW))


def _pause(op: g.Instruction, vmcs: Vmcs, s: GuestContext) -> bool:
    """"PAUSE exiting" exits at any CPL; otherwise "PAUSE-loop exiting" applies at CPL 0 only."""
    if is_set(vmcs, ctl("proc", "pause_exiting")):
        return True
    return (s.cpl == C.PLE_CPL and is_set(vmcs, ctl("proc2", "pause_loop_exiting"))
            and pause_loop(vmcs, s).exits)


RULES: dict[str, Callable[[Any, Vmcs, GuestContext], bool]] = {
    "pause": _pause,
    "leaf_bitmap": lambda op, vmcs, s: _leaf_bitmap(op, vmcs),
    "msr": lambda op, vmcs, s: _msr_exits(vmcs, s, op.msr, isinstance(op, g.Wrmsr)),
    "msr_list": lambda op, vmcs, s: any(_msr_exits(vmcs, s, m, op.write) for m in op.msrs) or not op.msrs,
    "xss": lambda op, vmcs, s: bool(op.requested & vmcs.get(_F["XSS_EXIT_BITMAP"])),
    "vmcs_shadowing": _vmcs_shadowing,
    "vmfunc": lambda op, vmcs, s: not vmcs.get(_F["VM_FUNCTION_CONTROL"]) >> op.function & 1,
    "io": _rule_io,
    "wait_for_sipi": lambda op, vmcs, s: s.activity_state == C.WAIT_FOR_SIPI,
    "dual_monitor": lambda op, vmcs, s: s.dual_monitor,
    "interrupt_window": lambda op, vmcs, s: (is_set(vmcs, ctl("proc", "interrupt_window_exiting"))
                                             and bool(s.rflags & _RFLAGS_IF)
                                             and not s.interruptibility & (_STI | _MOV_SS)),
    "nmi_window": lambda op, vmcs, s: (is_set(vmcs, ctl("proc", "nmi_window_exiting"))
                                       and not s.interruptibility & (_NMI_BLOCK | _MOV_SS)),
    "preemption_timer": lambda op, vmcs, s: (is_set(vmcs, ctl("pin", "activate_vmx_preemption_timer"))
                                             and vmcs.get(_F["VMX_PREEMPTION_TIMER_VALUE"]) == 0),
    "apic_write": lambda op, vmcs, s: (is_set(vmcs, ctl("proc2", "apic_register_virtualization"))
                                       or is_set(vmcs, ctl("proc2", "virtual_interrupt_delivery"))),
    "eoi_exit_bitmap": lambda op, vmcs, s: (is_set(vmcs, ctl("proc2", "virtual_interrupt_delivery")) and bool(
        vmcs.get(C.EOI_BITMAPS[op.vector // 64]) >> (op.vector % 64) & 1)),
    "pml_full": lambda op, vmcs, s: (is_set(vmcs, ctl("proc2", "enable_pml"))
                                     and vmcs.get(_F["GUEST_PML_INDEX"]) >= C.PML_ENTRIES),
}

DECISIONS: dict[str, Callable[[Any, Vmcs, GuestContext], Decision]] = {
    "mov_to_cr": _mov_to_cr, "mov_from_cr": _mov_from_cr, "clts": _clts, "lmsw": _lmsw, "exception": _exception,
    "external_interrupt": _external_interrupt,
}


_MEMORY_OPERAND_VMX = frozenset({"vmclear", "vmptrld", "vmptrst", "vmxon", "invept", "invvpid"})
_REG2 = frozenset({"invept", "invvpid"})
_OPERAND_SIZES = {16: 0, 32: 1, 64: 2}


def _vmx_info(mem: g.MemOperand | None, *, reg1: int = 0, reg2: int = 0) -> tuple[int, int]:
    """(instruction information, qualification) in the VMX-instruction layout: a memory operand
    reports its addressing and puts its displacement in the exit qualification (§29.2.1)."""
    if mem is None:
        return _Q["info_vmx"].encode(reg1=reg1, mem_reg=1, reg2=reg2), 0
    return memory_operand_info("info_vmx", mem, reg1=reg1, reg2=reg2), mem.displacement


def _instruction_info(op: Any) -> dict[str, Any]:
    """Instruction information (and displacement) of the instructions that report it (§29.2.5)."""
    if isinstance(op, g.Instruction):
        if op.mnemonic in ("rdrand", "rdseed"):
            return {"instruction_info": _Q["info_rdrand_rdseed"].encode(
                destination=op.reg, operand_size=_OPERAND_SIZES[op.operand_size])}
        if op.mnemonic in _MEMORY_OPERAND_VMX and op.memory is not None:
            info, disp = _vmx_info(op.memory, reg2=op.reg if op.mnemonic in _REG2 else 0)
            return {"instruction_info": info, "qualification": disp}
        return {}
    if isinstance(op, g.Invpcid | g.Xsaves):
        info, disp = _vmx_info(op.memory, reg2=op.type_reg if isinstance(op, g.Invpcid) else 0)
        return {"instruction_info": info, "qualification": disp}
    if isinstance(op, g.VmxField):
        info, disp = _vmx_info(op.memory, reg1=op.reg, reg2=op.encoding_reg)
        return {"instruction_info": info, "qualification": disp}
    return {}


def _exit_for(op: Any, reason: str) -> ExitInfo:
    """The exit information of an exit whose condition held."""
    extra: dict[str, Any] = _instruction_info(op)
    if isinstance(op, g.Invlpg):
        extra["qualification"] = op.address
    elif isinstance(op, g.MovDr):
        extra["qualification"] = _Q["dr_access"].encode(dr_number=op.dr, direction=int(not op.to_dr), gpr=op.gpr)
    elif isinstance(op, g.Io):
        return _io_exit(op)
    elif isinstance(op, g.DescriptorTable):
        extra["instruction_info"] = _descriptor_info(op)
        extra["qualification"] = op.memory.displacement if op.memory else 0
    elif isinstance(op, g.TaskSwitch):
        extra["qualification"] = _Q["task_switch"].encode(selector=op.selector, source=op.source)
    elif isinstance(op, g.Sipi):
        extra["qualification"] = _Q["sipi"].encode(vector=op.vector)
    elif isinstance(op, g.ApicWrite):
        extra.update(qualification=_Q["apic_write"].encode(offset=op.offset), trap=True)
    elif isinstance(op, g.VirtualEoi):
        extra.update(qualification=_Q["eoi_induced"].encode(vector=op.vector), trap=True)
    elif isinstance(op, g.Nmi):
        extra["interruption_info"] = _Q["interruption_info"].encode(vector=C.VECTORS["nmi"], type="nmi", valid=1)
    return _exit(reason, op, **extra)


_CHOICE = {"smi": ("after_io", "IO_SMI", "OTHER_SMI"), "msr_list": ("write", "WRMSRLIST", "RDMSRLIST"),
           "xsaves": ("restore", "XRSTORS", "XSAVES"), "vmx_field": ("write", "VMWRITE", "VMREAD")}


def _pick(op: Any, causes: tuple[C.Cause, ...]) -> C.Cause:
    """The row for an operation kind with several exit reasons, chosen by one operand; otherwise
    the first row, the operation's own exit (later rows are exits it can trigger as a side effect:
    TPR below threshold after MOV to CR8, EPT exits of memory accesses)."""
    if op.kind not in _CHOICE:
        return causes[0]
    flag, if_set, if_clear = _CHOICE[op.kind]
    name = if_set if getattr(op, flag) else if_clear
    return next(c for c in causes if c.exit.name == name)


@checked
def decide(op: g.GuestOp, vmcs: Vmcs, state: GuestContext, *, caps: Capabilities | None = None) -> Decision:
    """What ``op`` does in VMX non-root operation under ``vmcs``: a fault in the guest (checked
    first, §27.1.1, except where the exit takes priority: MOV DR), #UD where the instruction's
    enabling control is 0, a VM exit with its information, or execution. ``caps`` is needed only
    for memory accesses under EPT."""
    if isinstance(op, g.MemoryAccess):
        return _memory(op, vmcs, state, caps)
    causes = C.causes_of(op.kind, _mnemonic(op))
    if not causes:
        raise InputError("guest operation", repr(op), "no row of spec/vmx/exit_causes.toml covers it")
    cause = _pick(op, causes)
    fault = privilege_fault(cause.privilege, op, state)
    if fault is not None and not cause.exit_first:
        return fault
    if cause.enable is not None and not is_set(vmcs, cause.enable):
        return _UD
    if op.kind in DECISIONS:
        return DECISIONS[op.kind](op, vmcs, state)
    if cause.when == "always":
        exits = True
    elif cause.control is not None:
        exits = is_set(vmcs, cause.control)
    else:
        exits = RULES[cause.when.removeprefix("rule:")](op, vmcs, state)
    if exits:
        return _exit_for(op, cause.exit.name)
    return fault or Executes()


@checked
def preemption_timer_countdown(value: int, tsc_before: int, tsc_after: int, rate: int) -> tuple[int, bool]:
    """The VMX-preemption timer after the TSC advanced from ``tsc_before`` to ``tsc_after``: it
    counts down by 1 each time bit ``rate`` (IA32_VMX_MISC bits 4:0) of the TSC changes, stops at
    0, and a VM exit is due when it reaches 0 (SDM Vol. 3C §27.5.1 "VMX-Preemption Timer").
    Returns the new value and whether the timer expired."""
    if tsc_after < tsc_before:
        raise InputError("tsc_after", tsc_after, "the TSC only advances during a countdown")
    ticks = (tsc_after >> rate) - (tsc_before >> rate)
    new = max(value - ticks, 0)
    return new, new == 0


@checked
def preemption_rate(caps: Capabilities) -> int:
    """The timer's rate relative to the TSC (IA32_VMX_MISC bits 4:0); NotEvaluable if unknown."""
    rate = caps.msr_field("IA32_VMX_MISC", "preemption_timer_rate")
    if rate is None:
        raise NotEvaluable("IA32_VMX_MISC", "missing", "the preemption-timer rate is bits 4:0 of IA32_VMX_MISC")
    return rate
