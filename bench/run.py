"""Benchmark the gateway against the project's passthrough floor, on loopback, in one command.

    python bench/run.py [--duration 10] [--quick] [--litellm] [--workers N]

Starts the fake upstream, a real PostgreSQL database, `gateway serve` and bench/floor.py, drives each with
wrk, and prints markdown tables and every target with PASS or MISS. See bench/README.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    # Run as a script, Python puts bench/ first on sys.path; the repo root instead makes the `bench` package
    # and the project's `tests` helpers (fake upstream, test databases) importable.
    if sys.path[0] == str(REPO / "bench"):
        sys.path[0] = str(REPO)
    from bench.matrix import main as run_benchmark

    return run_benchmark(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
