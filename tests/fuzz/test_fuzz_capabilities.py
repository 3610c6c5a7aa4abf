"""Fuzzing the capability inputs: ``vtx capabilities --msrs FILE`` (the public capability format,
every shipped preset mutated), ``--profile NAME``, and ``vtx field REF``."""

from __future__ import annotations

import json
from typing import Any

from fuzz_harness import assert_clean, check_file, run_cli
from fuzz_strategies import ROOT, byte_mutations, dumps, json_values, mutated, odd_ints, odd_strings, raw_inputs
from hypothesis import given
from hypothesis import strategies as st

from vtx.spec import CAPABILITY_MSRS, CPUID_FACTS

PRESETS: list[Any] = [json.loads(p.read_text()) for p in sorted((ROOT / "spec" / "presets").glob("*.json"))]
SEED_BYTES = [dumps(p) for p in PRESETS]
KEYS = [m.name for m in CAPABILITY_MSRS] + list(CPUID_FACTS.keys()) + ["cpuid", "description", "name"]


@given(mutated(PRESETS))
def test_mutated_presets(doc: Any) -> None:
    check_file(["capabilities", "--json", "--msrs"], doc)


@given(st.dictionaries(st.sampled_from(KEYS), st.one_of(odd_ints, odd_strings, json_values), max_size=5))
def test_known_keys_with_any_values(doc: dict[str, Any]) -> None:
    check_file(["capabilities", "--msrs"], doc)


@given(st.dictionaries(st.one_of(odd_strings, st.sampled_from(["7", "0x7.0", "0xd.1", "0x80000008"])),
                       st.one_of(json_values, st.dictionaries(st.sampled_from(["eax", "ebx", "ecx", "edx"]),
                                                              st.one_of(odd_ints, odd_strings), max_size=4)),
                       max_size=4))
def test_cpuid_leaves(leaves: dict[str, Any]) -> None:
    check_file(["capabilities", "--msrs"], {"cpuid": leaves})


@given(raw_inputs)
def test_raw_bytes(data: bytes) -> None:
    check_file(["capabilities", "--msrs"], data)


@given(byte_mutations(SEED_BYTES))
def test_byte_mutations_of_presets(data: bytes) -> None:
    check_file(["capabilities", "--msrs"], data)


@given(st.one_of(odd_strings, st.sampled_from(["max", "../presets/max", "max.json", "MAX", " max"])))
def test_profile_names(name: str) -> None:
    assert_clean(run_cli(["capabilities", "--profile", name]))


@given(st.one_of(odd_strings, odd_ints.map(str), st.sampled_from(["GUEST_CR0_HIGH", "EPT_POINTER_HIGH", "0x6800",
                                                                 "0X2001", "0x2001", "guest_cr0"])))
def test_field_references(ref: str) -> None:
    assert_clean(run_cli(["field", ref, "--json"]))
