"""SVG diagrams drawn from the model at build time (no graphviz): the VMX state machine of
``spec/vmx/state_machine.toml`` and the two-dimensional walk of a real translation.

The SVG is plain text built here; the layout is fixed (three states in a row, a grid for the
walk) and sized from the labels, so the drawing changes when the tables change.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Sequence
from html import escape

from vtx import spec
from vtx.paging.outcomes import Reference, Space

FONT = 13
CHAR_WIDTH = 7.2  # average advance of the sans-serif font at FONT px, for sizing boxes
LINE = 17
STYLE = (f"text {{ font-family: sans-serif; font-size: {FONT}px; fill: #1a1a1a; }} "
         ".title { font-weight: bold; } .small { font-size: 11px; fill: #444; } "
         ".edge { fill: none; stroke: #333; stroke-width: 1.5; } .lead { stroke: #999; stroke-dasharray: 4 3; } "
         ".box { fill: #eef3fb; stroke: #2d5b9a; stroke-width: 2; } .ept { fill: #fdf2e3; stroke: #b5761f; } "
         ".guest { fill: #e6f4ea; stroke: #2f7d46; } .data { fill: #f3e8fb; stroke: #7a3fa0; }")

OUTCOME_LABELS = {"succeed": "VMsucceed", "fail_invalid": "VMfailInvalid", "fail_valid": "VMfailValid",
                  "ud": "#UD", "gp": "#GP(0)", "vm_exit": "VM exit", "vm_entered": "VM entry",
                  "entry_failed": "VM-entry failure"}
"""How each outcome kind of ``spec/vmx/state_machine.toml`` is written in the diagram."""


def _svg(width: float, height: float, body: Iterable[str], title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" role="img" viewBox="0 0 {width:.0f} {height:.0f}" '
            f'width="100%" style="max-width: {width:.0f}px; background: #ffffff">'
            f"<title>{escape(title)}</title><style>{STYLE}</style>"
            '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="8" markerHeight="8" '
            'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#333"/></marker></defs>'
            + "".join(body) + "</svg>")


def _text(x: float, y: float, lines: Sequence[str], *, anchor: str = "middle", cls: str = "") -> str:
    """Lines of text whose first baseline is at ``y``."""
    attr = f' class="{cls}"' if cls else ""
    spans = "".join(f'<tspan x="{x:.0f}" y="{y + i * LINE:.0f}">{escape(s)}</tspan>'
                    for i, s in enumerate(lines) if s)
    return f'<text x="{x:.0f}" y="{y:.0f}" text-anchor="{anchor}"{attr}>{spans}</text>'


def _width(lines: Sequence[str]) -> float:
    return max((len(s) for s in lines), default=0) * CHAR_WIDTH


def transition_label(t: spec.Transition, width: int) -> list[str]:
    """``VMXON, VMXOFF: #UD, #GP(0)`` wrapped to ``width`` characters."""
    text = f"{', '.join(i.upper() for i in t.instructions)} → {', '.join(OUTCOME_LABELS[o] for o in t.outcomes)}"
    return textwrap.wrap(text, width, break_on_hyphens=False)


def state_machine(states: Sequence[tuple[str, str]], transitions: Sequence[spec.Transition]) -> str:
    """The states (name, title) in a row in table order; transitions to the right arc above,
    transitions to the left arc below, and each state's self-transitions hang below it."""
    wrap = 30
    col = wrap * CHAR_WIDTH + 40
    box_w, box_h = 176.0, 56.0
    xs = {name: col / 2 + i * col for i, (name, _) in enumerate(states)}
    index = {name: i for i, (name, _) in enumerate(states)}
    pairs: dict[tuple[str, str], list[str]] = {}
    for t in transitions:
        lines = pairs.setdefault((t.source, t.target), [])
        lines.extend(([""] if lines else []) + transition_label(t, wrap))  # a blank line between transitions
    forward = {k: v for k, v in pairs.items() if index[k[1]] > index[k[0]]}
    backward = {k: v for k, v in pairs.items() if index[k[1]] < index[k[0]]}
    loops = {k[0]: v for k, v in pairs.items() if k[0] == k[1]}
    arc = 70.0
    top = 20 + max((len(v) for v in forward.values()), default=0) * LINE + arc
    y = top + box_h / 2  # centre line of the boxes
    body: list[str] = []
    for (a, b), lines in forward.items():
        x1, x2 = xs[a] + box_w / 2, xs[b] - box_w / 2
        mid = (x1 + x2) / 2
        body.append(f'<path class="edge" d="M{x1:.0f},{y - 12:.0f} Q{mid:.0f},{y - 12 - 2 * arc:.0f} '
                    f'{x2:.0f},{y - 12:.0f}" marker-end="url(#arrow)"/>')
        body.append(_text(mid, y - 12 - arc - 8 - (len(lines) - 1) * LINE, lines))
    below = y + box_h / 2
    for (a, b), lines in backward.items():
        x1, x2 = xs[a] - box_w / 2, xs[b] + box_w / 2
        mid = (x1 + x2) / 2
        body.append(f'<path class="edge" d="M{x1:.0f},{y + 12:.0f} Q{mid:.0f},{y + 12 + 2 * arc:.0f} '
                    f'{x2:.0f},{y + 12:.0f}" marker-end="url(#arrow)"/>')
        body.append(_text(mid, y + 12 + arc + 20, lines))
        below = max(below, y + 12 + arc + 20 + len(lines) * LINE)
    loop_top = below + 24
    bottom = loop_top
    for name, lines in loops.items():
        cx = xs[name]
        foot = y + box_h / 2
        body.append(f'<path class="edge" d="M{cx - 22:.0f},{foot:.0f} C{cx - 50:.0f},{foot + 55:.0f} '
                    f'{cx + 50:.0f},{foot + 55:.0f} {cx + 22:.0f},{foot:.0f}" marker-end="url(#arrow)"/>')
        body.append(f'<line class="edge lead" x1="{cx:.0f}" y1="{foot + 42:.0f}" x2="{cx:.0f}" '
                    f'y2="{loop_top - 4:.0f}"/>')
        body.append(_text(cx, loop_top + FONT, lines))
        bottom = max(bottom, loop_top + FONT + len(lines) * LINE)
    for name, title in states:
        cx = xs[name]
        body.append(f'<rect class="box" x="{cx - box_w / 2:.0f}" y="{y - box_h / 2:.0f}" width="{box_w:.0f}" '
                    f'height="{box_h:.0f}" rx="12"/>')
        body.append(_text(cx, y - 4, [title], cls="title"))
        body.append(_text(cx, y + 14, [name], cls="small"))
    return _svg(col * len(states), bottom + 10, body, "VMX operation: states and transitions")


