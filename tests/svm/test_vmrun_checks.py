"""Every VMRUN check: an input that violates it and a near miss that passes, from the long-mode
template. Plus the registry is one-to-one with spec/svm/vmrun_checks.toml and the outcome order."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from vtx.outcomes import Fault
from vtx.svm.checks import REGISTRY, SvmState
from vtx.svm.spec import VMRUN_CHECKS, get_exit_code
from vtx.svm.templates import build_svm_template
from vtx.svm.vmcb import Vmcb
from vtx.svm.vmrun import SvmVmexit, VmrunEntered, vmrun
from vtx.vmx.capabilities import Capabilities, load_preset

CAPS = load_preset("amd_genoa_server")
BASE = build_svm_template("long-mode", CAPS)
STATE = SvmState().with_registers(rax=0x0030_0000)
GUEST = Vmcb.from_fields({"control.intercepts[4]": 1})  # a running guest that intercepts VMRUN
LONG = {"save.efer": 0x1500, "save.cr0": 0x80000031, "save.cr4": 0x20}  # the template's long-mode registers
PROT = {"save.efer": 0x1000, "save.cr0": 0x11, "save.cr4": 0}  # protected mode, no paging
NO_LM = {"CPUID_LM": False}
NO_SVM = {"CPUID_SVM": False}
VALID, EXC, NMI_T, SOFT = 1 << 31, 3 << 8, 2 << 8, 4 << 8

# check id -> (failing inputs, passing inputs); an input is (VMCB fields, state changes, capability overlay).
Case = tuple[dict[str, Any], dict[str, Any], dict[str, Any]]
CASES: dict[str, tuple[list[Case], list[Case]]] = {
    "instruction.svm_supported": ([({}, {}, NO_SVM)], [({}, {}, {})]),
    "instruction.efer_svme": ([({}, {"efer": 0x500}, {})], [({}, {"efer": 0x1000}, {})]),
    "instruction.protected_mode": ([({}, {"cr0": 0x10}, {}), ({}, {"rflags": 0x20002}, {})],
                                   [({}, {"cr0": 0x11, "efer": 0x1000}, {})]),
    "instruction.cpl": ([({}, {"cpl": 3}, {}), ({}, {"cpl": 1}, {})], [({}, {"cpl": 0}, {})]),
    "instruction.intercepted": ([({}, {"guest": GUEST}, {})], [({}, {"guest": None}, {})]),
    "instruction.rax_alignment": ([({}, {"rax": 0x1008}, {}), ({}, {"rax": 0x1}, {})], [({}, {"rax": 0x1000}, {})]),
    "instruction.rax_physical_width": ([({}, {"rax": 1 << 52}, {})], [({}, {"rax": (1 << 52) - 0x1000}, {})]),
    "save.efer_svme": ([({"save.efer": 0x500}, {}, {})], [({"save.efer": 0x1500}, {}, {})]),
    "save.cr0_cd_nw": ([({"save.cr0": 0xA0000031}, {}, {})],
                       [({"save.cr0": 0xE0000031}, {}, {}), ({"save.cr0": 0xC0000031}, {}, {})]),
    "save.cr0_upper": ([({"save.cr0": 0x1_80000031}, {}, {}), ({"save.cr0": 1 << 63 | 0x80000031}, {}, {})],
                       [({"save.cr0": 0xFFFF_FFFF & ~(1 << 29)}, {}, {})]),
    "save.cr3_mbz": ([({"save.cr3": 1 << 52}, {}, {}), ({"save.cr3": 1 << 63}, {}, {})],
                     [({"save.cr3": (1 << 52) - 0x1000}, {}, {}), ({**PROT, "save.cr3": 1 << 63}, {}, {})]),
    "save.cr4_mbz": ([({"save.cr4": 0x20 | 1 << 13}, {}, {}), ({"save.cr4": 0x20 | 1 << 32}, {}, {}),
                      ({"save.cr4": 0x20 | 1 << 24}, {}, {}), ({"save.cr4": 0x20 | 1 << 12}, {}, {"CPUID_LA57": False}),
                      ({"save.cr4": 0x20 | 1 << 23}, {}, {"CPUID_CET_SS": False})],
                     [({"save.cr4": 0xF71FFF & ~(1 << 19)}, {}, {}), ({"save.cr4": 0x20}, {}, {"CPUID_LA57": False})]),
    "save.dr6_upper": ([({"save.dr6": 1 << 32}, {}, {})], [({"save.dr6": 0xFFFF_FFFF}, {}, {})]),
    "save.dr7_upper": ([({"save.dr7": 1 << 40}, {}, {})], [({"save.dr7": 0xFFFF_FFFF}, {}, {})]),
    "save.efer_mbz": ([({"save.efer": 0x1500 | 1 << 9}, {}, {}), ({"save.efer": 0x1500 | 1 << 63}, {}, {}),
                       ({"save.efer": 0x1500 | 1 << 1}, {}, {}), ({"save.efer": 0x1D00}, {}, {"CPUID_NX": False})],
                      [({"save.efer": 0x36FD01}, {}, {}), ({"save.efer": 0x1500}, {}, {"CPUID_NX": False})]),
    "save.efer_long_mode_supported": ([({}, {}, NO_LM), ({**PROT, "save.efer": 0x1100}, {}, NO_LM)],
                                      [({**PROT}, {}, NO_LM), ({}, {}, {})]),
    "save.long_mode_pae": ([({"save.cr4": 0}, {}, {})], [({"save.cr4": 0, "save.cr0": 0x11}, {}, {})]),
    "save.long_mode_pe": ([({"save.cr0": 0x80000030}, {}, {})], [({"save.cr0": 0x30}, {}, {})]),
    "save.long_mode_cs": ([({"save.cs.attrib": 0xE9B}, {}, {})],
                          [({"save.cs.attrib": 0xA9B}, {}, {}), ({**PROT, "save.cs.attrib": 0xE9B}, {}, {})]),
    "control.vmrun_intercept": ([({"control.intercepts[4]": 0xFFFF_FFFE}, {}, {})],
                                [({"control.intercepts[4]": 1}, {}, {})]),
    "control.msrpm_address": ([({"control.msrpm_base_pa": (1 << 52) - 0x1000}, {}, {}),
                               ({"control.msrpm_base_pa": 1 << 52}, {}, {})],
                              [({"control.msrpm_base_pa": (1 << 52) - 0x2FFF}, {}, {})]),
    "control.iopm_address": ([({"control.iopm_base_pa": (1 << 52) - 0x2000}, {}, {})],
                             [({"control.iopm_base_pa": (1 << 52) - 0x3FFF}, {}, {})]),
    "control.event_inj_type": ([({"control.event_inj": VALID | 1 << 8}, {}, {}),
                                ({"control.event_inj": VALID | 7 << 8}, {}, {})],
                               [({"control.event_inj": 7 << 8}, {}, {}), ({"control.event_inj": VALID | SOFT}, {}, {}),
                                ({"control.event_inj": VALID | NMI_T | 2}, {}, {})]),
    "control.event_inj_exception_vector": ([({"control.event_inj": VALID | EXC | 2}, {}, {}),
                                            ({"control.event_inj": VALID | EXC | 32}, {}, {}),
                                            ({"control.event_inj": VALID | EXC | 15}, {}, {})],
                                           [({"control.event_inj": VALID | EXC | 14 | 1 << 11}, {}, {}),
                                            ({"control.event_inj": EXC | 2}, {}, {}),
                                            ({"control.event_inj": VALID | 32}, {}, {})]),
    "control.asid": ([({"control.asid": 0}, {}, {})], [({"control.asid": 0xFFFF_FFFF}, {}, {})]),
    "control.nested_cr3_width": ([({"control.misc_ctl": 1, "control.nested_cr3": 1 << 52}, {}, {})],
                                 [({"control.misc_ctl": 1, "control.nested_cr3": (1 << 52) - 0x1000}, {}, {}),
                                  ({"control.nested_cr3": 1 << 52}, {}, {})]),
    "control.vnmi_intercept": ([({"control.int_ctl": 1 << 26}, {}, {})],
                               [({"control.int_ctl": 1 << 26, "control.intercepts[3]": 2}, {}, {})]),
}


def _state(base: SvmState = STATE, **changes: Any) -> SvmState:
    """``base`` with registers (efer, cpl, rax, ...) and attributes (guest, gif) changed."""
    attributes = {k: changes.pop(k) for k in ("guest", "gif") if k in changes}
    return attrs.evolve(base.with_registers(**changes), **attributes)


def _run(case: Case) -> tuple[set[str], object]:
    fields, state, facts = case
    caps = CAPS.overlay(facts) if facts else CAPS
    result = vmrun(_state(**state), caps, BASE.with_fields(fields))
    assert not result.not_evaluable
    return {v.check_id for v in result.violations}, result.outcome


def test_registry_matches_catalogue() -> None:
    assert set(REGISTRY) == set(VMRUN_CHECKS.keys())
    assert set(CASES) == set(VMRUN_CHECKS.keys())
    for check in REGISTRY.values():
        assert check.fn.__doc__


@pytest.mark.parametrize(("check_id", "case"), [(k, c) for k, (bad, _) in CASES.items() for c in bad])
def test_rejects(check_id: str, case: Case) -> None:
    violated, outcome = _run(case)
    assert check_id in violated
    failure = VMRUN_CHECKS[check_id].failure
    expected = {"ud": Fault("UD"), "gp": Fault("GP", 0), "vmexit_intercept": SvmVmexit(get_exit_code("VMEXIT_VMRUN")),
                "vmexit_invalid": SvmVmexit(get_exit_code("VMEXIT_INVALID"))}[failure]
    assert outcome == expected


@pytest.mark.parametrize(("check_id", "case"), [(k, c) for k, (_, good) in CASES.items() for c in good])
def test_accepts(check_id: str, case: Case) -> None:
    violated, _ = _run(case)
    assert check_id not in violated


def test_template_passes_and_enters() -> None:
    result = vmrun(STATE, CAPS, BASE)
    assert result.succeeds and result.outcome == VmrunEntered()
    assert result.state.guest_mode and result.state.gif


def test_invalid_writes_exit_code_and_clears_gif() -> None:
    result = vmrun(STATE, CAPS, BASE.with_fields({"control.asid": 0, "save.efer": 0x500, "control.exit_info_1": 5}))
    assert {v.check_id for v in result.violations} == {"control.asid", "save.efer_svme"}
    assert result.vmcb["control.exit_code"] == (1 << 64) - 1
    assert result.vmcb["control.exit_info_1"] == 0 and result.vmcb["control.exit_info_2"] == 0
    assert not result.state.gif
    assert not result.succeeds


def test_instruction_order_ud_before_gp_before_intercept_before_operand() -> None:
    """#UD (EFER.SVME) wins over #GP (CPL), which wins over the intercept, which wins over rAX."""
    state = _state(efer=0x500, cpl=3, guest=GUEST, rax=0x123)
    assert vmrun(state, CAPS, BASE).outcome == Fault("UD")
    assert vmrun(_state(state, efer=0x1500), CAPS, BASE).outcome == Fault("GP", 0)
    assert vmrun(_state(state, efer=0x1500, cpl=0), CAPS, BASE).outcome == SvmVmexit(get_exit_code("VMEXIT_VMRUN"))
    assert vmrun(_state(state, efer=0x1500, cpl=0, guest=None), CAPS, BASE).outcome == Fault("GP", 0)


def test_faulting_vmrun_does_not_read_the_vmcb() -> None:
    result = vmrun(_state(cpl=3), CAPS, Vmcb())
    assert [v.check_id for v in result.violations] == ["instruction.cpl"]


def test_unknown_facts_are_not_evaluable() -> None:
    caps = Capabilities("bare")
    result = vmrun(STATE, caps, BASE)
    assert not result.succeeds
    assert any(n.startswith("instruction.svm_supported") for n in result.not_evaluable)
    assert any(n.startswith("control.msrpm_address") for n in result.not_evaluable)
