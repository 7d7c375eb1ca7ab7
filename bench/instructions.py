"""Instructions per request, gateway vs floor, counted by valgrind's callgrind: figures a busy machine cannot blur.

    python bench/instructions.py                      # about 5 minutes; --requests 500 --warmup 100
    python bench/instructions.py --compare a8bbcab    # also that revision's gateway (git archive into a temp dir)
    python bench/instructions.py --cases messages     # some cases only (keys of bench/cases.py)
    python bench/instructions.py --log-off            # also this gateway at log level warning: the log line's cost

`perf stat -e instructions` would be the cheaper counter, but this VM exposes no hardware counters (perf
prints `<not supported>`), so each server runs under `valgrind --tool=callgrind --instr-atstart=no`: nothing
is counted while it starts, imports and warms up. Per case: `--warmup` requests uncounted (bcrypt once per key,
connection pools, the interpreter's specialisation), then `callgrind_control -i on`, exactly `--requests`
requests one after another on one kept-alive connection, `-i off`, and a dump. Instructions per request =
the dump's total ÷ requests: the whole server process (every thread) from the first counted request to the
last answer, event loop, parsing, logging, usage row and its batched COPY included. The load generator, the
fake upstream and PostgreSQL are other processes and not counted.

The gateway runs as production does (log level info: its JSON log line per request goes to its log file;
metrics on; a real key from `gateway keys create`, bcrypt at the file's rounds), with three settings changed
so that a request costs the same under valgrind (about 50 times slower) as at full speed: work the gateway
does on a timer (budget refresh every 2 s, the key cache's 10 s TTL, the rate-limit overrides' refresh, the
usage flush every 200 ms) would land inside the window 50 times as often per request, so those timers are
set to an hour; the usage rows are written by count instead (`flush_rows` = `--requests`), so every window
holds exactly one COPY of `--requests` rows (500 by default: production's batch at full load).

Reading it: `gw/floor` is the gateway's instructions per request over the floor's (issue 19's target: at most
1.5 on /v1/messages). Requests are sequential (c=1), so each pays a whole event-loop turn; under load the
turns are shared and both servers spend fewer instructions per request, but the ratio is the one to watch.
The counts repeat to well under 1 % between runs (hash seed fixed, same requests; request ids, timestamps and
the one-by-one timing of the flush vary slightly): run it twice and compare. The top functions are C functions
(CPython 3.11 runs Python code inside `_PyEval_EvalFrameDefault`; a Python-level profile needs py-spy):
a gateway heavy in frame setup, dict lookups and allocation is running more Python per request than the floor.
Raw dumps and the full `callgrind_annotate` output go to bench/results/instructions-<time>/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

REPO = Path(__file__).resolve().parents[1]
if __name__ == "__main__":  # run as a script: the repo root makes `bench` and `tests` importable
    sys.path[0] = str(REPO)

from bench import servers  # noqa: E402
from bench.cases import CASE_BY_KEY, CASES, Case  # noqa: E402
from bench.database import Database, open_database, usage_by_status  # noqa: E402
from bench.report import table  # noqa: E402
from bench.servers import BenchError, Server  # noqa: E402
from bench.trees import exported_tree, resolve  # noqa: E402

VALGRIND_READY_S = 600.0  # `gateway serve` imports for a minute or more under callgrind
HOUR_S = 3600
MAX_RATIO = 1.5  # issue 19: gateway instructions per /v1/messages request ≤ 1.5 times the floor's
TOP = 15
HASH_SEED = "0"  # dict and set order, hence the instructions spent on them, fixed from run to run


@dataclass(slots=True)
class Target:
    """One server measured under callgrind: its dumps and instructions per request, per case."""

    name: str
    server: Server
    out_base: Path  # callgrind writes <out_base>, and <out_base>.<n> for the n-th dump
    gateway: bool  # writes usage rows (its windows wait for the row flush)
    dumps: int = 0
    per_request: dict[str, float] = field(default_factory=dict)
    dump_files: dict[str, Path] = field(default_factory=dict)


def callgrind_argv(out_base: Path, log: Path) -> list[str]:
    return [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",  # counting starts at the first `callgrind_control -i on`
        f"--callgrind-out-file={out_base}",
        f"--log-file={log}",
    ]


def instruction_config(
    path: Path,
    *,
    dsn: str,
    upstream: str,
    requests: int,
    tree: Path | None,
    log_level: str = servers.LOG_LEVEL_PRODUCTION,
) -> Path:
    """The production config (servers.write_gateway_config) with the timers out of the window (module docstring)."""
    servers.write_gateway_config(path, dsn=dsn, upstream=upstream, tree=tree, log_level=log_level)
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    doc["budgets"] = {**doc.get("budgets", {}), "refresh_s": HOUR_S}
    doc["auth"] = {**doc.get("auth", {}), "cache_ttl_s": HOUR_S}
    doc["rate_limits"] = {**doc.get("rate_limits", {}), "overrides_refresh_s": HOUR_S}
    doc["usage_log"] = {**doc.get("usage_log", {}), "flush_interval_ms": HOUR_S * 1000, "flush_rows": requests}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class Client:
    """One kept-alive HTTP/1.1 connection; each request is read to its end (a stream to its last chunk)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=600)

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> None:
        self._conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **headers})
        resp = self._conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise BenchError(f"POST {path} answered {resp.status}: {data[:300]!r}")

    def close(self) -> None:
        self._conn.close()


