"""The command-line reference, generated from :func:`vtx.cli.build_parser`: a section per verb
with its usage, description and every option."""

from __future__ import annotations

import argparse

from docutils import nodes
from sphinx.util.docutils import SphinxDirective
from vtxdocs_nodes import table

from vtx.cli import build_parser


def verbs(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, help, parser) of every verb, in the order the parser lists them."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help or "" for a in sub._choices_actions}
    return [(name, helps.get(name, ""), p) for name, p in sub.choices.items()]


def options(parser: argparse.ArgumentParser) -> list[list[str]]:
    """One row per argument: the option strings (or the positional name), the value it takes,
    its default and its help."""
    rows = []
    for a in parser._actions:
        if isinstance(a, argparse._HelpAction):
            continue
        names = ", ".join(a.option_strings) or a.dest
        if a.choices is not None:
            value = " | ".join(str(c) for c in a.choices)
        elif a.nargs == 0:
            value = "(flag)"
        else:
            value = a.metavar if isinstance(a.metavar, str) else a.dest.upper()
        repeat = " (repeatable)" if isinstance(a, argparse._AppendAction) else ""
        default = "" if a.default in (None, False, argparse.SUPPRESS) else str(a.default)
        rows.append([names, value + repeat, default, a.help or ""])
    return rows


class CliReference(SphinxDirective):
    """``.. vtx-cli::`` — every verb of ``vtx`` with every option."""

    def run(self) -> list[nodes.Node]:
        parser = build_parser()
        out: list[nodes.Node] = [nodes.literal_block(text=parser.format_usage().strip())]
        out.append(table(["Option", "Value", "Default", "Meaning"], options(parser), code=(0, 1, 2)))
        for name, text, p in verbs(parser):
            section = nodes.section(ids=[nodes.make_id(f"vtx-{name}")], names=[f"vtx {name}"])
            self.state.document.note_explicit_target(section, section)
            title = nodes.title()
            title += nodes.literal(text=f"vtx {name}")
            section += title
            if text:
                section += nodes.paragraph(text=text[0].upper() + text[1:] + ".")
            section += nodes.literal_block(text=p.format_usage().strip())
            section += table(["Argument", "Value", "Default", "Meaning"], options(p), code=(0, 1, 2))
            out.append(section)
        return out
