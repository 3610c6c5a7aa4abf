"""Rendering the results of long runs committed under ``docs/results/`` (the command that
produces each file writes it; the docs only read it, so the build stays fast):

* ``.. vtx-bench-results::`` — ``bench.json`` (``python -m bench``): a table of every figure
  with its target and verdict, and a bar chart of each figure's rate as a share of its target.
* ``.. vtx-fuzz-results::`` — ``fuzz.json`` (``python tests/fuzz/deep_run.py``): inputs tried and
  failures per input surface.
* ``.. vtx-fuzz-regressions::`` — the bugs the fuzzing found and fixed: one regression test each
  in ``tests/fuzz/test_regressions.py``, read from that file.

Each says when, and on what machine, its numbers were measured; a missing file is a build error.
"""

from __future__ import annotations

import ast
import json
from html import escape
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx.util.docutils import SphinxDirective
from vtxdocs_nodes import chart, svg, table

RESULTS = Path(__file__).resolve().parents[1] / "results"


def load(name: str) -> dict[str, Any]:
    path = RESULTS / name
    if not path.exists():
        raise FileNotFoundError(f"{path}: results file missing (run the command that writes it)")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _machine(data: dict[str, Any]) -> str:
    m = data.get("machine", {})
    return f"Python {m.get('python', '?')}, {m.get('cpu_count', '?')} CPUs, {m.get('platform', '?')}"


def _rate(n: float) -> str:
    return f"{n:,.0f}" if n >= 100 else f"{n:,.2f}"


BAR_WIDTH = 360
ROW_HEIGHT = 22
LABEL_WIDTH = 330


def target_chart(results: list[dict[str, Any]]) -> str:
    """Bars: each targeted figure's rate over its target (1.0 = the target; the bar is capped at 3x)."""
    rows = [r for r in results if r.get("target_per_second")]
    height = ROW_HEIGHT * (len(rows) + 1) + 10
    width = LABEL_WIDTH + BAR_WIDTH + 90
    scale = BAR_WIDTH / 3
    body = [f'<line x1="{LABEL_WIDTH + scale:.0f}" y1="0" x2="{LABEL_WIDTH + scale:.0f}" y2="{height}" '
            'stroke="#333" stroke-dasharray="4 3"/>',
            f'<text x="{LABEL_WIDTH + scale + 4:.0f}" y="{height - 4}" font-size="11">target</text>']
    for i, r in enumerate(rows):
        ratio = r["per_second"] / r["target_per_second"]
        y = 6 + i * ROW_HEIGHT
        colour = "#3a7d44" if ratio >= 1 else "#b5473a"
        body.append(f'<text x="{LABEL_WIDTH - 6}" y="{y + 14}" text-anchor="end" font-size="12">'
                    f"{escape(r['name'])}</text>")
        body.append(f'<rect x="{LABEL_WIDTH}" y="{y + 2}" width="{min(ratio, 3) * scale:.1f}" height="16" '
                    f'fill="{colour}"/>')
        body.append(f'<text x="{LABEL_WIDTH + min(ratio, 3) * scale + 4:.1f}" y="{y + 14}" font-size="11">'
                    f"{ratio:.2f}x</text>")
    return chart(width, height, "benchmark rates as a share of their targets", body)


class BenchResults(SphinxDirective):
    def run(self) -> list[nodes.Node]:
        data = load("bench.json")
        self.env.note_dependency(str(RESULTS / "bench.json"))
        results = data["results"]
        rows = [[r["name"], f"{r['median']:.3f} {r['unit']}", f"{r['minimum']:.3f}", f"{r['maximum']:.3f}",
                 _rate(r["per_second"]), _rate(r["target_per_second"]) if r.get("target_per_second") else "",
                 r.get("verdict", "")] for r in results]
        intro = nodes.paragraph(text=f"Measured {data['measured']} on {_machine(data)} by python -m bench "
                                     f"(median, min and max of the repetitions; rate per second from the median).")
        out: list[nodes.Node] = [intro, table(["Benchmark", "Median", "Min", "Max", "Per second", "Target", ""],
                                              rows)]
        if any(r.get("target_per_second") for r in results):
            out.append(svg(target_chart(results), "Each targeted figure's rate divided by its target."))
        return out


class FuzzResults(SphinxDirective):
    def run(self) -> list[nodes.Node]:
        data = load("fuzz.json")
        self.env.note_dependency(str(RESULTS / "fuzz.json"))
        rows = [[s["surface"], s["file"], s["profile"], f"{s['inputs']:,}", str(s["failing_inputs"]),
                 ", ".join(t.split("::")[-1] for t in s["failed_tests"]) or "none", f"{s['seconds']:,.0f}",
                 s["measured"]] for s in data["surfaces"]]
        intro = nodes.paragraph(text=f"Recorded by python tests/fuzz/deep_run.py on {_machine(data)}.")
        return [intro, table(["Surface", "Tests", "Profile", "Inputs", "Failing", "Failed tests", "Seconds",
                              "Measured"], rows, code=(1,))]


REGRESSIONS = Path(__file__).resolve().parents[2] / "tests" / "fuzz" / "test_regressions.py"


def regressions() -> list[list[str]]:
    """Each regression test: the bug in words (its name), its docstring, and the test."""
    tree = ast.parse(REGRESSIONS.read_text())
    rows = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            words = node.name.removeprefix("test_").replace("_", " ")
            doc = (ast.get_docstring(node) or "").replace("\n", " ")
            rows.append([words[0].upper() + words[1:], doc, node.name])
    return rows


class FuzzRegressions(SphinxDirective):
    def run(self) -> list[nodes.Node]:
        self.env.note_dependency(str(REGRESSIONS))
        rows = regressions()
        intro = nodes.paragraph(text=f"{len(rows)} bugs found by fuzzing and fixed at their source, each "
                                     "kept by a regression test in tests/fuzz/test_regressions.py:")
        return [intro, table(["Behaviour now", "The bug", "Test"], rows, code=(2,))]


def setup(app: Any) -> dict[str, object]:
    app.add_directive("vtx-bench-results", BenchResults)
    app.add_directive("vtx-fuzz-results", FuzzResults)
    app.add_directive("vtx-fuzz-regressions", FuzzRegressions)
    return {"parallel_read_safe": True}