def callgrind_control(pid: int, *args: str) -> None:
    done = subprocess.run(["callgrind_control", *args, str(pid)], capture_output=True, text=True, check=False)
    if done.returncode != 0 or "OK" not in done.stdout:
        raise BenchError(f"callgrind_control {' '.join(args)} {pid}: {done.stdout.strip()} {done.stderr.strip()}")


def totals(dump: Path, timeout_s: float = 120.0) -> int:
    """The `totals:` line of a dump (Ir), once callgrind has finished writing it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if match := re.search(r"^totals: (\d+)", dump.read_text(errors="replace"), re.MULTILINE):
                return int(match[1])
        time.sleep(0.2)
    raise BenchError(f"no totals in {dump} after {timeout_s:g} s")


class Measurement:
    def __init__(self, args: argparse.Namespace, db: Database, run_dir: Path, stack: contextlib.ExitStack) -> None:
        self.args, self.db, self.run_dir, self.stack = args, db, run_dir, stack
        self.cases = [CASE_BY_KEY[k] for k in args.cases] if args.cases else list(CASES)
        self.rows_sent = 0  # usage rows the gateways were sent requests for (one per request)

    def progress(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def start(self, name: str, argv: list[str], port: int, *, cwd: Path, gateway: bool) -> Target:
        out_base = self.run_dir / f"{name}.callgrind"
        full = [*callgrind_argv(out_base, self.run_dir / f"{name}.valgrind.log"), *argv]
        env = {"PYTHONHASHSEED": HASH_SEED}
        server = servers.spawn(
            name,
            full,
            port,
            self.run_dir,
            health="/health",
            env=env,
            unset=servers.BUDGET_ENV,
            cwd=cwd,
            ready_timeout_s=VALGRIND_READY_S,
        )
        self.stack.callback(server.stop)
        self.progress(f"{name} ready under callgrind in {server.ready_s:.1f} s")
        return Target(name, server, out_base, gateway)

    def run(self) -> list[Target]:
        fake = servers.start_fake(self.run_dir)
        self.stack.callback(fake.stop)
        requests = self.args.requests
        config = instruction_config(
            self.run_dir / "gateway.yaml", dsn=self.db.dsn, upstream=fake.url, requests=requests, tree=None
        )
        self.key = servers.create_key(config)
        plans: list[tuple[str, list[str], int, Path, bool]] = []
        port = servers.free_port()
        floor_argv = [sys.executable, str(servers.BENCH_DIR / "floor.py"), "--port", str(port), "--upstream", fake.url]
        plans.append(("floor", floor_argv, port, REPO, False))
        port = servers.free_port()
        plans.append(("gateway", servers.gateway_argv(config, port, tree=REPO), port, REPO, True))
        if self.args.log_off:
            quiet = instruction_config(
                self.run_dir / "gateway-nolog.yaml",
                dsn=self.db.dsn,
                upstream=fake.url,
                requests=requests,
                tree=None,
                log_level=servers.LOG_LEVEL_QUIET,
            )
            port = servers.free_port()
            plans.append(("gateway-nolog", servers.gateway_argv(quiet, port, tree=REPO), port, REPO, True))
        if self.args.compare:
            tree = self.stack.enter_context(exported_tree(self.args.compare))
            name = f"gateway@{resolve(self.args.compare)}"
            other = instruction_config(
                self.run_dir / f"{name}.yaml", dsn=self.db.dsn, upstream=fake.url, requests=requests, tree=tree
            )
            port = servers.free_port()
            plans.append((name, servers.gateway_argv(other, port, tree=tree), port, tree, True))
        measured = []
        for name, argv, port, cwd, gateway in plans:  # one at a time: each has the machine's cores to itself
            target = self.start(name, argv, port, cwd=cwd, gateway=gateway)
            for case in self.cases:
                self.measure(target, case)
            target.server.stop()
            measured.append(target)
        return measured

    def measure(self, target: Target, case: Case) -> None:
        body, headers = case.body.read_bytes(), case.headers(self.key)
        pid = target.server.proc.pid
        client = Client(target.server.url)
        try:
            for _ in range(self.args.warmup):
                client.post(case.path, body, headers)
            self.rows_sent += self.args.warmup if target.gateway else 0
            callgrind_control(pid, "--instr=on")
            for _ in range(self.args.requests):
                client.post(case.path, body, headers)
            if target.gateway:
                self.rows_sent += self.args.requests
                self.await_flush()
            callgrind_control(pid, "--instr=off")
        finally:
            client.close()
        callgrind_control(pid, f"--dump={case.key}")
        target.dumps += 1
        dump = Path(f"{target.out_base}.{target.dumps}")
        target.dump_files[case.key] = dump
        target.per_request[case.key] = totals(dump) / self.args.requests
        self.progress(f"{target.name:>16} {case.title:<32} {target.per_request[case.key]:>12,.0f} instructions/request")

    def await_flush(self, timeout_s: float = 300.0) -> None:
        """Until every row of a whole batch is in usage_log: the window's COPY is then inside the count."""
        want = self.rows_sent // self.args.requests * self.args.requests
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if sum(asyncio.run(usage_by_status(self.db.dsn)).values()) >= want:
                return
            time.sleep(0.2)
        raise BenchError(f"usage_log did not reach {want} rows within {timeout_s:g} s (flush_rows={want})")


