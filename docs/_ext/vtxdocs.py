"""A Sphinx extension that renders reference tables from the vtx catalogues.

``.. vtx-table:: fields`` (or ``exit-reasons``, ``errors``, ``controls``, ``msrs``,
``cpuid-facts``, ``presets``) expands to a table built from :mod:`vtx.spec` at build time, so no
generated page is committed and the docs cannot drift from the spec tables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from docutils import nodes
from docutils.parsers.rst import Directive
from sphinx.application import Sphinx

from vtx import spec
from vtx.vmx.capabilities import load_preset, preset_names
from vtx.vmx.entry import REGISTRY
from vtx.vmx.entry.catalogue import ENTRY_CHECKS

Row = list[str]


def _table(header: Row, rows: Iterable[Row]) -> nodes.table:
    table = nodes.table()
    group = nodes.tgroup(cols=len(header))
    table += group
    group.extend(nodes.colspec(colwidth=1) for _ in header)
    head, body = nodes.thead(), nodes.tbody()
    group += head
    group += body
    for parent, cells in ((head, header), *((body, r) for r in rows)):
        row = nodes.row()
        for cell in cells:
            entry = nodes.entry()
            entry += nodes.paragraph(text=cell)
            row += entry
        parent.append(row)
    return table


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


def _entry_checks() -> tuple[Row, list[Row]]:
    return (["Id", "Group", "Failure", "Rule", "Reads", "Source", "Implemented"],
            [[c.id, c.group, c.failure + (f" (qualification {c.qualification})" if c.failure == "exit_33" else ""),
              c.statement, ", ".join(c.fields + c.capabilities + c.processor + c.memory), str(c.citation),
              "yes" if c.id in REGISTRY else "no"] for c in ENTRY_CHECKS])


TABLES: dict[str, Callable[[], tuple[Row, list[Row]]]] = {
    "entry-checks": _entry_checks,
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
        return [_table(header, rows)]


def setup(app: Sphinx) -> dict[str, object]:
    app.add_directive("vtx-table", VtxTable)
    return {"parallel_read_safe": True, "version": "1"}
