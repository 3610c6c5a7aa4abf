"""The fast paths of the VM-entry checks and the VMX transitions equal the readable ones: the keyed
incremental evaluation VMLAUNCH / VMRESUME use (through changes of fields, memory and processor state),
the precomputed bit-field reader and canonical test, LogicalProcessor.replace against attrs.evolve, and
the name look-up of Vmcs.with_fields / __getitem__."""

from __future__ import annotations

import contextlib

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtx.bits import BitRange, is_canonical, mask
from vtx.errors import NotEvaluable
from vtx.paging.memory import HostPhysAddr, PhysicalMemory
from vtx.spec import VMCS_FIELDS, VmcsField
from vtx.vmx.capabilities import Capabilities, load_preset
from vtx.vmx.entry import (
    REGISTRY,
    EntryContext,
    _recent,
    evaluate_every_check,
    evaluate_vm_entry,
    evaluate_vm_entry_after,
)
from vtx.vmx.entry.common import bit_field_reader, is_canonical_for
from vtx.vmx.entry.guest_segments import _code_data_to_check
from vtx.vmx.operation import LogicalProcessor, Segment, VmxMode
from vtx.vmx.templates import TEMPLATES, build_template
from vtx.vmx.vmcs import Vmcs

PRESETS = ["skylake_client", "max", "penryn_server"]
WRITABLE = [f for f in VMCS_FIELDS if not f.is_read_only]


def _template(caps: Capabilities, name: str) -> Vmcs:
    try:
        return build_template(name, caps)
    except Exception:  # a template the preset cannot run (real-mode without EPT): the long-mode one
        return build_template("long-mode", caps)


# ----------------------------------------------------------------------------- keyed incremental evaluation

MEMORIES = [PhysicalMemory(), PhysicalMemory().write_int(HostPhysAddr(0x5000), 8, 0x1234_5678),
            PhysicalMemory().write_int(HostPhysAddr(0x3000), 4, 0xFFFF_FFFF)]


@st.composite
def contexts(draw: st.DrawFn) -> EntryContext:
    """A context: the processor state and the memory (either of which may change between entries)."""
    return EntryContext(instruction=draw(st.sampled_from(["vmlaunch", "vmresume"])),
                        vmm_ia32e_mode=draw(st.booleans()), in_smm=draw(st.booleans()),
                        vmxon_pointer=draw(st.sampled_from([None, 0x3000])),
                        current_vmcs=draw(st.sampled_from([None, 0x5000])),
                        memory=draw(st.sampled_from(MEMORIES)))


@st.composite
def entries(draw: st.DrawFn) -> tuple[Capabilities, list[tuple[Vmcs, EntryContext]]]:
    """A sequence of VM entries of one VMCS: between them fields are written (control bits flipped
    often, and the fields that memory-reading rules read), and the context may change."""
    caps = load_preset(draw(st.sampled_from(PRESETS)))
    vmcs = _template(caps, draw(st.sampled_from(TEMPLATES)))
    ctx = draw(contexts())
    out = [(vmcs, ctx)]
    for _ in range(draw(st.integers(1, 6))):
        for _ in range(draw(st.integers(0, 3))):
            field = draw(st.sampled_from(WRITABLE))
            current = vmcs.get(field)
            value = draw(st.integers(0, field.bits - 1).map(lambda b, c=current: c ^ 1 << b)
                         | st.integers(0, mask(field.bits)))
            vmcs = vmcs.set(field, value)
        if draw(st.booleans()):
            ctx = attrs.evolve(ctx, memory=draw(st.sampled_from(MEMORIES)))
        if draw(st.integers(0, 4)) == 0:
            ctx = draw(contexts())
        out.append((vmcs, ctx))
    return caps, out


@given(entries())
def test_keyed_incremental_evaluation_equals_full_evaluation(
        scenario: tuple[Capabilities, list[tuple[Vmcs, EntryContext]]]) -> None:
    caps, sequence = scenario
    key = ("test", id(sequence))
    try:
        for vmcs, ctx in sequence:
            assert evaluate_vm_entry_after(key, vmcs, caps, ctx) == evaluate_vm_entry(vmcs, caps, ctx)
    finally:
        _recent.pop(key, None)


def test_keyed_evaluation_reuses_the_last_one_only_when_it_may() -> None:
    caps = load_preset("skylake_client")
    vmcs = build_template("long-mode", caps)
    key = ("test", "reuse")
    ctx = EntryContext()
    first = evaluate_vm_entry_after(key, vmcs, caps, ctx)
    assert evaluate_vm_entry_after(key, vmcs, caps, ctx) is first  # nothing changed: nothing ran
    other = load_preset("max")
    assert evaluate_vm_entry_after(key, vmcs, other, ctx) == evaluate_vm_entry(vmcs, other, ctx)
    smm = attrs.evolve(ctx, in_smm=True)
    assert evaluate_vm_entry_after(key, vmcs, other, smm) == evaluate_vm_entry(vmcs, other, smm)
    _recent.pop(key, None)


class _NoMemory:
    """Memory and regions that fail the test when read."""

    def read_int(self, address: HostPhysAddr, size: int) -> int:
        raise AssertionError(f"memory read at {address:#x}")

    def get(self, address: int, default: object = None) -> object:
        raise AssertionError(f"region look-up at {address:#x}")


