"""Every check VMRUN makes, one small registered function per row of ``spec/svm/vmrun_checks.toml``.

AMD APM Vol. 2 §15.5.1 "Basic Operation": VMRUN raises #UD without SVM, with EFER.SVME = 0 or
outside protected mode, and #GP(0) at CPL > 0 or for an rAX that is not a 4-KByte aligned, legal
physical address; executed in a guest it is intercepted (§15.9 "Instruction Intercepts" orders
the intercept after the #UD / CPL checks and before the operand checks). "Canonicalization and
Consistency Checks" then lists the illegal guest states and control settings, which cause
#VMEXIT with EXITCODE = VMEXIT_INVALID; the feature sections add a few.

The instruction checks are shared by VMRUN, VMLOAD, VMSAVE, STGI and CLGI (the ``instructions`` of
their rows). A check is ``fn(vmcb, caps, state, instruction) -> Iterator[str]``: one message per
violation, none when it passes; :class:`~vtx.errors.NotEvaluable` when the capability profile cannot decide it. The
registry mirrors :mod:`vtx.vmx.entry`: :func:`vmrun_check` registers an implementation under its
catalogue id, and a test keeps the two one-to-one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import attrs

from vtx import spec as x86
from vtx.bits import fits_physical_width
from vtx.errors import NotEvaluable, SpecError
from vtx.svm import spec
from vtx.svm.spec import CONSTANTS, VMCB_FIELDS, VMRUN_CHECKS, Intercept, VmcbField, VmrunCheckSpec, get_intercept
from vtx.svm.vmcb import Vmcb
from vtx.typecheck import checked
from vtx.vmx.capabilities import Capabilities


def _host_registers() -> Vmcb:
    """A 64-bit host at CPL 0 with EFER.SVME = 1 (long mode, paging, 64-bit code segment)."""
    return Vmcb.from_fields({
        "save.efer": (x86.reg_bit("IA32_EFER", "LME").mask | x86.reg_bit("IA32_EFER", "LMA").mask
                      | spec.reg_bit("AMD_EFER", "SVME").mask),
        "save.cr0": x86.reg_bit("CR0", "PE").mask | x86.reg_bit("CR0", "PG").mask,
        "save.cr4": spec.reg_bit("AMD_CR4", "PAE").mask,
        "save.cs.attrib": spec.reg_bit("SEG_ATTRIB", "L").mask | spec.reg_bit("SEG_ATTRIB", "P").mask,
        "save.rflags": x86.reg_bit("RFLAGS", "FIXED1").mask,
    })


_HOST_REGISTERS = _host_registers()
_EMPTY_VMCB = Vmcb()


@attrs.frozen
class SvmState:
    """The logical processor as the SVM instructions see it.

    ``regs`` holds the registers in the VMCB state-save format (``save.efer``, ``save.cs.attrib``,
    ``save.rax``, ...); ``gif`` is the global interrupt flag; ``guest`` the VMCB of the running guest
    (None in the host); ``vm_hsave_pa`` the VM_HSAVE_PA MSR and ``host_save`` the host save area
    there. ``regs.rip`` is the RIP of the instruction after the one being executed (vtx does not
    model instruction lengths), which is what VMRUN saves as the host's RIP.
    """

    regs: Vmcb = _HOST_REGISTERS
    gif: bool = True
    guest: Vmcb | None = None
    vm_hsave_pa: int = 0
    host_save: Vmcb = _EMPTY_VMCB

    def register(self, name: str) -> int:
        return self.regs[f"save.{name}"]

    def with_registers(self, **values: int) -> SvmState:
        """A copy with registers set by state-save member name (``efer``, ``cpl``, ``rax``, ...)."""
        return attrs.evolve(self, regs=self.regs.with_fields({f"save.{k}": v for k, v in values.items()}))

    @property
    def efer(self) -> int:
        return self.register("efer")

    @property
    def cr0(self) -> int:
        return self.register("cr0")

    @property
    def rflags(self) -> int:
        return self.register("rflags")

    @property
    def cpl(self) -> int:
        return self.register("cpl")

    @property
    def rax(self) -> int:
        return self.register("rax")

    @property
    def guest_mode(self) -> bool:
        return self.guest is not None


CheckFn = Callable[[Vmcb, Capabilities, SvmState, str], Iterator[str]]
"""``fn(vmcb, caps, state, instruction)``: the VMCB checks ignore ``instruction`` (always VMRUN)."""


@attrs.frozen
class RegisteredCheck:
    spec: VmrunCheckSpec
    fn: CheckFn


REGISTRY: dict[str, RegisteredCheck] = {}


def vmrun_check(check_id: str) -> Callable[[CheckFn], CheckFn]:
    """Register the implementation of catalogue row ``check_id``."""
    row = VMRUN_CHECKS.get(check_id)
    if row is None:
        raise SpecError("vmrun_check", check_id, "no such row in spec/svm/vmrun_checks.toml")

    def register(fn: CheckFn) -> CheckFn:
        if check_id in REGISTRY:
            raise SpecError("vmrun_check", check_id, "registered twice")
        REGISTRY[check_id] = RegisteredCheck(row, fn)
        return fn

    return register


def _fact(caps: Capabilities, name: str, check_id: str) -> int:
    value = caps.fact(name)
    if value is None:
        raise NotEvaluable(check_id, name, f"the profile {caps.name!r} does not report {name}")
    return value


# Masks and fields, computed once.
_F = VMCB_FIELDS
EFER, CR0, CR3, CR4 = (_F[f"save.{n}"] for n in ("efer", "cr0", "cr3", "cr4"))
CS_ATTRIB = _F["save.cs.attrib"]
EFER_SVME = spec.reg_bit("AMD_EFER", "SVME").mask
EFER_LME = spec.reg_bit("AMD_EFER", "LME").mask
EFER_LMA = spec.reg_bit("AMD_EFER", "LMA").mask
CR0_PE, CR0_PG = x86.reg_bit("CR0", "PE").mask, x86.reg_bit("CR0", "PG").mask
CR0_CD, CR0_NW = x86.reg_bit("CR0", "CD").mask, x86.reg_bit("CR0", "NW").mask
CR4_PAE = spec.reg_bit("AMD_CR4", "PAE").mask
RFLAGS_VM = x86.reg_bit("RFLAGS", "VM").mask
CS_L, CS_D = spec.reg_bit("SEG_ATTRIB", "L").mask, spec.reg_bit("SEG_ATTRIB", "DB").mask
UPPER = CONSTANTS.upper_mbz.mask
CR3_LONG_MBZ = CONSTANTS.cr3_long_mode_mbz.mask
CR4_MBZ = ~spec.defined_mask("AMD_CR4") & CR4.mask
EFER_MBZ = ~spec.defined_mask("AMD_EFER") & EFER.mask
ALIGN = CONSTANTS.vmcb_align.mask
VMRUN = get_intercept("INTERCEPT_VMRUN")
NMI = get_intercept("INTERCEPT_NMI")
V_NMI_ENABLE = spec.reg_bit("INT_CTL", "V_NMI_ENABLE").mask
NP_ENABLE = spec.reg_bit("MISC_CTL", "NP_ENABLE").mask
EVENT_V = spec.reg_bit("EVENTINJ", "V").mask
EVENT_TYPE = spec.reg_bit("EVENTINJ", "TYPE").bits
EVENT_VECTOR = spec.reg_bit("EVENTINJ", "VECTOR").bits
EXCEPTION = next(t.value for t in spec.EVENT_TYPES if t.name == "EXCEPTION")
EVENT_INJ, ASID = _F["control.event_inj"], _F["control.asid"]
MSRPM, IOPM = _F["control.msrpm_base_pa"], _F["control.iopm_base_pa"]
INT_CTL, MISC_CTL, NCR3 = _F["control.int_ctl"], _F["control.misc_ctl"], _F["control.nested_cr3"]


@checked
def intercept_of(instruction: str) -> Intercept:
    """The intercept of an SVM instruction (``vmrun`` -> INTERCEPT_VMRUN)."""
    return get_intercept(f"INTERCEPT_{instruction.upper()}")


@checked
def is_long_mode(vmcb: Vmcb) -> bool:
    """EFER.LME = 1 and CR0.PG = 1: the guest will run in long mode."""
    return bool(vmcb.get(EFER) & EFER_LME and vmcb.get(CR0) & CR0_PG)


# ----------------------------------------------------------------------------- instruction


@vmrun_check("instruction.svm_supported")
def check_svm_supported(vmcb: Vmcb, caps: Capabilities, state: SvmState, instruction: str) -> Iterator[str]:
    """VMRUN is #UD on a processor without SVM."""
    if not _fact(caps, "CPUID_SVM", "instruction.svm_supported"):
        yield f"the profile {caps.name!r} reports no SVM (CPUID Fn8000_0001_ECX[SVM] = 0)"


