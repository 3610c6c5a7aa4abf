"""The generated reference pages are complete: the site builds without warnings, and every
catalogued VMCS field, exit reason, VM-instruction error and VM-entry check, every VMCB field,
SVM intercept bit, #VMEXIT code, SVM feature and VMRUN check, every verb and option of ``vtx``,
every API module and every hypervisor design appears on its page.

The site is read once per module with Sphinx's ``dummy`` builder (every page parsed and every
directive run, no HTML written; CI's ``sphinx-build -W`` writes it) and with the failing-example
search off (``vtx_entry_examples``; ``tests/vmx/entry/test_examples.py`` and
``tests/svm/test_vmrun_examples.py`` test the searches themselves), to keep the test fast. Sphinx is a
``docs`` extra, so this module is skipped where it is not installed.
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
from vtx.machine.designs import DESIGNS
from vtx.machine.scenario import DEFAULT_SCENARIO, load_scenario
from vtx.svm import spec as svm
from vtx.vmx.entry.catalogue import ENTRY_CHECKS

DOCS = Path(__file__).resolve().parents[2] / "docs"
sys.path.insert(0, str(DOCS / "_ext"))

from vtxdocs_api import modules  # noqa: E402
from vtxdocs_checks import anchor, implementation, source_location  # noqa: E402
from vtxdocs_cli import options, verbs  # noqa: E402
from vtxdocs_svm import anchor as vmrun_anchor  # noqa: E402


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


def table_rows(site: Sphinx, docname: str, index: int = 0) -> list[list[str]]:
    """The body rows of a table of a page (the first by default), as cell texts."""
    table = list(doctree(site, docname).findall(nodes.table))[index]
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


def test_every_vmcb_field_has_a_row_in_its_area(site: Sphinx) -> None:
    rows = table_rows(site, "reference/svm-vmcb", 0) + table_rows(site, "reference/svm-vmcb", 1)
    assert len(rows) == len(svm.VMCB_FIELDS)
    assert [r[2] for r in rows] == [f.name for f in svm.VMCB_FIELDS if f.area == "control"] + [
        f.name for f in svm.VMCB_FIELDS if f.area == "save"]
    by_name = {f.name: f for f in svm.VMCB_FIELDS}
    assert all(r[0] == f"{by_name[r[2]].offset:03X}h" and r[1] == str(by_name[r[2]].size) for r in rows)
    assert [r[1] for r in table_rows(site, "reference/svm-vmcb", 2)] == [c.name for c in svm.CLEAN_BITS]
    assert [r[0] for r in table_rows(site, "reference/svm-vmcb", 3)] == [a.name for a in svm.ALIASES]


def test_every_intercept_bit_has_a_row_with_its_exit_code(site: Sphinx) -> None:
    rows = table_rows(site, "reference/svm-intercepts")
    assert [(r[0], r[1], r[2], r[4]) for r in rows] == [(str(i.word), str(i.bit), i.name, str(i.exit))
                                                        for i in svm.INTERCEPTS]


def test_every_exit_code_has_a_row_with_its_causes(site: Sphinx) -> None:
    rows = table_rows(site, "reference/svm-exit-codes")
    assert [r[1] for r in rows] == [e.name for e in svm.EXIT_CODES]
    assert all(r[4] for r in rows), [r[1] for r in rows if not r[4]]
    npf = next(r for r in rows if r[1] == "VMEXIT_NPF")
    assert npf[0] == "0x400"


def test_every_svm_feature_has_a_row(site: Sphinx) -> None:
    rows = table_rows(site, "reference/svm-features")
    assert [(r[0], r[1]) for r in rows] == [(str(f.bit), f.name) for f in svm.SVM_FEATURES]


def test_every_vmrun_check_has_a_section_with_an_anchor(site: Sphinx) -> None:
    sections = [s for s in doctree(site, "reference/svm-vmrun-checks").findall(nodes.section)
                if "vtx-vmrun-check" in s["classes"]]
    assert [s[0].astext() for s in sections] == [c.id for c in svm.VMRUN_CHECKS]
    assert [s["ids"][0] for s in sections] == [vmrun_anchor(c.id) for c in svm.VMRUN_CHECKS]
    names = [[f[0].astext() for f in s.findall(nodes.field)] for s in sections]
    assert all({"Failure", "Citation", "Source"} <= set(n) for n in names)
    labels = site.env.domaindata["std"]["labels"]
    assert all(labels[f"vmrun:{c.id}"][0] == "reference/svm-vmrun-checks" for c in svm.VMRUN_CHECKS)


def test_every_design_is_on_the_organisations_page_with_its_costs(site: Sphinx) -> None:
    assert [r[0] for r in table_rows(site, "organisations", 0)] == list(DESIGNS)
    scenario = load_scenario(DEFAULT_SCENARIO)
    switches = table_rows(site, "organisations", 1)
    cycles = next(r for r in switches if r[0] == "modelled cycles")
    assert len(cycles) == 2 + len(scenario.designs) and all(int(c.replace(",", "")) > 0 for c in cycles[2:])
    per_vm = table_rows(site, "organisations", 2)
    assert {vm.name for vm in scenario.vms} <= {r[0].split(" ")[0] for r in per_vm}
