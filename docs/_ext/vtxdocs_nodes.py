"""Docutils node builders shared by the vtx directives."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from html import escape

from docutils import nodes

Row = list[str]


def table(header: Row, rows: Iterable[Row], *, code: Collection[int] = ()) -> nodes.table:
    """A table with one header row; every cell is a paragraph of plain text, or of literal text
    in the ``code`` columns (so that ``--json`` is not typeset as an en dash)."""
    result = nodes.table()
    group = nodes.tgroup(cols=len(header))
    result += group
    group.extend(nodes.colspec(colwidth=1) for _ in header)
    head, body = nodes.thead(), nodes.tbody()
    group += head
    group += body
    for parent, cells in ((head, header), *((body, r) for r in rows)):
        row = nodes.row()
        for i, cell in enumerate(cells):
            entry = nodes.entry()
            paragraph = nodes.paragraph()
            paragraph += nodes.literal(text=cell) if parent is body and i in code and cell else nodes.Text(cell)
            entry += paragraph
            row += entry
        parent.append(row)
    return result


def svg(markup: str, caption: str) -> nodes.figure:
    """An inline SVG drawing (HTML builders only) with a caption."""
    figure = nodes.figure(classes=["vtx-diagram"])
    figure += nodes.raw("", markup, format="html")
    figure += nodes.caption(text=caption)
    return figure


def para(*parts: nodes.Node | str) -> nodes.paragraph:
    """A paragraph of text and inline nodes."""
    p = nodes.paragraph()
    for part in parts:
        p += nodes.Text(part) if isinstance(part, str) else part
    return p


def field(name: str, *body: nodes.Node | str) -> nodes.field:
    """A field-list item ``name: body``."""
    f = nodes.field()
    f += nodes.field_name(text=name)
    value = nodes.field_body()
    value += para(*body)
    f += value
    return f


def chart(width: float, height: float, title: str, body: Iterable[str]) -> str:
    """An SVG chart document: ``body`` (SVG elements) on a white ``width`` x ``height`` canvas."""
    return (f'<svg xmlns="http://www.w3.org/2000/svg" role="img" viewBox="0 0 {width:.0f} {height:.0f}" '
            f'width="100%" style="max-width: {width:.0f}px; background: #ffffff; font-family: sans-serif">'
            f"<title>{escape(title)}</title>" + "".join(body) + "</svg>")