@vmrun_check("instruction.efer_svme")
def check_host_svme(vmcb: Vmcb, caps: Capabilities, state: SvmState, instruction: str) -> Iterator[str]:
    """VMRUN is #UD while the host's EFER.SVME is 0."""
    if not state.efer & EFER_SVME:
        yield f"host EFER = {state.efer:#x} has SVME = 0"


@vmrun_check("instruction.protected_mode")
def check_protected_mode(vmcb: Vmcb, caps: Capabilities, state: SvmState, instruction: str) -> Iterator[str]:
    """VMRUN is #UD in real mode and in virtual-8086 mode."""
    if not state.cr0 & CR0_PE:
        yield f"host CR0 = {state.cr0:#x}: real mode (PE = 0)"
    elif state.rflags & RFLAGS_VM:
        yield f"host RFLAGS = {state.rflags:#x}: virtual-8086 mode (VM = 1)"


@vmrun_check("instruction.cpl")
def check_cpl(vmcb: Vmcb, caps: Capabilities, state: SvmState, instruction: str) -> Iterator[str]:
    """VMRUN is #GP(0) at CPL > 0."""
    if state.cpl:
        yield f"CPL = {state.cpl}"


@vmrun_check("instruction.intercepted")
def check_intercepted(vmcb: Vmcb, caps: Capabilities, state: SvmState, instruction: str) -> Iterator[str]:
    """An SVM instruction in a guest whose VMCB intercepts it exits to the outer hypervisor."""
    intercept = intercept_of(instruction)
    if state.guest is not None and state.guest.get(intercept.field) & intercept.mask:
        yield f"{instruction.upper()} executed in a guest whose VMCB sets {intercept.name}"


