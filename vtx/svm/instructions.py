"""STGI, CLGI, VMLOAD and VMSAVE as transitions returning an :class:`~vtx.svm.vmrun.SvmResult`.

AMD APM Vol. 2 §15.17 "Global Interrupt Flag, STGI and CLGI": STGI sets and CLGI clears the global
interrupt flag (with GIF = 0 the processor holds off interrupts, NMIs, SMIs and INIT). §15.5.2
"VMSAVE and VMLOAD Instructions": VMLOAD loads, and VMSAVE stores, the processor state that VMRUN
and #VMEXIT do not switch — FS, GS, TR and LDTR with their hidden state, KernelGsBase, STAR, LSTAR,
CSTAR, SFMASK and the SYSENTER MSRs — from / to the VMCB at rAX. All four make the instruction
checks of ``spec/svm/vmrun_checks.toml`` (#UD, #GP(0) at CPL > 0, the guest's intercept; VMLOAD and
VMSAVE also the rAX checks) before they act.
"""

from __future__ import annotations

import attrs

from vtx.svm.checks import SvmState
from vtx.svm.spec import WORLD_SWITCH
from vtx.svm.vmcb import Vmcb
from vtx.svm.vmrun import Completed, SvmResult, instruction_checks
from vtx.typecheck import checked
from vtx.vmx.capabilities import Capabilities

_NO_VMCB = Vmcb()


def _gif(instruction: str, state: SvmState, caps: Capabilities, gif: bool) -> SvmResult:
    fault, unknown = instruction_checks(instruction, _NO_VMCB, caps, state)
    if fault is not None:
        return fault
    return SvmResult((), Completed(), tuple(unknown), attrs.evolve(state, gif=gif), _NO_VMCB)


@checked
def stgi(state: SvmState, caps: Capabilities) -> SvmResult:
    """STGI: GIF = 1."""
    return _gif("stgi", state, caps, True)


@checked
def clgi(state: SvmState, caps: Capabilities) -> SvmResult:
    """CLGI: GIF = 0."""
    return _gif("clgi", state, caps, False)


@checked
def vmload(state: SvmState, caps: Capabilities, vmcb: Vmcb) -> SvmResult:
    """VMLOAD from the VMCB ``vmcb`` at ``state.rax``: the VMLOAD/VMSAVE registers from the VMCB."""
    fault, unknown = instruction_checks("vmload", vmcb, caps, state)
    if fault is not None:
        return fault
    regs = state.regs.with_fields({f.name: vmcb.get(f) for f in WORLD_SWITCH.vmload})
    return SvmResult((), Completed(), tuple(unknown), attrs.evolve(state, regs=regs), vmcb)


@checked
def vmsave(state: SvmState, caps: Capabilities, vmcb: Vmcb) -> SvmResult:
    """VMSAVE to the VMCB ``vmcb`` at ``state.rax``: the returned VMCB holds the processor's
    VMLOAD/VMSAVE registers, every other field unchanged."""
    fault, unknown = instruction_checks("vmsave", vmcb, caps, state)
    if fault is not None:
        return fault
    saved = vmcb.with_fields({f.name: state.regs.get(f) for f in WORLD_SWITCH.vmload})
    return SvmResult((), Completed(), tuple(unknown), state, saved)
