"""Checks on the host-state area (SDM Vol. 3C §28.2.2 "Checks on Host Control Registers, MSRs,
and SSP"). A violation makes VM entry fail with VMfailValid(8)."""

from __future__ import annotations

from collections.abc import Iterator

from vtx.bits import mask
from vtx.errors import NotEvaluable
from vtx.spec import VMCS_FIELDS
from vtx.vmx.capabilities import Capabilities
from vtx.vmx.entry import EntryContext, entry_check
from vtx.vmx.vmcs import Vmcs


def _fixed_bit_problems(register: str, value: int, caps: Capabilities) -> Iterator[str]:
    fixed0, fixed1 = caps.msr(f"IA32_VMX_{register}_FIXED0"), caps.msr(f"IA32_VMX_{register}_FIXED1")
    if fixed0 is None or fixed1 is None:
        raise NotEvaluable(f"HOST_{register}", hex(value), f"the profile lacks IA32_VMX_{register}_FIXED0/1")
    must_be_1, must_be_0 = fixed0 & ~value, value & ~fixed1 & mask(64)
    if must_be_1:
        yield f"HOST_{register} = {value:#x} clears bits {must_be_1:#x} that IA32_VMX_{register}_FIXED0 fixes to 1"
    if must_be_0:
        yield f"HOST_{register} = {value:#x} sets bits {must_be_0:#x} that IA32_VMX_{register}_FIXED1 fixes to 0"


@entry_check("host.cr0.fixed_bits")
def check_host_cr0_fixed_bits(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """The host CR0 field sets no bit to a value not supported in VMX operation (IA32_VMX_CR0_FIXED0/1)."""
    yield from _fixed_bit_problems("CR0", vmcs.get(VMCS_FIELDS["HOST_CR0"]), caps)


@entry_check("host.cr4.fixed_bits")
def check_host_cr4_fixed_bits(vmcs: Vmcs, caps: Capabilities, ctx: EntryContext) -> Iterator[str]:
    """The host CR4 field sets no bit to a value not supported in VMX operation (IA32_VMX_CR4_FIXED0/1)."""
    yield from _fixed_bit_problems("CR4", vmcs.get(VMCS_FIELDS["HOST_CR4"]), caps)