@vmrun_check("instruction.rax_alignment")
def check_rax_alignment(vmcb: Vmcb, caps: Capabilities, state: SvmState, instruction: str) -> Iterator[str]:
    """rAX, the VMCB's physical address, is 4-KByte aligned."""
    if state.rax & ALIGN:
        yield f"rAX = {state.rax:#x} is not 4-KByte aligned"


@vmrun_check("instruction.rax_physical_width")
def check_rax_width(vmcb: Vmcb, caps: Capabilities, state: SvmState, instruction: str) -> Iterator[str]:
    """rAX is below the maximum supported physical address."""
    width = _fact(caps, "MAXPHYADDR", "instruction.rax_physical_width")
    if not fits_physical_width(state.rax, width):
        yield f"rAX = {state.rax:#x} sets bits at or above MAXPHYADDR = {width}"


# ----------------------------------------------------------------------------- guest state


@vmrun_check("save.efer_svme")
def check_efer_svme(vmcb: Vmcb, caps: Capabilities, state: SvmState, instruction: str) -> Iterator[str]:
    """Guest EFER.SVME is 1."""
    if not vmcb.get(EFER) & EFER_SVME:
        yield f"save.efer = {vmcb.get(EFER):#x} has SVME = 0"


@vmrun_check("save.cr0_cd_nw")
def check_cr0_cd_nw(vmcb: Vmcb, caps: Capabilities, state: SvmState, instruction: str) -> Iterator[str]:
    """Guest CR0.NW = 1 requires CR0.CD = 1."""
    cr0 = vmcb.get(CR0)
    if cr0 & CR0_NW and not cr0 & CR0_CD:
        yield f"save.cr0 = {cr0:#x} has NW = 1 and CD = 0"


