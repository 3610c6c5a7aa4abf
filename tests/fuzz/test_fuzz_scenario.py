"""Fuzzing scenario files (``vtx run SCENARIO.toml``, the parser ``vtx verify`` also uses):
structure-aware mutations of valid scenarios written back as TOML, raw bytes, and byte mutations
of valid files. Every input runs to a report (exit 0 or 1) or is refused naming the file and key."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from fuzz_harness import check_file
from fuzz_strategies import ROOT, byte_mutations, mutated, raw_inputs, toml_document
from hypothesis import given

SCENARIO_FILES = sorted([ROOT / "spec" / "machine" / "default_scenario.toml", *(ROOT / "docs").rglob("*.toml")])
_SMALL = {"steps": 60, "logical_processors": 2, "tick": 0.1,
          "vm": [{"name": "a", "vcpus": 2, "workload": "mixed", "length": 6},
                 {"name": "b", "kind": "pv", "workload": "io", "length": 6},
                 {"name": "c", "program": [{"op": "cpuid"}, {"op": "out", "port": 0x80, "size": 2},
                                           {"op": "store", "gva": 0x300000, "value": 5},
                                           {"op": "rdmsr", "msr": 16}, {"op": "mmio_write", "offset": 8}]}]}


def _bounded(doc: dict[str, Any]) -> dict[str, Any]:
    """A seed file with its run shortened (the fuzzer explores the format, not long runs)."""
    return {**doc, "steps": min(doc.get("steps", 100), 100)}


SEEDS: list[Any] = [_SMALL, *(_bounded(tomllib.loads(p.read_text())) for p in SCENARIO_FILES)]


@given(mutated(SEEDS))
def test_mutated_scenarios(doc: Any) -> None:
    check_file(["run"], toml_document(doc), name="scenario.toml")


@given(raw_inputs)
def test_raw_bytes(data: bytes) -> None:
    check_file(["run"], data, name="scenario.toml")


@given(byte_mutations([toml_document(doc).encode() for doc in SEEDS]))
def test_byte_mutations_of_valid_files(data: bytes) -> None:
    check_file(["run", "--json"], data, name="scenario.toml")


def test_writer_round_trips_the_seeds() -> None:
    """The TOML the fuzzer writes decodes to the document it was made from (so mutations reach
    the parser as intended)."""
    for doc in SEEDS:
        assert tomllib.loads(toml_document(doc)) == doc


def test_seed_files_exist() -> None:
    assert all(isinstance(p, Path) and p.exists() for p in SCENARIO_FILES)
    assert len(SEEDS) >= 2
