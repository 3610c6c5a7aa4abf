"""Find the VMCS dumps in a text and map each printed value to its VMCS field.

A file may hold several dumps, in any of the text formats of ``spec/dumps/vmcs_dump.toml`` (Linux
KVM from 4.19 on, Xen, QEMU's register dump) between other log lines, or be one ``vtx check``
JSON document (``docs/check.rst``). Log prefixes — printk levels, ``[ 12.345678]`` timestamps,
``dmesg -T`` dates, syslog dates with host name and ``kernel:``, ``kvm_intel:``, Xen's ``(XEN)`` —
are removed before a line is matched. A dump runs from its first line to the next dump or the end
of the text; lines of it that no format row describes are ignored. A value wider than its field is
bad input (:class:`~vtx.errors.InputError` naming the line).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import attrs

from vtx.bits import mask
from vtx.dumps import formats as fmt
from vtx.errors import InputError
from vtx.spec import VMCS_FIELDS
from vtx.typecheck import checked

JSON_FORMAT = "vtx-json"

_PREFIX = re.compile(r"""^(?:
    <\d+>                                              # printk level
  | \[[^\]]*\]                                         # [ 12.345678], [Tue Mar  5 10:00:00 2024], [T123]
  | \(XEN\)                                            # Xen console
  | [A-Z][a-z]{2}\s+\d{1,2}\s+\d\d:\d\d:\d\d\s+\S+\s+kernel:  # syslog: date, host name, kernel:
  | \d{4}-\d\d-\d\dT\S+\s+\S+\s+kernel:                # ISO 8601 syslog
  | kvm_intel: | kvm-intel: | kvm:                     # the module's pr_fmt
)\s*""", re.VERBOSE)
_XEN_TAG = "(XEN)"


@attrs.frozen
class Dump:
    """One dump: its format, where it starts, the fields it gives (and the line of each).

    ``document`` is the parsed ``vtx check`` document of a JSON dump (whose fields left out are 0,
    as ``vtx check`` reads them); ``reported`` the hardware error a user-space VMM printed.
    """

    format: str
    line: int
    fields: Mapping[str, int] = attrs.field(factory=dict)
    lines: Mapping[str, int] = attrs.field(factory=dict)
    reported: int | None = None
    document: Mapping[str, Any] | None = None


@attrs.frozen
class ReadResult:
    """The dumps that could be read, and ``(line, message)`` for each part that could not."""

    dumps: tuple[Dump, ...]
    problems: tuple[tuple[int, str], ...]


@checked
def strip_prefix(line: str) -> tuple[str, bool]:
    """The line without its log prefixes, and whether one of them was Xen's ``(XEN)``."""
    text, xen = line.strip(), False
    while m := _PREFIX.match(text):
        if not m.group(0):
            break
        xen = xen or m.group(0).startswith(_XEN_TAG)
        text = text[m.end():]
    return text.strip(), xen


class _Builder:
    def __init__(self, formats: frozenset[str], line: int) -> None:
        self.candidates = set(formats)
        self.line = line
        self.open_header = True
        self.section = "guest"
        self.fields: dict[str, int] = {}
        self.lines: dict[str, int] = {}
        self.reported: int | None = None

    def narrow(self, formats: frozenset[str]) -> None:
        if self.candidates & formats:
            self.candidates &= formats

    def take(self, groups: Mapping[str, str | None], convert: Mapping[str, str], where: str, lineno: int) -> None:
        for name, text in groups.items():
            if text is None:
                continue
            value = int(text, 16)
            if name == fmt.REPORTED:
                self.reported = value
                continue
            if name in convert:
                value = fmt.CONVERSIONS[convert[name]](value)
            field = VMCS_FIELDS[name]
            if value > mask(field.bits):
                raise InputError(where, f"{name} = {text}", f"wider than the {field.width.value}-bit field")
            if name not in self.fields:
                self.fields[name], self.lines[name] = value, lineno

    def dump(self) -> Dump:
        name = next(f for f in fmt.FORMATS if f in self.candidates)
        return Dump(name, self.line, dict(self.fields), dict(self.lines), self.reported)


def _read_json(text: str, source: str) -> ReadResult:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        return ReadResult((), ((e.lineno, f"not valid JSON: {e.msg}"),))
    except RecursionError:
        return ReadResult((), ((1, "not valid JSON: arrays and objects are nested too deeply to read"),))
    if not isinstance(doc, dict):
        return ReadResult((), ((1, "a vtx JSON dump is an object (docs/check.rst)"),))
    return ReadResult((Dump(JSON_FORMAT, 1, document=doc),), ())


@checked
def read_dumps(text: str, source: str = "input") -> ReadResult:
    """Every dump in ``text`` (``source`` names the file in error messages)."""
    if text.lstrip().startswith("{"):
        return _read_json(text, source)
    dumps: list[Dump] = []
    problems: list[tuple[int, str]] = []
    current: _Builder | None = None

    def finish() -> None:
        if current is None:
            return
        if current.fields:
            dumps.append(current.dump())
        else:
            name = "/".join(f for f in fmt.FORMATS if f in current.candidates)
            problems.append((current.line, f"a {name} dump starts here but none of its lines could be read"))

    first_text = 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        line, xen = strip_prefix(raw)
        if not line:
            continue
        first_text = first_text or lineno
        where = f"{source}:{lineno}"
        for marker in fmt.MARKERS:
            m = marker.regex.match(line)
            if m is None:
                continue
            joins = (current is not None and current.open_header and marker.kind == "start"
                     and bool(current.candidates & marker.formats))
            if not joins:
                finish()
                current = _Builder(marker.formats, lineno)
            assert current is not None
            current.narrow(marker.formats)
            current.open_header = marker.kind == "header"
            current.take(m.groupdict(), {}, where, lineno)
            break
        if current is None:
            continue
        if xen:
            current.narrow(frozenset({"xen"}))
        heading = next((s for s in fmt.SECTION_HEADINGS if s.formats & current.candidates and s.regex.match(line)),
                       None)
        if heading is not None:
            current.section = heading.name
            continue
        for row in fmt.LINES:
            if row.section != current.section or not row.formats & current.candidates:
                continue
            m = row.regex.match(line)
            if m is not None:
                current.narrow(row.formats)
                current.take(m.groupdict(), row.convert, where, lineno)
                break
    finish()
    if not dumps and not problems:
        problems.append((first_text or 1, "no VMCS dump found: expected a KVM or Xen dump ('*** Guest State ***'), "
                         "QEMU's register dump ('RAX=' / 'EAX=') or a vtx JSON document"))
    return ReadResult(tuple(dumps), tuple(problems))
