"""Minimal failing examples of the VM-entry checks, derived at build time.

For each catalogued check, search for a one-field mutation of a VMCS template (under the
``max`` preset, which allows every feature) that makes :func:`vtx.vmx.entry.evaluate_vm_entry`
report that check. The fields tried are those the catalogue row says the check reads; the
values tried are 0, all-ones of the field's width, each single bit, and the template's value
with each single bit flipped. A mutation whose only violation is the check wins over one that
also violates others. Nothing here is hand-written per check: a check with no such mutation is
reported as having no single-field example.
"""

from __future__ import annotations

from collections.abc import Iterator

import attrs

from vtx import spec
from vtx.bits import mask
from vtx.spec import VmcsField
from vtx.vmx.capabilities import Capabilities, load_preset
from vtx.vmx.entry import EntryOutcome, EntryVerdict, evaluate_vm_entry
from vtx.vmx.entry.catalogue import ENTRY_CHECKS, EntryCheckSpec
from vtx.vmx.templates import FEATURE_FIELDS, TEMPLATES, build_template
from vtx.vmx.vmcs import Vmcs

PRESET = "max"


@attrs.frozen
class Base:
    """A starting VMCS: a template and the secondary features turned on in it."""

    template: str
    features: tuple[str, ...]
    vmcs: Vmcs

    @property
    def label(self) -> str:
        return self.template + (" with every secondary feature" if self.features else "")


@attrs.frozen
class Example:
    """Setting ``field`` of ``base`` from ``before`` to ``value`` makes the check fail."""

    check_id: str
    base: Base
    field: VmcsField
    before: int
    value: int
    message: str
    outcome: EntryOutcome | None
    others: tuple[str, ...]


def candidates(before: int, bits: int) -> Iterator[int]:
    """The values tried for a field of ``bits`` bits holding ``before``, simplest first."""
    seen = {before}
    values = [0, mask(bits), *(1 << i for i in range(bits)), *(before ^ 1 << i for i in range(bits))]
    for v in values:
        if v not in seen:
            seen.add(v)
            yield v


def bases(caps: Capabilities) -> tuple[Base, ...]:
    """Every template, then ``long-mode`` with every secondary feature ``caps`` allows (for the
    checks that apply only when a feature is on)."""
    plain = [Base(t, (), build_template(t, caps)) for t in TEMPLATES]
    features = tuple(f for f in FEATURE_FIELDS if caps.allows("proc2", f))
    return (*plain, Base("long-mode", features, build_template("long-mode", caps, features=features)))


class ExampleFinder:
    """Searches lazily and remembers every verdict, so one build evaluates each mutation once."""

    def __init__(self, preset: str = PRESET) -> None:
        self.caps = load_preset(preset)
        self.bases = bases(self.caps)
        self._verdicts: dict[tuple[int, str, int], EntryVerdict] = {}
        self._examples: dict[str, Example | None] = {}

    def _verdict(self, b: int, field: VmcsField, value: int) -> EntryVerdict:
        key = (b, field.name, value)
        if key not in self._verdicts:
            self._verdicts[key] = evaluate_vm_entry(self.bases[b].vmcs.set(field, value), self.caps)
        return self._verdicts[key]

    def _search(self, row: EntryCheckSpec) -> Example | None:
        fields = [spec.VMCS_FIELDS[name] for name in row.fields]
        fallback: Example | None = None
        for b, base in enumerate(self.bases):
            for field in fields:
                if field.is_read_only or not self.caps.field_exists(field):
                    continue
                before = base.vmcs.get(field)
                for value in candidates(before, field.bits):
                    verdict = self._verdict(b, field, value)
                    hits = [v for v in verdict.violations if v.check_id == row.id]
                    if not hits:
                        continue
                    others = tuple(dict.fromkeys(v.check_id for v in verdict.violations if v.check_id != row.id))
                    example = Example(row.id, base, field, before, value, hits[0].message, verdict.outcome, others)
                    if not others:
                        return example
                    fallback = fallback or example
        return fallback

    def example(self, check_id: str) -> Example | None:
        """The example for ``check_id``, or None when no one-field mutation makes it fail."""
        if check_id not in self._examples:
            self._examples[check_id] = self._search(ENTRY_CHECKS[check_id])
        return self._examples[check_id]
