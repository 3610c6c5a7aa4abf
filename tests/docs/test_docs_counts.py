"""The generated reference pages are complete: the site builds without warnings, and every
catalogued VMCS field, exit reason, VM-instruction error and VM-entry check, every verb and
option of ``vtx`` and every API module appears on its page.

The site is read once per module with Sphinx's ``dummy`` builder (every page parsed and every
directive run, no HTML written; CI's ``sphinx-build -W`` writes it) and with the failing-example
search off (``vtx_entry_examples``; ``test_entry_examples.py`` tests the search itself), to keep
the test fast. Sphinx is a ``docs`` extra, so this module is skipped where it is not installed.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

pytest.importorskip("sphinx")

from docutils import nodes
from sphinx.application import Sphinx

from vtx import spec
from vtx.cli import build_parser
from vtx.vmx.entry.catalogue import ENTRY_CHECKS

DOCS = Path(__file__).resolve().parents[2] / "docs"
sys.path.insert(0, str(DOCS / "_ext"))

from vtxdocs_api import modules  # noqa: E402
from vtxdocs_checks import anchor, implementation, source_location  # noqa: E402
from vtxdocs_cli import options, verbs  # noqa: E402


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Sphinx:
    out = tmp_path_factory.mktemp("site")
    warnings = io.StringIO()
    app = Sphinx(str(DOCS), str(DOCS), str(out / "out"), str(out / "doctrees"), "dummy", status=None,
                 warning=warnings, freshenv=True, confoverrides={"vtx_entry_examples": False})
    app.build()
    assert app.statuscode == 0 and warnings.getvalue() == "", warnings.getvalue()
    return app


DIAGRAM = '<svg xmlns="http://www.w3.org/2000/svg" role="img"'
"""How the diagrams of ``vtxdocs_svg`` begin."""


def doctree(site: Sphinx, docname: str) -> nodes.document:
    return site.env.get_doctree(docname)


def table_rows(site: Sphinx, docname: str) -> list[list[str]]:
    """The body rows of the first table of a page, as cell texts."""
    table = next(iter(doctree(site, docname).findall(nodes.table)))
    body = next(iter(table.findall(nodes.tbody)))
    return [[entry.astext() for entry in row.findall(nodes.entry)] for row in body.findall(nodes.row)]


def ids(site: Sphinx, docname: str) -> set[str]:
    """Every HTML id the page will have."""
    return {i for node in doctree(site, docname).findall(nodes.Element) for i in node["ids"]}


def raw_html(site: Sphinx, docname: str) -> str:
    return "".join(r.astext() for r in doctree(site, docname).findall(nodes.raw) if r["format"] == "html")


def test_every_vmcs_field_has_a_row(site: Sphinx) -> None:
    rows = table_rows(site, "reference/fields")
    assert len(rows) == len(spec.VMCS_FIELDS)
    assert [r[1] for r in rows] == [f.name for f in spec.VMCS_FIELDS]
    assert [r[0] for r in rows] == [f"{f.encoding:04X}H" for f in spec.VMCS_FIELDS]


def test_every_exit_reason_has_a_row(site: Sphinx) -> None:
    rows = table_rows(site, "reference/exit-reasons")
    assert len(rows) == len(spec.EXIT_REASONS)
    assert [(r[0], r[1]) for r in rows] == [(str(e.number), e.name) for e in spec.EXIT_REASONS]


def test_every_error_has_a_row_with_its_instructions(site: Sphinx) -> None:
    rows = table_rows(site, "reference/errors")
    assert len(rows) == len(spec.VM_INSTRUCTION_ERRORS)
    assert [(r[0], r[3]) for r in rows] == [(str(e.number), ", ".join(e.instructions))
                                           for e in spec.VM_INSTRUCTION_ERRORS]


def test_every_entry_check_has_a_section_with_an_anchor(site: Sphinx) -> None:
    sections = [s for s in doctree(site, "reference/entry-checks").findall(nodes.section)
                if "vtx-entry-check" in s["classes"]]
    assert len(sections) == len(ENTRY_CHECKS)
    assert [s[0].astext() for s in sections] == [c.id for c in ENTRY_CHECKS]
    assert [s["ids"][0] for s in sections] == [anchor(c.id) for c in ENTRY_CHECKS]
    names = [[f[0].astext() for f in s.findall(nodes.field)] for s in sections]
    assert all({"Failure", "Citation", "Source"} <= set(n) for n in names)


def test_every_entry_check_can_be_referenced(site: Sphinx) -> None:
    labels = site.env.domaindata["std"]["labels"]
    assert all(labels[c.id][0] == "reference/entry-checks" for c in ENTRY_CHECKS)


def test_every_verb_and_option_is_in_the_cli_reference(site: Sphinx) -> None:
    text = doctree(site, "reference/cli").astext()
    found = verbs(build_parser())
    assert len(found) >= 1
    for name, _, parser in found:
        assert f"vtx {name}" in text
        for row in options(parser):
            assert row[0] in text, (name, row[0])


def test_every_public_module_is_in_the_api_reference(site: Sphinx) -> None:
    targets = ids(site, "reference/api")
    names = modules(["vtx.spec", "vtx.vmx", "vtx.paging", "vtx.outcomes", "vtx.errors", "vtx.bits"])
    assert {"vtx.vmx.entry", "vtx.paging.walk2d", "vtx.spec"} <= set(names)
    assert [n for n in names if f"module-{n}" not in targets] == []


def test_the_diagrams_are_drawn(site: Sphinx) -> None:
    machine = raw_html(site, "vmx-operation")
    assert machine.count(DIAGRAM) == 1
    for state in ("Outside VMX operation", "VMX root operation", "VMX non-root operation"):
        assert state in machine
    walk = raw_html(site, "tutorials/two-level-translation")
    assert walk.count(DIAGRAM) == 1
    assert all(f">{n}. " in walk for n in range(1, 25))


def test_sources_are_the_registered_functions_and_the_pseudocode() -> None:
    name, path, line = source_location(implementation("guest.cr0.fixed_bits"))
    assert name == "vtx.vmx.entry.guest_state.check_guest_cr0_fixed_bits"
    text = (DOCS.parent / path).read_text().splitlines()
    assert text[line - 1] == '@entry_check("guest.cr0.fixed_bits")'
    name, path, _ = source_location(implementation("basic.vmlaunch_clear"))
    assert (name, path) == ("vtx.vmx.instructions._vm_entry", "vtx/vmx/instructions.py")
