"""A decided exit returns to root operation with its information recorded in the VMCS."""

from __future__ import annotations

import pytest

from vtx import guest_ops as g
from vtx.errors import InputError
from vtx.outcomes import VmSucceed
from vtx.spec import get_control, get_exit_reason
from vtx.vmx.capabilities import load_preset
from vtx.vmx.exits.info import ExitInfo
from vtx.vmx.exits.layouts import LAYOUTS
from vtx.vmx.exits.rules import GuestContext, decide
from vtx.vmx.instructions import vmptrld, vmxon
from vtx.vmx.operation import LogicalProcessor, VmxMode, VmxonRegion
from vtx.vmx.templates import build_template
from vtx.vmx.transitions import load_guest_state, load_host_state
from vtx.vmx.vmcs import Vmcs

SKYLAKE = load_preset("skylake_client")
VMXON_ADDR, VMCS_ADDR = 0x1000, 0x2000


def test_io_exit_is_recorded_on_the_way_out() -> None:
    template = build_template("long-mode", SKYLAKE)
    io = get_control("proc", "unconditional_io_exiting").mask
    vmcs = template.with_fields({"CPU_BASED_VM_EXEC_CONTROL": template["CPU_BASED_VM_EXEC_CONTROL"] | io})
    state = LogicalProcessor(regions={VMXON_ADDR: VmxonRegion(vmcs.revision_id), VMCS_ADDR: vmcs})
    state, on = vmxon(state, SKYLAKE, VMXON_ADDR)
    state, loaded = vmptrld(state, SKYLAKE, VMCS_ADDR)
    assert on == VmSucceed() and loaded == VmSucceed()
    guest = load_guest_state(state, vmcs, launch=True)
    info = decide(g.Io(0x3F8, 1, input=False, length=1), guest.get_current_vmcs(), GuestContext(cr0=0x8000_0011))
    assert isinstance(info, ExitInfo) and info.reason == get_exit_reason("IO_INSTRUCTION")
    host = load_host_state(guest, SKYLAKE, guest.get_current_vmcs(), info.reason, info=info)
    saved: Vmcs = host.get_current_vmcs()
    assert host.mode is VmxMode.ROOT
    assert saved["VM_EXIT_REASON"] == info.reason.number
    assert LAYOUTS["io_instruction"].decode(saved["EXIT_QUALIFICATION"])["port"] == 0x3F8
    assert saved["VM_EXIT_INSTRUCTION_LEN"] == 1
    with pytest.raises(InputError):
        load_host_state(guest, SKYLAKE, guest.get_current_vmcs(), get_exit_reason("CPUID"), info=info)
