"""Before and after in one run: gateways from several source trees, one fake upstream, one database, one case.

    python bench/ab.py [--case chat_stream] [--reps 8] [--duration 5] NAME=REV_OR_PATH NAME=REV_OR_PATH ...

Each NAME is a `gateway serve` whose code comes from a directory (NAME=/path/to/a/tree) or from a git revision
of this repository (NAME=HEAD~3, extracted with `git archive`). They share the fake upstream, the database and
the key, and take turns per repetition (the order reversed every other one) at c=50 and c=1, so load from
anything else on the machine falls on all of them alike. Prints the medians and each name's difference from
the first: requests per second, and CPU milliseconds per request of the server's process tree, the steadier
figure when other processes share the cores. Used for the aiohttp-sse decision (README, design).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if sys.path[0] == str(REPO / "bench"):  # run as a script: the repo root makes `bench` and `tests` importable
    sys.path[0] = str(REPO)

from bench import servers  # noqa: E402
from bench.cases import CASE_BY_KEY  # noqa: E402
from bench.database import open_database  # noqa: E402
from bench.load import LoadSpec, run_load, wrk_available  # noqa: E402

CONCURRENCIES = (50, 1)
Sample = tuple[float, float]  # rps, CPU ms per request


async def _finish(pending: Awaitable[None]) -> None:
    await pending


def source_tree(spec: str, scratch: Path) -> Path:
    """A directory with the gateway's code: `spec` itself if it is one, else a git revision extracted there."""
    if Path(spec).is_dir():
        return Path(spec).resolve()
    tree = scratch / spec.replace("/", "_")
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", spec], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def start(name: str, tree: Path, config: Path, run_dir: Path) -> servers.Server:
    """`gateway serve` with `tree` ahead of the installed checkout on PYTHONPATH."""
    port = servers.free_port()
    argv = [*servers.gateway_command(), "serve", "--config", str(config), "--port", str(port), "--workers", "1"]
    env = {"PYTHONPATH": str(tree)}
    return servers.spawn(name, argv, port, run_dir, health="/health", env=env, unset=servers.BUDGET_ENV)


def measure(server: servers.Server, spec: LoadSpec, use_wrk: bool) -> Sample:
    cpu_before = server.cpu_seconds()
    load = run_load(spec, use_wrk=use_wrk)
    if load.errors or load.non2xx:
        raise servers.BenchError(f"{server.name}: {load.errors} errors, {load.non2xx} non-2xx; see {server.log}")
    return load.rps, (server.cpu_seconds() - cpu_before) * 1000 / max(load.requests, 1)


def report(samples: dict[tuple[str, int], list[Sample]], names: Sequence[str]) -> str:
    lines = [
        "| name | c | median rps | vs first | median CPU ms/req | vs first |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for conc in CONCURRENCIES:
        base_rps, base_cpu = (statistics.median(s[i] for s in samples[(names[0], conc)]) for i in (0, 1))
        for name in names:
            rps, cpu = (statistics.median(s[i] for s in samples[(name, conc)]) for i in (0, 1))
            lines.append(
                f"| {name} | {conc} | {rps:.1f} | {rps / base_rps - 1:+.1%} | {cpu:.3f} | {cpu / base_cpu - 1:+.1%} |"
            )
    return "\n".join(lines)


def run(args: argparse.Namespace, run_dir: Path, scratch: Path, stack: contextlib.ExitStack) -> str:
    trees = {name: source_tree(spec, scratch) for name, spec in (a.split("=", 1) for a in args.trees)}
    db = asyncio.run(open_database())
    if (drop := db.drop) is not None:
        stack.callback(lambda: asyncio.run(_finish(drop())))
    fake = servers.start_fake(run_dir)
    stack.callback(fake.stop)
    config = servers.write_gateway_config(run_dir / "gateway.yaml", dsn=db.dsn, upstream=fake.url)
    key = servers.create_key(config)
    gateways = {}
    for name, tree in trees.items():
        gateways[name] = start(name, tree, config, run_dir)
        stack.callback(gateways[name].stop)
    case, use_wrk = CASE_BY_KEY[args.case], wrk_available()
    specs = {
        (name, conc): LoadSpec(gw.url + case.path, case.body, case.headers(key), conc, args.duration)
        for name, gw in gateways.items()
        for conc in CONCURRENCIES
    }
    for gw in gateways.values():  # warm-up: bcrypt once per key, connection pools filled
        measure(gw, LoadSpec(gw.url + case.path, case.body, case.headers(key), 10, 2), use_wrk)
    samples: dict[tuple[str, int], list[Sample]] = {k: [] for k in specs}
    names = list(gateways)
    for rep in range(args.reps):
        for conc in CONCURRENCIES:
            for name in names if rep % 2 == 0 else names[::-1]:
                rps, cpu = measure(gateways[name], specs[(name, conc)], use_wrk)
                samples[(name, conc)].append((rps, cpu))
                print(f"rep {rep} {name} c={conc}: {rps:8.1f} rps {cpu:.3f} CPU ms/req", file=sys.stderr, flush=True)
                time.sleep(0.5)
    return report(samples, names)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/ab.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", default="chat_stream", choices=sorted(CASE_BY_KEY))
    parser.add_argument("--reps", type=int, default=8, help="turns per gateway and concurrency (default 8)")
    parser.add_argument("--duration", type=int, default=5, help="seconds per load run (default 5)")
    parser.add_argument("trees", nargs="+", metavar="NAME=REV_OR_PATH")
    args = parser.parse_args(argv)
    run_dir = servers.BENCH_DIR / "results" / f"ab-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True)
    try:
        with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as stack:
            print(run(args, run_dir, Path(scratch), stack))
    except servers.BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
