"""The VM-exit information record: what a VM exit writes to the exit-information fields of the
VMCS (SDM Vol. 3C §29.2 "Recording VM-Exit Information and Updating VM-Entry Control Fields")."""

from __future__ import annotations

import attrs

from vtx import spec
from vtx.spec import ExitReason
from vtx.typecheck import checked
from vtx.vmx.exits.layouts import LAYOUTS
from vtx.vmx.vmcs import Vmcs

_BASIC = spec.EXIT_REASON_FORMAT["basic_exit_reason"].bits
INTERRUPTION = LAYOUTS["interruption_info"]
VECTORING = LAYOUTS["idt_vectoring_info"]


@attrs.frozen
class ExitInfo:
    """A VM exit with its information: basic reason, exit qualification, VM-exit interruption
    information and error code, instruction length and information, guest linear and physical
    addresses (None where the exit does not report them), and whether it is trap-like (the
    instruction completed before the exit, as for TPR below threshold and APIC write)."""

    reason: ExitReason
    qualification: int = 0
    interruption_info: int = 0
    interruption_error_code: int = 0
    instruction_length: int = 0
    instruction_info: int = 0
    guest_linear_address: int | None = None
    guest_physical_address: int | None = None
    idt_vectoring_info: int = 0
    idt_vectoring_error_code: int = 0
    trap: bool = False
    value: int | None = None

    @property
    def full_reason(self) -> int:
        """The 32-bit exit-reason field of a true VM exit: the basic reason, every other bit 0
        (bit 31, VM-entry failure, is set only by :mod:`vtx.vmx.transitions` for reasons 33, 34, 41)."""
        return _BASIC.put(0, self.reason.number)

    def to_fields(self) -> dict[str, int]:
        """The exit-information fields this exit writes, by VMCS field name."""
        fields = {"VM_EXIT_REASON": self.full_reason, "EXIT_QUALIFICATION": self.qualification,
                  "VM_EXIT_INTR_INFO": self.interruption_info, "VM_EXIT_INSTRUCTION_LEN": self.instruction_length,
                  "VMX_INSTRUCTION_INFO": self.instruction_info, "IDT_VECTORING_INFO_FIELD": self.idt_vectoring_info}
        if self.interruption_info and INTERRUPTION.decode(self.interruption_info)["error_code_valid"]:
            fields["VM_EXIT_INTR_ERROR_CODE"] = self.interruption_error_code
        if self.idt_vectoring_info and VECTORING.decode(self.idt_vectoring_info)["error_code_valid"]:
            fields["IDT_VECTORING_ERROR_CODE"] = self.idt_vectoring_error_code
        if self.guest_linear_address is not None:
            fields["GUEST_LINEAR_ADDRESS"] = self.guest_linear_address
        if self.guest_physical_address is not None:
            fields["GUEST_PHYSICAL_ADDRESS"] = self.guest_physical_address
        return fields

    def __str__(self) -> str:
        return f"VM exit ({self.reason.number}: {self.reason.title}, qualification {self.qualification:#x})"


@attrs.frozen
class AfterEntry:
    """What a successful VM entry leaves for the guest to meet first (SDM Vol. 3C §28.6 "Event
    Injection", §28.7 "Special Features of VM Entry"): the event injected (its VM-entry
    interruption information and error code; 0 when none), and the VM exit that occurs before the
    guest's first instruction, if any (TPR below threshold, pending MTF, preemption timer at 0,
    NMI window, interrupt window)."""

    injected: int = 0
    error_code: int = 0
    exit: ExitInfo | None = None


@checked
def during_delivery(info: ExitInfo, *, vector: int, type: str, error_code: int | None = None) -> ExitInfo:
    """``info`` for an exit that occurred while an event was being delivered through the IDT: the
    IDT-vectoring information records that event (SDM Vol. 3C §29.2.4 "Information for VM Exits
    During Event Delivery"); ``type`` names an interruption type of the layout."""
    raw = VECTORING.encode(vector=vector, type=type, error_code_valid=int(error_code is not None), valid=1)
    return attrs.evolve(info, idt_vectoring_info=raw, idt_vectoring_error_code=error_code or 0)


@checked
def record_exit(vmcs: Vmcs, info: ExitInfo) -> Vmcs:
    """``vmcs`` with the VM-exit information fields of ``info`` written (SDM Vol. 3C §29.2); fields
    the exit does not report keep their values, as the SDM leaves them."""
    return vmcs.with_fields(info.to_fields())
