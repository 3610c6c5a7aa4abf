"""The SVM intercepts: whether a guest operation in an SVM guest executes, faults in the guest, or
causes a #VMEXIT, and with which EXITCODE, EXITINFO1 and EXITINFO2.

:func:`decide` is the AMD-V counterpart of :func:`vtx.vmx.exits.rules.decide` and shares its
vocabulary (:mod:`vtx.guest_ops`), guest context, result types and privilege checks. It applies
the fault the APM checks first (§15.9 "Instruction Intercepts": instruction intercepts are checked
after the simple exceptions — #UD, #GP for CPL — and before exceptions of memory accesses and
operand values), then the intercept of ``spec/svm/intercept_causes.toml`` for the operation,
reading the intercept bits of ``spec/svm/intercepts.toml`` from the VMCB and the I/O and MSR
permission maps (``spec/svm/permission_maps.toml``) from host-physical memory at IOPM_BASE_PA and
MSRPM_BASE_PA. EXITINFO1 of the CR, DR, INTn and INVLPG intercepts is filled only on processors
with decode assists (CPUID Fn8000_000A_EDX[DecodeAssists]).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from vtx import guest_ops as g
from vtx.bits import BitRange
from vtx.citation import Citation
from vtx.errors import InputError, NotEvaluable, SpecError
from vtx.paging.memory import HostPhysAddr, PhysicalMemory
from vtx.spec import _bits, _Table, reg_bit
from vtx.svm.capabilities import has_feature
from vtx.svm.spec import INTERCEPTS, ExitCode, Intercept, get_exit_code, get_intercept
from vtx.svm.spec import reg_bit as svm_reg_bit
from vtx.svm.vmcb import Vmcb
from vtx.svm.vmrun import SvmVmexit
from vtx.typecheck import checked
from vtx.vmx.capabilities import Capabilities
from vtx.vmx.exits import causes as vmx_causes
from vtx.vmx.exits.layouts import Layout
from vtx.vmx.exits.rules import Executes, GuestContext, GuestFault, privilege_fault

SHARED_PRIVILEGES = ("none", "cpl0", "cpl0_ud", "cpl0_unless_pce", "cpl0_if_tsd", "io", "descriptor", "smm")
PRIVILEGES = (*SHARED_PRIVILEGES, "svm", "ud")
WHEN = ("intercept", "never")


@attrs.frozen
class SvmGuestContext(GuestContext):
    """The guest state the VMX exit rules read, plus what the SVM intercepts read: ``rip`` of the
    operation (EXITINFO2 of the IOIO intercept is the next RIP) and whether the monitor hardware is
    armed (conditional MWAIT intercept)."""

    rip: int = 0
    monitor_armed: bool = False


SvmDecision = Executes | GuestFault | SvmVmexit
"""What an operation does in an SVM guest."""


@attrs.frozen
class SvmCause:
    """One row of ``spec/svm/intercept_causes.toml``: how an operation kind is intercepted."""

    op: str
    mnemonics: tuple[str, ...]
    when: str
    intercept: Intercept | None
    exits: tuple[ExitCode, ...]
    privilege: str
    exit_first: bool
    citation: Citation


@attrs.frozen
class SvmNotModelled:
    exit: ExitCode
    reason: str
    citation: Citation


@attrs.frozen
class PermissionMaps:
    """The IOPM and MSRPM layouts (APM §15.10.1, §15.11)."""

    iopm_size: int
    ports: BitRange
    msrpm_size: int
    bits_per_msr: int
    read_bit: int
    write_bit: int
    msr_ranges: tuple[tuple[BitRange, int], ...]
    base_ignored: BitRange


def _load_maps() -> PermissionMaps:
    t = _Table("svm/permission_maps.toml")
    io, msr = t.data["iopm"], t.data["msrpm"]
    t.cite("iopm", io)
    t.cite("msrpm", msr)
    where = f"{t.relpath} [msrpm]"
    ranges = tuple((_bits(r["msrs"], f"{where}.range"), r["offset"]) for r in msr["range"])
    per_range = msr["bits_per_msr"] * (max(rng.width for rng, _ in ranges)) // 8
    if any(off + per_range > msr["size"] for _, off in ranges) or {msr["read_bit"], msr["write_bit"]} != set(
            range(msr["bits_per_msr"])):
        raise SpecError(where, msr, "every range's vector lies in the map; read / write are the bits of a pair")
    if (io["ports"][1] + 1) // 8 > io["size"]:
        raise SpecError(f"{t.relpath} [iopm]", io["size"], "the IOPM holds a bit per port")
    return PermissionMaps(io["size"], _bits(io["ports"], f"{t.relpath} [iopm]"), msr["size"], msr["bits_per_msr"],
                          msr["read_bit"], msr["write_bit"], ranges, _bits(io["base_ignored"], f"{t.relpath} [iopm]"))


MAPS = _load_maps()
"""The permission-map layouts."""


def _load() -> tuple[tuple[SvmCause, ...], tuple[SvmNotModelled, ...], dict[str, Layout], dict[str, Any]]:
    t = _Table("svm/intercept_causes.toml")
    causes = []
    for r in t.rows("cause"):
        where = t.where("cause", r)
        when = r["when"]
        if r["op"] not in g.ALL_OP_KINDS or r["privilege"] not in PRIVILEGES:
            raise SpecError(where, r["op"],
                            "op must be a vtx.guest_ops kind and privilege one of " + ", ".join(PRIVILEGES))
        if not (when in WHEN or when.startswith("rule:")) or (when == "intercept") != ("intercept" in r):
            raise SpecError(where, when, "when is intercept (with an intercept), never or rule:<name>")
        intercept = get_intercept(r["intercept"]) if "intercept" in r else None
        exits = tuple(get_exit_code(e) for e in r.get("exits", ()))
        causes.append(SvmCause(r["op"], tuple(r.get("mnemonics", ())), when, intercept,
                               (intercept.exit,) if intercept else exits, r["privilege"],
                               bool(r.get("exit_first", False)), t.cite("cause", r)))
    skipped = tuple(SvmNotModelled(get_exit_code(r["exit"]), r["reason"], t.cite("not_modelled", r))
                    for r in t.rows("not_modelled"))
    layouts = {}
    for name, rows in t.data["exit_info"].items():
        fields = {r["name"]: _bits(r["bits"], t.where(f"exit_info.{name}", r)) for r in rows}
        layouts[name] = Layout(name, fields, {}, {r["name"]: t.cite(f"exit_info.{name}", r) for r in rows})
    return tuple(causes), skipped, layouts, t.data


CAUSES, NOT_MODELLED, EXIT_INFO, _DATA = _load()
"""Every intercept cause, the exit codes not modelled (with why), and the EXITINFO layouts."""
MSR_ACCESS: dict[str, int] = {k: _DATA["msr_access"][k] for k in ("read", "write")}
EFER_MSR: int = _DATA["efer"]["msr"]
PAGE_FAULT: int = _DATA["vectors"]["page_fault"]
_BY_OP: dict[tuple[str, str | None], SvmCause] = {
    (c.op, m): c for c in CAUSES for m in (c.mnemonics or (None,))}


def causes_of(op_kind: str, mnemonic: str | None = None) -> SvmCause | None:
    """The row for an operation kind and mnemonic (a row without mnemonics covers them all), if any."""
    return _BY_OP.get((op_kind, mnemonic)) or _BY_OP.get((op_kind, None))


# ------------------------------------------------------------------ facts read from the tables

_UD = GuestFault(vmx_causes.VECTORS["invalid_opcode"])
_GP = GuestFault(vmx_causes.VECTORS["general_protection"], 0)
_SVME = svm_reg_bit("AMD_EFER", "SVME").mask
_CR0_PE = reg_bit("CR0", "PE").mask
_CR0_TS_MP = reg_bit("CR0", "TS").mask | reg_bit("CR0", "MP").mask
_LMSW_BITS = sum(reg_bit("CR0", b).mask for b in ("PE", "MP", "EM", "TS"))
_RFLAGS_IF = reg_bit("RFLAGS", "IF").mask
_SHADOW = sum(reg_bit("VMCS_INTERRUPTIBILITY", b).mask for b in ("BLOCKING_BY_STI", "BLOCKING_BY_MOV_SS"))
_INT_CTL = {b: svm_reg_bit("INT_CTL", b) for b in ("V_TPR", "V_IRQ", "V_NMI", "V_INTR_PRIO", "V_IGN_TPR")}
_SEV_ES = svm_reg_bit("MISC_CTL", "SEV_ES_ENABLE").mask
_IC = {i: get_intercept(i) for i in (
    "INTERCEPT_SELECTIVE_CR0", "INTERCEPT_IOIO_PROT", "INTERCEPT_MSR_PROT", "INTERCEPT_HLT", "INTERCEPT_IDLE_HLT",
    "INTERCEPT_MWAIT", "INTERCEPT_MWAIT_COND", "INTERCEPT_INVLPGB", "INTERCEPT_INVLPGB_ILLEGAL", "INTERCEPT_VINTR",
    "INTERCEPT_BUSLOCK", "TRAP_EFER_WRITE")}
_IO_SIZES = {1: "sz8", 2: "sz16", 4: "sz32"}
_ADDRESS_SIZES = {16: "a16", 32: "a32", 64: "a64"}
_IOIO, _CRDR, _TASK = EXIT_INFO["ioio"], EXIT_INFO["mov_crdr"], EXIT_INFO["task_switch"]


@checked
def is_intercepted(vmcb: Vmcb, intercept: Intercept) -> bool:
    """Whether ``intercept``'s bit is 1 in its intercept word of the VMCB."""
    return bool(vmcb.get(intercept.field) & intercept.mask)


