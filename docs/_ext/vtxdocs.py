"""A Sphinx extension that renders reference pages from the vtx catalogues at build time, so no
generated page is committed and the docs cannot drift from the spec tables or the code.

* ``.. vtx-table:: NAME`` — a table built from :mod:`vtx.spec` (``fields``, ``exit-reasons``,
  ``errors``, ``controls``, ``msrs``, ``cpuid-facts``, ``presets``, ``state-machine``,
  ``instructions``).
* ``.. vtx-entry-checks::`` — the VM-entry check catalogue with generated failing examples
  (:mod:`vtxdocs_checks`).
* ``.. vtx-state-diagram::`` — the VMX state machine drawn as SVG (:mod:`vtxdocs_svg`).
* ``.. vtx-walk:: FILE.json`` — a ``vtx translate`` input translated, drawn and tabulated.
* ``.. vtx-cli::`` — the command-line reference (:mod:`vtxdocs_cli`).
* ``.. vtx-api:: MODULE ...`` — autodoc of the modules and packages named (:mod:`vtxdocs_api`).

Configuration: ``vtx_source_url``, a format string with ``{path}`` and ``{line}`` (e.g.
``https://github.com/OWNER/vtx/blob/main/{path}#L{line}``) that turns the source of each check
into a link; without it the qualified name, file and line are shown. ``vtx_entry_examples``
(default True) turns the search for failing examples off, for fast test builds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import vtxdocs_svg
from docutils import nodes
from docutils.parsers.rst import Directive
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from vtxdocs_api import ApiReference
from vtxdocs_checks import EntryChecks, reset_examples
from vtxdocs_cli import CliReference
from vtxdocs_nodes import Row, svg, table

from vtx import spec
from vtx.paging import translate_cmd
from vtx.paging.outcomes import Translated
from vtx.vmx.capabilities import load_preset, preset_names, read_json
from vtx.vmx.exits import causes


def _fields() -> tuple[Row, list[Row]]:
    return (["Encoding", "Name", "Width", "Type", "SDM name", "Exists if", "Source"],
            [[f"{f.encoding:04X}H", f.name, f.width.value, f.type.value, f.title, str(f.exists),
              str(f.citation)] for f in spec.VMCS_FIELDS])


def _exit_reasons() -> tuple[Row, list[Row]]:
    return (["#", "Name", "Title", "Description", "Source"],
            [[str(r.number), r.name, r.title, r.description, str(r.citation)] for r in spec.EXIT_REASONS])


def _errors() -> tuple[Row, list[Row]]:
    return (["#", "Name", "Message", "Instructions", "Source"],
            [[str(e.number), e.name, e.message, ", ".join(e.instructions), str(e.citation)]
             for e in spec.VM_INSTRUCTION_ERRORS])


def _controls() -> tuple[Row, list[Row]]:
    return (["Field", "Bit", "Name", "SDM name", "Linux", "Source"],
            [[c.field, str(c.bit), c.name, c.title, c.linux, str(c.citation)] for c in spec.CONTROLS])


def _msrs() -> tuple[Row, list[Row]]:
    rows = []
    for m in spec.CAPABILITY_MSRS:
        layout = "; ".join(f"{b.bits} {b.name}" for b in m.bitfields)
        rows.append([f"{m.index:03X}H", m.name, m.format.value, str(m.exists), layout, str(m.citation)])
    return ["Index", "Name", "Format", "Exists if", "Bit fields", "Source"], rows


def _cpuid() -> tuple[Row, list[Row]]:
    return (["Fact", "CPUID", "Bits", "Title", "Source"],
            [[f.name, f"{f.leaf_key}:{f.register.upper()}", str(f.bits), f.title, str(f.citation)]
             for f in spec.CPUID_FACTS])


def _presets() -> tuple[Row, list[Row]]:
    rows = []
    for name in preset_names():
        caps = load_preset(name)
        rows.append([name, caps.description, caps.source])
    return ["Preset", "Description", "Source of the values"], rows


def _state_machine() -> tuple[Row, list[Row]]:
    return (["From", "Instructions", "To", "Outcomes", "When", "Source"],
            [[t.source, ", ".join(t.instructions), t.target, ", ".join(t.outcomes), t.guard, str(t.citation)]
             for t in spec.VMX_TRANSITIONS])


def _instructions() -> tuple[Row, list[Row]]:
    return (["Instruction", "Exit reason in non-root operation", "Errors it can produce", "Pseudocode"],
            [[i.name.upper(), f"{i.exit_reason.number} {i.exit_reason.title}",
              ", ".join(str(e.number) for e in spec.VM_INSTRUCTION_ERRORS if i.name in e.instructions),
              str(i.citation)] for i in spec.VMX_INSTRUCTIONS])


def _exit_causes() -> tuple[Row, list[Row]]:
    return (["#", "Exit reason", "Operation", "When", "Needs", "Fault first", "Source"],
            [[str(c.exit.number), c.exit.name, " ".join([c.op, *c.mnemonics]),
              c.when + "".join(f" {x.field}.{x.name}" for x in c.controls),
              f"{c.enable.field}.{c.enable.name}" if c.enable else "", c.privilege, str(c.citation)]
             for c in sorted(causes.CAUSES, key=lambda c: c.exit.number)])


def _exits_not_modelled() -> tuple[Row, list[Row]]:
    return (["#", "Exit reason", "Why not", "Source"],
            [[str(n.exit.number), n.exit.name, n.reason, str(n.citation)] for n in causes.NOT_MODELLED])


TABLES: dict[str, Callable[[], tuple[Row, list[Row]]]] = {
    "exit-causes": _exit_causes, "exits-not-modelled": _exits_not_modelled,
    "state-machine": _state_machine, "instructions": _instructions,
    "fields": _fields, "exit-reasons": _exit_reasons, "errors": _errors, "controls": _controls,
    "msrs": _msrs, "cpuid-facts": _cpuid, "presets": _presets,
}


class VtxTable(Directive):
    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        if name not in TABLES:
            raise self.error(f"unknown vtx table {name!r}; known: {', '.join(TABLES)}")
        header, rows = TABLES[name]()
        return [table(header, rows)]


class StateDiagram(Directive):
    """``.. vtx-state-diagram::`` — the states and transitions of ``spec/vmx/state_machine.toml``."""

    def run(self) -> list[nodes.Node]:
        states = [(r["name"], r["title"]) for r in spec._Table("vmx/state_machine.toml").rows("state")]
        if [name for name, _ in states] != list(spec.VMX_STATES):
            raise self.error("spec/vmx/state_machine.toml: states differ from vtx.spec.VMX_STATES")
        return [svg(vtxdocs_svg.state_machine(states, spec.VMX_TRANSITIONS),
                    "VMX operation, drawn from spec/vmx/state_machine.toml: every instruction in every "
                    "mode, with the modes it can lead to and its outcomes.")]


class Walk(SphinxDirective):
    """``.. vtx-walk:: FILE.json`` — translate a ``vtx translate`` document at build time; draw
    the walk and list every paging-structure entry read."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        rel, path = self.env.relfn2path(self.arguments[0], self.env.docname)
        self.env.note_dependency(rel)
        inp = translate_cmd.parse(read_json(Path(path)))
        outcome = translate_cmd.run(inp)
        final = (f"data at HPA {outcome.hpa:#x}" if isinstance(outcome, Translated)
                 else translate_cmd.to_json(outcome)["outcome"].replace("_", " "))
        rows = [[str(n), r.space.value, r.name, f"{r.address:#x}", f"{r.host_address:#x}", f"{r.value:#018x}"]
                for n, r in enumerate(outcome.references, 1)]
        gpa = outcome.gpa if isinstance(outcome, Translated) else None
        return [svg(vtxdocs_svg.walk(outcome.references, final=final, final_gpa=gpa),
                    f"The walk of {rel}, computed by vtx.paging at build time: "
                    f"{len(outcome.references)} paging-structure entries read, in the numbered order."),
                table(["#", "Structure", "Entry", "Address (own space)", "Host-physical address", "Value"], rows)]


def setup(app: Sphinx) -> dict[str, object]:
    app.add_config_value("vtx_source_url", None, "env", [str, type(None)])
    app.add_config_value("vtx_entry_examples", True, "env", [bool])
    app.add_directive("vtx-table", VtxTable)
    app.add_directive("vtx-entry-checks", EntryChecks)
    app.add_directive("vtx-state-diagram", StateDiagram)
    app.add_directive("vtx-walk", Walk)
    app.add_directive("vtx-cli", CliReference)
    app.add_directive("vtx-api", ApiReference)
    app.connect("builder-inited", reset_examples)
    return {"parallel_read_safe": True, "version": "2"}
