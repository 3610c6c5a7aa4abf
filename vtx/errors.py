"""Errors for misuse and bad input.

Architectural outcomes (VMfail, VM-entry failure, exceptions raised to the guest) are values in
:mod:`vtx.outcomes`, never Python exceptions. A :class:`VtxError` always names what was wrong,
the offending value and the rule it breaks, so that the CLI can print it and exit with status 2.
"""

from __future__ import annotations


class VtxError(Exception):
    """Base class: bad input or misuse of the library.

    ``where`` names the thing at fault (a field, key, file location), ``value`` the offending
    value (already formatted) and ``rule`` the rule it breaks.
    """

    def __init__(self, where: str, value: object, rule: str) -> None:
        self.where = where
        self.value = value
        self.rule = rule
        super().__init__(f"{_cut(where, MAX_WHERE)}: {_cut(str(value), MAX_VALUE)}: {_cut(rule, MAX_RULE)}")


MAX_WHERE, MAX_VALUE, MAX_RULE = 120, 80, 360
"""How much of each part a message shows, so that it stays one readable line whatever the input
held (a value or a library's message can be arbitrarily long, or hold line breaks)."""


def _cut(text: str, most: int) -> str:
    """``text`` on one line (control and line-separator characters escaped), at most ``most`` long."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= most else text[:most - 3] + "..."


class SpecError(VtxError):
    """A table in ``spec/`` is malformed or contradicts itself or another table."""


class InputError(VtxError):
    """User input (a name, value, file or option) is malformed or out of range."""


class NotEvaluable(VtxError):  # noqa: N818 - names an outcome, not a failure of vtx
    """The capability profile lacks an MSR or fact that a rule needs.

    Such a rule is neither satisfied nor violated: vtx says so instead of guessing.
    """
