"""Which VM-entry checks a dump breaks, which it passes, and which it cannot decide.

Every registered VM-entry check (SDM Vol. 3C chapter 28 "VM Entries": §28.2 controls and host
state, §28.3 guest state, §28.4 MSR loading) runs on the VMCS the dump gives, with three rules that
keep the verdict honest:

* a check whose catalogue row (``spec/vmx/entry_checks.toml``) reads a field the dump did not
  print is *not evaluable*, and the report names the missing fields; it never runs on a guessed 0;
* a check that reads processor state the dump does not show (the current-VMCS or VMXON pointer,
  the VMM's IA-32e mode) is not evaluable likewise; what the dumping hypervisor guarantees (it runs
  VMLAUNCH outside SMM) comes from ``spec/dumps/vmcs_dump.toml``;
* a text dump shows no physical memory, so a check that would read memory (the MSR-load area, the
  VMCS-link region, PDPTEs, the virtual-APIC page) is not evaluable when it gets that far.

A ``vtx check`` JSON document is complete by definition (its fields left out are 0) and brings its
own processor state and memory. The suggested fix of a failing check comes from
``spec/dumps/fixes.toml``, else the catalogue statement.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import attrs

from vtx.dumps import formats as fmt
from vtx.dumps.reader import Dump
from vtx.errors import NotEvaluable, SpecError
from vtx.paging.memory import HostPhysAddr
from vtx.spec import VMCS_FIELDS, Catalogue, _Table
from vtx.typecheck import checked
from vtx.vmx import check_cmd
from vtx.vmx.capabilities import resolve_capabilities
from vtx.vmx.entry import REGISTRY, EntryContext, Finding
from vtx.vmx.entry.catalogue import ENTRY_CHECKS
from vtx.vmx.vmcs import Vmcs

FAIL = "fail"
NOT_EVALUABLE = "not_evaluable"


@attrs.frozen
class Fix:
    id: str
    text: str


def _load_fixes() -> Catalogue[str, Fix]:
    t = _Table("dumps/fixes.toml")
    rows = []
    for r in t.rows("fix"):
        if r["id"] not in ENTRY_CHECKS:
            raise SpecError(f"{t.relpath} [[fix]]", r["id"], "id must name a row of spec/vmx/entry_checks.toml")
        rows.append(Fix(r["id"], r["fix"]))
    return Catalogue(rows, lambda f: f.id, "fix id")


FIXES = _load_fixes()
_ORDER = {c.id: n for n, c in enumerate(ENTRY_CHECKS)}
"""A one-line suggested fix per check id (checks without one fall back to their statement)."""


class UnknownMemory:
    """The physical memory of a text dump: unknown, so reading it makes the check not evaluable."""

    @checked
    def read_int(self, address: HostPhysAddr, size: int) -> int:
        raise NotEvaluable(f"memory at {address:#x}", f"{size} bytes", "a text dump shows no physical memory")


@attrs.frozen
class CheckResult:
    """A failing or not-evaluable check: its fields (None where the dump did not give one)."""

    id: str
    status: str
    citation: str
    fields: Mapping[str, int | None]
    message: str
    fix: str | None = None


@attrs.frozen
class Explanation:
    """The verdict on one dump: failing then not-evaluable checks (catalogue order), and counts."""

    dump: Dump
    profile: str
    results: tuple[CheckResult, ...]
    passed: int

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        return tuple(r for r in self.results if r.status == FAIL)

    @property
    def not_evaluable(self) -> tuple[CheckResult, ...]:
        return tuple(r for r in self.results if r.status == NOT_EVALUABLE)


@checked
def explain_dump(dump: Dump, *, profile: str | None = None, msrs: Path | None = None) -> Explanation:
    """Run every VM-entry check on ``dump`` with the capabilities of ``profile`` / ``msrs``."""
    known: frozenset[str] | None = None  # fields and processor state the dump gives; None = all
    state: frozenset[str] | None = None
    if dump.document is not None:
        inp = check_cmd.parse(dump.document, profile=profile, msrs=msrs)
        caps, vmcs = inp.caps, inp.vmcs
        ctx = EntryContext.from_processor(inp.state, inp.instruction)
    else:
        caps = resolve_capabilities(profile=profile, msrs_file=msrs)
        vmcs, known = Vmcs.from_fields(dump.fields), frozenset(dump.fields)
        processor = fmt.PROCESSOR[dump.format]
        state = frozenset(processor)
        ctx = attrs.evolve(EntryContext(memory=UnknownMemory()), **processor)
    results: list[CheckResult] = []
    passed = 0
    for check in REGISTRY.values():
        row = check.spec
        values = {f: vmcs.get(VMCS_FIELDS[f]) if known is None or f in known else None for f in row.fields}
        need = [f for f, v in values.items() if v is None]
        need += [f"processor state '{p}'" for p in row.processor if state is not None and p not in state]
        if need:
            results.append(CheckResult(row.id, NOT_EVALUABLE, str(row.citation), values,
                                       f"needs {', '.join(need)}, which the dump does not give"))
            continue
        try:
            found = [f.message if isinstance(f, Finding) else f for f in check.fn(vmcs, caps, ctx)]
        except NotEvaluable as e:
            results.append(CheckResult(row.id, NOT_EVALUABLE, str(row.citation), values, str(e)))
            continue
        if not found:
            passed += 1
            continue
        fix = FIXES.get(row.id)
        results.append(CheckResult(row.id, FAIL, str(row.citation), values, "; ".join(found),
                                   fix.text if fix else row.statement))
    results.sort(key=lambda r: (r.status != FAIL, _ORDER[r.id]))
    return Explanation(dump, caps.name, tuple(results), passed)
