"""Faults that take priority over VM exits (#UD for LLDT/LTR/SLDT/STR outside protected mode, #DB
from DR7.GD) and bit 12 of the exit interruption information (SDM Vol. 3C §27.1.1, §29.2.3)."""

from __future__ import annotations

import pytest

from vtx import guest_ops as g
from vtx import spec
from vtx.spec import get_control, reg_bit
from vtx.vmx.capabilities import load_preset
from vtx.vmx.exits import causes as C  # noqa: N812 - the cause tables
from vtx.vmx.exits.info import ExitInfo
from vtx.vmx.exits.layouts import LAYOUTS
from vtx.vmx.exits.minimal import minimal_exit_vmcs
from vtx.vmx.exits.rules import Executes, GuestContext, GuestFault, decide
from vtx.vmx.vmcs import Vmcs

BASE = minimal_exit_vmcs(load_preset("max"))
PE, PG = reg_bit("CR0", "PE").mask, reg_bit("CR0", "PG").mask
VM = reg_bit("RFLAGS", "VM").mask
FIXED1 = reg_bit("RFLAGS", "FIXED1").mask
UD, DB, GP = (GuestFault(C.VECTORS[v], 0 if v == "general_protection" else None)
              for v in ("invalid_opcode", "debug", "general_protection"))


def _on(vmcs: Vmcs, field: str, name: str) -> Vmcs:
    cf = spec.CONTROL_FIELDS[field].vmcs_field
    vmcs = vmcs.set(cf, vmcs.get(cf) | get_control(field, name).mask)
    if field == "proc2":
        vmcs = _on(vmcs, "proc", "activate_secondary_controls")
    return vmcs


DESC_EXITING = _on(BASE, "proc2", "descriptor_table_exiting")
REAL = GuestContext(cr0=0)
V86 = GuestContext(cr0=PE | PG, rflags=VM | FIXED1, cpl=3)
PROTECTED = GuestContext(cr0=PE | PG)

# (mnemonic, context, expected: "ud" / "gp" / "exit")
DESCRIPTOR_ROWS = [
    ("lldt", REAL, "ud"), ("ltr", REAL, "ud"), ("sldt", REAL, "ud"), ("str", REAL, "ud"),
    ("lldt", V86, "ud"), ("str", V86, "ud"),
    ("lgdt", REAL, "exit"), ("sidt", REAL, "exit"),  # LGDT/LIDT/SGDT/SIDT work in real-address mode
    ("lgdt", V86, "gp"),  # a load at CPL 3
    ("lldt", PROTECTED, "exit"), ("str", PROTECTED, "exit"),
]


@pytest.mark.parametrize(("mnemonic", "ctx", "expected"), DESCRIPTOR_ROWS)
def test_system_segment_instructions_ud_outside_protected_mode(mnemonic: str, ctx: GuestContext,
                                                               expected: str) -> None:
    out = decide(g.DescriptorTable(mnemonic), DESC_EXITING, ctx)
    assert {"ud": UD, "gp": GP}.get(expected, out) == out
    assert isinstance(out, ExitInfo) == (expected == "exit")


GD = C.DR7_GENERAL_DETECT

# (MOV-DR exiting, CPL, DR7, expected)
MOV_DR_ROWS = [
    (False, 0, GD, DB), (False, 0, 0, Executes()), (False, 3, GD, GP),
    (True, 0, GD, "exit"), (True, 3, 0, "exit"),
]


@pytest.mark.parametrize(("exiting", "cpl", "dr7", "expected"), MOV_DR_ROWS)
def test_general_detect_db(exiting: bool, cpl: int, dr7: int, expected: object) -> None:
    vmcs = _on(BASE, "proc", "mov_dr_exiting") if exiting else BASE
    out = decide(g.MovDr(7, to_dr=True), vmcs, GuestContext(cr0=PE | PG, cpl=cpl, dr7=dr7))
    assert isinstance(out, ExitInfo) if expected == "exit" else out == expected


# (vector, IRET unblocked NMIs, bit 12)
UNBLOCKING_ROWS = [(14, True, 1), (14, False, 0), (13, True, 1), (8, True, 0)]


@pytest.mark.parametrize(("vector", "unblocked", "bit"), UNBLOCKING_ROWS)
def test_nmi_unblocking_due_to_iret(vector: int, unblocked: bool, bit: int) -> None:
    vmcs = BASE.with_fields({"EXCEPTION_BITMAP": 1 << vector})
    out = decide(g.Exception_(vector, error_code=0), vmcs, GuestContext(iret_unblocked_nmi=unblocked))
    assert isinstance(out, ExitInfo)
    assert LAYOUTS["interruption_info"].decode(out.interruption_info)["nmi_unblocking"] == bit
