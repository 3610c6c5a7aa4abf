"""``vtx explain FILE [--profile NAME | --msrs FILE] [--json]``: name the VM-entry rules a dump breaks.

Reads every dump in FILE (:mod:`vtx.dumps.reader`) and, per dump, prints the failing checks with
their field values, citation and a suggested fix, then how many passed and how many could not be
evaluated (and which fields would decide them). Exit status: 1 when a dump fails a check, 0 when
at least one dump was read and none fails, 2 when no dump could be read (the message names the
line of the first problem).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

from vtx import spec
from vtx.dumps.explain import Explanation, explain_dump
from vtx.dumps.reader import read_dumps
from vtx.errors import InputError
from vtx.inputs import in_file, read_text
from vtx.typecheck import checked
from vtx.vmx.capabilities import load_preset

_BASIC = spec.EXIT_REASON_FORMAT["basic_exit_reason"].bits
_FAILED = spec.EXIT_REASON_FORMAT["failed_vmentry"].bits
_WIDTH = 110


def _hex(value: int | None) -> str | None:
    return None if value is None else f"{value:#x}"


@checked
def to_json(explanations: list[Explanation]) -> dict[str, Any]:
    """The ``--json`` document: per dump its format, line, failing and not-evaluable checks, counts."""
    return {"dumps": [{
        "format": e.dump.format, "line": e.dump.line, "profile": e.profile,
        "violations": [{"id": r.id, "status": r.status, "citation": r.citation,
                        "fields": {k: _hex(v) for k, v in r.fields.items()}, "message": r.message,
                        **({"fix": r.fix} if r.fix else {})} for r in e.results],
        "failed": len(e.failures), "passed": e.passed, "not_evaluable": len(e.not_evaluable)}
        for e in explanations]}


def _exit_reason(value: int) -> str:
    reason = spec.EXIT_REASONS.get(_BASIC.get(value))
    title = reason.title if reason else "unknown basic exit reason"
    failed = ", VM-entry failure" if _FAILED.get(value) else ""
    return f"{value:#x} (basic reason {_BASIC.get(value)}: {title}{failed})"


@checked
def render(explanations: list[Explanation]) -> str:
    """The readable report: one block per dump."""
    out: list[str] = []
    for n, e in enumerate(explanations, 1):
        d = e.dump
        head = f"dump {n}: {d.format} at line {d.line}, profile {e.profile}"
        if (reason := d.fields.get("VM_EXIT_REASON")) is not None:
            head += f"; exit reason {_exit_reason(reason)}"
        if d.reported is not None:
            head += f"; the VMM reported hardware error {d.reported:#x}"
        out.append(head)
        for r in e.failures:
            out.append(f"  FAIL {r.id}  {r.citation}")
            values = ", ".join(f"{k}={v:#x}" for k, v in r.fields.items() if v is not None)
            for text in (values, r.message, f"fix: {r.fix}"):
                if text:
                    out.append(textwrap.fill(text, _WIDTH, initial_indent=" " * 7, subsequent_indent=" " * 9))
        out.append(f"  {len(e.failures)} failed, {e.passed} passed, {len(e.not_evaluable)} not evaluable")
        by_need: dict[str, list[str]] = {}
        for r in e.not_evaluable:
            by_need.setdefault(r.message, []).append(r.id)
        for need, ids in sorted(by_need.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            out.append(f"    not evaluable, {need}:")
            out.append(textwrap.fill(", ".join(ids), _WIDTH, initial_indent=" " * 6, subsequent_indent=" " * 6))
    return "\n".join(out)


def cmd_explain(args: argparse.Namespace) -> int:
    path: Path = args.file
    text = read_text(path, errors="replace")
    result = read_dumps(text, str(path))
    if not result.dumps:
        line, problem = result.problems[0]
        raise InputError(f"{path}:{line}", "no dump could be read", problem)
    for line, problem in result.problems:
        print(f"vtx: warning: {path}:{line}: {problem}", file=sys.stderr)
    if args.profile is not None:
        load_preset(args.profile)  # a bad --profile is the command line's fault, not the file's
    with in_file(path, args.msrs):
        explanations = [explain_dump(d, profile=args.profile, msrs=args.msrs) for d in result.dumps]
    print(json.dumps(to_json(explanations), indent=2) if args.json else render(explanations))
    return 1 if any(e.failures for e in explanations) else 0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``vtx explain``."""
    p = subparsers.add_parser("explain", help="name the VM-entry rules a KVM, Xen or QEMU dump breaks")
    p.add_argument("file", type=Path, help="log with KVM / Xen VMCS dumps or QEMU register dumps, or vtx JSON")
    p.add_argument("--profile", help="capability preset (default: max; over a JSON dump's own)")
    p.add_argument("--msrs", type=Path, help="capability file (over the preset)")
    p.add_argument("--json", action="store_true", help="print the machine-readable JSON result")
    p.set_defaults(func=cmd_explain)


__all__ = ["add_parser", "cmd_explain", "render", "to_json"]