def _upper(field_name: str) -> CheckFn:
    field = VMCB_FIELDS[field_name]

    def check(vmcb: Vmcb, caps: Capabilities, state: SvmState, instruction: str) -> Iterator[str]:
        if vmcb.get(field) & UPPER:
            yield f"{field.name} = {vmcb.get(field):#x} has bits 63:32 set"

    check.__doc__ = f"Bits 63:32 of guest {field_name} are zero."
    return check


vmrun_check("save.cr0_upper")(_upper("save.cr0"))
vmrun_check("save.dr6_upper")(_upper("save.dr6"))
vmrun_check("save.dr7_upper")(_upper("save.dr7"))


@vmrun_check("save.cr3_mbz")
def check_cr3_mbz(vmcb: Vmcb, caps: Capabilities, state: SvmState, instruction: str) -> Iterator[str]:
    """In long mode, guest CR3 bits 63:52 are zero."""
    cr3 = vmcb.get(CR3)
    if is_long_mode(vmcb) and cr3 & CR3_LONG_MBZ:
        yield f"save.cr3 = {cr3:#x} sets must-be-zero bits {cr3 & CR3_LONG_MBZ:#x} (long mode)"


def _mbz(field: VmcbField, register: str, undefined: int, check_id: str) -> CheckFn:
    features = tuple(f for f in spec.FEATURE_BITS if f.register == register)

    def check(vmcb: Vmcb, caps: Capabilities, state: SvmState, instruction: str) -> Iterator[str]:
        value = vmcb.get(field)
        if value & undefined:
            yield f"{field.name} = {value:#x} sets must-be-zero bits {value & undefined:#x}"
        for f in features:
            if value & f.bit.mask and not _fact(caps, f.fact, check_id):
                yield f"{field.name} = {value:#x} sets {f.bit.name}, which the profile {caps.name!r} lacks ({f.fact})"

    check.__doc__ = (f"Guest {register.removeprefix('AMD_')} sets no bit the APM leaves undefined, nor the bit of a "
                     "feature the processor does not report.")
    return check


vmrun_check("save.cr4_mbz")(_mbz(CR4, "AMD_CR4", CR4_MBZ, "save.cr4_mbz"))
vmrun_check("save.efer_mbz")(_mbz(EFER, "AMD_EFER", EFER_MBZ, "save.efer_mbz"))


@vmrun_check("save.efer_long_mode_supported")
def check_long_mode_supported(vmcb: Vmcb, caps: Capabilities, state: SvmState, instruction: str) -> Iterator[str]:
    """Guest EFER.LME and EFER.LMA are 0 on a processor without long mode."""
    efer = vmcb.get(EFER)
    if efer & (EFER_LME | EFER_LMA) and not _fact(caps, "CPUID_LM", "save.efer_long_mode_supported"):
        yield f"save.efer = {efer:#x} enables long mode, which the profile {caps.name!r} does not support"


@vmrun_check("save.long_mode_pae")
def check_long_mode_pae(vmcb: Vmcb, caps: Capabilities, state: SvmState, instruction: str) -> Iterator[str]:
    """Long mode (EFER.LME = CR0.PG = 1) needs CR4.PAE = 1."""
    if is_long_mode(vmcb) and not vmcb.get(CR4) & CR4_PAE:
        yield f"EFER.LME = CR0.PG = 1 but save.cr4 = {vmcb.get(CR4):#x} has PAE = 0"


@vmrun_check("save.long_mode_pe")
def check_long_mode_pe(vmcb: Vmcb, caps: Capabilities, state: SvmState, instruction: str) -> Iterator[str]:
    """Long mode (EFER.LME = CR0.PG = 1) needs CR0.PE = 1."""
    if is_long_mode(vmcb) and not vmcb.get(CR0) & CR0_PE:
        yield f"EFER.LME = CR0.PG = 1 but save.cr0 = {vmcb.get(CR0):#x} has PE = 0"


@vmrun_check("save.long_mode_cs")
def check_long_mode_cs(vmcb: Vmcb, caps: Capabilities, state: SvmState, instruction: str) -> Iterator[str]:
    """In long mode with CR4.PAE = 1, CS.L and CS.D are not both 1."""
    attrib = vmcb.get(CS_ATTRIB)
    if is_long_mode(vmcb) and vmcb.get(CR4) & CR4_PAE and attrib & CS_L and attrib & CS_D:
        yield f"long mode with save.cs.attrib = {attrib:#x}: CS.L = CS.D = 1"


