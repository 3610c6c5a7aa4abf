"""Hypothesis strategies for the fuzz tests: JSON values, mutations of valid documents, raw bytes.

Sizes are bounded (lists, nesting, text) so that every example stays small and fast; the
"huge" cases are huge numbers and long runs, not huge files.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
MAX_LIST = 40
"""The longest list a strategy builds (the "huge list", bounded)."""

odd_ints = st.one_of(
    st.integers(-2**70, 2**70), st.sampled_from([0, 1, -1, 2**32, 2**64 - 1, 2**64, 2**63, -2**63, 10**30]),
)
odd_strings = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", "0x", "0x-1", "0xffffffffffffffffff", "-0x1", "1e9", "0b101", "h", "0xG", " 0x10 ", "1_0",
                     "nan", "inf", "\x00", "\ud7ff", "GUEST_CR0", "0x6800", "max", "../../etc/passwd"]),
    odd_ints.map(hex),
)
scalars = st.one_of(st.none(), st.booleans(), odd_ints, st.floats(allow_nan=True), odd_strings)
json_values: st.SearchStrategy[Any] = st.recursive(
    scalars, lambda inner: st.one_of(st.lists(inner, max_size=6), st.dictionaries(odd_strings, inner, max_size=6)),
    max_leaves=20)


def deep(depth: int, leaf: Any = 0) -> Any:
    """A value nested ``depth`` lists deep."""
    v = leaf
    for _ in range(depth):
        v = [v]
    return v


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        doc = doc[p]
    return doc


Mutation = Callable[[Any, tuple[Any, ...]], Any]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[Any], max_mutations: int = 4) -> Any:
    """A valid document from ``seeds`` with a few mutations: a key dropped, renamed or added, a value
    retyped, out of range, huge, negative, deeply nested, or a list made long."""
    doc = copy.deepcopy(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, max_mutations))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        if not path:
            continue
        parent, key = _get(doc, path[:-1]), path[-1]
        op = draw(st.sampled_from(["drop", "rename", "retype", "number", "deep", "long", "add", "bits"]))
        value = parent[key]
        if op == "drop":
            del parent[key]
        elif op == "rename" and isinstance(parent, dict):
            parent[draw(odd_strings)] = parent.pop(key)
        elif op == "retype":
            parent[key] = draw(json_values)
        elif op == "number":
            n = draw(odd_ints)
            parent[key] = draw(st.sampled_from([n, hex(n) if n >= 0 else str(n), str(n)]))
        elif op == "deep":
            parent[key] = deep(draw(st.integers(10, 200)), value)
        elif op == "long":
            parent[key] = [value] * draw(st.integers(2, MAX_LIST))
        elif op == "add" and isinstance(value, dict):
            value[draw(odd_strings)] = draw(json_values)
        elif op == "bits" and isinstance(value, int | str):
            try:
                n = int(str(value), 0)
            except ValueError:
                continue
            parent[key] = hex(n ^ (1 << draw(st.integers(0, 66))))
    return doc


@st.composite
def byte_mutations(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A valid file with bit flips, a truncation, or a byte run inserted or deleted."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(max_size=16))
        else:
            del data[i:i + draw(st.integers(1, 64))]
    return bytes(data)


raw_inputs = st.one_of(st.binary(max_size=300), st.text(max_size=300).map(lambda s: s.encode("utf-8", "replace")))
"""Raw bytes and random text for a file input."""


def dumps(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def toml_value(v: Any) -> str:
    """``v`` as a TOML value (inline tables and arrays); TOML has no null, so ``None`` is a
    string the parser must refuse by type."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(x)}" for k, x in v.items()) + "}"
    return json.dumps(str(v))


def toml_document(doc: Any) -> str:
    if not isinstance(doc, dict):
        return f"value = {toml_value(doc)}\n"
    return "".join(f"{json.dumps(str(k))} = {toml_value(v)}\n" for k, v in doc.items())
