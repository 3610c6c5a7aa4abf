"""Fuzzing ``vtx explain``: KVM, Xen and QEMU text dumps mutated line by line and byte by byte,
raw bytes and text, and ``vtx check`` JSON documents given as dumps."""

from __future__ import annotations

import re
from typing import Any

from fuzz_harness import check_file, template_json
from fuzz_strategies import ROOT, byte_mutations, mutated, odd_ints, raw_inputs
from hypothesis import given
from hypothesis import strategies as st

DUMPS = [p.read_bytes() for p in sorted((ROOT / "tests" / "dumps" / "data").glob("*.log"))]
_HEX = re.compile(rb"(?:0x)?[0-9a-fA-F]{4,}")


@st.composite
def line_mutations(draw: st.DrawFn) -> bytes:
    """A real dump with lines dropped, repeated or swapped, and printed values replaced by odd ones
    (wider than their field, empty, negative)."""
    lines = draw(st.sampled_from(DUMPS)).splitlines()
    for _ in range(draw(st.integers(1, 6))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["drop", "repeat", "swap", "value", "cut"]))
        if op == "drop":
            del lines[i]
        elif op == "repeat":
            lines[i:i] = [lines[i]] * draw(st.integers(1, 30))
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "value":
            n = draw(odd_ints)
            new = draw(st.sampled_from([f"{n:x}" if n >= 0 else str(n), "", "0x", "f" * 40]))
            lines[i] = _HEX.sub(new.encode(), lines[i], count=draw(st.integers(0, 3)))
        else:
            lines[i] = lines[i][:draw(st.integers(0, len(lines[i])))]
    return b"\n".join(lines)


@given(line_mutations())
def test_line_mutations_of_real_dumps(data: bytes) -> None:
    check_file(["explain", "--json"], data, "dump.log")


@given(byte_mutations(DUMPS))
def test_byte_mutations_of_real_dumps(data: bytes) -> None:
    check_file(["explain"], data, "dump.log")


@given(raw_inputs)
def test_raw_bytes(data: bytes) -> None:
    check_file(["explain"], data, "dump.log")


JSON_SEEDS: list[Any] = [template_json("long-mode"), template_json("pae")]


@given(mutated(JSON_SEEDS))
def test_mutated_json_dumps(doc: Any) -> None:
    check_file(["explain"], doc)
