"""vtx.fileio.atomic_write: a reader sees the old file or the new one, never a mixture — also when
the writer is killed mid-write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_snapshot import one_vm, saved

from vtx import fileio
from vtx.errors import InputError
from vtx.fileio import PAUSE_ENV, atomic_write
from vtx.machine.scenario import build_machine
from vtx.machine.snapshot import decode_snapshot, read_snapshot, write_snapshot


def test_writes_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "f"
    atomic_write(path, b"one")
    atomic_write(path, b"two two")
    assert path.read_bytes() == b"two two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_fsyncs_the_file_and_its_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(fileio.os, "fsync", spy)
    atomic_write(tmp_path / "f", b"data")
    assert len(synced) == 2  # the temporary file before the rename, the directory after it


def test_failure_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f"
    atomic_write(path, b"old")

    def broken(src: str, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio.os, "replace", broken)
    with pytest.raises(InputError, match="No space left"):
        atomic_write(path, b"new")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_an_unwritable_destination_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unwritable"):
        atomic_write(tmp_path / "absent-dir" / "f", b"x")


CHILD = """
import sys
from pathlib import Path
import attrs
from vtx.machine.snapshot import read_snapshot, write_snapshot
image = read_snapshot(sys.argv[1])
big = {n: bytes([n % 251 + 1]) * 4096 for n in range(1500)}
write_snapshot(sys.argv[1], attrs.evolve(image, memory=big))
"""


def test_killed_mid_write_the_old_snapshot_survives(tmp_path: Path) -> None:
    """A child rewrites a snapshot with a ~8 MB image and is SIGKILLed after it wrote half (the
    fileio pause hook holds it there): the file at the path is the old one, intact and readable."""
    path = tmp_path / "vm.snap"
    old = saved(build_machine(one_vm(), "hosted"), 10)[1]
    write_snapshot(path, old)
    before = path.read_bytes()
    env = {**os.environ, PAUSE_ENV: "60"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], env=env)
    try:
        deadline = time.monotonic() + 120
        temps: list[Path] = []
        while time.monotonic() < deadline:
            temps = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
            if temps and temps[0].stat().st_size > 1 << 20:
                break
            assert child.poll() is None, "the writer finished before it could be killed"
            time.sleep(0.05)
        assert temps, "the writer never started its temporary file"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    assert path.read_bytes() == before
    assert read_snapshot(path) == old
    with pytest.raises(InputError, match="truncated"):  # what was killed is only the temporary, half written
        decode_snapshot(temps[0].read_bytes(), str(temps[0]))