# ----------------------------------------------------------------------------- controls


@vmrun_check("control.vmrun_intercept")
def check_vmrun_intercept(vmcb: Vmcb, caps: Capabilities, state: SvmState, instruction: str) -> Iterator[str]:
    """The VMRUN intercept is set."""
    if not vmcb.get(VMRUN.field) & VMRUN.mask:
        yield f"{VMRUN.field.name} = {vmcb.get(VMRUN.field):#x} has the VMRUN intercept (bit {VMRUN.bit}) clear"


def _map_check(field_name: str, size: int, check_id: str) -> CheckFn:
    field = VMCB_FIELDS[field_name]

    def check(vmcb: Vmcb, caps: Capabilities, state: SvmState, instruction: str) -> Iterator[str]:
        width = _fact(caps, "MAXPHYADDR", check_id)
        base = vmcb.get(field) & ~ALIGN
        last = base + size - 1
        if not fits_physical_width(last, width):
            yield (f"{field.name} = {vmcb.get(field):#x}: the {size // 1024}-KByte map ends at {last:#x}, "
                   f"at or above MAXPHYADDR = {width}")

    check.__doc__ = f"The {size // 1024}-KByte map at {field_name} lies below the maximum physical address."
    return check


vmrun_check("control.msrpm_address")(_map_check("control.msrpm_base_pa", CONSTANTS.msrpm_size,
                                                "control.msrpm_address"))
vmrun_check("control.iopm_address")(_map_check("control.iopm_base_pa", CONSTANTS.iopm_size, "control.iopm_address"))


@vmrun_check("control.event_inj_type")
def check_event_type(vmcb: Vmcb, caps: Capabilities, state: SvmState, instruction: str) -> Iterator[str]:
    """A valid EVENTINJ has a defined TYPE (0, 2, 3 or 4)."""
    event = vmcb.get(EVENT_INJ)
    kind = spec.EVENT_TYPES[EVENT_TYPE.get(event)]
    if event & EVENT_V and not kind.valid:
        yield f"control.event_inj = {event:#x} has reserved TYPE {kind.value}"


@vmrun_check("control.event_inj_exception_vector")
def check_event_vector(vmcb: Vmcb, caps: Capabilities, state: SvmState, instruction: str) -> Iterator[str]:
    """A valid EVENTINJ of TYPE 3 (exception) carries an exception vector."""
    event = vmcb.get(EVENT_INJ)
    vector = EVENT_VECTOR.get(event)
    if (event & EVENT_V and EVENT_TYPE.get(event) == EXCEPTION
            and vector not in CONSTANTS.valid_exception_vectors):
        yield f"control.event_inj = {event:#x} injects vector {vector} as an exception"


@vmrun_check("control.asid")
def check_asid(vmcb: Vmcb, caps: Capabilities, state: SvmState, instruction: str) -> Iterator[str]:
    """The guest ASID is not 0."""
    if vmcb.get(ASID) == 0:
        yield "control.asid = 0 (the host's ASID)"


@vmrun_check("control.nested_cr3_width")
def check_nested_cr3(vmcb: Vmcb, caps: Capabilities, state: SvmState, instruction: str) -> Iterator[str]:
    """With nested paging, N_CR3 lies below the maximum physical address."""
    if vmcb.get(MISC_CTL) & NP_ENABLE:
        width = _fact(caps, "MAXPHYADDR", "control.nested_cr3_width")
        if not fits_physical_width(vmcb.get(NCR3), width):
            yield f"control.nested_cr3 = {vmcb.get(NCR3):#x} sets bits at or above MAXPHYADDR = {width}"


@vmrun_check("control.vnmi_intercept")
def check_vnmi(vmcb: Vmcb, caps: Capabilities, state: SvmState, instruction: str) -> Iterator[str]:
    """NMI virtualization requires the NMI intercept."""
    if vmcb.get(INT_CTL) & V_NMI_ENABLE and not vmcb.get(NMI.field) & NMI.mask:
        yield f"control.int_ctl = {vmcb.get(INT_CTL):#x} enables V_NMI but the NMI intercept is clear"
