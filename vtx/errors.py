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
        super().__init__(f"{where}: {value!s}: {rule}")


class SpecError(VtxError):
    """A table in ``spec/`` is malformed or contradicts itself or another table."""


class InputError(VtxError):
    """User input (a name, value, file or option) is malformed or out of range."""


class NotEvaluable(VtxError):  # noqa: N818 - names an outcome, not a failure of vtx
    """The capability profile lacks an MSR or fact that a rule needs.

    Such a rule is neither satisfied nor violated: vtx says so instead of guessing.
    """
