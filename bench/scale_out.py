"""Replicas and the Redis rate-limit check: what they cost and what they give, in two short measurements.

    python bench/scale_out.py                 # about 25 s
    python bench/scale_out.py --duration 5    # seconds per run

1. p50 at c=1 of POST /v1/messages on one gateway without rate limits and on one whose every request is
   checked in Redis (a limit no run reaches), alternating A B A B A B (medians): the difference is what
   the Lua round trip adds (target: under 0.2 ms); then the p50 of the check alone, 2000 calls back to
   back in this process.
   On a busy machine the end-to-end figure also holds one more process wake-up (Redis) per request,
   which costs whatever the scheduler makes it cost; the check alone does not.
2. rps at c=50 of one replica reached directly, and of three replicas behind HAProxy (round robin,
   `http-server-close` as in config/scale/haproxy.cfg). On a 2-core machine three replicas, the load
   generator, HAProxy, the fake upstream and PostgreSQL share the cores, so this shows the cost of the hop
   and that nothing serialises across replicas, not the scaling a bigger machine gets.

Needs haproxy (apt-get install haproxy) and a Redis on 127.0.0.1:6379 (or REDIS_URL).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import loadgen
from bench.database import open_database
from bench.servers import (
    BENCH_DIR,
    Server,
    create_key,
    free_port,
    spawn,
    start_fake,
    start_gateway,
    write_gateway_config,
)
from gateway.config import RateLimit
from gateway.rate_limits.limiter import Scope
from gateway.rate_limits.redis_limiter import RedisLimiter

CHECKS = 2000


async def check_alone(redis: str) -> float:
    """p50 (ms) of RedisLimiter.acquire alone, back to back: the Lua round trip without the HTTP path."""
    limiter = RedisLimiter(redis, prefix=f"gw-bench:{os.getpid()}:", timeout_s=1.0, fail_closed=True)
    scopes = [Scope("key:1", RateLimit(requests_per_minute=10**9))]
    try:
        for _ in range(200):
            await limiter.acquire(scopes)
        times = []
        for _ in range(CHECKS):
            started = time.perf_counter()
            await limiter.acquire(scopes)
            times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times)
    finally:
        await limiter.aclose()


BODY = (BENCH_DIR / "bodies" / "anthropic_nonstream.json").read_bytes()
RESULT = re.compile(r"rps=(\S+) p50_ms=(\S+)")


def gateway_yaml(path: Path, dsn: str, upstream: str, redis: str | None) -> Path:
    write_gateway_config(path, dsn=dsn, upstream=upstream)
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    doc["rate_limits"] = (
        {"redis_url": redis, "key_prefix": "gw-bench:", "key": {"requests_per_minute": 10**9}}
        if redis
        else {"redis_url": ""}
    )
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def start_haproxy(ports: list[int], work: Path) -> Server:
    port = free_port()
    servers = "".join(f"  server g{i} 127.0.0.1:{p}\n" for i, p in enumerate(ports))
    config = work / "haproxy.cfg"
    config.write_text(
        "global\n  maxconn 5000\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n"
        "  timeout server 30s\n  option http-server-close\n"
        f"frontend in\n  bind 127.0.0.1:{port}\n  default_backend g\nbackend g\n  balance roundrobin\n{servers}"
    )
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    return spawn("haproxy", [haproxy, "-f", str(config), "-db"], port, work, health="/health", env={})


async def measure(url: str, key: str, conc: int, duration_s: float) -> tuple[float, float]:
    headers = {"Content-Type": "application/json", "x-api-key": key, "anthropic-version": "2023-06-01"}
    line = await loadgen.run(f"{url}/v1/messages", BODY, headers, conc, duration_s)
    match = RESULT.search(line)
    assert match, line
    if " status=0 " not in line or " read=0 " not in line:
        raise SystemExit(f"errors in the run: {line}")
    return float(match[1]), float(match[2])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per run")
    args = parser.parse_args()
    redis = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    work = Path(tempfile.mkdtemp(prefix="gw-bench-scale-"))
    database = await open_database()
    servers: list[Server] = []
    try:
        fake = start_fake(work)
        servers.append(fake)
        plain = gateway_yaml(work / "plain.yaml", database.dsn, fake.url, None)
        limited = gateway_yaml(work / "limited.yaml", database.dsn, fake.url, redis)
        key = create_key(plain)
        one = start_gateway(plain, work, name="plain")
        checked = start_gateway(limited, work, name="limited")
        servers += [one, checked]
        for server in (one, checked):
            await measure(server.url, key, 1, 1.0)  # warm-up: bcrypt once per key, pools filled

        p50s: dict[str, list[float]] = {"plain": [], "redis": []}
        for _ in range(3):
            p50s["plain"].append((await measure(one.url, key, 1, args.duration))[1])
            p50s["redis"].append((await measure(checked.url, key, 1, args.duration))[1])
        plain_p50, redis_p50 = statistics.median(p50s["plain"]), statistics.median(p50s["redis"])
        added = redis_p50 - plain_p50
        print(f"c=1 p50: no rate limit {plain_p50:.3f} ms, Redis rate limit {redis_p50:.3f} ms")
        alone = await check_alone(redis)
        print(f"  added end to end: {added:.3f} ms  [{'PASS' if added < 0.2 else 'MISS'} < 0.2 ms]")
        print(f"  the check alone ({CHECKS} back to back): p50 {alone:.3f} ms  [{'PASS' if alone < 0.2 else 'MISS'}]")

        checked.stop()
        replicas = [start_gateway(limited, work, name=f"replica-{i}") for i in range(3)]
        servers += replicas
        balancer = start_haproxy([int(r.url.rsplit(":", 1)[1]) for r in replicas], work)
        servers.append(balancer)
        await measure(balancer.url, key, 50, 1.0)
        single_rps = (await measure(replicas[0].url, key, 50, args.duration))[0]
        three_rps = (await measure(balancer.url, key, 50, args.duration))[0]
        print(f"c=50 rps: one replica {single_rps:.0f}, three behind HAProxy {three_rps:.0f}")
    finally:
        for server in reversed(servers):
            server.stop()
        if database.drop is not None:
            await database.drop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
