"""The API reference: ``.. vtx-api:: MODULE ...`` documents each module named, and every
submodule of a package named, with ``sphinx.ext.autodoc`` — so a new module appears in the
reference without editing the page."""

from __future__ import annotations

import importlib
import pkgutil

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles


def modules(names: list[str]) -> list[str]:
    """``names`` in order, each package followed by its submodules (depth first, sorted)."""
    out: list[str] = []
    for name in names:
        module = importlib.import_module(name)
        out.append(name)
        if hasattr(module, "__path__"):
            out += sorted(m.name for m in pkgutil.walk_packages(module.__path__, f"{name}."))
    return list(dict.fromkeys(out))


class ApiReference(SphinxDirective):
    """``.. vtx-api:: vtx.spec vtx.vmx ...`` — a section per module with its documented members."""

    required_arguments = 1
    final_argument_whitespace = True

    def run(self) -> list[nodes.Node]:
        lines: list[str] = []
        for name in modules(self.arguments[0].split()):
            # a package documents what it defines; what its __all__ re-exports is documented in the
            # submodule that defines it (a function named like a submodule would otherwise clash)
            members = ["   :members:"]
            if hasattr(importlib.import_module(name), "__path__"):
                members.append("   :ignore-module-all:")
            lines += [f"``{name}``", "-" * (len(name) + 4), "", f".. automodule:: {name}", *members, ""]
        container = nodes.section()
        nested_parse_with_titles(self.state, StringList(lines, source="vtx-api"), container)
        return list(container.children)
