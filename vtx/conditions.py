"""Existence conditions: when a VMCS field, control or capability MSR exists.

The SDM says, field by field, "This field exists only on processors that support the 1-setting
of the ... control". ``spec/`` writes such a condition as a short expression (grammar in
``spec/README.md``); this module parses it into terms. :class:`vtx.vmx.capabilities.Capabilities`
evaluates them against a processor.
"""

from __future__ import annotations

import re

import attrs

from vtx.errors import SpecError
from vtx.typecheck import checked


@attrs.frozen
class Always:
    """The thing exists on every VMX processor."""

    def __str__(self) -> str:
        return "always"


@attrs.frozen
class ControlAllowed:
    """The processor allows the 1-setting of control ``control`` of control field ``field``."""

    field: str
    control: str

    def __str__(self) -> str:
        return f"ctl:{self.field}.{self.control}"


@attrs.frozen
class VmFunctionAllowed:
    """IA32_VMX_VMFUNC allows VM function ``name``."""

    name: str

    def __str__(self) -> str:
        return f"vmfunc:{self.name}"


@attrs.frozen
class ProcessorFact:
    """The named processor fact (``spec/cpuid.toml``, e.g. ``CPUID_FRED``) is true."""

    fact: str

    def __str__(self) -> str:
        return f"cpuid:{self.fact}"


@attrs.frozen
class MsrBitfield:
    """The named bit field of a capability MSR is non-zero (``msr:IA32_VMX_BASIC.true_controls``)."""

    msr: str
    bitfield: str

    def __str__(self) -> str:
        return f"msr:{self.msr}.{self.bitfield}"


@attrs.frozen
class Cr3TargetSupported:
    """IA32_VMX_MISC reports more than ``n`` CR3-target values."""

    n: int

    def __str__(self) -> str:
        return f"cr3_target:{self.n}"


@attrs.frozen
class InSeam:
    """The logical processor runs the SEAM module (Intel TDX); vtx models no SEAM operation."""

    def __str__(self) -> str:
        return "seam"


Term = Always | ControlAllowed | VmFunctionAllowed | ProcessorFact | MsrBitfield | Cr3TargetSupported | InSeam


@attrs.frozen
class Condition:
    """A disjunction of terms: the thing exists if any term holds."""

    terms: tuple[Term, ...]

    def __str__(self) -> str:
        return " | ".join(str(t) for t in self.terms)

    @property
    def is_always(self) -> bool:
        return any(isinstance(t, Always) for t in self.terms)


_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_PATTERNS: tuple[tuple[re.Pattern[str], type], ...] = (
    (re.compile(rf"ctl:({_IDENT})\.({_IDENT})"), ControlAllowed),
    (re.compile(rf"vmfunc:({_IDENT})"), VmFunctionAllowed),
    (re.compile(rf"cpuid:({_IDENT})"), ProcessorFact),
    (re.compile(rf"msr:({_IDENT})\.({_IDENT})"), MsrBitfield),
)


def _parse_term(text: str, where: str) -> Term:
    if text == "always":
        return Always()
    if text == "seam":
        return InSeam()
    m = re.fullmatch(r"cr3_target:(\d+)", text)
    if m:
        return Cr3TargetSupported(int(m.group(1)))
    for pattern, cls in _PATTERNS:
        m = pattern.fullmatch(text)
        if m:
            term: Term = cls(*m.groups())
            return term
    raise SpecError(where, repr(text), "not a condition term (see spec/README.md)")


@checked
def parse_condition(text: str, where: str) -> Condition:
    """Parse ``"a | b"``; ``where`` names the row for error messages."""
    parts = [p.strip() for p in text.split("|")]
    if not all(parts):
        raise SpecError(where, repr(text), "empty term in condition")
    return Condition(tuple(_parse_term(p, where) for p in parts))
