"""The VM-entry check catalogue page: one section (with an anchor) per row of
``spec/vmx/entry_checks.toml``, giving the rule, its failure, citation, implementing function
and a minimal failing example searched at build time by :mod:`vtx.vmx.entry.examples` (or the
reason there is none)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx.util.docutils import SphinxDirective
from vtxdocs_nodes import field, para

import vtx
from vtx import spec
from vtx.outcomes import VmEntryFailed, VmFailValid
from vtx.vmx import instructions
from vtx.vmx.entry import REGISTRY, EntryOutcome
from vtx.vmx.entry.catalogue import ENTRY_CHECKS, GROUPS, EntryCheckSpec
from vtx.vmx.entry.examples import Example, ExampleFinder, Found

REPO = Path(vtx.__file__).resolve().parents[1]
GROUP_TITLES = {
    "basic": "Basic checks (the VMLAUNCH / VMRESUME pseudocode)",
    "exec_controls": "VM-execution control fields", "exit_controls": "VM-exit control fields",
    "entry_controls": "VM-entry control fields", "host_state": "Host control registers and MSRs",
    "host_segments": "Host segment and descriptor-table registers", "address_space": "Host address-space size",
    "guest_regs": "Guest control registers, debug registers and MSRs",
    "guest_segments": "Guest segment registers", "guest_dtr": "Guest descriptor-table registers",
    "guest_rip_rflags": "Guest RIP, RFLAGS and SSP", "guest_non_register": "Guest non-register state",
    "guest_pdptes": "Guest PDPTEs", "msr_load": "Loading MSRs", "smm": "Return from SMM (dual-monitor treatment)",
}
"""Section headings of the page, one per catalogue group (every group must have one)."""
_FIXED_FAILURES = {"ud": "#UD", "gp": "#GP(0)", "vmfail_invalid": "VMfailInvalid",
                   "vm_exit": "VM exit (in VMX non-root operation)"}


def anchor(check_id: str) -> str:
    """The HTML anchor of a check's section."""
    return str(nodes.make_id(f"check-{check_id}"))


def failure_text(row: EntryCheckSpec) -> str:
    """The failure a row produces, in the SDM's words."""
    if row.failure in _FIXED_FAILURES:
        return _FIXED_FAILURES[row.failure]
    kind, _, number = row.failure.rpartition("_")
    if kind == "vmfail_valid":
        return str(VmFailValid(spec.VM_INSTRUCTION_ERRORS[int(number)]))
    reason = spec.EXIT_REASONS[int(number)]
    return f"VM-entry failure: exit reason {reason.number} ({reason.title}), qualification {row.qualification}"


def outcome_text(outcome: EntryOutcome | None) -> str:
    if isinstance(outcome, VmEntryFailed):
        return f"VM-entry failure, exit reason {outcome.reason.number}, qualification {outcome.qualification}"
    return str(outcome)


def implementation(check_id: str) -> Callable[..., Any]:
    """The function that implements a check: its registered function, or for a basic check the
    branch of the VMLAUNCH / VMRESUME pseudocode named in ``instructions.BASIC_CHECKS``."""
    fn: Callable[..., Any] = (REGISTRY[check_id].fn if check_id in REGISTRY
                              else getattr(instructions, instructions.BASIC_CHECKS[check_id].split(":")[0]))
    return fn


def source_location(fn: Callable[..., Any]) -> tuple[str, str, int]:
    """(qualified name, path relative to the repository, first line) of ``fn``."""
    path = Path(inspect.getsourcefile(fn) or "").resolve()
    line = inspect.getsourcelines(fn)[1]
    return f"{fn.__module__}.{fn.__qualname__}", path.relative_to(REPO).as_posix(), line


def _example(found: Found) -> list[nodes.Node | str]:
    if not isinstance(found, Example):
        return [f"none: {found.reason}."]
    parts: list[nodes.Node | str] = [f"from {found.base.label} ({found.base.caps.name} preset), set "]
    for n, change in enumerate(found.changes):
        if n:
            parts.append(", then " if n == len(found.changes) - 1 else ", ")
        parts += [nodes.literal(text=change.field.name), " from ", nodes.literal(text=f"{change.before:#x}"),
                  " to ", nodes.literal(text=f"{change.after:#x}")]
    parts += [f" → {outcome_text(found.outcome)}: ", nodes.emphasis(text=found.message)]
    if found.others:
        parts.append(f" (it decides the outcome; also violates {', '.join(found.others)})")
    return parts


_FINDER: list[ExampleFinder] = []


def examples() -> ExampleFinder:
    """The example search of the current build (created on first use)."""
    if not _FINDER:
        _FINDER.append(ExampleFinder())
    return _FINDER[0]


def reset_examples(*_: object) -> None:
    """Forget the previous build's search (connected to ``builder-inited``)."""
    _FINDER.clear()


def source_link(fn: Callable[..., Any], url: str | None) -> nodes.Node:
    """Where ``fn`` is defined: a link through ``url`` (``vtx_source_url``) or, without one, the
    qualified name, file and line."""
    qualname, path, line = source_location(fn)
    if not url:
        return nodes.literal(text=f"{qualname} ({path}, line {line})")
    ref = nodes.reference(refuri=url.format(path=path, line=line))
    ref += nodes.literal(text=qualname)
    return ref


class EntryChecks(SphinxDirective):
    """``.. vtx-entry-checks::`` — the catalogue, a section per group and per check."""

    def _source(self, check_id: str) -> nodes.Node:
        return source_link(implementation(check_id), self.config.vtx_source_url)

    def run(self) -> list[nodes.Node]:
        finder = examples() if self.config.vtx_entry_examples else None
        out: list[nodes.Node] = []
        for group in GROUPS:
            rows = [c for c in ENTRY_CHECKS if c.group == group]
            if not rows:
                continue
            section = nodes.section(ids=[nodes.make_id(f"group-{group}")])
            section += nodes.title(text=GROUP_TITLES[group])
            for row in rows:
                section += self._check(row, finder)
            out.append(section)
        return out

    def _check(self, row: EntryCheckSpec, finder: ExampleFinder | None) -> nodes.section:
        section = nodes.section(ids=[anchor(row.id)], names=[row.id], classes=["vtx-entry-check"])
        self.state.document.note_explicit_target(section, section)
        title = nodes.title()
        title += nodes.literal(text=row.id)
        section += title
        section += para(row.statement)
        fields = nodes.field_list()
        fields += field("Failure", failure_text(row))
        if row.applies_if != "always":
            fields += field("Applies if", row.applies_if)
        reads = [*row.fields, *row.capabilities, *(f"processor: {p}" for p in row.processor),
                 *(f"memory: {m}" for m in row.memory)]
        if reads:
            fields += field("Reads", ", ".join(reads))
        fields += field("Citation", str(row.citation))
        fields += field("Source", self._source(row.id))
        if finder is not None:
            fields += field("Example", *_example(finder.example(row.id)))
        section += fields
        return section