# --- the report -------------------------------------------------------------------------------------------

_ANNOTATE_LINE = re.compile(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(.+?)(?: \[(.+)\])?$")


def annotate(dump: Path, out: Path) -> list[tuple[int, str, str]]:
    """`callgrind_annotate --threshold=100` of a dump, parsed (parse_annotate); its whole output is kept in `out`."""
    argv = ["callgrind_annotate", "--threshold=100", "--auto=no", str(dump)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    out.write_text(done.stdout + done.stderr)
    return parse_annotate(done.stdout)


def parse_annotate(text: str) -> list[tuple[int, str, str]]:
    """Every function line of callgrind_annotate's output as (exclusive Ir, function, object file name), in its
    order (most first). A line without `[object]` (code inlined from a header) names the source file instead."""
    rows = []
    in_functions = False
    for line in text.splitlines():
        if "file:function" in line:
            in_functions = True
            continue
        if in_functions and (match := _ANNOTATE_LINE.match(line)):
            source, _, function = match[2].rpartition(":")
            rows.append((int(match[1].replace(",", "")), function, Path(match[3] or source).name))
    return rows


def top_functions(rows: list[tuple[int, str, str]], requests: int, limit: int = TOP) -> list[tuple[str, float]]:
    """The `limit` functions with the most instructions of their own (exclusive), per request."""
    return [(f"{function} ({obj})", ir / requests) for ir, function, obj in rows[:limit]]


def by_object(rows: list[tuple[int, str, str]], requests: int) -> dict[str, float]:
    """Instructions per request summed per shared object (libpython, aiohttp's and orjson's extensions, libc...).

    Code inlined from CPython's headers (object.h, pycore_frame.h...) is listed by callgrind under the header,
    without an object: it is counted as libpython's.
    """
    python = next((obj for _, _, obj in rows if obj.startswith("libpython")), "libpython")
    sums: dict[str, float] = {}
    for ir, _, obj in rows:
        name = python if obj.endswith((".h", ".c")) else obj
        sums[name] = sums.get(name, 0.0) + ir / requests
    return sums


def render(targets: Sequence[Target], cases: Sequence[Case], args: argparse.Namespace, run_dir: Path) -> str:
    """Markdown: instructions per request per case and target, the target verdict, top functions, objects."""
    by_name = {t.name: t for t in targets}
    floor, gateway = by_name["floor"], by_name["gateway"]
    others = [t for t in targets if t.name not in ("floor", "gateway")]
    header = ["case", "floor", "gateway", "gw/floor"]
    for other in others:
        header += [other.name, f"{other.name.partition('@')[2] or other.name}/floor"]
    rows = []
    for case in cases:
        f, g = floor.per_request[case.key], gateway.per_request[case.key]
        row = [case.title, f"{f:,.0f}", f"{g:,.0f}", f"{g / f:.2f}"]
        for other in others:
            o = other.per_request[case.key]
            row += [f"{o:,.0f}", f"{o / f:.2f}"]
        rows.append(row)
    parts = [
        f"## Instructions per request (callgrind, {args.requests} sequential requests per case after {args.warmup} "
        f"uncounted; gateway {servers.gateway_revision()}; {servers.machine()}; "
        f"load average {servers.load_average()})",
        table(header, rows),
    ]
    if "messages" in floor.per_request:
        ratio = gateway.per_request["messages"] / floor.per_request["messages"]
        word = "PASS" if ratio <= MAX_RATIO else "MISS"
        target = f"/v1/messages gateway ≤ {MAX_RATIO:g}x the floor's instructions per request"
        parts.append(f"Target: {target}: {ratio:.2f}x {word}")
    case = "messages" if "messages" in floor.per_request else cases[0].key
    title = CASE_BY_KEY[case].title
    annotated = [annotate(t.dump_files[case], run_dir / f"{t.name}.{case}.annotate.txt") for t in targets]
    tops = [top_functions(lines, args.requests) for lines in annotated]
    top_header = ["#"]
    for t in targets:
        top_header += [f"{t.name} function", "Ir/req"]
    top_rows = []
    for i in range(TOP):
        row = [str(i + 1)]
        for top in tops:
            row += [top[i][0], f"{top[i][1]:,.0f}"] if i < len(top) else ["", ""]
        top_rows.append(row)
    objects = [by_object(lines, args.requests) for lines in annotated]
    names = sorted(set().union(*objects), key=lambda o: -max(sums.get(o, 0.0) for sums in objects))[:TOP]
    object_rows = [[name, *(f"{sums.get(name, 0.0):,.0f}" for sums in objects)] for name in names]
    parts += [
        f"## Top {TOP} functions, {title} (exclusive instructions per request)",
        table(top_header, top_rows),
        f"## Instructions per request by shared object, {title}",
        table(["object", *(t.name for t in targets)], object_rows),
        f"(dumps and callgrind_annotate output: {run_dir})",
    ]
    return "\n\n".join(parts)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python bench/instructions.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=500, help="counted requests per case (default 500)")
    parser.add_argument("--warmup", type=int, default=100, help="uncounted requests before them (default 100)")
    parser.add_argument("--cases", nargs="+", choices=list(CASE_BY_KEY), help="default: every case")
    parser.add_argument("--compare", metavar="REV", help="also count REV's gateway (git archive into a temp dir)")
    parser.add_argument("--log-off", action="store_true", help="also count this gateway at log level warning")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate"):
        if shutil.which(tool) is None:
            print(f"bench/instructions.py: {tool} not found (apt-get install valgrind)", file=sys.stderr)
            return 1
    run_dir = servers.BENCH_DIR / "results" / time.strftime("instructions-%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"dumps and logs: {run_dir}", file=sys.stderr, flush=True)
    db = asyncio.run(open_database())
    try:
        with contextlib.ExitStack() as stack:
            measurement = Measurement(args, db, run_dir, stack)
            targets = measurement.run()
            print(render(targets, measurement.cases, args, run_dir))
    except BenchError as exc:
        print(f"bench/instructions.py: {exc}", file=sys.stderr)
        return 1
    finally:
        if db.drop is not None:
            asyncio.run(db.drop())
    return 0


if __name__ == "__main__":
    sys.exit(main())
