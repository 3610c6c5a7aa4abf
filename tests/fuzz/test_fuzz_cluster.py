"""Fuzzing cluster scenario files (``vtx cluster SCENARIO.toml``): mutations of the built-in
scenarios written back as TOML, raw bytes, byte mutations. Runs are cluster-level with a short
z3 time limit, so each input stays quick; the oracle is the shared one (exit 0/1/2, the file and
key named, no traceback)."""

from __future__ import annotations

import tomllib
from typing import Any

from fuzz_harness import check_file
from fuzz_strategies import ROOT, byte_mutations, mutated, raw_inputs, toml_document
from hypothesis import given

VERB = ["cluster", "--no-executor", "--time-limit", "1"]


def _bounded(doc: dict[str, Any]) -> dict[str, Any]:
    """A built-in scenario cut to a few slots (the fuzzer explores the format, not long days)."""
    return {**doc, "slots": min(doc.get("slots", 4), 4)}


SEEDS: list[Any] = [_bounded(tomllib.loads(p.read_text()))
                    for p in sorted((ROOT / "spec" / "cluster").glob("*.toml")) if p.name != "power.toml"]


@given(mutated(SEEDS))
def test_mutated_cluster_scenarios(doc: Any) -> None:
    check_file(VERB, toml_document(doc), name="cluster.toml")


@given(raw_inputs)
def test_raw_bytes(data: bytes) -> None:
    check_file(VERB, data, name="cluster.toml")


@given(byte_mutations([toml_document(doc).encode() for doc in SEEDS]))
def test_byte_mutations_of_valid_files(data: bytes) -> None:
    check_file(VERB, data, name="cluster.toml")


def test_seeds_are_the_built_in_scenarios() -> None:
    assert len(SEEDS) >= 2
    for doc in SEEDS:
        assert tomllib.loads(toml_document(doc)) == doc