@pytest.mark.parametrize("preset", ["skylake_client", "max"])
def test_checks_without_memory_terms_read_no_memory(preset: str) -> None:
    """The premise of re-running only the memory readers when memory changes: a check whose row lists no
    ``memory`` term reads neither the memory nor the regions of its context."""
    caps = load_preset(preset)
    trap = _NoMemory()
    for template in TEMPLATES:
        base = _template(caps, template)
        for field in (None, *WRITABLE[::7]):
            vmcs = base if field is None else base.set(field, mask(field.bits))
            for ctx in (EntryContext(regions=trap, memory=trap),  # type: ignore[arg-type]
                        EntryContext(regions=trap, memory=trap, in_smm=True)):  # type: ignore[arg-type]
                for check in REGISTRY.values():
                    if check.spec.memory:
                        continue
                    with contextlib.suppress(NotEvaluable):
                        list(check.fn(vmcs, caps, ctx))


# ----------------------------------------------------------------------------- precomputed helpers


@given(st.integers(0, 63).flatmap(lambda lo: st.tuples(st.just(lo), st.integers(lo, 63))), st.integers(0, mask(64)))
def test_bit_field_reader_equals_get(bits: tuple[int, int], value: int) -> None:
    bit_range = BitRange(*bits)
    assert bit_field_reader(bit_range)(value) == bit_range.get(value)


@given(st.integers(0, mask(64)) | st.sampled_from([mask(64) - mask(47), mask(47), 1 << 47, mask(64) - mask(56)]),
       st.integers(1, 64))
def test_canonical_lookup_equals_is_canonical(address: int, width: int) -> None:
    assert is_canonical_for(address, width) == is_canonical(address, width)


# ----------------------------------------------------------------------------- LogicalProcessor.replace

_ATTRIBUTE_VALUES = {
    "mode": st.sampled_from(list(VmxMode)), "cpl": st.integers(0, 3), "cr0": st.integers(0, mask(64)),
    "rflags": st.integers(0, mask(64)), "cs_l": st.booleans(), "in_smm": st.booleans(),
    "vmxon_pointer": st.none() | st.integers(0, mask(52)), "current_vmcs": st.integers(0, mask(64)),
    "regions": st.dictionaries(st.integers(0, 8).map(lambda n: n << 12), st.just(Vmcs()), max_size=3),
    "segments": st.dictionaries(st.sampled_from(["CS", "SS", "TR"]), st.builds(Segment, st.integers(0, 0xFFFF))),
    "msrs": st.dictionaries(st.integers(0, mask(32)), st.integers(0, mask(64)), max_size=3),
    "rip": st.integers(0, mask(64)), "shutdown": st.booleans(), "activity_state": st.integers(0, 3),
}


@given(st.dictionaries(st.sampled_from(sorted(_ATTRIBUTE_VALUES)), st.just(None)).flatmap(
    lambda keys: st.fixed_dictionaries({k: _ATTRIBUTE_VALUES[k] for k in keys})),
    st.sampled_from([LogicalProcessor(), LogicalProcessor(mode=VmxMode.ROOT, cpl=3, rip=0x1000)]))
def test_replace_equals_evolve(changes: dict[str, object], state: LogicalProcessor) -> None:
    assert state.replace(**changes) == attrs.evolve(state, **changes)


def test_replace_rejects_an_unknown_attribute() -> None:
    with pytest.raises(KeyError):
        LogicalProcessor().replace(no_such_register=1)


# ----------------------------------------------------------------------------- field names


@given(st.sampled_from(list(VMCS_FIELDS)), st.integers(0, mask(64)),
       st.sampled_from(["name", "lower", "encoding", "hex"]))
def test_with_fields_and_getitem_resolve_every_reference_alike(field: VmcsField, value: int, form: str) -> None:
    value &= mask(field.bits)
    ref: str | int = {"name": field.name, "lower": field.name.lower(), "encoding": field.encoding,
                      "hex": hex(field.encoding)}[form]
    vmcs = Vmcs().with_fields({ref: value})
    assert vmcs == Vmcs().set(field, value)
    assert vmcs[ref] == value


@pytest.mark.parametrize("template", TEMPLATES)
def test_gating_changes_no_verdict_when_the_profile_says_nothing(template: str) -> None:
    """With a profile that gives nothing, almost every check is not evaluable: a skipped check (gate
    closed or condition false) must not have been one of them."""
    bare = Capabilities.from_msrs({}, name="bare")
    vmcs = _template(load_preset("skylake_client"), template)
    for ctx in (EntryContext(), EntryContext(in_smm=True), EntryContext(vmm_ia32e_mode=False)):
        assert evaluate_vm_entry(vmcs, bare, ctx) == evaluate_every_check(vmcs, bare, ctx)


@given(st.lists(st.tuples(st.sampled_from(TEMPLATES), st.sampled_from(WRITABLE), st.integers(0, mask(64))),
                min_size=1, max_size=6), st.data())
def test_remembered_derivation_equals_computing_it(writes: list[tuple[str, VmcsField, int]],
                                                   data: st.DataObject) -> None:
    """A derivation remembered for the last VMCS (of_last_vmcs) answers as computing it would, whichever
    VMCSes come in whatever order (the same one again, or another with other values)."""
    caps = load_preset("skylake_client")
    seen = [_template(caps, t).set(f, v & mask(f.bits)) for t, f, v in writes]
    for _ in range(8):
        vmcs = data.draw(st.sampled_from(seen))
        assert _code_data_to_check(vmcs) == _code_data_to_check.__wrapped__(vmcs)  # type: ignore[attr-defined]
