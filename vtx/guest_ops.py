"""Guest operations: the vocabulary of what a guest does that a hypervisor may intercept.

One frozen class per operation kind, carrying the operands an exit rule needs (SDM Vol. 3C §27.1
"Instructions That Cause VM Exits" and §27.2 "Other Causes of VM Exits"; the AMD-V intercepts of
APM Vol. 2 §15.9-§15.14 read the same operands). The vocabulary is shared by VMX
(:mod:`vtx.vmx.exits`), AMD-V, the executor and the /dev/kvm encoder, so it names no VMX control.
``kind`` is the key used by ``spec/vmx/exit_causes.toml``; ``length`` is the instruction length in
bytes as decoded (0 for events).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, get_args

import attrs

from vtx.paging.guest import AccessKind
from vtx.typecheck import checked

INSTRUCTION_MNEMONICS = (
    "cpuid", "getsec", "invd", "xsetbv", "hlt", "mwait", "monitor", "pause", "rdpmc", "rdtsc", "rdtscp",
    "rdrand", "rdseed", "rsm", "wbinvd", "wbnoinvd", "umwait", "tpause", "loadiwkey", "seamcall", "tdcall",
    "vmcall", "vmclear", "vmlaunch", "vmptrld", "vmptrst", "vmresume", "vmxoff", "vmxon", "invept", "invvpid",
)
"""Instructions whose exit rules read no operand (operand-carrying ones have their own class)."""

LEAF_MNEMONICS = ("encls", "enclv", "pconfig")
DESCRIPTOR_MNEMONICS = ("lgdt", "lidt", "sgdt", "sidt", "lldt", "ltr", "sldt", "str")
GPR_COUNT = 16
"""General-purpose registers are numbered 0 (RAX) to 15 (R15), as in every exit-information field."""


Validator = Callable[[Any, Any, Any], Any]


def _one_of(values: tuple[str, ...]) -> Validator:
    return attrs.validators.in_(values)


_gpr = attrs.validators.and_(attrs.validators.instance_of(int), attrs.validators.ge(0),
                             attrs.validators.lt(GPR_COUNT))


def _uint(bits: int) -> Validator:
    return attrs.validators.and_(attrs.validators.instance_of(int), attrs.validators.ge(0),
                                 attrs.validators.lt(1 << bits))


DS = 3
"""The default data segment of a memory operand (segment numbers 0 ES, 1 CS, 2 SS, 3 DS, 4 FS, 5 GS)."""


@attrs.frozen
class MemOperand:
    """A memory operand: segment (0 ES ... 5 GS), base / index registers (None when absent),
    scale factor exponent (0-3), displacement and address size in bits (16, 32, 64)."""

    segment: int = DS
    base: int | None = None
    index: int | None = None
    scale: int = 0
    displacement: int = 0
    address_size: int = 64


@attrs.frozen
class Instruction:
    """An instruction whose intercept depends on nothing but its identity (CPUID, HLT, VMXON...).

    ``memory`` is the memory operand of VMCLEAR, VMPTRLD, VMPTRST, VMXON, INVEPT and INVVPID;
    ``reg`` the register operand (RDRAND / RDSEED destination, INVEPT / INVVPID type register)
    and ``operand_size`` its size in bits; they feed the instruction-information field only."""

    kind: ClassVar[str] = "instruction"
    mnemonic: str = attrs.field(validator=_one_of(INSTRUCTION_MNEMONICS))
    length: int = 0
    memory: MemOperand | None = None
    reg: int = attrs.field(default=0, validator=_gpr)
    operand_size: int = attrs.field(default=64, validator=attrs.validators.in_((16, 32, 64)))


@checked
@attrs.frozen
class LeafInstruction:
    """ENCLS, ENCLV or PCONFIG with leaf function ``leaf`` (EAX)."""

    kind: ClassVar[str] = "leaf_instruction"
    mnemonic: str = attrs.field(validator=_one_of(LEAF_MNEMONICS))
    leaf: int = attrs.field(default=0, validator=_uint(32))
    length: int = 0


@attrs.frozen
class Invlpg:
    kind: ClassVar[str] = "invlpg"
    address: int = attrs.field(validator=_uint(64))
    length: int = 0


@attrs.frozen
class Invpcid:
    """INVPCID with its type in register ``type_reg`` and descriptor at ``memory``."""

    kind: ClassVar[str] = "invpcid"
    type_reg: int = attrs.field(default=0, validator=_gpr)
    memory: MemOperand = MemOperand()
    length: int = 0


@checked
@attrs.frozen
class MovToCr:
    """MOV to CR0, CR3, CR4 or CR8 from general-purpose register ``gpr`` holding ``value``."""

    kind: ClassVar[str] = "mov_to_cr"
    cr: int = attrs.field(validator=attrs.validators.in_((0, 3, 4, 8)))
    value: int = attrs.field(validator=_uint(64))
    gpr: int = attrs.field(default=0, validator=_gpr)
    length: int = 0


@checked
@attrs.frozen
class MovFromCr:
    kind: ClassVar[str] = "mov_from_cr"
    cr: int = attrs.field(validator=attrs.validators.in_((0, 3, 4, 8)))
    gpr: int = attrs.field(default=0, validator=_gpr)
    length: int = 0


@attrs.frozen
class Clts:
    kind: ClassVar[str] = "clts"
    length: int = 0


@attrs.frozen
class Lmsw:
    """LMSW with a 16-bit source; ``memory`` is the linear address of a memory operand, if any."""

    kind: ClassVar[str] = "lmsw"
    value: int = attrs.field(validator=_uint(16))
    memory: int | None = None
    length: int = 0


@checked
@attrs.frozen
class MovDr:
    kind: ClassVar[str] = "mov_dr"
    dr: int = attrs.field(validator=attrs.validators.in_(range(8)))
    to_dr: bool
    gpr: int = attrs.field(default=0, validator=_gpr)
    length: int = 0


@checked
@attrs.frozen
class Io:
    """IN, OUT, INS or OUTS: ``size`` bytes (1, 2, 4) at ``port``; ``immediate`` when the port is an
    immediate operand; ``address_size`` and ``segment`` of the string operand."""

    kind: ClassVar[str] = "io"
    port: int = attrs.field(validator=_uint(16))
    size: int = attrs.field(validator=attrs.validators.in_((1, 2, 4)))
    input: bool
    string: bool = False
    rep: bool = False
    immediate: bool = False
    address_size: int = 64
    segment: int = DS
    length: int = 0


@attrs.frozen
class Rdmsr:
    kind: ClassVar[str] = "rdmsr"
    msr: int = attrs.field(validator=_uint(32))
    length: int = 0


@attrs.frozen
class Wrmsr:
    kind: ClassVar[str] = "wrmsr"
    msr: int = attrs.field(validator=_uint(32))
    value: int = attrs.field(default=0, validator=_uint(64))
    length: int = 0


@attrs.frozen
class MsrList:
    """RDMSRLIST (``write`` false) or WRMSRLIST over the MSRs ``msrs``."""

    kind: ClassVar[str] = "msr_list"
    write: bool
    msrs: tuple[int, ...] = ()
    length: int = 0


@checked
@attrs.frozen
class DescriptorTable:
    """LGDT, LIDT, SGDT, SIDT (memory operand), LLDT, LTR, SLDT, STR (memory or register ``reg``)."""

    kind: ClassVar[str] = "descriptor_table"
    mnemonic: str = attrs.field(validator=_one_of(DESCRIPTOR_MNEMONICS))
    memory: MemOperand | None = MemOperand()
    reg: int = attrs.field(default=0, validator=_gpr)
    operand_size: int = 32
    length: int = 0


@attrs.frozen
class Xsaves:
    """XSAVES (``restore`` false) or XRSTORS; ``requested`` is EDX:EAX AND (XCR0 OR IA32_XSS)."""

    kind: ClassVar[str] = "xsaves"
    restore: bool
    requested: int = attrs.field(default=0, validator=_uint(64))
    memory: MemOperand = MemOperand()
    length: int = 0


@attrs.frozen
class VmxField:
    """VMREAD (``write`` false) or VMWRITE of the field with encoding ``encoding``."""

    kind: ClassVar[str] = "vmx_field"
    write: bool
    encoding: int = attrs.field(validator=_uint(64))
    memory: MemOperand | None = None
    reg: int = attrs.field(default=0, validator=_gpr)
    encoding_reg: int = attrs.field(default=0, validator=_gpr)
    length: int = 0


@attrs.frozen
class VmFunc:
    kind: ClassVar[str] = "vmfunc"
    function: int = attrs.field(validator=_uint(32))
    length: int = 0


@attrs.frozen
class MemoryAccess:
    """A load, store or instruction fetch of ``size`` bytes at guest linear address ``linear``
    that guest paging translated to guest-physical address ``physical``; ``value`` is the data a
    store writes; ``paging_structure`` marks an access to a guest paging-structure entry."""

    kind: ClassVar[str] = "memory"
    linear: int = attrs.field(validator=_uint(64))
    physical: int = attrs.field(validator=_uint(64))
    access: AccessKind = AccessKind.READ
    size: int = attrs.field(default=4, validator=attrs.validators.in_((1, 2, 4, 8, 16, 32, 64)))
    value: int = 0
    paging_structure: bool = False


@attrs.frozen
class Exception_:  # noqa: N801 - Exception is a builtin
    """A hardware or software exception with ``vector`` and ``error_code`` (None if it has none);
    ``software`` for INT3 / INTO (software exceptions)."""

    kind: ClassVar[str] = "exception"
    vector: int = attrs.field(validator=_uint(8))
    error_code: int | None = None
    software: bool = False
    qualification: int = 0
    length: int = 0


@attrs.frozen
class Nmi:
    kind: ClassVar[str] = "nmi"


@attrs.frozen
class ExternalInterrupt:
    kind: ClassVar[str] = "external_interrupt"
    vector: int = attrs.field(validator=_uint(8))


@attrs.frozen
class Init:
    kind: ClassVar[str] = "init"


@attrs.frozen
class Sipi:
    kind: ClassVar[str] = "sipi"
    vector: int = attrs.field(validator=_uint(8))


@attrs.frozen
class Smi:
    """An SMI; ``after_io`` when it arrived immediately after an I/O instruction retired."""

    kind: ClassVar[str] = "smi"
    after_io: bool = False


@attrs.frozen
class TripleFault:
    kind: ClassVar[str] = "triple_fault"


@checked
@attrs.frozen
class TaskSwitch:
    """A task switch to TSS ``selector`` by ``source`` (``call``, ``iret``, ``jmp``, ``task_gate``)."""

    kind: ClassVar[str] = "task_switch"
    selector: int = attrs.field(validator=_uint(16))
    source: str = attrs.field(default="jmp", validator=_one_of(("call", "iret", "jmp", "task_gate")))
    length: int = 0


@attrs.frozen
class InterruptWindow:
    """An instruction boundary, checked for an open interrupt window."""

    kind: ClassVar[str] = "interrupt_window"


@attrs.frozen
class NmiWindow:
    kind: ClassVar[str] = "nmi_window"


@attrs.frozen
class MonitorTrap:
    """An instruction completed (the point where a monitor-trap-flag exit is pending)."""

    kind: ClassVar[str] = "monitor_trap"


@attrs.frozen
class PreemptionTimer:
    """The VMX-preemption timer was checked (it exits when it has counted down to zero)."""

    kind: ClassVar[str] = "preemption_timer"


@attrs.frozen
class ApicWrite:
    """A write to the virtual-APIC page at ``offset`` that the processor virtualized."""

    kind: ClassVar[str] = "apic_write"
    offset: int = attrs.field(validator=_uint(12))


@attrs.frozen
class VirtualEoi:
    """EOI virtualization dismissed the virtual interrupt ``vector``."""

    kind: ClassVar[str] = "virtual_eoi"
    vector: int = attrs.field(validator=_uint(8))


@attrs.frozen
class PmlLog:
    """A guest-physical write set an EPT dirty flag that page-modification logging records."""

    kind: ClassVar[str] = "pml_log"
    physical: int = attrs.field(default=0, validator=_uint(64))


@attrs.frozen
class BusLock:
    kind: ClassVar[str] = "bus_lock"


@attrs.frozen
class NotifyWindow:
    """The processor stayed without an instruction boundary for the notify window."""

    kind: ClassVar[str] = "notify_window"


GuestOp = (Instruction | LeafInstruction | Invlpg | Invpcid | MovToCr | MovFromCr | Clts | Lmsw | MovDr | Io
           | Rdmsr | Wrmsr | MsrList | DescriptorTable | Xsaves | VmxField | VmFunc | MemoryAccess | Exception_
           | Nmi | ExternalInterrupt | Init | Sipi | Smi | TripleFault | TaskSwitch | InterruptWindow | NmiWindow
           | MonitorTrap | PreemptionTimer | ApicWrite | VirtualEoi | PmlLog | BusLock | NotifyWindow)
"""Every guest operation."""

OP_CLASSES: tuple[Any, ...] = get_args(GuestOp)
OP_KINDS: dict[str, Any] = {c.kind: c for c in OP_CLASSES}
"""The operation classes by ``kind``."""


# ------------------------------------------------------------------ operations only AMD-V intercepts

SVM_INSTRUCTION_MNEMONICS = (
    "pushf", "popf", "iret", "icebp", "invlpga", "vmrun", "vmmcall", "vmload", "vmsave", "stgi", "clgi", "skinit",
    "rdpru", "invlpgb", "tlbsync", "mcommit", "monitorx", "mwaitx",
)
"""Instructions with an SVM intercept and no VMX exit of their own (APM Vol. 2 §15.9 "Instruction
Intercepts"): under VMX PUSHF, POPF, IRET and ICEBP execute (ICEBP's #DB goes through the exception
bitmap), and the SVM instructions are #UD."""


@checked
@attrs.frozen
class SvmInstruction:
    """An instruction that only AMD-V intercepts. ``illegal`` marks an INVLPGB whose operands are
    illegal (the INVLPGB-illegal intercept)."""

    kind: ClassVar[str] = "svm_instruction"
    mnemonic: str = attrs.field(validator=_one_of(SVM_INSTRUCTION_MNEMONICS))
    length: int = 0
    illegal: bool = False


@attrs.frozen
class SoftwareInterrupt:
    """INT n with vector ``vector`` (a software interrupt; INT3, INTO and INT1 are exceptions)."""

    kind: ClassVar[str] = "software_interrupt"
    vector: int = attrs.field(validator=_uint(8))
    length: int = 0


SvmOnlyOp = SvmInstruction | SoftwareInterrupt
"""The operations only AMD-V intercepts; kept out of :data:`GuestOp` until the VMX exit causes
(``spec/vmx/exit_causes.toml``) give them rows."""

SVM_OP_CLASSES: tuple[Any, ...] = get_args(SvmOnlyOp)
ALL_OP_KINDS: dict[str, Any] = {**OP_KINDS, **{c.kind: c for c in SVM_OP_CLASSES}}
"""Every operation class, shared and AMD-V-only, by ``kind``."""
