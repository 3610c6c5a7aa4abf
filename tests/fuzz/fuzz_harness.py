"""The fuzz oracle shared by every surface: run ``vtx`` in-process and judge the result.

Every input must give a real result (exit 0, or 1 where the checked thing fails) or exit 2 with
``vtx: error: <where>: <value>: <rule>`` on stderr, where ``<where>`` names the file, a key, a line
or an offset; never a traceback, never a hang.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import re
import shutil
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from vtx.cli import main

CRASH = -1
"""The exit code :func:`run_cli` reports for an uncaught exception (its traceback is ``err``)."""
TIME_LIMIT_S = 10.0
"""The longest one input may take (generous for a loaded 2-core CI machine)."""
MAX_MESSAGE = 600
"""The longest error line that is still one readable message."""

_LOCATION = re.compile(
    r"^vtx: error: (?:"
    r"[^:\s]*[/\\][^:\s]*(?::\d+){0,2}"    # a file path, maybe with :line or :line:col
    r"|[A-Za-z_][\w.]*(?:\[\d+\])?(?:\.[\w.\[\]]+)?"  # a key path (fields.GUEST_CR0, memory[2].value)
    r"|[A-Za-z][\w '+.-]*"               # a named thing (VMCS field, template, capabilities 'max')
    r"): ")


@attrs.frozen
class Run:
    code: int
    out: str
    err: str
    seconds: float


def run_cli(argv: Sequence[str]) -> Run:
    """``vtx argv`` in-process: exit code (argparse's SystemExit included), stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    start = time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 2
        except Exception:  # a crash: report it as the traceback the user would see
            code, err = CRASH, io.StringIO(traceback.format_exc())
    return Run(code, out.getvalue(), err.getvalue(), time.monotonic() - start)


def assert_clean(r: Run, *, file: Path | None = None, allowed: frozenset[int] = frozenset({0, 1, 2})) -> None:
    """The oracle: a real result or a located vtx error; no traceback; bounded time.

    An error about an input ``file`` must name it first (then the key, line or column).
    """
    assert r.code in allowed, (r.code, r.err)
    assert "Traceback" not in r.err, r.err
    assert r.seconds < TIME_LIMIT_S, f"took {r.seconds:.1f} s"
    if r.code == 2 and not r.err.startswith("usage:"):
        last = r.err.strip().splitlines()[-1] if r.err.strip() else ""
        assert last.startswith("vtx: error: "), r.err
        assert len(last) <= MAX_MESSAGE, f"an unreadably long message ({len(last)} characters): {last[:300]}"
        if file is not None and not last.startswith(f"vtx: error: {file}"):
            assert last.startswith(("vtx: error: profile:", "vtx: error: --")), f"the message names no file: {last}"
        assert _LOCATION.match(last), f"the message names no location: {last!r}"


def run_file(tmp: Path, verb: Sequence[str], content: bytes | str | Any, name: str = "in.json") -> Run:
    """Write ``content`` (bytes, text or a JSON value) to a file and run ``vtx verb... FILE``."""
    path = tmp / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8", errors="surrogatepass")
    else:
        path.write_text(json.dumps(content), encoding="utf-8")
    return run_cli([*verb, str(path)])


def check_file(verb: Sequence[str], content: bytes | str | Any, name: str = "in.json") -> Run:
    """:func:`run_file` in the scratch directory, judged by :func:`assert_clean` (the file named)."""
    r = run_file(scratch(), verb, content, name)
    assert_clean(r, file=scratch() / name)
    return r


_SCRATCH: list[Path] = []


def scratch() -> Path:
    """A directory of this process for the files the fuzz tests write (one per xdist worker)."""
    if not _SCRATCH:
        _SCRATCH.append(Path(tempfile.mkdtemp(prefix="vtx-fuzz-")))
        atexit.register(shutil.rmtree, _SCRATCH[0], True)
    return _SCRATCH[0]


def template_json(*argv: str) -> Any:
    """The ``--json`` output of ``vtx template argv...`` (a valid document to mutate)."""
    r = run_cli(["template", *argv, "--json"])
    assert r.code == 0, r.err
    return json.loads(r.out)
