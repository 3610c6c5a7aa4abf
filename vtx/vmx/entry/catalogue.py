"""The catalogue of VM-entry checks (``spec/vmx/entry_checks.toml``): one row per SDM rule.

Each row has a stable id, the group of the SDM section it comes from, the failure it produces
(#UD, #GP, VMfailInvalid, VMfailValid(n), or a VM-entry failure with exit reason 33 / 34 and a
qualification), the statement, the VMCS fields, capabilities, processor state and memory it reads,
and its citation. The implementations in :mod:`vtx.vmx.entry` register against these ids.
"""

from __future__ import annotations

import attrs

from vtx import spec
from vtx.citation import Citation, Document
from vtx.errors import SpecError
from vtx.spec import Catalogue

GROUPS = ("basic", "exec_controls", "exit_controls", "entry_controls", "host_state", "host_segments",
          "address_space", "guest_regs", "guest_segments", "guest_dtr", "guest_rip_rflags",
          "guest_non_register", "guest_pdptes", "msr_load", "smm")
FAILURES = ("ud", "gp", "vm_exit", "vmfail_invalid", "vmfail_valid_4", "vmfail_valid_5", "vmfail_valid_26",
            "vmfail_valid_7", "vmfail_valid_8", "vmfail_valid_16", "vmfail_valid_17", "vmfail_valid_18",
            "vmfail_valid_25", "exit_33", "exit_34")
PROCESSOR_TERMS = ("cpl", "mode", "in_vmx_non_root", "current_vmcs", "shadow_vmcs", "blocking_by_mov_ss",
                   "launch_state", "vmm_ia32e_mode", "in_smm", "smx", "vmxon_pointer")
MEMORY_TERMS = ("msr_load_area", "vmcs_link_region", "pdptes", "virtual_apic_page", "executive_vmcs")


@attrs.frozen
class EntryCheckSpec:
    """One VM-entry rule as the SDM states it."""

    id: str
    group: str
    failure: str
    qualification: int | str | None
    statement: str
    applies_if: str
    fields: tuple[str, ...]
    capabilities: tuple[str, ...]
    processor: tuple[str, ...]
    memory: tuple[str, ...]
    instances: tuple[str, ...]
    citation: Citation
    source: Document
    bochs: str
    kvm: str


def _load() -> Catalogue[str, EntryCheckSpec]:
    t = spec._Table("vmx/entry_checks.toml")
    rows = []
    for r in t.rows("check"):
        where = f"{t.relpath} [[check]] {r.get('id')}"
        problems = [f"group {r['group']!r}" for _ in [0] if r["group"] not in GROUPS]
        problems += [f"failure {r['failure']!r}" for _ in [0] if r["failure"] not in FAILURES]
        problems += [f"field {f!r}" for f in r["fields"] if f not in spec.VMCS_FIELDS]
        problems += [f"capability {c!r}" for c in r["capabilities"]
                     if c not in spec.CAPABILITY_MSRS and c not in spec.CPUID_FACTS]
        problems += [f"processor term {p!r}" for p in r["processor"] if p not in PROCESSOR_TERMS]
        problems += [f"memory term {m!r}" for m in r["memory"] if m not in MEMORY_TERMS]
        if problems:
            raise SpecError(where, ", ".join(problems), "unknown name (see vtx/vmx/entry/catalogue.py)")
        rows.append(EntryCheckSpec(
            id=r["id"], group=r["group"], failure=r["failure"], qualification=r.get("qualification"),
            statement=r["statement"], applies_if=r.get("applies_if", "always"), fields=tuple(r["fields"]),
            capabilities=tuple(r["capabilities"]), processor=tuple(r["processor"]), memory=tuple(r["memory"]),
            instances=tuple(r.get("instances", ())), citation=t.cite("check", r), source=t.source("check", r),
            bochs=r.get("bochs", ""), kvm=r.get("kvm", "")))
    return Catalogue(rows, lambda c: c.id, "entry check id")


ENTRY_CHECKS = _load()
"""Every VM-entry check of the pinned SDM (and of the feature specifications it lacks), by id."""