def _exit(code: ExitCode, info1: int = 0, info2: int = 0) -> SvmVmexit:
    return SvmVmexit(code, info1, info2)


def _decode_assists(caps: Capabilities) -> bool:
    known = has_feature(caps, "DECODEASSISTS")
    if known is None:
        raise NotEvaluable("CPUID_Fn8000_000A_EDX", "missing", "EXITINFO1 of CR / DR / INTn / INVLPG intercepts "
                           "depends on DecodeAssists")
    return known


def _base(vmcb: Vmcb, field: str) -> int:
    return vmcb[field] & ~MAPS.base_ignored.mask


def _bit(memory: PhysicalMemory, base: int, index: int) -> bool:
    return bool(memory.read_int(HostPhysAddr(base + index // 8), 1) >> (index % 8) & 1)


# ------------------------------------------------------------------ permission maps


@checked
def iopm_intercepts(vmcb: Vmcb, memory: PhysicalMemory, port: int, size: int) -> bool:
    """The IOPM has one bit per port; an access of ``size`` bytes at ``port`` is intercepted iff
    the bit of any port it touches is 1 (the bits past FFFFh make the top ports' accesses whole;
    §15.10.1 "I/O Permissions Map")."""
    base = _base(vmcb, "control.iopm_base_pa")
    return any(_bit(memory, base, p) for p in range(port, port + size))


@checked
def msrpm_intercepts(vmcb: Vmcb, memory: PhysicalMemory, msr: int, write: bool) -> bool:
    """The MSRPM has two bits per MSR (read, write) for each of its ranges; an MSR outside every
    range is always intercepted (§15.11 "MSR Intercepts")."""
    base = _base(vmcb, "control.msrpm_base_pa")
    for rng, offset in MAPS.msr_ranges:
        if rng.lo <= msr <= rng.hi:
            index = MAPS.bits_per_msr * (msr - rng.lo) + (MAPS.write_bit if write else MAPS.read_bit)
            return _bit(memory, base + offset, index)
    return True


# ------------------------------------------------------------------ the rules


def _crdr_info(caps: Capabilities, gpr: int, *, mov: bool | None) -> int:
    if not _decode_assists(caps):
        return 0
    return _CRDR.encode(gpr=gpr, **({} if mov is None else {"mov": int(mov)}))


def _new_cr0(op: Any, s: GuestContext) -> int:
    if isinstance(op, g.Clts):
        return s.cr0 & ~reg_bit("CR0", "TS").mask
    if isinstance(op, g.Lmsw):
        return (s.cr0 & ~_LMSW_BITS) | (op.value & _LMSW_BITS) | (s.cr0 & _CR0_PE)  # LMSW never clears PE
    return int(op.value)


def _cr_write(op: Any, vmcb: Vmcb, s: SvmGuestContext, caps: Capabilities) -> SvmDecision:
    """A CR write: the CR-write intercept; for CR0 (MOV, LMSW — not CLTS, which changes TS only)
    the selective CR0 write intercept when a bit other than TS or MP changes; then, in an SEV-ES
    guest with the CR's write trap, a trap after the write with EXITINFO1 = the new value (§15.9)."""
    cr = op.cr if isinstance(op, g.MovToCr) else 0
    mov = isinstance(op, g.MovToCr)
    info = _crdr_info(caps, getattr(op, "gpr", 0), mov=mov)
    if is_intercepted(vmcb, get_intercept(f"INTERCEPT_CR{cr}_WRITE")):
        return _exit(get_exit_code(f"VMEXIT_CR{cr}_WRITE"), info)
    new = _new_cr0(op, s) if cr == 0 else op.value
    if (cr == 0 and not isinstance(op, g.Clts) and is_intercepted(vmcb, _IC["INTERCEPT_SELECTIVE_CR0"])
            and (new ^ s.cr0) & ~_CR0_TS_MP):
        return _exit(get_exit_code("VMEXIT_CR0_SEL_WRITE"), info)
    if vmcb["control.misc_ctl"] & _SEV_ES and is_intercepted(vmcb, get_intercept(f"TRAP_CR{cr}_WRITE")):
        return _exit(get_exit_code(f"VMEXIT_CR{cr}_WRITE_TRAP"), new)
    return Executes(new)


def _cr_read(op: g.MovFromCr, vmcb: Vmcb, s: SvmGuestContext, caps: Capabilities) -> SvmDecision:
    """A CR read exits with the CR's read intercept (§15.9)."""
    if is_intercepted(vmcb, get_intercept(f"INTERCEPT_CR{op.cr}_READ")):
        return _exit(get_exit_code(f"VMEXIT_CR{op.cr}_READ"), _crdr_info(caps, op.gpr, mov=True))
    return Executes()


def _dr(op: g.MovDr, vmcb: Vmcb, s: SvmGuestContext, caps: Capabilities) -> SvmDecision:
    """MOV to / from DRn exits with DRn's write / read intercept, of the register as encoded
    (UNSURE: DR4 / DR5 with CR4.DE = 0 check their own bits, not DR6 / DR7's)."""
    kind = "WRITE" if op.to_dr else "READ"
    if is_intercepted(vmcb, get_intercept(f"INTERCEPT_DR{op.dr}_{kind}")):
        return _exit(get_exit_code(f"VMEXIT_DR{op.dr}_{kind}"), _crdr_info(caps, op.gpr, mov=None))
    return Executes()


def _ioio(op: g.Io, vmcb: Vmcb, s: SvmGuestContext, caps: Capabilities) -> SvmDecision:
    """With the IOIO intercept, an access exits iff an IOPM bit of its ports is 1; EXITINFO1 holds
    port, size, direction, string / REP and address size (segment with decode assists), EXITINFO2
    the rIP of the next instruction (§15.10.2). UNSURE: the address-size bit is set for every access."""
    if not is_intercepted(vmcb, _IC["INTERCEPT_IOIO_PROT"]) or not iopm_intercepts(vmcb, s.memory, op.port, op.size):
        return Executes()
    fields: dict[str, int] = {"type": int(op.input), "str": int(op.string), "rep": int(op.rep), "port": op.port,
                              _IO_SIZES[op.size]: 1, _ADDRESS_SIZES[op.address_size]: 1}
    if op.string and _decode_assists(caps):
        fields["seg"] = op.segment
    return _exit(get_exit_code("VMEXIT_IOIO"), _IOIO.encode(**fields), s.rip + op.length)


def _msr(op: g.Rdmsr | g.Wrmsr, vmcb: Vmcb, s: SvmGuestContext, caps: Capabilities) -> SvmDecision:
    """With the MSR intercept, RDMSR / WRMSR exit iff the MSRPM bit is 1 or the MSR lies outside
    its ranges, EXITINFO1 0 for a read and 1 for a write (§15.11); a WRMSR to EFER that completes
    in an SEV-ES guest with the EFER write trap exits after it, EXITINFO1 = the new EFER."""
    write = isinstance(op, g.Wrmsr)
    if is_intercepted(vmcb, _IC["INTERCEPT_MSR_PROT"]) and msrpm_intercepts(vmcb, s.memory, op.msr, write):
        return _exit(get_exit_code("VMEXIT_MSR"), MSR_ACCESS["write" if write else "read"])
    if (isinstance(op, g.Wrmsr) and op.msr == EFER_MSR and vmcb["control.misc_ctl"] & _SEV_ES
            and is_intercepted(vmcb, _IC["TRAP_EFER_WRITE"])):
        return _exit(_IC["TRAP_EFER_WRITE"].exit, op.value)
    return Executes()


def _exception(op: g.Exception_, vmcb: Vmcb, s: SvmGuestContext, caps: Capabilities) -> SvmDecision:
    """An exception exits with its vector's exception intercept; EXITINFO1 is the error code (if it
    has one) and, for #PF, EXITINFO2 the faulting address (§15.12 "Exception Intercepts")."""
    intercept = INTERCEPTS.get(f"INTERCEPT_EXCEPTION_{op.vector}")  # vectors 0-31 have one
    if intercept is None or not is_intercepted(vmcb, intercept):
        return Executes()
    return _exit(intercept.exit, op.error_code or 0, op.qualification if op.vector == PAGE_FAULT else 0)


def _int_ctl(vmcb: Vmcb, name: str) -> int:
    return _INT_CTL[name].bits.get(vmcb["control.int_ctl"])


def _vintr(op: g.InterruptWindow, vmcb: Vmcb, s: SvmGuestContext, caps: Capabilities) -> SvmDecision:
    """With the VINTR intercept, a pending virtual interrupt (V_IRQ) exits when the guest would
    take it: RFLAGS.IF = 1, no interrupt shadow, and V_IGN_TPR or V_INTR_PRIO above the V_TPR
    priority (§15.13 "Interrupt Intercepts", §15.21 "Injecting Virtual Interrupts")."""
    prio_bits = _INT_CTL["V_INTR_PRIO"].bits.width
    priority_ok = _int_ctl(vmcb, "V_IGN_TPR") or _int_ctl(vmcb, "V_INTR_PRIO") > _int_ctl(vmcb, "V_TPR") & (
        (1 << prio_bits) - 1)
    if (is_intercepted(vmcb, _IC["INTERCEPT_VINTR"]) and _int_ctl(vmcb, "V_IRQ") and s.rflags & _RFLAGS_IF
            and not s.interruptibility & _SHADOW and priority_ok):
        return _exit(_IC["INTERCEPT_VINTR"].exit)
    return Executes()


def _hlt(op: g.Instruction, vmcb: Vmcb, s: SvmGuestContext, caps: Capabilities) -> SvmDecision:
    """HLT exits with the HLT intercept; else with the idle-HLT intercept when no virtual interrupt
    or virtual NMI is pending (V_IRQ = V_NMI = 0)."""
    if is_intercepted(vmcb, _IC["INTERCEPT_HLT"]):
        return _exit(_IC["INTERCEPT_HLT"].exit)
    if is_intercepted(vmcb, _IC["INTERCEPT_IDLE_HLT"]) and not (_int_ctl(vmcb, "V_IRQ") or _int_ctl(vmcb, "V_NMI")):
        return _exit(_IC["INTERCEPT_IDLE_HLT"].exit)
    return Executes()


def _mwait(op: Any, vmcb: Vmcb, s: SvmGuestContext, caps: Capabilities) -> SvmDecision:
    """MWAIT / MWAITX exit with the MWAIT intercept, else with the conditional MWAIT intercept
    while the monitor hardware is armed."""
    if is_intercepted(vmcb, _IC["INTERCEPT_MWAIT"]):
        return _exit(_IC["INTERCEPT_MWAIT"].exit)
    if is_intercepted(vmcb, _IC["INTERCEPT_MWAIT_COND"]) and s.monitor_armed:
        return _exit(_IC["INTERCEPT_MWAIT_COND"].exit)
    return Executes()


def _invlpgb(op: g.SvmInstruction, vmcb: Vmcb, s: SvmGuestContext, caps: Capabilities) -> SvmDecision:
    """INVLPGB exits with its intercept; with illegal operands, else with the INVLPGB-illegal
    intercept, else #GP(0)."""
    if is_intercepted(vmcb, _IC["INTERCEPT_INVLPGB"]):
        return _exit(_IC["INTERCEPT_INVLPGB"].exit)
    if op.illegal:
        illegal = _IC["INTERCEPT_INVLPGB_ILLEGAL"]
        return _exit(illegal.exit) if is_intercepted(vmcb, illegal) else _GP
    return Executes()


def _bus_lock(op: g.BusLock, vmcb: Vmcb, s: SvmGuestContext, caps: Capabilities) -> SvmDecision:
    """A bus lock exits with the bus-lock intercept while the bus-lock counter is 0."""
    if is_intercepted(vmcb, _IC["INTERCEPT_BUSLOCK"]) and vmcb["control.bus_lock_counter"] == 0:
        return _exit(_IC["INTERCEPT_BUSLOCK"].exit)
    return Executes()


RULES: dict[str, Callable[[Any, Vmcb, SvmGuestContext, Capabilities], SvmDecision]] = {
    "cr_write": _cr_write, "cr_read": _cr_read, "dr": _dr, "ioio": _ioio, "msr": _msr, "exception": _exception,
    "vintr": _vintr, "hlt": _hlt, "mwait": _mwait, "invlpgb": _invlpgb, "bus_lock": _bus_lock,
}


def _exit_info(op: Any, caps: Capabilities) -> tuple[int, int]:
    """EXITINFO1 / EXITINFO2 of the plain intercepts that report something: INVLPG the linear
    address and INTn the vector (with decode assists); a task switch the target TSS selector and
    the IRET / JMP source (§15.14.1). UNSURE: EXITINFO1 of the SMI intercept is 0."""
    if isinstance(op, g.Invlpg):
        return (op.address if _decode_assists(caps) else 0), 0
    if isinstance(op, g.SoftwareInterrupt):
        return (op.vector if _decode_assists(caps) else 0), 0
    if isinstance(op, g.TaskSwitch):
        return op.selector, _TASK.encode(iret=int(op.source == "iret"), jmp=int(op.source == "jmp"))
    return 0, 0


def _privilege(privilege: str, op: Any, s: GuestContext) -> GuestFault | None:
    """The fault checked before the intercept: the shared checks of the VMX rules, the SVM
    instructions' #UD (EFER.SVME = 0 or real mode) and #GP(0) (CPL > 0), or #UD."""
    if privilege == "ud":
        return _UD
    if privilege == "svm":
        if not s.efer & _SVME or not s.cr0 & _CR0_PE:
            return _UD
        return _GP if s.cpl else None
    return privilege_fault(privilege, op, s)


@checked
def decide(op: g.GuestOp | g.SvmOnlyOp, vmcb: Vmcb, state: SvmGuestContext, *, caps: Capabilities) -> SvmDecision:
    """What ``op`` does in an SVM guest running under ``vmcb``: a fault in the guest (checked first,
    except where the intercept takes priority), a #VMEXIT with its EXITINFO1 / EXITINFO2, or
    execution (with the new CR value where a CR write completes). ``caps`` says whether the
    processor has decode assists."""
    cause = causes_of(op.kind, getattr(op, "mnemonic", None))
    if cause is None:
        raise InputError("guest operation", repr(op), "no row of spec/svm/intercept_causes.toml covers it")
    fault = _privilege(cause.privilege, op, state)
    if fault is not None and not cause.exit_first:
        return fault
    if cause.when == "never":
        return fault or Executes()
    if cause.intercept is not None:
        if is_intercepted(vmcb, cause.intercept):
            return _exit(cause.intercept.exit, *_exit_info(op, caps))
        return fault or Executes()
    return RULES[cause.when.removeprefix("rule:")](op, vmcb, state, caps)
