"""Run the benchmarks and write ``docs/results/bench.json``.

``python -m bench`` runs every benchmark module; ``python -m bench entry vmcs`` runs only the named
ones (``bench_<name>.py``) and merges their rows into the existing JSON; ``--no-write`` only prints.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from bench.harness import Result, report

OUT = Path(__file__).resolve().parent.parent / "docs" / "results" / "bench.json"
MODULES = ("vmcs", "entry", "paging", "executor", "properties", "invariants")
"""Every benchmark module, in report order (``executor`` also measures KVM, its peer)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="name",
                        help=f"benchmark modules to run (default: all of {', '.join(MODULES)})")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in MODULES]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r} (known: {', '.join(MODULES)})")
    names = args.names or list(MODULES)
    results: list[Result] = []
    for name in names:
        results += importlib.import_module(f"bench.bench_{name}").run()
    report(results, None if args.no_write else OUT, merge=bool(args.names))
    if not args.no_write:
        print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
