"""Property-test throughput: examples per second of the main stateful isolation test
(``tests/invariants/test_stateful_isolation.py``: adversarial guests on every reference design,
partitioning and isolation checked after every rule). Issue 13 asks for the figure; it has no
target. One example is one machine: built from a drawn scenario, then up to ``STEPS`` rules
(executor steps and injected attacks), each followed by both invariants."""

from __future__ import annotations

import importlib.util
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType

from bench.harness import Result

TEST = Path(__file__).resolve().parent.parent / "tests" / "invariants" / "test_stateful_isolation.py"
DESIGNS = ("hosted", "bare_metal", "hybrid")
REPETITIONS = 3


def _load() -> ModuleType:
    """The test module (the state machine lives with its test)."""
    spec = importlib.util.spec_from_file_location("test_stateful_isolation", TEST)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run() -> list[Result]:
    test = _load()
    results = []
    for design in DESIGNS:
        test.run_design(design, runs=2)  # warm-up: caches of presets, templates and entry checks
        samples, rules = [], 0
        for _ in range(REPETITIONS):
            start = time.perf_counter()
            rules = test.run_design(design)
            samples.append((time.perf_counter() - start) / test.RUNS * 1e6)
        results.append(Result(f"stateful isolation test, {design} (us per example; {rules} rules in {test.RUNS})",
                              "us/example", statistics.median(samples), min(samples), max(samples), REPETITIONS,
                              test.RUNS))
    return results
