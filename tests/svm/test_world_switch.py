"""The world switch (VMRUN, #VMEXIT), STGI / CLGI and VMLOAD / VMSAVE."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtx.errors import InputError
from vtx.outcomes import Fault
from vtx.svm.checks import SvmState
from vtx.svm.instructions import clgi, stgi, vmload, vmsave
from vtx.svm.spec import WORLD_SWITCH, get_exit_code, get_intercept
from vtx.svm.templates import build_svm_template
from vtx.svm.vmcb import Vmcb
from vtx.svm.vmrun import Completed, SvmVmexit, vmexit, vmrun
from vtx.vmx.capabilities import load_preset

CAPS = load_preset("amd_genoa_server")
GUEST_VMCB = build_svm_template("long-mode", CAPS).with_fields({"save.rax": 0x1234, "save.cr2": 0x55})
HOST = SvmState().with_registers(rax=0x0030_0000, rip=0xFFFF_8000_0000_1003, rsp=0xFFFF_8000_0000_8000,
                                 cr3=0x0040_0000, dr7=0x401)
HLT = get_exit_code("VMEXIT_HLT")


def test_vmrun_loads_guest_and_saves_host() -> None:
    result = vmrun(HOST, CAPS, GUEST_VMCB)
    state = result.state
    assert result.succeeds and state.gif and state.guest == GUEST_VMCB
    for f in WORLD_SWITCH.guest_loads:
        assert state.regs.get(f) == GUEST_VMCB.get(f), f.name
    for f in WORLD_SWITCH.host_saves:
        assert state.host_save.get(f) == HOST.regs.get(f), f.name


def test_vmexit_saves_guest_and_restores_host() -> None:
    running = vmrun(HOST, CAPS, GUEST_VMCB).state.with_registers(rax=0x99, rip=0x2000)
    host, vmcb = vmexit(running, CAPS, HLT, exit_info_1=1, exit_info_2=2, exit_int_info=0x8000_0300 | 14,
                        exit_int_info_err=4, next_rip=0x2001)
    assert not host.gif and host.guest is None
    assert (host.rax, host.register("rip"), host.register("rsp"), host.register("cr3")) == (
        HOST.rax, HOST.register("rip"), HOST.register("rsp"), HOST.register("cr3"))
    assert host.register("dr7") == WORLD_SWITCH.host_dr7 and host.cpl == 0 and host.cr0 & 1
    assert vmcb["save.rax"] == 0x99 and vmcb["save.rip"] == 0x2000 and vmcb["save.cr2"] == 0x55
    assert (vmcb["control.exit_code"], vmcb["control.exit_info_1"], vmcb["control.exit_info_2"]) == (0x78, 1, 2)
    assert (vmcb["control.exit_int_info"], vmcb["control.exit_int_info_err"]) == (0x8000_030E, 4)
    assert vmcb["control.next_rip"] == 0x2001  # Genoa has NRIP save


def test_next_rip_only_with_nrip_save() -> None:
    no_nrips = CAPS.overlay({"CPUID_Fn8000_000A_EDX": CAPS.fact("CPUID_Fn8000_000A_EDX") & ~(1 << 3)})
    running = vmrun(HOST, no_nrips, GUEST_VMCB.with_fields({"control.next_rip": 7})).state
    _, vmcb = vmexit(running, no_nrips, HLT, next_rip=0x2001)
    assert vmcb["control.next_rip"] == 7


def test_vmexit_needs_a_guest() -> None:
    with pytest.raises(InputError, match="running guest"):
        vmexit(HOST, CAPS, HLT)


def test_invalid_vmrun_keeps_host_registers() -> None:
    result = vmrun(HOST, CAPS, GUEST_VMCB.with_fields({"control.asid": 0}))
    assert result.outcome == SvmVmexit(get_exit_code("VMEXIT_INVALID"))
    assert result.state.regs == HOST.regs and not result.state.gif and result.state.guest is None


def test_stgi_clgi() -> None:
    cleared = clgi(HOST, CAPS)
    assert cleared.outcome == Completed() and not cleared.state.gif
    assert stgi(cleared.state, CAPS).state.gif
    assert stgi(HOST.with_registers(cpl=3), CAPS).outcome == Fault("GP", 0)
    assert clgi(HOST.with_registers(efer=0x500), CAPS).outcome == Fault("UD")


def test_gif_instructions_in_a_guest() -> None:
    """A guest's STGI exits only if its VMCB intercepts STGI; otherwise it runs."""
    intercepting = GUEST_VMCB.with_fields({"control.intercepts[4]": 1 | get_intercept("INTERCEPT_STGI").mask})
    running = vmrun(HOST, CAPS, intercepting).state
    assert stgi(running, CAPS).outcome == SvmVmexit(get_exit_code("VMEXIT_STGI"))
    assert clgi(running, CAPS).outcome == Completed()


def test_vmload_vmsave_move_only_their_registers() -> None:
    source = Vmcb.from_fields({"save.fs.base": 0xF5, "save.tr.selector": 0x18, "save.lstar": 0x1000,
                               "save.sysenter_eip": 0x77, "save.rax": 0xDEAD, "save.cr3": 0x5000})
    loaded = vmload(HOST, CAPS, source)
    assert loaded.outcome == Completed()
    regs = loaded.state.regs
    assert (regs["save.fs.base"], regs["save.tr.selector"], regs["save.lstar"]) == (0xF5, 0x18, 0x1000)
    assert regs["save.rax"] == HOST.rax and regs["save.cr3"] == HOST.register("cr3")
    saved = vmsave(loaded.state, CAPS, Vmcb.from_fields({"control.asid": 3})).vmcb
    assert saved["save.sysenter_eip"] == 0x77 and saved["control.asid"] == 3 and saved["save.rax"] == 0


def test_vmload_vmsave_checks() -> None:
    assert vmload(HOST.with_registers(rax=0x1001), CAPS, Vmcb()).outcome == Fault("GP", 0)
    assert vmsave(HOST.with_registers(rax=1 << 60), CAPS, Vmcb()).outcome == Fault("GP", 0)
    guest = GUEST_VMCB.with_fields({"control.intercepts[4]": 1 | get_intercept("INTERCEPT_VMLOAD").mask})
    running = vmrun(HOST, CAPS, guest).state
    assert vmload(running, CAPS, Vmcb()).outcome == SvmVmexit(get_exit_code("VMEXIT_VMLOAD"))
    # In the guest, rAX = 0x1234 (from the VMCB) is not aligned: VMSAVE, not intercepted, faults.
    assert vmsave(running, CAPS, Vmcb()).outcome == Fault("GP", 0)


@given(st.lists(st.sampled_from(WORLD_SWITCH.vmload), unique=True).flatmap(
    lambda fields: st.fixed_dictionaries({f.name: st.integers(0, f.mask) for f in fields})))
def test_vmsave_after_vmload_is_identity_on_its_fields(values: dict[str, int]) -> None:
    source = Vmcb.from_fields(values)
    state = vmload(HOST, CAPS, source).state
    saved = vmsave(state, CAPS, Vmcb()).vmcb
    assert {f.name: saved.get(f) for f in WORLD_SWITCH.vmload} == {f.name: source.get(f) for f in WORLD_SWITCH.vmload}
    assert attrs.evolve(state, regs=HOST.regs) == HOST
