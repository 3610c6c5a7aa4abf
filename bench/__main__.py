"""Run every benchmark and write ``docs/results/bench.json``."""

from __future__ import annotations

import sys
from pathlib import Path

from bench import bench_entry, bench_kvm, bench_paging, bench_vmcs
from bench.harness import report

OUT = Path(__file__).resolve().parent.parent / "docs" / "results" / "bench.json"


def main() -> int:
    results = bench_vmcs.run() + bench_entry.run() + bench_paging.run() + bench_kvm.run()
    report(results, OUT)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
