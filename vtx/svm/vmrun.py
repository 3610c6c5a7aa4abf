"""VMRUN and #VMEXIT: the instruction checks, the VMCB consistency checks, and the world switch.

AMD APM Vol. 2 §15.5.1 "Basic Operation": VMRUN first makes its instruction checks (#UD, #GP(0),
or — in a guest that intercepts it — #VMEXIT(VMRUN) to the outer hypervisor), saves host state to
the host save area at VM_HSAVE_PA, loads guest state from the VMCB at rAX and makes the
consistency checks of "Canonicalization and Consistency Checks"; any violation is a #VMEXIT with
EXITCODE = VMEXIT_INVALID (-1) and EXITINFO1 = EXITINFO2 = 0, which returns to the host with
GIF = 0. Otherwise VMRUN sets GIF and the guest runs.

§15.6 "#VMEXIT": the processor clears GIF, writes the guest state and EXITCODE, EXITINFO1,
EXITINFO2, EXITINTINFO (and nRIP on processors with NRIP save) to the guest's VMCB, and reloads
the host state saved by VMRUN, with DR7 disabling all breakpoints, CR0.PE = 1 and CPL 0.

Checks run in catalogue order and every violation is reported; the outcome is that of the first
violated instruction check, else VMEXIT_INVALID if any consistency check fails. Consistency checks
run only when the instruction checks pass (a faulting VMRUN does not read the VMCB).
"""

from __future__ import annotations

import attrs

from vtx import spec as x86
from vtx.errors import InputError, NotEvaluable
from vtx.outcomes import Fault
from vtx.svm.capabilities import has_feature
from vtx.svm.checks import REGISTRY, SvmState, intercept_of
from vtx.svm.spec import VMRUN_CHECKS, WORLD_SWITCH, ExitCode, VmcbField, VmrunCheckSpec, get_exit_code
from vtx.svm.vmcb import Vmcb
from vtx.typecheck import checked
from vtx.vmx.capabilities import Capabilities

VMEXIT_INVALID = get_exit_code("VMEXIT_INVALID")
_HOST_CR0_SET = sum(x86.reg_bit("CR0", b).mask for b in WORLD_SWITCH.host_cr0_set)


@attrs.frozen
class SvmVmexit:
    """A #VMEXIT: EXITCODE and the two exit-information fields."""

    code: ExitCode
    exit_info_1: int = 0
    exit_info_2: int = 0

    def __str__(self) -> str:
        return f"#VMEXIT({self.code})"


@attrs.frozen
class VmrunEntered:
    """VMRUN passed every check: the guest runs (GIF = 1)."""


@attrs.frozen
class Completed:
    """VMLOAD, VMSAVE, STGI or CLGI completed."""


SvmOutcome = Fault | SvmVmexit | VmrunEntered | Completed


@attrs.frozen
class SvmViolation:
    """One violated check: its catalogue row and a message naming the values."""

    check: VmrunCheckSpec
    message: str

    @property
    def check_id(self) -> str:
        return self.check.id


@attrs.frozen
class SvmResult:
    """Every violation, the outcome, what could not be evaluated, and the state and VMCB after."""

    violations: tuple[SvmViolation, ...]
    outcome: SvmOutcome
    not_evaluable: tuple[str, ...]
    state: SvmState
    vmcb: Vmcb

    @property
    def succeeds(self) -> bool:
        """True only when every check ran and none was violated."""
        return isinstance(self.outcome, VmrunEntered | Completed) and not self.not_evaluable



def _outcome(row: VmrunCheckSpec, instruction: str) -> SvmOutcome:
    if row.failure == "ud":
        return Fault("UD")
    if row.failure == "gp":
        return Fault("GP", 0)
    return SvmVmexit(intercept_of(instruction).exit if row.failure == "vmexit_intercept" else VMEXIT_INVALID)


