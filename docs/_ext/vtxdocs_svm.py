"""The AMD-V reference pages, rendered from ``spec/svm/`` (:mod:`vtx.svm.spec`) and the SVM registries.

* ``.. vtx-svm-table:: NAME`` — ``vmcb-control``, ``vmcb-save``, ``vmcb-aliases``, ``clean-bits``,
  ``intercepts``, ``exit-codes`` (with the intercepts and operations that cause each),
  ``features`` (CPUID Fn8000_000A), ``event-types``.
* ``.. vtx-vmrun-checks::`` — the VMRUN check catalogue: one section per check with its statement,
  failure, what it reads, citation, implementing function and a failing example searched at build
  time by :mod:`vtx.svm.examples` (or the reason there is none).

Both honour the configuration values of :mod:`vtxdocs` (``vtx_source_url``, ``vtx_entry_examples``).
"""

from __future__ import annotations

from collections.abc import Callable

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from vtxdocs_checks import source_link
from vtxdocs_nodes import Row, field, para, table

from vtx.svm import intercepts, spec
from vtx.svm.checks import REGISTRY
from vtx.svm.examples import SvmExample, SvmExampleFinder, SvmFound
from vtx.svm.spec import VMRUN_CHECKS, ExitCode, VmrunCheckSpec


def _vmcb(area: str) -> tuple[Row, list[Row]]:
    clean = {f.name: c.name for c in spec.CLEAN_BITS for f in c.fields}
    return (["Offset", "Size", "Field", "Title", "Clean bit", "Source"],
            [[f"{f.offset:03X}h", str(f.size), f.name, f.title, clean.get(f.name, ""), str(f.citation)]
             for f in spec.VMCB_FIELDS if f.area == area])


def _aliases() -> tuple[Row, list[Row]]:
    return (["Older name", "Fields", "Bits"],
            [[a.name, ", ".join(f.name for f in a.fields), str(a.bits)] for a in spec.ALIASES])


def _clean_bits() -> tuple[Row, list[Row]]:
    return (["Bit", "Name", "Fields it covers", "Title", "Source"],
            [[str(c.bit), c.name, ", ".join(f.name for f in c.fields), c.title, str(c.citation)]
             for c in spec.CLEAN_BITS])


def _intercepts() -> tuple[Row, list[Row]]:
    return (["Word", "Bit", "Intercept", "VMCB field", "Exit code", "Title", "Source"],
            [[str(i.word), str(i.bit), i.name, f"{i.field.name} ({i.field.offset:03X}h)", str(i.exit), i.title,
              str(i.citation)] for i in spec.INTERCEPTS])


def causes_of_exit(code: ExitCode) -> str:
    """The intercepts and operations of the catalogues that cause ``code``, or why vtx does not model it."""
    bits = [i.name for i in spec.INTERCEPTS if i.exit == code]
    ops = [" ".join([c.op, *c.mnemonics]) + (f" (when {c.when})" if c.when.startswith("rule:") else "")
           for c in intercepts.CAUSES if code in c.exits]
    skipped = [n.reason for n in intercepts.NOT_MODELLED if n.exit == code]
    parts = [f"intercept {', '.join(bits)}"] if bits else []
    parts += [f"operations: {'; '.join(ops)}"] if ops else []
    parts += [f"not modelled: {' '.join(skipped)}"] if skipped else []
    return ". ".join(parts)


def _exit_codes() -> tuple[Row, list[Row]]:
    return (["Code", "Name", "Linux", "Title", "Caused by", "Source"],
            [[f"{e.code:#x}" if e.code >= 0 else str(e.code), e.name, e.linux, e.title, causes_of_exit(e),
              str(e.citation)] for e in spec.EXIT_CODES])


def _features() -> tuple[Row, list[Row]]:
    return (["EDX bit", "Name", "Title", "Source"],
            [[str(f.bit), f.name, f.title, str(f.citation)] for f in spec.SVM_FEATURES])


def _event_types() -> tuple[Row, list[Row]]:
    return (["TYPE", "Name", "Title", "Valid in EVENTINJ"],
            [[str(t.value), t.name, t.title, "yes" if t.valid else "no"] for t in spec.EVENT_TYPES])