def walk_rows(refs: Sequence[Reference]) -> list[tuple[list[tuple[int, Reference]], tuple[int, Reference] | None]]:
    """The references of a two-dimensional walk grouped as the walk makes them: each guest entry
    after the EPT / NPT entries that translate its address; the trailing nested entries
    translate the final guest-physical address. Each row is (nested refs, guest ref or None)."""
    rows: list[tuple[list[tuple[int, Reference]], tuple[int, Reference] | None]] = []
    nested: list[tuple[int, Reference]] = []
    for n, r in enumerate(refs, 1):
        if r.space is Space.GUEST:
            rows.append((nested, (n, r)))
            nested = []
        else:
            nested.append((n, r))
    if nested:
        rows.append((nested, None))
    return rows


def walk(refs: Sequence[Reference], *, final: str, final_gpa: int | None = None) -> str:
    """A grid: one row per guest-physical address translated (each guest paging-structure entry,
    then the final address), one column per nested level, then the guest entry read; cells are
    numbered in the order the processor reads them. ``final`` labels the end of the last row,
    ``final_gpa`` (when the walk got that far) its start."""
    rows = walk_rows(refs)
    levels = sorted({r.level for r in refs if r.space is not Space.GUEST}, reverse=True)
    names = {r.level: r.name for r in refs if r.space is not Space.GUEST}
    nested_space = next((r.space.value.upper() for r in refs if r.space is not Space.GUEST), "EPT")
    cell_w, cell_h, gap = 150.0, 58.0, 26.0
    left = 200.0
    head = 56.0
    width = left + (len(levels) + 1) * (cell_w + gap) + 20
    body: list[str] = []
    for j, level in enumerate(levels):
        body.append(_text(left + j * (cell_w + gap) + cell_w / 2, 30, [f"{nested_space} {names[level]}"], cls="title"))
    body.append(_text(left + len(levels) * (cell_w + gap) + cell_w / 2, 30, ["guest entry / result"], cls="title"))
    for i, (nested, guest_ref) in enumerate(rows):
        y = head + i * (cell_h + gap)
        gpa = nested[-1][1] if nested else None
        what = (f"{guest_ref[1].name} at GPA {guest_ref[1].address:#x}" if guest_ref
                else "final GPA" + ("" if final_gpa is None else f" {final_gpa:#x}"))
        body.append(_text(16, y + cell_h / 2 - 2, textwrap.wrap(what, 24), anchor="start"))
        cells: list[tuple[float, str, list[str]]] = []
        for n, r in nested:
            x = left + levels.index(r.level) * (cell_w + gap)
            cells.append((x, "box ept", [f"{n}. {r.name}", f"HPA {r.host_address:#x}"]))
        x_last = left + len(levels) * (cell_w + gap)
        if guest_ref is not None:
            n, r = guest_ref
            cells.append((x_last, "box guest", [f"{n}. guest {r.name}", f"HPA {r.host_address:#x}"]))
        elif gpa is not None:
            cells.append((x_last, "box data", textwrap.wrap(final, 20)))
        for k, (x, cls, lines) in enumerate(cells):
            body.append(f'<rect class="{cls}" x="{x:.0f}" y="{y:.0f}" width="{cell_w:.0f}" height="{cell_h:.0f}" '
                        'rx="6"/>')
            body.append(_text(x + cell_w / 2, y + 24, lines[:2]))
            if k:
                px = cells[k - 1][0] + cell_w
                body.append(f'<line class="edge" x1="{px:.0f}" y1="{y + cell_h / 2:.0f}" x2="{x - 2:.0f}" '
                            f'y2="{y + cell_h / 2:.0f}" marker-end="url(#arrow)"/>')
        if guest_ref is not None and i + 1 < len(rows):
            x0 = x_last + cell_w / 2
            body.append(f'<path class="edge lead" d="M{x0:.0f},{y + cell_h:.0f} L{x0:.0f},{y + cell_h + gap / 2:.0f} '
                        f'L{left + cell_w / 2:.0f},{y + cell_h + gap / 2:.0f} L{left + cell_w / 2:.0f},'
                        f'{y + cell_h + gap - 2:.0f}" marker-end="url(#arrow)"/>')
    height = head + len(rows) * (cell_h + gap)
    return _svg(width, height, body, "Two-dimensional walk: guest paging under EPT")
