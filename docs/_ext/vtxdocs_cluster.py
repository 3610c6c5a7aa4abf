"""Rendering ``docs/results/cluster.json`` (written by ``vtx cluster --write-results``):

* ``.. vtx-cluster-placement::`` — hosts used by first-fit decreasing and by z3 per instance,
  with the proved lower bound, the outcome and the time.
* ``.. vtx-cluster-report:: SCENARIO`` — a built-in scenario's report: the text ``vtx cluster``
  prints, a table of the policies and a chart of the hosts powered over the day.

Each says when, and on what machine, it was measured; a missing file is a build error.
"""

from __future__ import annotations

from html import escape
from typing import Any

from docutils import nodes
from sphinx.util.docutils import SphinxDirective
from vtxdocs_nodes import chart, svg, table
from vtxdocs_results import RESULTS, load

from vtx.cluster.report import report_lines

FILE = "cluster.json"
OUTCOME = {"optimal": "proved optimal", "bound": "optimal (FFD meets the bound)", "timeout": "time limit"}
PROOF = {"unsat": " (z3: none on one host fewer)", "lower bound": " (meets the lower bound)"}


def _measured(data: dict[str, Any]) -> nodes.paragraph:
    m = data["machine"]
    return nodes.paragraph(text=f"Measured {data['measured']} by {data['generated_by']} with z3 {data['z3']} on "
                                f"Python {m['python']}, {m['cpu_count']} CPUs, {m['platform']}.")


class ClusterPlacement(SphinxDirective):
    def run(self) -> list[nodes.Node]:
        data = load(FILE)
        self.env.note_dependency(str(RESULTS / FILE))
        rows = [[r["instance"], str(r["vms"]), str(r["host_pool"]), str(r["vm_types"]), str(r["ffd_hosts"]),
                 str(r["z3_hosts"]), str(r["lower_bound"]),
                 OUTCOME[r["status"]] + (PROOF.get(r.get("proof", ""), "") if r["status"] == "optimal" else ""),
                 f"{r['seconds']:.1f}",
                 f"{r['time_limit_s']:g}"] for r in data["instances"]]
        return [_measured(data), table(["Instance", "VMs", "Host pool", "VM types", "FFD hosts", "z3 hosts",
                                        "Lower bound", "Outcome", "Seconds", "Limit (s)"], rows)]


WIDTH, HEIGHT, PAD = 560, 200, 36
COLOURS = {"static": "#555555", "balance": "#b5473a", "power": "#3a7d44"}


def hosts_chart(policies: list[dict[str, Any]]) -> str:
    """Hosts powered in each slot, one line per policy."""
    slots = len(policies[0]["hosts_on"])
    top = max(max(p["hosts_on"]) for p in policies)
    bottom = min(min(p["hosts_on"]) for p in policies)
    span = max(1, top - bottom)

    def xy(i: int, n: int) -> str:
        x = PAD + i * (WIDTH - 2 * PAD) / max(1, slots - 1)
        y = HEIGHT - PAD - (n - bottom) * (HEIGHT - 2 * PAD) / span
        return f"{x:.1f},{y:.1f}"

    body = [f'<text x="4" y="{PAD - 8}" font-size="11">hosts on ({bottom}..{top})</text>',
            f'<text x="{WIDTH - PAD}" y="{HEIGHT - 8}" font-size="11" text-anchor="end">slot ({slots})</text>']
    for k, p in enumerate(policies):
        colour = COLOURS.get(p["policy"], "#333")
        points = " ".join(xy(i, n) for i, n in enumerate(p["hosts_on"]))
        body.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>')
        body.append(f'<text x="{WIDTH - PAD - 150 + 52 * k}" y="{PAD - 8}" font-size="11" fill="{colour}">'
                    f"{escape(p['policy'])}</text>")
    return chart(WIDTH, HEIGHT, "hosts powered per slot under each policy", body)


class ClusterReport(SphinxDirective):
    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        data = load(FILE)
        self.env.note_dependency(str(RESULTS / FILE))
        name = self.arguments[0]
        if name not in data["scenarios"]:
            raise self.error(f"{FILE} has no scenario {name!r}; it has {', '.join(data['scenarios'])}")
        report = data["scenarios"][name]
        text = "\n".join(report_lines(report))
        rows = []
        for p in report["policies"]:
            on = p["hosts_on"]
            ha = p["ha"] or {}
            rows.append([p["policy"], f"{p['energy_kwh']:.1f}", f"{min(on)}..{max(on)} ({sum(on) / len(on):.1f})",
                         str(p["migrations"]), str(p["migrations_in_executor"]), str(p["saturated_host_slots"]),
                         f"{ha.get('restarted', 0)} / {len(ha.get('stranded', []))}",
                         str(p["partitioning_checks"]), "yes" if p["ok"] else "NO"])
        return [_measured(data), nodes.literal_block(text, text),
                table(["Policy", "Energy (kWh)", "Hosts on (mean)", "Migrations", "In the executor",
                       "Saturated host-slots", "HA restarted / stranded", "Partitioning checks", "Invariants hold"],
                      rows),
                svg(hosts_chart(report["policies"]), f"Hosts powered in each slot of the {name} scenario.")]


def setup(app: Any) -> dict[str, object]:
    app.add_directive("vtx-cluster-placement", ClusterPlacement)
    app.add_directive("vtx-cluster-report", ClusterReport)
    return {"parallel_read_safe": True}
