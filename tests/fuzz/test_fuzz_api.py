"""Fuzzing the Python entry points users call with their own values.

Each either returns a value or raises a :class:`~vtx.errors.VtxError` (naming the thing at fault);
any other exception is a bug. Odd values: huge, negative, wrong types, unknown names.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fuzz_harness import TIME_LIMIT_S
from fuzz_strategies import json_values, mutated, odd_ints, odd_strings
from hypothesis import given
from hypothesis import strategies as st

from vtx.errors import VtxError
from vtx.paging import guest
from vtx.paging.ept import ept_from_eptp, translate_gpa
from vtx.paging.guest import Access, AccessKind, PagingFeatures, PagingState
from vtx.paging.memory import HostPhysAddr, PhysicalMemory
from vtx.spec import VMCS_FIELDS
from vtx.vmx.capabilities import Capabilities, load_preset
from vtx.vmx.entry import EntryContext, evaluate_vm_entry
from vtx.vmx.templates import TEMPLATES, build_template
from vtx.vmx.vmcs import Vmcs

MAX = load_preset("max")
FEATURES = PagingFeatures.from_capabilities(MAX)
FIELD_NAMES = st.sampled_from([f.name for f in VMCS_FIELDS])


def returns_or_vtx_error(fn: Callable[[], Any]) -> Any:
    """``fn()``; a VtxError names where (non-empty) and the rule; nothing else may escape."""
    start = time.monotonic()
    try:
        result = fn()
    except VtxError as e:
        assert e.where and e.rule, e
        result = e
    assert time.monotonic() - start < TIME_LIMIT_S
    return result


@given(st.dictionaries(st.one_of(FIELD_NAMES, odd_strings, odd_ints), st.one_of(odd_ints, odd_strings, json_values),
                       max_size=6))
def test_vmcs_from_fields(fields: dict[Any, Any]) -> None:
    returns_or_vtx_error(lambda: Vmcs.from_fields(fields))


PRESET_DOCS = [load_preset(n).to_json() for n in ("max", "penryn_server", "skylake_client")]


@given(st.one_of(json_values, mutated(PRESET_DOCS)))
def test_capabilities_from_json(obj: Any) -> None:
    returns_or_vtx_error(lambda: Capabilities.from_json(obj))


@given(st.one_of(odd_strings, odd_ints, FIELD_NAMES.map(lambda n: n + "_HIGH"), FIELD_NAMES.map(str.lower)))
def test_field_resolve(ref: Any) -> None:
    returns_or_vtx_error(lambda: VMCS_FIELDS.resolve(ref))


@given(st.one_of(st.sampled_from(list(TEMPLATES)), odd_strings),
       st.lists(st.one_of(odd_strings, st.sampled_from(["enable_ept", "unrestricted_guest", "enable_vpid"])),
                max_size=3),
       st.sampled_from(["max", "penryn_server", "ivybridge_client", "amd_genoa_server"]))
def test_build_template(name: str, features: list[str], preset: str) -> None:
    returns_or_vtx_error(lambda: build_template(name, load_preset(preset), features=features))


contexts = st.builds(
    EntryContext, instruction=st.one_of(st.sampled_from(["vmlaunch", "vmresume"]), odd_strings),
    vmm_ia32e_mode=st.booleans(), in_smm=st.booleans(), in_smx=st.booleans(),
    vmxon_pointer=st.one_of(st.none(), odd_ints), current_vmcs=st.one_of(st.none(), odd_ints),
    memory=st.builds(PhysicalMemory.from_writes,
                     st.lists(st.tuples(st.integers(0, 2**40), st.binary(max_size=16)), max_size=4)))


@given(st.sampled_from(list(TEMPLATES)), st.dictionaries(FIELD_NAMES, st.integers(0, 2**64 - 1), max_size=4),
       contexts)
def test_evaluate_vm_entry_with_odd_contexts(name: str, changes: dict[str, int], ctx: EntryContext) -> None:
    def run() -> Any:
        vmcs = build_template(name, MAX).with_fields(changes)
        return evaluate_vm_entry(vmcs, MAX, ctx)

    returns_or_vtx_error(run)


registers = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0x80000011, 0x80000001, 0x11]))


states = st.builds(PagingState, cr0=registers, cr3=registers,
                   cr4=st.one_of(registers, st.sampled_from([0x20, 0x1020, 0x3020])),
                   efer=st.one_of(registers, st.sampled_from([0xD00, 0x500])))


@given(states, odd_ints, st.sampled_from(list(AccessKind)), st.integers(-3, 2**20), st.booleans())
def test_guest_translate_with_odd_addresses(state: PagingState, gla: int, kind: AccessKind, size: int,
                                            user: bool) -> None:
    returns_or_vtx_error(lambda: guest.translate(state, FEATURES, PhysicalMemory(), gla,
                                                 Access(kind, user=user, size=size)))


@given(st.one_of(odd_ints, st.sampled_from([0x1E, 0x101E, 0x5E])), odd_ints, st.sampled_from(list(AccessKind)))
def test_ept_with_odd_pointers_and_addresses(eptp: int, gpa: int, kind: AccessKind) -> None:
    memory = PhysicalMemory().write_int(HostPhysAddr(0x1000), 8, 0x1007)  # EPT PML4[0] -> itself
    returns_or_vtx_error(lambda: translate_gpa(ept_from_eptp(eptp, MAX), memory, gpa, kind))
