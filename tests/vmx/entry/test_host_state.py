"""VM-entry checks on the host-state area and the address-space size (vtx.vmx.entry.host_state):
each check rejects an input that breaks exactly its rule, with VMfailValid(8), and accepts the
nearest input that keeps it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import pytest

from vtx import spec
from vtx.outcomes import VmFailValid
from vtx.spec import get_control, reg_bit
from vtx.vmx.capabilities import Capabilities, load_preset
from vtx.vmx.entry import EntryContext, EntryVerdict, evaluate_vm_entry
from vtx.vmx.entry.catalogue import ENTRY_CHECKS
from vtx.vmx.templates import HOST_CR0, HOST_CR4, HOST_RIP, build_template

PRESETS = {name: load_preset(name) for name in
           ("ivybridge_client", "skylake_client", "raptorlake_client", "max")}
FAILURES = {"vmfail_valid_7": VmFailValid(spec.get_error("ENTRY_INVALID_CONTROL_FIELD")),
            "vmfail_valid_8": VmFailValid(spec.get_error("ENTRY_INVALID_HOST_STATE_FIELD"))}


def bit(register: str, name: str) -> int:
    return reg_bit(register, name).mask


CR0_WP, CR0_NE = bit("CR0", "WP"), bit("CR0", "NE")
CR4_CET, CR4_PAE, CR4_PCIDE, CR4_LA57, CR4_VMXE, CR4_PKE = (
    bit("CR4", b) for b in ("CET", "PAE", "PCIDE", "LA57", "VMXE", "PKE"))
CR4_FRED = 1 << 32  # FRED specification: CR4.FRED
EFER_LME, EFER_LMA, EFER_NXE = (bit("IA32_EFER", b) for b in ("LME", "LMA", "NXE"))
EFER_LONG = EFER_LME | EFER_LMA
S_CET_SUPPRESS, S_CET_TRACKER = bit("IA32_S_CET", "SUPPRESS"), bit("IA32_S_CET", "TRACKER")
PAT_DEFAULT = 0x0007_0406_0007_0406  # WB, WT, UC-, UC twice: the power-up value
CR3_LAM_U57 = 1 << 61

NONCANONICAL_48 = 0x0000_8000_0000_0000  # canonical with 57-bit linear addresses
CANONICAL_48 = 0xFFFF_8000_0000_0000
NONCANONICAL_57 = 0x0100_0000_0000_0000
HOST_RIP_32 = 0x0100_0000  # a 32-bit host's RIP: bits 63:32 clear
FRED_CONFIG = CANONICAL_48 | 0x1000 | 0x7 << 6 | 0x3 << 9 | 0x3 | 1 << 3  # every bit that is not reserved

SELECTORS = ("ES", "CS", "SS", "DS", "FS", "GS", "TR")
BASES = ("FS", "GS", "GDTR", "IDTR", "TR")


@dataclasses.dataclass(frozen=True)
class Input:
    """A template under a preset with VM-exit controls turned on and fields set. ``host_32bit``
    clears 'host address-space size', moves HOST_RIP below 4 GiB and (unless ``vmm_ia32e_mode``
    says otherwise) runs the VMM outside IA-32e mode."""

    preset: str = "skylake_client"
    template: str = "long-mode"
    exit: tuple[str, ...] = ()
    exit2: tuple[str, ...] = ()
    host_32bit: bool = False
    vmm_ia32e_mode: bool | None = None
    fields: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def but(self, **fields: int) -> Input:
        """This input with more fields set."""
        return dataclasses.replace(self, fields={**self.fields, **fields})

    def evaluate(self, caps: Capabilities | None = None) -> EntryVerdict:
        caps = caps or PRESETS[self.preset]
        vmcs = build_template(self.template, caps)
        exit_controls, exit2 = vmcs["VM_EXIT_CONTROLS"], vmcs["SECONDARY_VM_EXIT_CONTROLS"]
        for name in self.exit:
            assert caps.allows("exit", name), (self.preset, name)
            exit_controls |= get_control("exit", name).mask
        for name in self.exit2:
            assert caps.allows("exit2", name), (self.preset, name)
            exit_controls |= get_control("exit", "activate_secondary_controls").mask
            exit2 |= get_control("exit2", name).mask
        changes = {"HOST_RIP": HOST_RIP_32} if self.host_32bit else {}
        if self.host_32bit:
            exit_controls &= ~get_control("exit", "host_address_space_size").mask
        vmcs = vmcs.with_fields({**changes, "VM_EXIT_CONTROLS": exit_controls, "SECONDARY_VM_EXIT_CONTROLS": exit2,
                                 **self.fields})
        in_ia32e = not self.host_32bit if self.vmm_ia32e_mode is None else self.vmm_ia32e_mode
        return evaluate_vm_entry(vmcs, caps, EntryContext(vmm_ia32e_mode=in_ia32e))


def ids(v: EntryVerdict) -> set[str]:
    return {x.check_id for x in v.violations}


# The starting points: each is valid, and each case below changes one thing.
SKYLAKE = Input()
RAPTOR_CET = Input("raptorlake_client", exit=("load_cet_state",))
MAX_FRED = Input("max", exit2=("load_fred",))
EFER_64 = Input(exit=("load_ia32_efer",), fields={"HOST_IA32_EFER": EFER_LONG | EFER_NXE})
HOST_32 = Input(template="protected-mode", host_32bit=True)
PERF = Input(exit=("load_ia32_perf_global_ctrl",))
PAT = Input(exit=("load_ia32_pat",))
PKRS = Input("raptorlake_client", exit=("load_pkrs",))
SPEC_CTRL = Input("max", exit2=("load_host_ia32_spec_ctrl",))
EFER_32 = dataclasses.replace(EFER_64, template="protected-mode", host_32bit=True)
RAPTOR_CET_32 = dataclasses.replace(RAPTOR_CET, template="protected-mode", host_32bit=True)


@dataclasses.dataclass(frozen=True)
class Case:
    """``bad`` breaks check ``check_id`` (with ``messages`` messages); ``good`` is the nearest
    input that keeps it."""

    name: str
    check_id: str
    bad: Input
    good: Input
    messages: int = 1


CASES = [
    Case("cr0-without-ne", "host.cr0.fixed_bits", SKYLAKE.but(HOST_CR0=HOST_CR0 & ~CR0_NE), SKYLAKE),
    Case("cr0-bit-32", "host.cr0.fixed_bits", Input("max").but(HOST_CR0=HOST_CR0 | 1 << 32), Input("max")),
    Case("cr4-without-vmxe", "host.cr4.fixed_bits", SKYLAKE.but(HOST_CR4=CR4_PAE), SKYLAKE),
    Case("cr4-pke-unsupported", "host.cr4.fixed_bits", SKYLAKE.but(HOST_CR4=HOST_CR4 | CR4_PKE),
         Input("raptorlake_client").but(HOST_CR4=HOST_CR4 | CR4_PKE)),
    Case("cet-without-wp", "host.cr4.cet_needs_wp", Input("raptorlake_client", fields={"HOST_CR4": HOST_CR4 | CR4_CET}),
         Input("raptorlake_client", fields={"HOST_CR4": HOST_CR4 | CR4_CET, "HOST_CR0": HOST_CR0 | CR0_WP})),
    Case("cr3-beyond-39-bits", "host.cr3.address_width", SKYLAKE.but(HOST_CR3=1 << 40),
         Input("raptorlake_client").but(HOST_CR3=1 << 40)),
    Case("cr3-bits-63-52", "host.cr3.address_width", Input("max").but(HOST_CR3=1 << 52 | 0x1000),
         Input("max").but(HOST_CR3=(1 << 52) - 0x1000)),
    Case("cr3-lam-bit-without-lam", "host.cr3.address_width", Input("raptorlake_client").but(HOST_CR3=CR3_LAM_U57),
         Input("max").but(HOST_CR3=CR3_LAM_U57)),
    *(Case(f"sysenter-{f}", "host.sysenter.canonical", SKYLAKE.but(**{f"HOST_IA32_SYSENTER_{f}": NONCANONICAL_48}),
           Input("max").but(**{f"HOST_IA32_SYSENTER_{f}": NONCANONICAL_48})) for f in ("ESP", "EIP")),
    *(Case(f"cet-{f}", "host.cet.canonical", RAPTOR_CET.but(**{f: NONCANONICAL_48}),
           RAPTOR_CET.but(**{f: CANONICAL_48})) for f in ("HOST_S_CET", "HOST_INTR_SSP_TABLE")),
    Case("perf-global-ctrl-gp-counter-4", "host.perf_global_ctrl.reserved_bits",
         PERF.but(HOST_IA32_PERF_GLOBAL_CTRL=1 << 4),
         dataclasses.replace(PERF, preset="ivybridge_client").but(HOST_IA32_PERF_GLOBAL_CTRL=1 << 4)),
    Case("perf-global-ctrl-fixed-counter-3", "host.perf_global_ctrl.reserved_bits",
         PERF.but(HOST_IA32_PERF_GLOBAL_CTRL=1 << 35), PERF.but(HOST_IA32_PERF_GLOBAL_CTRL=0x7_0000_000F)),
    Case("pat-reserved-type-2", "host.pat.valid", PAT.but(HOST_IA32_PAT=0x0207_0406_0007_0406),
         PAT.but(HOST_IA32_PAT=PAT_DEFAULT)),
    Case("pat-reserved-bits-7-3", "host.pat.valid", PAT.but(HOST_IA32_PAT=0x08), PAT.but(HOST_IA32_PAT=0x07)),
    Case("efer-bit-1", "host.efer.reserved_bits", EFER_64.but(HOST_IA32_EFER=EFER_LONG | 1 << 1), EFER_64),
    Case("efer-bit-12", "host.efer.reserved_bits", EFER_64.but(HOST_IA32_EFER=EFER_LONG | 1 << 12), EFER_64),
    Case("efer-lma-clear", "host.efer.lma_lme", EFER_64.but(HOST_IA32_EFER=EFER_LME), EFER_64),
    Case("efer-lme-clear", "host.efer.lma_lme", EFER_64.but(HOST_IA32_EFER=EFER_LMA), EFER_64),
    Case("efer-long-mode-in-32-bit-host", "host.efer.lma_lme", EFER_32, EFER_32.but(HOST_IA32_EFER=EFER_NXE),
         messages=2),
    Case("s-cet-bit-6", "host.cet.s_cet_reserved_bits", RAPTOR_CET.but(HOST_S_CET=1 << 6),
         RAPTOR_CET.but(HOST_S_CET=1 << 5)),
    Case("s-cet-suppress-and-tracker", "host.cet.s_cet_reserved_bits",
         RAPTOR_CET.but(HOST_S_CET=S_CET_SUPPRESS | S_CET_TRACKER), RAPTOR_CET.but(HOST_S_CET=S_CET_SUPPRESS)),
    Case("ssp-bit-1", "host.cet.ssp_alignment", RAPTOR_CET.but(HOST_SSP=0x1002), RAPTOR_CET.but(HOST_SSP=0x1004)),
    Case("pkrs-bit-32", "host.pkrs.reserved_bits", PKRS.but(HOST_IA32_PKRS=1 << 32),
         PKRS.but(HOST_IA32_PKRS=0xFFFF_FFFF)),
    *(Case(f"fred-config-{name}", "host.fred.config", MAX_FRED.but(HOST_IA32_FRED_CONFIG=bad),
           MAX_FRED.but(HOST_IA32_FRED_CONFIG=good))
      for name, bad, good in (("bit-2", FRED_CONFIG | 1 << 2, FRED_CONFIG),
                              ("bit-4", FRED_CONFIG | 1 << 4, FRED_CONFIG),
                              ("bit-11", FRED_CONFIG | 1 << 11, FRED_CONFIG),
                              ("entry-point", NONCANONICAL_57 | 0x1000, NONCANONICAL_48 | 0x1000))),
    *(Case(f"fred-rsp{i}-{name}", "host.fred.rsp", MAX_FRED.but(**{f"HOST_IA32_FRED_RSP{i}": value}),
           MAX_FRED.but(**{f"HOST_IA32_FRED_RSP{i}": NONCANONICAL_48 | 0x40}))
      for i in (1, 2, 3) for name, value in (("bit-5", 0x20), ("noncanonical", NONCANONICAL_57))),
    *(Case(f"fred-ssp{i}-{name}", "host.fred.ssp", MAX_FRED.but(**{f"HOST_IA32_FRED_SSP{i}": value}),
           MAX_FRED.but(**{f"HOST_IA32_FRED_SSP{i}": NONCANONICAL_48 | 0x8}))
      for i in (1, 2, 3) for name, value in (("bit-2", 0x4), ("noncanonical", NONCANONICAL_57))),
    Case("spec-ctrl-bit-9", "host.spec_ctrl.reserved_bits", SPEC_CTRL.but(HOST_IA32_SPEC_CTRL=1 << 9),
         SPEC_CTRL.but(HOST_IA32_SPEC_CTRL=1 << 10 | 0x1FF)),
    *(Case(f"{reg.lower()}-rpl", "host.selectors.rpl_ti", SKYLAKE.but(**{f"HOST_{reg}_SELECTOR": 0x13}),
           SKYLAKE.but(**{f"HOST_{reg}_SELECTOR": 0x20})) for reg in SELECTORS),
    Case("ds-ti", "host.selectors.rpl_ti", SKYLAKE.but(HOST_DS_SELECTOR=0x14), SKYLAKE),
    *(Case(f"{reg.lower()}-null", "host.selectors.cs_tr_nonnull", SKYLAKE.but(**{f"HOST_{reg}_SELECTOR": 0}),
           SKYLAKE.but(**{f"HOST_{reg}_SELECTOR": 0x28})) for reg in ("CS", "TR")),
    Case("ss-null-32-bit-host", "host.selectors.ss_nonnull", HOST_32.but(HOST_SS_SELECTOR=0),
         SKYLAKE.but(HOST_SS_SELECTOR=0)),
    *(Case(f"{base.lower()}-base", "host.bases.canonical", SKYLAKE.but(**{f"HOST_{base}_BASE": NONCANONICAL_48}),
           Input("max").but(**{f"HOST_{base}_BASE": NONCANONICAL_48})) for base in BASES),
    Case("vmm-outside-64-bit-host", "address_space.vmm_outside_ia32e",
         Input(template="protected-mode", vmm_ia32e_mode=False), HOST_32),
    Case("vmm-outside-64-bit-host-ia32e-guest", "address_space.vmm_outside_ia32e", Input(vmm_ia32e_mode=False),
         HOST_32, messages=2),
    Case("vmm-in-32-bit-host", "address_space.vmm_in_ia32e", dataclasses.replace(HOST_32, vmm_ia32e_mode=True),
         Input(template="protected-mode")),
    Case("32-bit-host-pcide", "address_space.host_32bit.cr4_pcide", HOST_32.but(HOST_CR4=HOST_CR4 | CR4_PCIDE),
         SKYLAKE.but(HOST_CR4=HOST_CR4 | CR4_PCIDE)),
    Case("32-bit-host-fred", "address_space.host_32bit.cr4_fred",
         dataclasses.replace(HOST_32, preset="max").but(HOST_CR4=HOST_CR4 | CR4_FRED),
         Input("max").but(HOST_CR4=HOST_CR4 | CR4_FRED)),
    Case("32-bit-host-rip", "address_space.host_32bit.rip_upper_bits", HOST_32.but(HOST_RIP=HOST_RIP), HOST_32),
    *(Case(f"32-bit-host-{f.lower()}", "address_space.host_32bit.cet_upper_bits", RAPTOR_CET_32.but(**{f: 1 << 32}),
           RAPTOR_CET.but(**{f: 1 << 32})) for f in ("HOST_S_CET", "HOST_SSP")),
    Case("64-bit-host-without-pae", "address_space.host_64bit.cr4_pae", SKYLAKE.but(HOST_CR4=CR4_VMXE),
         HOST_32.but(HOST_CR4=CR4_VMXE)),
    Case("64-bit-host-rip-48", "address_space.host_64bit.rip_canonical", Input("max").but(HOST_RIP=NONCANONICAL_48),
         Input("max").but(HOST_RIP=NONCANONICAL_48, HOST_CR4=HOST_CR4 | CR4_LA57)),
    Case("64-bit-host-rip-57", "address_space.host_64bit.rip_canonical",
         Input("max").but(HOST_RIP=NONCANONICAL_57, HOST_CR4=HOST_CR4 | CR4_LA57), Input("max")),
    Case("64-bit-host-ssp", "address_space.host_64bit.ssp_canonical", RAPTOR_CET.but(HOST_SSP=NONCANONICAL_48),
         dataclasses.replace(RAPTOR_CET, preset="max").but(HOST_SSP=NONCANONICAL_48)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_check_rejects_input_that_breaks_only_it(case: Case) -> None:
    v = case.bad.evaluate()
    assert ids(v) == {case.check_id}
    assert len(v.violations) == case.messages
    assert v.outcome == FAILURES[ENTRY_CHECKS[case.check_id].failure]
    assert v.possible_outcomes == (v.outcome,)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_check_accepts_nearest_valid_input(case: Case) -> None:
    v = case.good.evaluate()
    assert case.check_id not in ids(v)
    assert not any(entry.startswith(case.check_id + ":") for entry in v.not_evaluable)


def test_every_check_of_the_host_groups_is_covered() -> None:
    groups = {"host_state", "host_segments", "address_space"}
    never_alone = {"address_space.host_32bit.no_ia32e_guest"}  # see the test below
    assert {c.check_id for c in CASES} == {row.id for row in ENTRY_CHECKS if row.group in groups} - never_alone


def test_no_ia32e_guest_under_a_32_bit_host_breaks_an_address_space_rule_with_it() -> None:
    # A 32-bit host needs a VMM outside IA-32e mode (vmm_in_ia32e), and such a VMM may not enter
    # an IA-32e guest (vmm_outside_ia32e): this rule never fails alone.
    outside = Input(host_32bit=True).evaluate()
    assert ids(outside) == {"address_space.host_32bit.no_ia32e_guest", "address_space.vmm_outside_ia32e"}
    inside = Input(host_32bit=True, vmm_ia32e_mode=True).evaluate()
    assert ids(inside) == {"address_space.host_32bit.no_ia32e_guest", "address_space.vmm_in_ia32e"}
    assert inside.outcome == FAILURES["vmfail_valid_8"]
    assert "address_space.host_32bit.no_ia32e_guest" not in ids(HOST_32.evaluate())


def test_host_msr_fields_are_ignored_while_their_load_controls_are_0() -> None:
    garbage = {f: (1 << 64) - 1 for f in ("HOST_S_CET", "HOST_SSP", "HOST_INTR_SSP_TABLE", "HOST_IA32_PKRS",
                                          "HOST_IA32_PAT", "HOST_IA32_EFER", "HOST_IA32_PERF_GLOBAL_CTRL")}
    assert ids(Input("raptorlake_client", fields=garbage).evaluate()) == set()


def test_fred_host_fields_are_ignored_without_a_64_bit_host_or_active_secondary_controls() -> None:
    bad = {"HOST_IA32_FRED_CONFIG": 1 << 2, "HOST_IA32_FRED_RSP1": 1, "HOST_IA32_FRED_SSP1": 1}
    host_32 = dataclasses.replace(MAX_FRED, template="protected-mode", host_32bit=True, fields=bad)
    assert ids(host_32.evaluate()) == set()
    inactive = MAX_FRED.but(**bad, VM_EXIT_CONTROLS=build_template("long-mode", PRESETS["max"])["VM_EXIT_CONTROLS"])
    assert ids(inactive.evaluate()) == set()


def test_efer_feature_bits_follow_cpuid() -> None:
    no_nx = PRESETS["skylake_client"].overlay({"CPUID_NX": False}, name="skylake-without-nx")
    v = EFER_64.evaluate(no_nx)
    assert ids(v) == {"host.efer.reserved_bits"}
    assert "NXE" in v.violations[0].message
    assert ids(EFER_64.but(HOST_IA32_EFER=EFER_LONG).evaluate(no_nx)) == set()


def test_perf_metrics_enable_is_not_evaluable_without_perf_capabilities() -> None:
    v = PERF.but(HOST_IA32_PERF_GLOBAL_CTRL=1 << 48).evaluate()
    assert ids(v) == set()
    assert [e.split(":")[0] for e in v.not_evaluable] == ["host.perf_global_ctrl.reserved_bits"]
    assert not v.succeeds


def test_messages_name_the_field_and_value() -> None:
    v = SKYLAKE.but(HOST_CR3=1 << 40).evaluate()
    assert v.violations[0].message == ("HOST_CR3 = 0x10000000000 sets bits 0x10000000000 at or above the "
                                       "physical-address width (39 bits)")
    v = SKYLAKE.but(HOST_TR_SELECTOR=0x1B).evaluate()
    assert v.violations[0].message == "HOST_TR_SELECTOR = 0x001b has RPL 3 and TI 0; both must be 0"
