"""Driving load: wrk with bench/wrk_post.lua, or bench/loadgen.py (aiohttp) where wrk is not installed.

Both print the same `RESULT k=v ...` line, parsed here into a LoadResult.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.servers import BENCH_DIR, BenchError

WRK_SCRIPT = BENCH_DIR / "wrk_post.lua"
LOADGEN = BENCH_DIR / "loadgen.py"


@dataclass(frozen=True, slots=True)
class LoadSpec:
    url: str
    body: Path
    headers: Mapping[str, str]
    conc: int
    duration_s: int


@dataclass(frozen=True, slots=True)
class LoadResult:
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    requests: int  # completed, whatever their status
    errors: int  # connect, read, write and timeout errors
    non2xx: int  # responses with a status >= 400


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_load(spec: LoadSpec, *, use_wrk: bool) -> LoadResult:
    """Run one closed-loop load of `spec.conc` connections for `spec.duration_s` seconds."""
    argv, env = _wrk_command(spec) if use_wrk else _loadgen_command(spec)
    done = subprocess.run(
        argv, env={**os.environ, **env}, capture_output=True, text=True, check=False, timeout=spec.duration_s + 120
    )
    if done.returncode != 0:
        raise BenchError(f"{argv[0]} failed ({done.returncode}) on {spec.url}:\n{done.stderr.strip()}")
    return parse_result(done.stdout)


def _wrk_command(spec: LoadSpec) -> tuple[list[str], dict[str, str]]:
    argv = ["wrk", "-t1", f"-c{spec.conc}", f"-d{spec.duration_s}s", "--latency", "--timeout", "30s"]
    headers = "|".join(f"{name}: {value}" for name, value in spec.headers.items())
    return [*argv, "-s", str(WRK_SCRIPT), spec.url], {"WRK_BODY": str(spec.body), "WRK_HEADERS": headers}


def _loadgen_command(spec: LoadSpec) -> tuple[list[str], dict[str, str]]:
    argv = [sys.executable, str(LOADGEN), spec.url, "--body", str(spec.body)]
    argv += ["-c", str(spec.conc), "-d", str(spec.duration_s)]
    for name, value in spec.headers.items():
        argv += ["-H", f"{name}: {value}"]
    return argv, {}


def parse_result(output: str) -> LoadResult:
    """The RESULT line of wrk_post.lua or loadgen.py: `RESULT rps=1.0 p50_ms=... status=0 timeout=0`."""
    line = next((ln for ln in output.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise BenchError(f"no RESULT line in the load generator's output:\n{output[-2000:]}")
    v = {k: float(x) for k, _, x in (item.partition("=") for item in line.split()[1:])}
    return LoadResult(
        rps=v["rps"],
        p50_ms=v["p50_ms"],
        p90_ms=v["p90_ms"],
        p99_ms=v["p99_ms"],
        max_ms=v["max_ms"],
        requests=int(v["reqs"]),
        errors=int(v["connect"] + v["read"] + v["write"] + v["timeout"]),
        non2xx=int(v["status"]),
    )
