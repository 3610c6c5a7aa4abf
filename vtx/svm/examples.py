"""Minimal failing examples of the VMRUN checks, searched from the catalogue.

For a row of ``spec/svm/vmrun_checks.toml``, :class:`SvmExampleFinder` looks for a change of one
field of a VMCB template (:mod:`vtx.svm.templates`), or of one register of the executing processor
(:class:`~vtx.svm.checks.SvmState`) for the instruction checks, after which
:func:`vtx.svm.vmrun.vmrun` reports that check and no other; failing that, a first change of a field
the row reads that keeps VMRUN successful (turning nested paging on, say) followed by one such
change; and failing both, no change or one change under each other preset (a processor without
SVM, say). The VMCB fields tried are the row's ``fields``; the registers tried are those its
``processor`` terms name (:data:`STATE_REGISTERS`). The values tried are those of
:func:`vtx.vmx.entry.examples.nearest`, fewest changed bits first. A row without an example gets a :class:`SvmNoExample`
with the reason.
"""

from __future__ import annotations

from collections.abc import Iterator

import attrs

from vtx.svm.checks import SvmState
from vtx.svm.spec import VMCB_FIELDS, VMRUN_CHECKS, VmrunCheckSpec
from vtx.svm.templates import SVM_TEMPLATES, build_svm_template
from vtx.svm.vmcb import Vmcb
from vtx.svm.vmrun import SvmOutcome, SvmResult, vmrun
from vtx.typecheck import checked
from vtx.vmx.capabilities import Capabilities, load_preset, preset_names
from vtx.vmx.entry.examples import nearest

PRESET = "amd_genoa_server"
"""The capability preset of the search (a Zen 4 server: SVM with nested paging and vNMI)."""
STATE_REGISTERS: dict[str, tuple[str, ...]] = {
    "host_efer": ("efer",), "mode": ("cr0", "rflags"), "cpl": ("cpl",), "rax": ("rax",),
}
"""The registers of the executing processor (state-save member names) each ``processor`` term of the
catalogue stands for; ``guest_mode`` is not a register (the search runs VMRUN in the host)."""


@attrs.frozen
class SvmChange:
    """``name`` (a VMCB field, or ``host <register>``) set from ``before`` to ``after``."""

    name: str
    before: int
    after: int


@attrs.frozen
class SvmExample:
    """Under the ``preset`` capabilities, applying ``changes`` to the ``template`` VMCB (or to the host
    registers) makes ``check_id`` fail; no change at all, for a check of the processor's capabilities."""

    check_id: str
    template: str
    preset: str
    changes: tuple[SvmChange, ...]
    message: str
    outcome: SvmOutcome


@attrs.frozen
class SvmNoExample:
    check_id: str
    reason: str


SvmFound = SvmExample | SvmNoExample


@attrs.frozen
class _Point:
    """A VMCB and processor state, with the changes that led to them."""

    vmcb: Vmcb
    state: SvmState
    changes: tuple[SvmChange, ...]


class SvmExampleFinder:
    """Searches lazily and remembers every answer."""

    def __init__(self, preset: str = PRESET) -> None:
        self.preset = preset
        self.caps: Capabilities = load_preset(preset)
        self.templates = {name: build_svm_template(name, self.caps) for name in SVM_TEMPLATES}
        self._answers: dict[str, SvmFound] = {}

    @checked
    def run(self, point: _Point, caps: Capabilities | None = None) -> SvmResult:
        return vmrun(point.state, caps or self.caps, point.vmcb)

    @checked
    def example(self, check_id: str) -> SvmFound:
        """The example for ``check_id``, or why there is none."""
        if check_id not in self._answers:
            self._answers[check_id] = self._find(VMRUN_CHECKS[check_id])
        return self._answers[check_id]

    def _moves(self, row: VmrunCheckSpec, point: _Point) -> Iterator[_Point]:
        for field in (VMCB_FIELDS[name] for name in row.fields):
            before = point.vmcb.get(field)
            for value in nearest(before, field.bits):
                yield _Point(point.vmcb.with_fields({field.name: value}), point.state,
                             (*point.changes, SvmChange(field.name, before, value)))
        for register in (r for term in row.processor for r in STATE_REGISTERS.get(term, ())):
            bits = VMCB_FIELDS[f"save.{register}"].bits
            before = point.state.register(register)
            for value in nearest(before, bits):
                yield _Point(point.vmcb, point.state.with_registers(**{register: value}),
                             (*point.changes, SvmChange(f"host {register}", before, value)))

    def _only(self, row: VmrunCheckSpec, result: SvmResult) -> bool:
        return {v.check_id for v in result.violations} == {row.id} and not result.not_evaluable

    def _find(self, row: VmrunCheckSpec) -> SvmFound:
        starts = {name: _Point(vmcb, SvmState(), ()) for name, vmcb in self.templates.items()}
        for depth in (1, 2):
            for name, start in starts.items():
                firsts = [start] if depth == 1 else [p for p in self._moves(row, start) if self.run(p).succeeds]
                for first in firsts:
                    for point in self._moves(row, first):
                        result = self.run(point)
                        if self._only(row, result):
                            return SvmExample(row.id, name, self.preset, point.changes,
                                              result.violations[0].message, result.outcome)
        for preset in (p for p in preset_names() if p != self.preset):
            caps = load_preset(preset)
            for name, start in starts.items():
                for point in (start, *self._moves(row, start)):
                    result = self.run(point, caps)
                    if self._only(row, result):
                        return SvmExample(row.id, name, preset, point.changes, result.violations[0].message,
                                          result.outcome)
        if "guest_mode" in row.processor:
            return SvmNoExample(row.id, "it fails only for VMRUN executed inside a guest (nested virtualization), "
                                        "which the search does not set up")
        reads = f" (it also reads {', '.join(row.capabilities)})" if row.capabilities else ""
        return SvmNoExample(row.id, f"no change of one or two of {', '.join(row.fields + row.processor)} makes only "
                                    f"this check fail under the {self.preset} preset, nor one under another "
                                    f"preset{reads}")
