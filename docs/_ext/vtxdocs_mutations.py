"""``.. vtx-mutation-score::`` renders ``docs/results/mutations.json`` (written by
``python -m vtx.invariants.mutations --write-results``): the score, and one row per seeded bug with
the design it is seeded in, the checks that catch it, whether z3 refutes it, and the bug itself.
The page says when and on what the score was measured; a missing file is a build error."""

from __future__ import annotations

from typing import Any

from docutils import nodes
from sphinx.util.docutils import SphinxDirective
from vtxdocs_nodes import table
from vtxdocs_results import RESULTS, load

FILE = "mutations.json"


def rows(data: dict[str, Any]) -> list[list[str]]:
    """One row per mutation: name, design, caught by, z3, bug."""
    return [[o["mutation"], o["design"], ", ".join(o["caught_by"]) or "NOT CAUGHT", o["z3"], o["bug"]]
            for o in data["outcomes"]]


COMMAND = "python -m vtx.invariants.mutations --write-results"


def summary(data: dict[str, Any]) -> nodes.paragraph:
    text = (f"Score {data['caught']} of {data['mutations']} seeded bugs caught ({data['score']:.0%}); z3 refutes, "
            f"with a counterexample the concrete model replays, {data['z3_refuted']} of the {data['z3_covered']} "
            f"its proofs cover. Measured {data['measured']} on {data['host']} in {data['seconds']} s by ")
    paragraph = nodes.paragraph()
    paragraph += [nodes.Text(text), nodes.literal(text=COMMAND), nodes.Text(".")]
    return paragraph


class MutationScore(SphinxDirective):
    def run(self) -> list[nodes.Node]:
        data = load(FILE)
        self.env.note_dependency(str(RESULTS / FILE))
        return [summary(data),
                table(["Mutation", "Design", "Caught by", "z3", "The bug"], rows(data), code=(0,))]


def setup(app: Any) -> dict[str, object]:
    app.add_directive("vtx-mutation-score", MutationScore)
    return {"parallel_read_safe": True}
