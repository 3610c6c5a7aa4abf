"""Shared set-ups for the VMX-operation tests: a processor with a VMXON region and VMCS regions."""

from __future__ import annotations

import attrs

from vtx.outcomes import InstructionOutcome, VmEntered, VmExit
from vtx.paging.memory import PhysicalMemory
from vtx.vmx import instructions as ins
from vtx.vmx.capabilities import Capabilities, load_preset
from vtx.vmx.instructions import vmptrld, vmxon
from vtx.vmx.operation import LogicalProcessor, MsegHeader, VmxonRegion
from vtx.vmx.templates import build_template
from vtx.vmx.vmcs import Vmcs

SKYLAKE = load_preset("skylake_client")
IVYBRIDGE = load_preset("ivybridge_client")
VMXON_ADDR = 0x1000
VMCS_A = 0x2000
VMCS_B = 0x3000
WRONG_REV = 0x4000


def revision(caps: Capabilities) -> int:
    rev = caps.msr_field("IA32_VMX_BASIC", "vmcs_revision_id")
    assert rev is not None
    return rev


def fresh(caps: Capabilities = SKYLAKE, **changes: object) -> LogicalProcessor:
    """Outside VMX operation, ready for VMXON: a VMXON region and two VMCS regions in memory."""
    rev = revision(caps)
    state = LogicalProcessor(regions={VMXON_ADDR: VmxonRegion(rev), VMCS_A: Vmcs(revision_id=rev),
                                      VMCS_B: Vmcs(revision_id=rev), WRONG_REV: Vmcs(revision_id=rev ^ 1)})
    return attrs.evolve(state, **changes)


def root(caps: Capabilities = SKYLAKE, **changes: object) -> LogicalProcessor:
    state, outcome = vmxon(fresh(caps), caps, VMXON_ADDR)
    assert outcome.__class__.__name__ == "VmSucceed", outcome
    return attrs.evolve(state, **changes)


def with_current(caps: Capabilities = SKYLAKE, address: int = VMCS_A, **changes: object) -> LogicalProcessor:
    state, outcome = vmptrld(root(caps), caps, address)
    assert outcome.__class__.__name__ == "VmSucceed", outcome
    return attrs.evolve(state, **changes)


def entry_ready(caps: Capabilities) -> dict[str, int]:
    """The fields of the long-mode template: a VMCS that passes every VM-entry check."""
    return build_template("long-mode", caps).nonzero_fields()


def launch_ready(caps: Capabilities = SKYLAKE) -> LogicalProcessor:
    state = with_current(caps)
    return state.with_region(VMCS_A, state.get_current_vmcs().with_fields(entry_ready(caps)))


def kind(outcome: InstructionOutcome) -> str:
    """The outcome kind of spec/vmx/state_machine.toml."""
    return {"VmSucceed": "succeed", "VmFailInvalid": "fail_invalid", "VmFailValid": "fail_valid",
            "VmExit": "vm_exit", "VmEntered": "vm_entered", "VmEntryFailed": "entry_failed"}.get(
        type(outcome).__name__) or {"UD": "ud", "GP": "gp"}[outcome.vector]  # type: ignore[union-attr]


MSEG = 0x10_0000
SMM_MONITOR_VALID = MSEG | 1


def dual_monitor_ready(**changes: object) -> LogicalProcessor:
    state = with_current(smm_monitor_ctl=SMM_MONITOR_VALID)
    state = state.with_region(MSEG, MsegHeader(revision_id=0))
    state = state.with_region(VMCS_A, state.get_current_vmcs().with_fields(
        {"VM_EXIT_CONTROLS": SKYLAKE.allowed0("exit")}))
    return attrs.evolve(state, **changes)


def mutate_current(state: LogicalProcessor, **fields: int) -> LogicalProcessor:
    return state.with_region(state.current_vmcs, state.get_current_vmcs().with_fields(fields))


def launched() -> LogicalProcessor:
    state, outcome = ins.vmlaunch(launch_ready(), SKYLAKE)
    assert isinstance(outcome, VmEntered)
    exited, exit_outcome = ins.vmcall(state, SKYLAKE)
    assert isinstance(exit_outcome, VmExit)
    return exited


SHADOW = 0x5000
BITMAPS = 0x6000


def shadowing_guest(bitmap_bits: dict[int, int] | None = None) -> LogicalProcessor:
    """A guest running with VMCS shadowing; the link pointer references a shadow VMCS."""
    state = with_current(SKYLAKE)
    vmcs = build_template("long-mode", SKYLAKE, features=["vmcs_shadowing"]).with_fields(
        {"VMCS_LINK_POINTER": SHADOW, "VMREAD_BITMAP": BITMAPS, "VMWRITE_BITMAP": BITMAPS + 0x1000})
    memory = PhysicalMemory()
    for address, byte in (bitmap_bits or {}).items():
        memory = memory.write_int(address, 1, byte)
    state = attrs.evolve(state.with_region(VMCS_A, vmcs), memory=memory).with_region(
        SHADOW, Vmcs(revision_id=revision(SKYLAKE), shadow=True).with_fields({"GUEST_RIP": 0x1234}))
    guest, outcome = ins.vmlaunch(state, SKYLAKE)
    assert isinstance(outcome, VmEntered), outcome
    return guest


def vmfunc_guest(eptp_entry: int) -> LogicalProcessor:
    """A guest with EPTP switching enabled and ``eptp_entry`` at index 3 of its EPTP list."""
    vmcs = build_template("long-mode", SKYLAKE, features=["enable_ept", "enable_vm_functions"]).with_fields(
        {"VM_FUNCTION_CONTROL": 1, "EPTP_LIST_ADDRESS": 0x7000})
    state = attrs.evolve(with_current(SKYLAKE).with_region(VMCS_A, vmcs),
                         memory=PhysicalMemory().write_int(0x7000 + 8 * 3, 8, eptp_entry))
    guest, outcome = ins.vmlaunch(state, SKYLAKE)
    assert isinstance(outcome, VmEntered), outcome
    return guest


