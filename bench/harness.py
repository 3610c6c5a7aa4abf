"""A minimal benchmark harness: warm-up, repetitions, median / min / max per operation."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import attrs

from vtx.fileio import atomic_write


@attrs.frozen
class Result:
    name: str
    unit: str
    median: float
    minimum: float
    maximum: float
    repetitions: int
    inner: int
    target_per_second: float | None = None
    peer: str | None = None
    """The name of the result this one is compared with (KVM, a reference implementation), measured in
    the same run: the report gives the ratio of their rates."""
    target_ratio: float | None = None
    """The least acceptable ratio of this result's rate to its peer's."""

    @property
    def per_second(self) -> float:
        """Operations per second at the median."""
        return 1e6 / self.median

    @property
    def verdict(self) -> str:
        if self.target_per_second is None:
            return ""
        return "pass" if self.per_second >= self.target_per_second else "short"


def measure(name: str, op: Callable[[], object], *, inner: int = 10_000, repetitions: int = 7,
            warmup: int = 1, target_per_second: float | None = None) -> Result:
    """Time ``op`` ``inner`` times per repetition; report microseconds per call."""
    for _ in range(warmup):
        for _ in range(inner):
            op()
    samples = []
    for _ in range(repetitions):
        t0 = time.perf_counter()
        for _ in range(inner):
            op()
        samples.append((time.perf_counter() - t0) / inner * 1e6)
    return Result(name, "us/op", statistics.median(samples), min(samples), max(samples), repetitions, inner,
                  target_per_second)


def ratios(results: list[Result]) -> dict[str, tuple[float, str]]:
    """For each result with a peer among ``results``: the ratio of its rate to the peer's, and pass /
    short against its target ratio (empty without one)."""
    by_name = {r.name: r for r in results}
    out = {}
    for r in results:
        if r.peer is not None and r.peer in by_name:
            ratio = r.per_second / by_name[r.peer].per_second
            verdict = "" if r.target_ratio is None else "pass" if ratio >= r.target_ratio else "short"
            out[r.name] = (ratio, verdict)
    return out


def report(results: list[Result], path: Path | None, *, merge: bool = False) -> None:
    """Print a table and write the results atomically as JSON to ``path`` (unless None). With ``merge``,
    the rows of an existing file whose names are not among ``results`` are kept (a partial run)."""
    by_ratio = ratios(results)
    print(f"{'benchmark':56} {'median':>10} {'min':>10} {'max':>10}  unit    {'per second':>12} {'target':>16}")
    for r in results:
        digits = 0 if (r.target_per_second or 0) >= 100 else 3
        target = f"{r.target_per_second:10,.{digits}f} {r.verdict}" if r.target_per_second else ""
        print(f"{r.name:56} {r.median:10.3f} {r.minimum:10.3f} {r.maximum:10.3f}  {r.unit:7} "
              f"{r.per_second:12,.0f} {target}")
        if r.name in by_ratio:
            ratio, verdict = by_ratio[r.name]
            wanted = f" (target >= {r.target_ratio:g}: {verdict})" if r.target_ratio is not None else ""
            print(f"{'':4}ratio to {r.peer}: {ratio:.2f}{wanted}")
    if path is None:
        return
    rows = [{**attrs.asdict(r), "per_second": r.per_second, "verdict": r.verdict,
             **({"ratio": by_ratio[r.name][0], "ratio_verdict": by_ratio[r.name][1]} if r.name in by_ratio else {})}
            for r in results]
    if merge and path.exists():
        names = {r.name for r in results}
        rows = [row for row in json.loads(path.read_text())["results"] if row["name"] not in names] + rows
    data = {
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                    "platform": platform.platform(), "load_average": os.getloadavg()},
        "results": rows,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, (json.dumps(data, indent=2) + "\n").encode())
