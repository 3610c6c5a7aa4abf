"""``.. vtx-invariants::`` tabulates :data:`vtx.invariants.INVARIANTS` (name, how it is
established, statement, citation); ``.. vtx-proof-results::`` renders ``docs/results/proofs.json``
(written by ``vtx prove --write-results``): per design, each invariant's verdict, time and
non-vacuity, and the inductive handler steps. A missing results file is a build error."""

from __future__ import annotations

from typing import Any

from docutils import nodes
from sphinx.util.docutils import SphinxDirective
from vtxdocs_nodes import table
from vtxdocs_results import RESULTS, load

from vtx.invariants import INVARIANTS

FILE = "proofs.json"


class Invariants(SphinxDirective):
    def run(self) -> list[nodes.Node]:
        rows = [[i.name, i.kind, i.statement, i.citation] for i in INVARIANTS]
        return [table(["Invariant", "Established by", "Statement", "Rests on"], rows, code=(0,))]


def _verdict(r: dict[str, Any]) -> str:
    if r["verdict"] == "held":
        return f"held over {r['conjuncts']} examples"
    if r["verdict"] == "proved":
        return "proved" if r["non_vacuous"] else "proved (VACUOUS)"
    return f"{r['verdict']}: {r['counterexample'] or ''}"


class ProofResults(SphinxDirective):
    def run(self) -> list[nodes.Node]:
        data = load(FILE)
        self.env.note_dependency(str(RESULTS / FILE))
        rows = []
        for d in data["designs"]:
            for r in d["invariants"]:
                rows.append([d["design"], r["invariant"], _verdict(r), f"{r['seconds']:.2f} s",
                             str(r.get("conjuncts", ""))])
            handlers = d["handlers"]
            proved = sum(h["verdict"] == "proved" and h["non_vacuous"] for h in handlers)
            rows.append([d["design"], "inductive steps", f"{proved} of {len(handlers)} handler actions proved",
                         f"{sum(h['seconds'] for h in handlers):.2f} s", str(len(handlers) * 3)])
        text = f"Scenario {data['scenario']}, z3 {data.get('z3', '?')}, written {data.get('measured', '?')} by "
        command = nodes.literal(text="vtx prove --write-results")
        para = nodes.paragraph("", "", nodes.Text(text), command, nodes.Text("."))
        return [para,
                table(["Design", "Invariant", "Verdict", "Time", "Conjuncts"], rows, code=(1,))]


def setup(app: Any) -> dict[str, object]:
    app.add_directive("vtx-invariants", Invariants)
    app.add_directive("vtx-proof-results", ProofResults)
    return {"parallel_read_safe": True}