SVM_TABLES: dict[str, Callable[[], tuple[Row, list[Row]]]] = {
    "vmcb-control": lambda: _vmcb("control"), "vmcb-save": lambda: _vmcb("save"), "vmcb-aliases": _aliases,
    "clean-bits": _clean_bits, "intercepts": _intercepts, "exit-codes": _exit_codes, "features": _features,
    "event-types": _event_types,
}


class SvmTable(SphinxDirective):
    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        if name not in SVM_TABLES:
            raise self.error(f"unknown vtx SVM table {name!r}; known: {', '.join(SVM_TABLES)}")
        header, rows = SVM_TABLES[name]()
        return [table(header, rows)]


GROUP_TITLES = {"instruction": "Checks of the executing processor (every SVM instruction)",
                "save": "Guest state (state-save area)", "control": "Control area"}
"""Section headings, one per group of spec/svm/vmrun_checks.toml (every group must have one)."""
FAILURE_TEXT = {"ud": "#UD", "gp": "#GP(0)", "vmexit_intercept": "#VMEXIT with the exit code of the instruction's "
                "intercept (to the outer hypervisor)", "vmexit_invalid": "#VMEXIT with EXITCODE = VMEXIT_INVALID (-1)"}


def anchor(check_id: str) -> str:
    return str(nodes.make_id(f"vmrun-{check_id}"))


def _example(found: SvmFound) -> list[nodes.Node | str]:
    if not isinstance(found, SvmExample):
        return [f"none: {found.reason}."]
    if not found.changes:
        return [f"the {found.template} template under the {found.preset} preset → {found.outcome}: ",
                nodes.emphasis(text=found.message)]
    parts: list[nodes.Node | str] = [f"from the {found.template} template ({found.preset} preset), set "]
    for n, change in enumerate(found.changes):
        if n:
            parts.append(", then ")
        parts += [nodes.literal(text=change.name), " from ", nodes.literal(text=f"{change.before:#x}"), " to ",
                  nodes.literal(text=f"{change.after:#x}")]
    parts += [f" → {found.outcome}: ", nodes.emphasis(text=found.message)]
    return parts


_FINDER: list[SvmExampleFinder] = []


def reset_examples(*_: object) -> None:
    """Forget the previous build's search (connected to ``builder-inited``)."""
    _FINDER.clear()


class VmrunChecks(SphinxDirective):
    """``.. vtx-vmrun-checks::`` — the catalogue, a section per group and per check."""

    def _source(self, check_id: str) -> nodes.Node:
        return source_link(REGISTRY[check_id].fn, self.config.vtx_source_url)

    def run(self) -> list[nodes.Node]:
        finder = None
        if self.config.vtx_entry_examples:
            if not _FINDER:
                _FINDER.append(SvmExampleFinder())
            finder = _FINDER[0]
        out: list[nodes.Node] = []
        for group in dict.fromkeys(c.group for c in VMRUN_CHECKS):  # the catalogue's (evaluation) order
            section = nodes.section(ids=[nodes.make_id(f"vmrun-group-{group}")])
            section += nodes.title(text=GROUP_TITLES[group])
            for row in (c for c in VMRUN_CHECKS if c.group == group):
                section += self._check(row, finder)
            out.append(section)
        return out

    def _check(self, row: VmrunCheckSpec, finder: SvmExampleFinder | None) -> nodes.section:
        section = nodes.section(ids=[anchor(row.id)], names=[f"vmrun:{row.id}"], classes=["vtx-vmrun-check"])
        self.state.document.note_explicit_target(section, section)
        title = nodes.title()
        title += nodes.literal(text=row.id)
        section += title
        section += para(row.statement)
        fields = nodes.field_list()
        fields += field("Failure", FAILURE_TEXT[row.failure])
        if row.instructions:
            fields += field("Instructions", ", ".join(i.upper() for i in row.instructions))
        reads = [*row.fields, *row.capabilities, *(f"processor: {p}" for p in row.processor)]
        if reads:
            fields += field("Reads", ", ".join(reads))
        fields += field("Citation", str(row.citation))
        fields += field("Source", self._source(row.id))
        if finder is not None:
            fields += field("Example", *_example(finder.example(row.id)))
        section += fields
        return section


def setup(app: Sphinx) -> dict[str, object]:
    app.add_directive("vtx-svm-table", SvmTable)
    app.add_directive("vtx-vmrun-checks", VmrunChecks)
    app.connect("builder-inited", reset_examples)
    return {"parallel_read_safe": True, "version": "1"}
