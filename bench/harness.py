"""A minimal benchmark harness: warm-up, repetitions, median / min / max per operation."""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import attrs


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


def report(results: list[Result], path: Path) -> None:
    """Print a table and write the results atomically as JSON to ``path``."""
    print(f"{'benchmark':44} {'median':>10} {'min':>10} {'max':>10}  unit   {'per second':>12} {'target':>10}")
    for r in results:
        target = f"{r.target_per_second:10,.0f} {r.verdict}" if r.target_per_second else ""
        print(f"{r.name:44} {r.median:10.3f} {r.minimum:10.3f} {r.maximum:10.3f}  {r.unit} "
              f"{r.per_second:12,.0f} {target}")
    data = {
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                    "platform": platform.platform()},
        "results": [{**attrs.asdict(r), "per_second": r.per_second, "verdict": r.verdict} for r in results],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
