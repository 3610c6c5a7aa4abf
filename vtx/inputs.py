"""Parsing of the public JSON input formats shared by the CLI verbs, and reading input files.

Every error names the key (``memory[2].value``), the offending value (cut short) and the rule, as
an :class:`~vtx.errors.InputError` (exit status 2 on the command line); :func:`in_file` puts the
file's name in front. Files are bounded (:data:`MAX_INPUT_BYTES`). The inventory of every input
is ``docs/inputs.rst``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from vtx.bits import mask, parse_int
from vtx.errors import InputError
from vtx.typecheck import checked

MAX_INPUT_BYTES = 16 << 20
"""The largest input file vtx reads (16 MiB): a bound on time and memory, far above any real input."""


MAX_SHOWN = 60
"""The longest rendering of an offending value an error message shows (longer ones are cut)."""


def shown(value: object) -> str:
    """``repr(value)``, cut to :data:`MAX_SHOWN` characters so a message stays one readable line."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 3] + "..."


def key_path(parent: str, key: object) -> str:
    """``parent.key``, with a key that is not a plain name quoted (``fields.'a b'``, ``input.''``)."""
    name = key if isinstance(key, str) and key.replace("_", "a").replace("-", "a").isalnum() else repr(key)
    return f"{parent}.{name}" if parent else str(name)


@contextlib.contextmanager
def in_file(path: Path, *others: Path | None) -> Iterator[None]:
    """Name ``path`` in every :class:`InputError` raised inside (``FILE: fields.GUEST_CR0: ...``),
    except those that already name it or one of the ``others`` (a ``--msrs`` file)."""
    try:
        yield
    except InputError as e:
        if e.where.startswith(tuple(str(p) for p in (path, *others) if p is not None)):
            raise
        raise InputError(f"{path}: {e.where}", e.value, e.rule) from e


@checked
def read_text(path: Path, *, errors: str = "strict") -> str:
    """The UTF-8 text of an input file; InputError naming the file when it is unreadable or too large."""
    try:
        size = path.stat().st_size
        if size > MAX_INPUT_BYTES:
            raise InputError(str(path), f"{size} bytes", f"larger than the {MAX_INPUT_BYTES} bytes vtx reads")
        return path.read_text(encoding="utf-8", errors=errors)
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(str(path), "unreadable", str(e)) from e


@checked
def parse_json(text: str, source: str) -> Any:
    """The JSON value of ``text``; InputError naming ``source``, line and column on failure."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{source}:{e.lineno}:{e.colno}", "invalid JSON", e.msg) from e
    except RecursionError as e:
        raise InputError(source, "invalid JSON", "arrays and objects are nested too deeply to read") from e


@checked
def json_int(value: object, where: str, bits: int = 64) -> int:
    """An unsigned ``bits``-bit integer from an int or a hex string."""
    try:
        v = parse_int(value)
    except ValueError as e:
        raise InputError(where, shown(value), f"must be an integer or hex string ({e})") from e
    if not 0 <= v <= mask(bits):
        raise InputError(where, hex(v), f"must be an unsigned {bits}-bit value")
    return v


@checked
def json_bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise InputError(where, shown(value), "must be true or false")
    return value


@checked
def json_object(doc: Mapping[str, Any], key: str, allowed: tuple[str, ...], *,
                required: bool = False) -> dict[str, Any]:
    """The object under ``key``, whose keys must all be in ``allowed``."""
    if key not in doc:
        if required:
            raise InputError(key, "missing", "required key")
        return {}
    value = doc[key]
    if value is None:
        raise InputError(key, "null", "must be a JSON object (leave the key out for the default)")
    if not isinstance(value, dict):
        raise InputError(key, type(value).__name__, "must be a JSON object")
    for k in value:
        if k not in allowed:
            raise InputError(key_path(key, k), shown(value[k]), f"unknown key (expected one of {listed(allowed)})")
    return value


@checked
def check_keys(doc: object, allowed: tuple[str, ...], where: str = "input") -> Mapping[str, Any]:
    """``doc`` as an object whose keys are all in ``allowed``."""
    if not isinstance(doc, dict):
        raise InputError(where, type(doc).__name__, "must be a JSON object")
    for k in doc:
        if k not in allowed:
            raise InputError(key_path("" if where == "input" else where, k), shown(doc[k]),
                             f"unknown key (expected one of {listed(allowed)})")
    return doc


@checked
def listed(allowed: tuple[str, ...], most: int = 12) -> str:
    """The allowed keys, the first ``most`` of a long list and a count of the rest."""
    rest = len(allowed) - most
    return ", ".join(allowed[:most]) + (f" and {rest} more" if rest > 0 else "")
