"""The VMM-organisation tables of ``docs/organisations.rst``, computed at build time.

* ``.. vtx-designs::`` — every design of :data:`vtx.machine.designs.DESIGNS`: its organisation, the
  module that implements it, the VM kinds it runs and its first docstring line.
* ``.. vtx-organisation-costs:: [SCENARIO.toml]`` — the scenario (default:
  ``spec/machine/default_scenario.toml``) run on the reference executor under each of its designs
  (:func:`vtx.machine.scenario.load_scenario`, :func:`~vtx.machine.scenario.build_machine`,
  :func:`vtx.machine.executor.run`), priced by the cost model (:mod:`vtx.machine.cost`): the world
  switches by kind and the modelled cycles per design, then the modelled cycles per design and per
  VM (with its kind and workload), then the prices of ``spec/machine/costs.toml``.

* ``.. vtx-modules::`` — a table of the modules named in its content (one per line, ``module: what
  it embodies``), each with the first sentence of its docstring; a module that does not import is an
  error, so the page cannot name code that is gone.
* ``:vtx-doc:`NAME``` — a link to the page ``NAME`` if the site has it, else its name as plain text
  (for pages other work adds).

Nothing is hard-coded per design, VM kind or switch kind: the tables have a column per design of
the scenario and a row per switch kind and per VM that the runs produce.
"""

from __future__ import annotations

import importlib
import inspect
import re
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective, SphinxRole
from vtxdocs_nodes import table

import vtx
from vtx.machine.cost import COSTS, price
from vtx.machine.designs import DESIGNS
from vtx.machine.designs.base import DesignBase
from vtx.machine.executor import run
from vtx.machine.model import Trace
from vtx.machine.scenario import DEFAULT_SCENARIO, build_machine, load_scenario

REPO = Path(vtx.__file__).resolve().parents[1]


_ROLE = re.compile(r":[\w:]+:`~?([^`<]+?)(?: <[^>]+>)?`")
_SENTENCE_END = re.compile(r"(?<=[a-z)\]])\.\s+(?=[A-Z])")


def _first_line(obj: object) -> str:
    """The first paragraph of ``obj``'s docstring, with reST roles and literals as plain text."""
    doc = (inspect.getdoc(obj) or "").split("\n\n")[0].replace("\n", " ")
    return _ROLE.sub(r"\1", doc).replace("``", "")


def first_sentence(obj: object) -> str:
    """The first sentence of ``obj``'s docstring ("SDM Vol. 3C" does not end one)."""
    text = _first_line(obj)
    return _SENTENCE_END.split(text, maxsplit=1)[0].rstrip(".") + "."


class Designs(SphinxDirective):
    """``.. vtx-designs::`` — the designs the executor can run."""

    def run(self) -> list[nodes.Node]:
        rows = []
        for name, design in DESIGNS.items():
            module = inspect.getmodule(type(design))
            kinds = ", ".join(design.kinds) if isinstance(design, DesignBase) else ""
            rows.append([name, design.organisation, module.__name__ if module else "", kinds,
                         _first_line(module)])
        return [table(["Design", "Organisation", "Module", "VM kinds", "What it does"], rows, code=(0, 2))]


def switches_by_vm(trace: Trace) -> dict[str, Counter[str]]:
    """The world switches of a run, counted by kind for each VM whose events report them."""
    out: dict[str, Counter[str]] = {}
    for e in trace:
        kinds = e.get("switches", ())
        if kinds:
            out.setdefault(e.vm or "(hypervisor)", Counter()).update(kinds)
    return out


def _vm_labels(path: Path, machine_vms: dict[str, str]) -> dict[str, str]:
    """``name (kind, workload)`` for each VM: kinds from the machine, workloads from the scenario file."""
    with path.open("rb") as f:
        raw: dict[str, Any] = tomllib.load(f)
    workloads = {str(v.get("name")): str(v.get("workload", "program")) for v in raw.get("vm", [])}
    return {name: f"{name} ({kind}, {workloads[name]})" if name in workloads else f"{name} ({kind})"
            for name, kind in machine_vms.items()}


