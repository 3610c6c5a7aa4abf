"""Architectural outcomes of VMX instructions, as values.

SDM Vol. 3C §32.2 "Conventions" defines the three outcomes of a VMX instruction that does not
fault: VMsucceed (CF = PF = AF = ZF = SF = OF = 0), VMfailInvalid (CF = 1; no current VMCS to
hold an error number) and VMfailValid(ErrorNumber) (ZF = 1; the error number is stored in the
VM-instruction error field of the current VMCS). Faults (#UD, #GP(0)) are outcomes too.
"""

from __future__ import annotations

import attrs

from vtx.spec import ExitReason, VmInstructionError


@attrs.frozen
class VmSucceed:
    """The instruction succeeded; ``value`` is what it read (VMREAD, VMPTRST), if anything."""

    value: int | None = None


@attrs.frozen
class VmFailInvalid:
    """The instruction failed and there is no current VMCS to record why (RFLAGS.CF = 1)."""


@attrs.frozen
class VmFailValid:
    """The instruction failed; ``error`` is stored in the VM-instruction error field (ZF = 1)."""

    error: VmInstructionError

    def __str__(self) -> str:
        return f"VMfailValid({self.error.number}: {self.error.message})"


@attrs.frozen
class Fault:
    """The instruction raised an exception instead of completing (``#UD``, ``#GP(0)``)."""

    vector: str
    error_code: int | None = None

    def __str__(self) -> str:
        return f"#{self.vector}" + (f"({self.error_code})" if self.error_code is not None else "")


Outcome = VmSucceed | VmFailInvalid | VmFailValid | Fault


@attrs.frozen
class VmExit:
    """The instruction, executed in VMX non-root operation, causes a VM exit with this basic reason.

    What the exit saves and loads is :mod:`vtx.vmx.exits`; here it is only the reason.
    """

    reason: ExitReason

    def __str__(self) -> str:
        return f"VM exit ({self.reason.number}: {self.reason.title})"


@attrs.frozen
class VmEntered:
    """VMLAUNCH / VMRESUME succeeded: the logical processor is in VMX non-root operation."""


@attrs.frozen
class VmEntryFailed:
    """VM entry failed after guest state began loading (SDM Vol. 3C §28.8 "VM-Entry Failures
    During or After Loading Guest State"): a VM exit with ``reason`` (33, 34 or 41) and bit 31 of
    the exit-reason field set, and ``qualification``."""

    reason: ExitReason
    qualification: int


InstructionOutcome = Outcome | VmExit | VmEntered | VmEntryFailed
