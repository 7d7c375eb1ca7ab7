"""The benchmark run: start everything on loopback, rotate gateways and floor per case, check, report.

Servers in the matrix: the floor; `gateway`, run as production runs it (log level info, so one JSON log line
per request through its own handler into its log file; metrics on; bcrypt at the file's rounds; a key made with
`gateway keys create`); `gateway-nolog`, the same at log level warning, which shows what the log line costs;
with `--compare REV`, `gateway@REV`, that revision's gateway run as production. See bench/README.md; the entry
point is `python bench/run.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import sys
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from bench import servers
from bench.cases import CASE_BY_KEY, CASES, CONCURRENCIES, TARGET_CONC, Case
from bench.database import Database, open_database, settled_usage, usage_by_status
from bench.load import LoadResult, LoadSpec, run_load, wrk_available
from bench.report import render
from bench.results import Results, Run, Scaling, UsageCheck
from bench.servers import BenchError, Server
from bench.trees import exported_tree, resolve
from bench.ttfb import Endpoint, probe

RESULTS_DIR = servers.BENCH_DIR / "results"
GATEWAY, GATEWAY_NOLOG = "gateway", "gateway-nolog"  # production logging; the per-request line filtered out
WARMUP_CONC = 10
LITELLM_WARMUP_S = 5
PAUSE_S = 0.3  # between runs, so one run's closing connections do not overlap the next


@dataclass(frozen=True, slots=True)
class Settings:
    duration_s: int
    warmup_s: int
    ttfb_requests: int
    startups: int  # how often `gateway serve` is started to time it
    workers: int
    litellm: bool
    use_wrk: bool
    compare: str | None = None  # a git revision whose gateway runs beside this tree's


def parse_settings(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__)
    parser.add_argument("--duration", type=int, help="seconds per load run (default 10, --quick 3)")
    parser.add_argument("--quick", action="store_true", help="short runs, fewer TTFB probes, one timed start")
    parser.add_argument("--workers", type=int, default=1, help="also run the gateway with N workers (c=50 messages)")
    parser.add_argument("--litellm", action="store_true", help="also run the matrix against LiteLLM if importable")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "aiohttp"), default="auto", help="default: wrk if found")
    parser.add_argument(
        "--compare",
        metavar="REV",
        help="also run REV's gateway (git archive into a temp dir), rotated with this tree's against the same floor",
    )
    args = parser.parse_args(argv)
    use_wrk = args.loadgen == "wrk" or (args.loadgen == "auto" and wrk_available())
    return Settings(
        duration_s=args.duration or (3 if args.quick else 10),
        warmup_s=1 if args.quick else 2,
        ttfb_requests=50 if args.quick else 200,
        startups=1 if args.quick else 3,
        workers=max(1, args.workers),
        litellm=args.litellm,
        use_wrk=use_wrk,
        compare=args.compare,
    )


@dataclass(slots=True)
class Ledger:
    """Gateway requests the load generators saw completed, for the usage-log check."""

    served: int = 0
    in_flight: int = 0  # requests wrk may have left running when it stopped

    def add(self, load: LoadResult, conc: int, *, exact: bool) -> None:
        self.served += load.requests
        self.in_flight += 0 if exact else conc


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Bench:
    """One benchmark run; every server it starts is stopped by `stack`."""

    def __init__(self, settings: Settings, db: Database, run_dir: Path, stack: contextlib.ExitStack) -> None:
        self.settings, self.db, self.run_dir, self.stack = settings, db, run_dir, stack
        loadgen = "wrk -t1" if settings.use_wrk else "aiohttp loadgen"
        self.results = Results(
            settings={
                "gateway": servers.gateway_revision(),
                "duration_s": settings.duration_s,
                "loadgen": loadgen,
                "database": db.where,
                "upstream": "tests.fakes.upstream, 0 ms, 5 chunks",
                "logging": "gateway: level info (a JSON line per request, to its log file); gateway-nolog: warning",
                "machine": servers.machine(),
                "load average at start": servers.load_average(),
            }
        )
        if settings.compare:
            self.results.settings["compare"] = f"{GATEWAY}@{resolve(settings.compare)}"
        self.ledger = Ledger()
        self.key = ""

    def own(self, server: Server) -> Server:
        self.stack.callback(server.stop)
        return server

    # --- the whole run ---------------------------------------------------------------------------------

    def run_all(self) -> Results:
        """Everything, in order; a failure part-way ends the run but keeps what was measured before it."""
        try:
            self.run_steps()
        except BenchError as exc:
            self.results.error = str(exc)
        return self.results

    def run_steps(self) -> None:
        fake = self.own(servers.start_fake(self.run_dir))
        self.floor = self.own(servers.start_floor(fake.url, self.run_dir))
        self.config = self.gateway_config("gateway.yaml", fake.url, servers.LOG_LEVEL_PRODUCTION)
        self.key = servers.create_key(self.config)
        baseline = asyncio.run(usage_by_status(self.db.dsn))
        self.gateway = self.start_timed_gateway()
        quiet = self.gateway_config("gateway-nolog.yaml", fake.url, servers.LOG_LEVEL_QUIET)
        self.gateways = [self.gateway, self.own(servers.start_gateway(quiet, self.run_dir, name=GATEWAY_NOLOG))]
        if self.settings.compare:
            self.gateways.append(self.start_compared(self.settings.compare, fake.url))
        self.warm_up([self.floor, *self.gateways])
        self.run_matrix()
        self.run_ttfb()
        self.results.rss_mb = {s.name: s.worker_rss_mb() for s in (self.gateway, self.floor, fake)}
        if self.settings.workers > 1:
            self.run_scaling()
        self.check_usage(baseline)
        if self.settings.litellm:
            self.run_litellm(fake.url)
        self.results.notes.append(f"load average (1, 5, 15 min) at the end: {servers.load_average()}")

    def gateway_config(self, name: str, upstream: str, level: str, tree: Path | None = None) -> Path:
        path = self.run_dir / name
        return servers.write_gateway_config(path, dsn=self.db.dsn, upstream=upstream, log_level=level, tree=tree)

    def start_compared(self, rev: str, upstream: str) -> Server:
        """REV's gateway from its own files (its gateway.yaml too), on the same database and key, as production."""
        tree = self.stack.enter_context(exported_tree(rev))
        name = self.results.settings["compare"]
        config = self.gateway_config(f"{name}.yaml", upstream, servers.LOG_LEVEL_PRODUCTION, tree)
        server = self.own(servers.start_gateway(config, self.run_dir, name=name, tree=tree))
        progress(f"{name} ready in {server.ready_s:.3f} s (from {tree})")
        return server

    def start_timed_gateway(self) -> Server:
        """Start `gateway serve` `startups` times, keeping the last; each start's time to ready is recorded."""
        for attempt in range(self.settings.startups):
            gateway = servers.start_gateway(self.config, self.run_dir)
            self.results.ready_s.append(gateway.ready_s)
            progress(f"gateway ready in {gateway.ready_s:.3f} s")
            if attempt < self.settings.startups - 1:
                gateway.stop()
        return self.own(gateway)

    # --- load ------------------------------------------------------------------------------------------

    def measure(self, server: Server, case: Case, conc: int, duration_s: int, *, key: str | None = None) -> Run:
        """One load run, with the server tree's CPU time read before and after."""
        spec = LoadSpec(server.url + case.path, case.body, case.headers(key or self.key), conc, duration_s)
        cpu_before = server.cpu_seconds()
        load = run_load(spec, use_wrk=self.settings.use_wrk)
        cpu_ms = (server.cpu_seconds() - cpu_before) * 1000
        if server.name.startswith("gateway"):
            self.ledger.add(load, conc, exact=not self.settings.use_wrk)
        time.sleep(PAUSE_S)
        return Run(server.name, case.key, conc, load, cpu_ms / load.requests if load.requests else 0.0)

    def warm_up(self, targets: Sequence[Server], key: str | None = None, duration_s: int | None = None) -> None:
        """A short run per case and server: first-request costs (bcrypt, connection pools) stay out of the figures."""
        for case, server in itertools.product(CASES, targets):
            run = self.measure(server, case, WARMUP_CONC, duration_s or self.settings.warmup_s, key=key)
            if run.load.errors or run.load.non2xx or not run.load.requests:
                tail = servers.log_tail(server.log)
                raise BenchError(f"warm-up of {server.name} {case.title} failed: {run.load}; {server.log}:\n{tail}")
        progress(f"warmed up: {', '.join(s.name for s in targets)}")

    def run_matrix(self) -> None:
        """Every case at every concurrency, floor and gateways back to back, the order rotating by one each time."""
        lineup = [self.floor, *self.gateways]
        for i, (case, conc) in enumerate(itertools.product(CASES, CONCURRENCIES)):
            shift = i % len(lineup)
            for server in lineup[shift:] + lineup[:shift]:
                self.record(self.measure(server, case, conc, self.settings.duration_s))

    def record(self, run: Run) -> None:
        self.results.runs.append(run)
        load = run.load
        progress(
            f"{run.server:>16} {CASE_BY_KEY[run.case].title:<32} c={run.conc:<3} {load.rps:9,.1f} rps  "
            f"p50 {load.p50_ms:7.2f} ms  p99 {load.p99_ms:7.2f} ms  cpu {run.cpu_ms_per_req:.3f} ms/req  "
            f"err {load.errors} non-2xx {load.non2xx}"
        )

    def run_ttfb(self) -> None:
        for case in (c for c in CASES if c.stream):
            headers = case.headers(self.key)
            gateway, floor = (Endpoint(s.url + case.path, headers) for s in (self.gateway, self.floor))
            ttfb = asyncio.run(probe(gateway, floor, case.body.read_bytes(), self.settings.ttfb_requests))
            self.ledger.served += ttfb.requests
            self.results.ttfb[case.key] = ttfb
            progress(f"TTFB {case.title}: gateway {ttfb.gateway_ms:.2f} ms, floor {ttfb.floor_ms:.2f} ms")

    def run_scaling(self) -> None:
        """The c=50 /v1/messages case on one worker and on N (a second `gateway serve`): one, N, N, one."""
        n = self.settings.workers
        multi = self.own(servers.start_gateway(self.config, self.run_dir, workers=n, name=f"gateway-{n}w"))
        self.warm_up([multi])
        case = CASE_BY_KEY["messages"]
        runs = [self.measure(s, case, TARGET_CONC, self.settings.duration_s) for s in (self.gateway, multi, multi)]
        runs.append(self.measure(self.gateway, case, TARGET_CONC, self.settings.duration_s))
        for run in runs:
            self.record(run)
        one, many = [runs[0], runs[3]], runs[1:3]
        self.results.scaling = Scaling(n, one, many, multi.worker_rss_mb(), multi.ready_s)
        multi.stop()

    # --- checks and comparisons ------------------------------------------------------------------------

    def check_usage(self, baseline: dict[int, int]) -> None:
        """Rows the gateway logged since it started vs the requests the load generators completed."""
        now = asyncio.run(settled_usage(self.db.dsn))
        delta = {status: n - baseline.get(status, 0) for status, n in now.items() if n != baseline.get(status, 0)}
        usage = UsageCheck(sum(delta.values()), self.ledger.served, self.ledger.in_flight, delta)
        self.results.usage = usage
        progress(f"usage rows {usage.rows}, served {usage.served} (+ ≤ {usage.in_flight} in flight)")

    def run_litellm(self, upstream: str) -> None:
        if not servers.litellm_installed():
            self.results.notes.append(
                "LiteLLM: not found, not measured (python3 -m venv /tmp/litellm && /tmp/litellm/bin/pip install "
                "'litellm[proxy]', then LITELLM_BIN=/tmp/litellm/bin/litellm)"
            )
            return
        litellm = self.own(servers.start_litellm(upstream, self.run_dir))
        # Its first requests take about 2 s each (it loads its provider code on first use): a longer warm-up.
        self.warm_up([litellm], key=servers.LITELLM_KEY, duration_s=max(self.settings.warmup_s, LITELLM_WARMUP_S))
        for case, conc in itertools.product(CASES, CONCURRENCIES):
            self.record(self.measure(litellm, case, conc, self.settings.duration_s, key=servers.LITELLM_KEY))
        rss = ", ".join(f"{mb:.0f} MB" for mb in litellm.worker_rss_mb())
        self.results.notes.append(f"LiteLLM: ready in {litellm.ready_s:.2f} s, RSS {rss} after its matrix")
        litellm.stop()


async def _finish(pending: Awaitable[None]) -> None:
    await pending


def save(results: Results, run_dir: Path) -> Path:
    path = run_dir / "results.json"
    path.write_bytes(orjson.dumps(dataclasses.asdict(results), option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    return path


def execute(settings: Settings, run_dir: Path) -> Results:
    """Run the benchmark against a database opened for it (and dropped after, when it was made for it)."""
    db = asyncio.run(open_database())
    try:
        with contextlib.ExitStack() as stack:
            return Bench(settings, db, run_dir, stack).run_all()
    finally:
        if db.drop is not None:
            asyncio.run(_finish(db.drop()))


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print the report; exit 1 when the run broke or the usage log does not match what was served."""
    settings = parse_settings(argv)
    run_dir = RESULTS_DIR / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    progress(f"logs and raw figures: {run_dir}")
    try:
        results = execute(settings, run_dir)
    except BenchError as exc:  # before anything was measured
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    print(render(results))
    print(f"\n(raw figures: {save(results, run_dir)})")
    if results.error is not None:
        print(f"\nbench: the run stopped early: {results.error}", file=sys.stderr)
        return 1
    return 0 if results.usage is None or results.usage.ok else 1