class OrganisationCosts(SphinxDirective):
    """``.. vtx-organisation-costs:: [SCENARIO.toml]`` — a scenario run under each design and priced."""

    optional_arguments = 1

    def run(self) -> list[nodes.Node]:
        if self.arguments:
            rel, abspath = self.env.relfn2path(self.arguments[0], self.env.docname)
            self.env.note_dependency(rel)
            path = Path(abspath)
        else:
            path = DEFAULT_SCENARIO
        scenario = load_scenario(path)
        totals: dict[str, Counter[str]] = {}
        per_vm: dict[str, dict[str, Counter[str]]] = {}
        labels: dict[str, str] = {}
        steps: dict[str, str] = {}
        for design in scenario.designs:
            machine, trace = run(build_machine(scenario, design), scenario.steps)
            per_vm[design] = switches_by_vm(trace)
            totals[design] = sum(per_vm[design].values(), Counter())
            labels |= _vm_labels(path, {vm.name: vm.kind for vm in machine.vms})
            steps[design] = f"{machine.step} steps, {'every vCPU finished' if machine.all_done else 'NOT finished'}"
        designs = list(scenario.designs)
        kinds = [k for k in COSTS if any(totals[d][k] for d in designs)]
        switch_rows = [[k, f"{COSTS[k].cycles:,}", *(f"{totals[d][k]:,}" for d in designs)] for k in kinds]
        switch_rows.append(["modelled cycles", "", *(f"{price(totals[d].elements())[1]:,}" for d in designs)])
        switch_rows.append(["run", "", *(steps[d] for d in designs)])
        vms = list(dict.fromkeys(vm for d in designs for vm in per_vm[d]))
        vm_rows = [[labels.get(vm, vm), *(f"{price(per_vm[d].get(vm, Counter()).elements())[1]:,}" for d in designs)]
                   for vm in vms]
        shown = path.resolve().relative_to(REPO).as_posix() if path.resolve().is_relative_to(REPO) else path.name
        intro = nodes.paragraph(text=(
            f"{shown}: {len(scenario.vms)} VMs on {scenario.logical_processors} logical processors "
            f"({scenario.caps.name}), seed {scenario.seed}, at most {scenario.steps} steps, run under each design "
            f"while this page was built."))
        return [intro,
                table(["World switch", "Cycles each", *designs], switch_rows, code=(0,)),
                nodes.paragraph(text="Modelled cycles of world switches per VM (kind, workload):"),
                table(["VM", *designs], vm_rows),
                nodes.paragraph(text="The prices (spec/machine/costs.toml):"),
                table(["World switch", "Cycles", "What it is", "Reference", "Estimate"],
                      [[c.name, f"{c.cycles:,}", c.title, str(c.reference), "UNSURE" if c.unsure else ""]
                       for c in COSTS.values()], code=(0,))]


class Modules(SphinxDirective):
    """``.. vtx-modules::`` — ``module: role`` lines as a table with each module's docstring summary."""

    has_content = True

    def run(self) -> list[nodes.Node]:
        rows = []
        for line in self.content:
            name, _, role = line.partition(":")
            try:
                module = importlib.import_module(name.strip())
            except ImportError as e:
                raise self.error(f"vtx-modules: {name.strip()!r} does not import: {e}") from e
            rows.append([role.strip(), module.__name__, first_sentence(module)])
        return [table(["Property", "Module", "What the module says it does"], rows, code=(1,))]


class DocIfPresent(SphinxRole):
    """``:vtx-doc:`invariants``` — a :doc: link if the page exists in this build, else plain text."""

    def run(self) -> tuple[list[nodes.Node], list[nodes.system_message]]:
        if self.text in self.env.found_docs:
            ref = addnodes.pending_xref(self.rawtext, refdomain="std", reftype="doc", reftarget="/" + self.text,
                                        refexplicit=False, refwarn=True, refdoc=self.env.docname)
            ref += nodes.inline(self.text, self.text)
            return [ref], []
        return [nodes.Text(self.text)], []


def setup(app: Sphinx) -> dict[str, object]:
    app.add_role("vtx-doc", DocIfPresent())
    app.add_directive("vtx-modules", Modules)
    app.add_directive("vtx-designs", Designs)
    app.add_directive("vtx-organisation-costs", OrganisationCosts)
    return {"parallel_read_safe": True, "version": "1"}