def run_checks(instruction: str | None, vmcb: Vmcb, caps: Capabilities,
               state: SvmState) -> tuple[list[SvmViolation], list[str]]:
    """The violations of ``instruction``'s own checks (None: VMRUN's consistency checks on the VMCB),
    and the checks the profile could not decide."""
    found: list[SvmViolation] = []
    unknown: list[str] = []
    rows = [r for r in VMRUN_CHECKS if (instruction in r.instructions if instruction else not r.instructions)]
    for row in rows:
        try:
            found += [SvmViolation(row, m) for m in REGISTRY[row.id].fn(vmcb, caps, state, instruction or "vmrun")]
        except NotEvaluable as e:
            unknown.append(f"{row.id}: {e}")
    return found, unknown


def instruction_checks(instruction: str, vmcb: Vmcb, caps: Capabilities,
                       state: SvmState) -> tuple[SvmResult | None, list[str]]:
    """The failed result of ``instruction`` if one of its own checks fails (else None), and the
    checks the profile could not decide."""
    violations, unknown = run_checks(instruction, vmcb, caps, state)
    if not violations:
        return None, unknown
    outcome = _outcome(violations[0].check, instruction)
    return SvmResult(tuple(violations), outcome, tuple(unknown), state, vmcb), unknown


def _copy(source: Vmcb, target: Vmcb, fields: tuple[VmcbField, ...]) -> Vmcb:
    return target.with_fields({f.name: source.get(f) for f in fields})


@checked
def vmrun(state: SvmState, caps: Capabilities, vmcb: Vmcb) -> SvmResult:
    """VMRUN with the VMCB ``vmcb`` at ``state.rax``: every violation, the outcome, and the state
    after (the guest's registers and GIF = 1 on success; the host's with GIF = 0 after
    VMEXIT_INVALID, whose EXITCODE is written to the returned VMCB)."""
    fault, unknown = instruction_checks("vmrun", vmcb, caps, state)
    if fault is not None:
        return fault
    violations, more = run_checks(None, vmcb, caps, state)
    unknown += more
    if violations:
        after = vmcb.with_fields({"control.exit_code": VMEXIT_INVALID.value, "control.exit_info_1": 0,
                                  "control.exit_info_2": 0})
        return SvmResult(tuple(violations), SvmVmexit(VMEXIT_INVALID), tuple(unknown),
                         attrs.evolve(state, gif=False), after)
    entered = attrs.evolve(state, regs=_copy(vmcb, state.regs, WORLD_SWITCH.guest_loads), gif=True, guest=vmcb,
                           host_save=_copy(state.regs, state.host_save, WORLD_SWITCH.host_saves))
    return SvmResult((), VmrunEntered(), tuple(unknown), entered, vmcb)


@checked
def vmexit(state: SvmState, caps: Capabilities, code: ExitCode, *, exit_info_1: int = 0, exit_info_2: int = 0,
           exit_int_info: int = 0, exit_int_info_err: int = 0, next_rip: int = 0) -> tuple[SvmState, Vmcb]:
    """#VMEXIT from the running guest: the host's state (GIF = 0) and the guest's VMCB with its state
    and the exit information. nRIP is written only where the processor has NRIP save; otherwise the
    field keeps its value. UNSURE: what a processor without NRIP save leaves in nRIP."""
    guest = state.guest
    if guest is None:
        raise InputError("state.guest", "None", "#VMEXIT needs a running guest (after a successful VMRUN)")
    exit_fields = {"control.exit_code": code.value, "control.exit_info_1": exit_info_1,
                   "control.exit_info_2": exit_info_2, "control.exit_int_info": exit_int_info,
                   "control.exit_int_info_err": exit_int_info_err}
    if has_feature(caps, "NRIPS"):
        exit_fields["control.next_rip"] = next_rip
    saved = _copy(state.regs, guest, WORLD_SWITCH.guest_saves).with_fields(exit_fields)
    host = _copy(state.host_save, state.regs, WORLD_SWITCH.host_loads)
    host = host.with_fields({"save.dr7": WORLD_SWITCH.host_dr7, "save.cr0": host["save.cr0"] | _HOST_CR0_SET,
                             "save.cpl": 0})
    return attrs.evolve(state, regs=host, gif=False, guest=None), saved
