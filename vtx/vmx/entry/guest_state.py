"""Checks on the guest-state area (SDM Vol. 3C §28.3.1 "Checks on the Guest State Area").

A violation makes VM entry fail after it has begun loading guest state: a VM exit with basic
exit reason 33 and bit 31 of the exit-reason field set.
"""

from __future__ import annotations

from collections.abc import Iterator

from vtx.bits import mask
from vtx.spec import REGISTERS, VMCS_FIELDS, reg_bit
from vtx.vmx.capabilities import Capabilities
from vtx.vmx.entry import EntryContext, entry_check
from vtx.vmx.vmcs import Vmcs

_RFLAGS_DEFINED = sum(b.mask for b in REGISTERS["RFLAGS"].bits)
_RFLAGS_RESERVED = mask(64) & ~_RFLAGS_DEFINED
_RFLAGS_FIXED1 = reg_bit("RFLAGS", "FIXED1").mask


@entry_check("guest.rflags.reserved_bits")
def check_guest_rflags_reserved(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """Reserved bits 63:22, 15, 5 and 3 of the RFLAGS field are 0 and reserved bit 1 is 1."""
    rflags = vmcs.get(VMCS_FIELDS["GUEST_RFLAGS"])
    if rflags & _RFLAGS_RESERVED:
        yield f"GUEST_RFLAGS = {rflags:#x} sets reserved bits {rflags & _RFLAGS_RESERVED:#x}"
    if not rflags & _RFLAGS_FIXED1:
        yield f"GUEST_RFLAGS = {rflags:#x} clears bit 1, which must be 1"
