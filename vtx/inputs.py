"""Parsing of the public JSON input formats shared by the CLI verbs.

Every error names the key (``memory[2].value``), the offending value and the rule, as an
:class:`~vtx.errors.InputError` (exit status 2 on the command line).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vtx.bits import mask, parse_int
from vtx.errors import InputError


def json_int(value: object, where: str, bits: int = 64) -> int:
    """An unsigned ``bits``-bit integer from an int or a hex string."""
    try:
        v = parse_int(value)
    except ValueError as e:
        raise InputError(where, repr(value), f"must be an integer or hex string ({e})") from e
    if not 0 <= v <= mask(bits):
        raise InputError(where, hex(v), f"must be an unsigned {bits}-bit value")
    return v


def json_bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise InputError(where, repr(value), "must be true or false")
    return value


def json_object(doc: Mapping[str, Any], key: str, allowed: tuple[str, ...], *,
                required: bool = False) -> dict[str, Any]:
    """The object under ``key``, whose keys must all be in ``allowed``."""
    value = doc.get(key)
    if value is None:
        if required:
            raise InputError(key, "missing", "required key")
        return {}
    if not isinstance(value, dict):
        raise InputError(key, type(value).__name__, "must be a JSON object")
    for k in value:
        if k not in allowed:
            raise InputError(f"{key}.{k}", repr(value[k]), f"unknown key (expected one of {', '.join(allowed)})")
    return value


def check_keys(doc: object, allowed: tuple[str, ...], where: str = "input") -> Mapping[str, Any]:
    """``doc`` as an object whose keys are all in ``allowed``."""
    if not isinstance(doc, dict):
        raise InputError(where, type(doc).__name__, "must be a JSON object")
    for k in doc:
        if k not in allowed:
            raise InputError(k, repr(doc[k]), f"unknown key (expected one of {', '.join(allowed)})")
    return doc
