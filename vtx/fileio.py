"""Writing files so that a crash never leaves a half-written one, and checksums.

:func:`atomic_write` writes the whole content to a temporary file in the destination's directory,
flushes it to stable storage (``fsync``), renames it over the destination (``os.replace``, atomic
on POSIX file systems) and ``fsync``\\ s the directory so that the rename itself is durable. A
reader therefore sees either the old file or the new one, never a mixture; when writing fails
(disk full, the process is killed) the old file is untouched and the temporary file is removed
(or, after a kill, left behind under a ``.tmp`` name that no reader opens).

Every file vtx writes goes through here (snapshots, benchmark results).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from pathlib import Path

from vtx.errors import InputError
from vtx.typecheck import checked

PAUSE_ENV = "VTX_FILEIO_PAUSE_AFTER_HALF"
"""Test hook: when this environment variable holds a number of seconds, :func:`atomic_write` sleeps
that long after writing the first half of the content (so a test can kill the writer mid-write)."""

CHUNK = 1 << 20


@checked
def sha256(data: bytes) -> str:
    """The SHA-256 digest of ``data``, as 64 lower-case hex digits."""
    return hashlib.sha256(data).hexdigest()


@checked
def atomic_write(path: Path | str, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (temporary file in the same directory, fsync,
    ``os.replace``, fsync of the directory). InputError naming the file if it cannot be written;
    the previous content of ``path`` is then unchanged."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    pause = float(os.environ.get(PAUSE_ENV, "0") or 0)
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise InputError(str(path), "unwritable", f"cannot create a temporary file beside it: {e.strerror}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            half = len(data) // 2
            for start in range(0, len(data), CHUNK):
                end = min(start + CHUNK, len(data))
                if pause and start <= half < end:
                    f.write(data[start:half])
                    f.flush()
                    time.sleep(pause)
                    f.write(data[half:end])
                else:
                    f.write(data[start:end])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise InputError(str(path), "unwritable", e.strerror or str(e)) from e
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX: fsync the directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # a platform that cannot open directories (Windows): the rename is what it offers
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@checked
def read_bytes(path: Path | str) -> bytes:
    """The content of ``path``; InputError naming the file when it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise InputError(str(path), "unreadable", e.strerror or str(e)) from e


__all__ = ["PAUSE_ENV", "atomic_write", "read_bytes", "sha256"]
