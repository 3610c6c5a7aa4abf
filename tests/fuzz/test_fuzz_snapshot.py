"""Fuzzing snapshot files (``vtx snapshot show`` / ``check``): bit flips and truncations of a
valid file (caught by the header and checksum), and structure-aware mutations of the JSON payload
re-sealed with a correct checksum, so that they reach the decoder of every key."""

from __future__ import annotations

import json
from typing import Any

from fuzz_harness import check_file
from fuzz_strategies import byte_mutations, mutated, raw_inputs
from hypothesis import given
from hypothesis import strategies as st

from vtx.fileio import sha256 as digest
from vtx.machine.executor import run
from vtx.machine.scenario import build_machine, parse_scenario
from vtx.machine.snapshot import MAGIC, encode_snapshot, pause_vm, save_vm

_SCENARIO = {"seed": 3, "tick": 0.0, "vm": [{"name": "a", "workload": "mixed", "length": 8},
                                             {"name": "b", "kind": "pv", "workload": "io", "length": 6}]}


def _images() -> list[bytes]:
    machine, _ = run(build_machine(parse_scenario(_SCENARIO), "hybrid"), 40)
    images = []
    for vm in range(len(machine.vms)):
        machine, _ = pause_vm(machine, vm)
        images.append(encode_snapshot(save_vm(machine, vm)))
    return images


FILES = _images()
PAYLOADS = [json.loads(f[f.index(b"\n", len(MAGIC)) + 1:]) for f in FILES]
VERBS = st.sampled_from([["snapshot", "show"], ["snapshot", "show", "--json"],
                         ["snapshot", "check", "--profile", "max"],
                         ["snapshot", "check", "--profile", "penryn_server"]])


def seal(payload: Any, version: int = 1) -> bytes:
    """A snapshot file around ``payload`` with a header whose checksum and length are right."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    return MAGIC + f"version={version} sha256={digest(body)} bytes={len(body)}\n".encode() + body


@given(VERBS, byte_mutations(FILES))
def test_byte_mutations_of_valid_snapshots(verb: list[str], data: bytes) -> None:
    check_file(verb, data, name="vm.vtxsnap")


@given(VERBS, mutated(PAYLOADS))
def test_resealed_payload_mutations(verb: list[str], payload: Any) -> None:
    check_file(verb, seal(payload), name="vm.vtxsnap")


@given(VERBS, st.one_of(raw_inputs, raw_inputs.map(lambda b: MAGIC + b)))
def test_raw_bytes(verb: list[str], data: bytes) -> None:
    check_file(verb, data, name="vm.vtxsnap")


def test_the_seeds_are_valid_and_the_sealer_is_faithful() -> None:
    for f, payload in zip(FILES, PAYLOADS, strict=True):
        sealed = seal(payload)
        assert json.loads(sealed[sealed.index(b"\n", len(MAGIC)) + 1:]) == payload
        assert check_file(["snapshot", "show"], f, name="vm.vtxsnap").code == 0
