"""Soak: many clients for minutes against a slow, flaky upstream, some of them hanging up mid-stream.

    python bench/soak.py        # c=200 for 120 s, upstream 50 ms + 20 ms between events, 5 % 529s, 5 % hang-ups
    python bench/soak.py --duration 20 --concurrency 50

Starts the project's fake upstream (FAKE_LATENCY_MS, FAKE_FAIL_RATE), a fresh PostgreSQL database (DATABASE_URL,
127.0.0.1:5432 or the embedded server, as the tests find it) and `gateway serve` with retries on; then drives it
and reports: outcomes by status, unexpected errors (anything but 200, a 529 that outlived the retries, or our own
hang-ups), latency percentiles, and whether usage rows == requests that reached the gateway's relay.
Exits non-zero when there were unexpected errors or the usage rows do not match.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.pg import create_test_database  # noqa: E402

BODY = {"model": "claude-fast", "max_tokens": 256, "messages": [{"role": "user", "content": "Say hi in five words."}]}
EXPECTED = {200, 529}  # 529: every retry of the request met an injected overload; it is the upstream's answer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_ready(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            try:
                async with s.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not become ready")


async def run_cmd(*args: str, env: dict[str, str]) -> str:
    proc = await asyncio.create_subprocess_exec(*args, env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}")
    return out.decode().strip()


class Tally:
    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.sent = 0  # requests the gateway accepted (every one reaches its relay: the key is valid)

    def summary(self) -> str:
        lat = sorted(self.latencies) or [0.0]
        q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [lat[0]] * 99
        outcomes = ", ".join(f"{k}: {v}" for k, v in sorted(self.outcomes.items()))
        return f"{outcomes}\nlatency ms p50 {q[49] * 1000:.1f}  p90 {q[89] * 1000:.1f}  p99 {q[98] * 1000:.1f}"


async def one_request(s: aiohttp.ClientSession, url: str, key: str, tally: Tally, hang_up_rate: float) -> None:
    stream = random.random() < 0.7
    hang_up = stream and random.random() < hang_up_rate
    started = time.perf_counter()
    tally.sent += 1
    try:
        async with s.post(url, json={**BODY, "stream": stream}, headers={"x-api-key": key}) as r:
            if hang_up and r.status == 200:
                await r.content.readline()
                r.close()  # the client goes away mid-stream
                tally.outcomes["hang-up (ours)"] += 1
                return
            data = await r.read()
            ok = r.status != 200 or not stream or b"event: message_stop" in data
            tally.outcomes[str(r.status) if ok else "200 truncated"] += 1
    except (TimeoutError, aiohttp.ClientError) as exc:
        tally.outcomes[f"client error {type(exc).__name__}"] += 1
        return
    tally.latencies.append(time.perf_counter() - started)


async def drive(url: str, key: str, concurrency: int, duration_s: float, hang_up_rate: float) -> Tally:
    tally, deadline = Tally(), time.monotonic() + duration_s
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as s:

        async def worker() -> None:
            while time.monotonic() < deadline:
                await one_request(s, url, key, tally, hang_up_rate)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tally


def gateway_yaml(path: Path, *, dsn: str, upstream: str, port: int) -> None:
    path.write_text(
        f"server: {{port: {port}, max_concurrency: 5000}}\n"
        f"database: {{url: '{dsn}', pool_max: 10}}\n"
        f"providers: {{anthropic: {{base_url: '{upstream}', api_key: soak,"
        " retries: {attempts: 3, backoff_s: 0.05, max_backoff_s: 0.5, budget_s: 10, cooldown_after: 1000}}}\n"
        "models: {claude-fast: {provider: anthropic, model: claude-haiku-4-5}}\n"
        "pricing: {claude-haiku-4-5: {input: 1, output: 5, cache_write: 1.25, cache_read: 0.1}}\n"
        f"usage_log: {{spill_dir: '{path.parent}/spill'}}\n"
        "logging: {format: json, level: warning}\n"
    )


async def soak(args: argparse.Namespace) -> int:
    dsn, drop = await create_test_database()
    work = Path(tempfile.mkdtemp(prefix="gateway-soak-"))
    fake_port, gw_port = free_port(), free_port()
    env = {
        **os.environ,
        "FAKE_LATENCY_MS": str(args.latency_ms),
        "FAKE_CHUNK_DELAY_MS": str(args.chunk_delay_ms),  # streams last long enough to be hung up on
        "FAKE_FAIL_RATE": str(args.fail_rate),
    }
    env = {k: v for k, v in env.items() if not k.startswith(("GATEWAY_", "ANTHROPIC_", "DATABASE_URL"))}
    procs: list[asyncio.subprocess.Process] = []
    try:
        fake = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.fakes.upstream", "--port", str(fake_port), cwd=ROOT, env=env,
            stdout=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(fake)
        upstream = f"http://127.0.0.1:{fake_port}"
        await wait_ready(f"{upstream}/health")
        config = work / "gateway.yaml"
        gateway_yaml(config, dsn=dsn, upstream=upstream, port=gw_port)
        gateway = [sys.executable, "-m", "gateway", "--config", str(config)]
        key = await run_cmd(*gateway, "keys", "create", "--name", "soak", "--quiet", env=env)
        server = await asyncio.create_subprocess_exec(*gateway, "serve", cwd=ROOT, env=env)
        procs.append(server)
        base = f"http://127.0.0.1:{gw_port}"
        await wait_ready(f"{base}/health")

        print(f"soak: c={args.concurrency} for {args.duration}s, upstream {args.latency_ms} ms, "
              f"{args.fail_rate:.0%} 529s, {args.hang_up_rate:.0%} of streams hung up", flush=True)  # fmt: skip
        tally = await drive(f"{base}/v1/messages", key, args.concurrency, args.duration, args.hang_up_rate)
        server.send_signal(signal.SIGTERM)  # graceful: flushes the usage queue
        exit_code = await asyncio.wait_for(server.wait(), 60)
        async with aiohttp.ClientSession() as s, s.get(f"{upstream}/_stats") as r:
            upstream_hits = (await r.json())["requests"]
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetchval("SELECT count(*) FROM usage_log")
            by_status = dict(await conn.fetch("SELECT status, count(*) FROM usage_log GROUP BY 1 ORDER BY 1"))
        finally:
            await conn.close()
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await drop()

    unexpected = {k: v for k, v in tally.outcomes.items() if not (k in {"200", "529"} or k.startswith("hang-up"))}
    rows_ok = rows == tally.sent
    print(tally.summary())
    print(f"requests sent {tally.sent}; upstream hits (retries included) {upstream_hits}; usage rows {rows} "
          f"by status {by_status}; gateway exit code {exit_code}")  # fmt: skip
    print(f"unexpected errors: {sum(unexpected.values())} {unexpected or ''}")
    print(f"usage rows == requests: {'PASS' if rows_ok else 'FAIL'}")
    return 0 if rows_ok and not unexpected and exit_code == 0 else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=120)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--chunk-delay-ms", type=float, default=20)
    parser.add_argument("--fail-rate", type=float, default=0.05)
    parser.add_argument("--hang-up-rate", type=float, default=0.05)
    sys.exit(asyncio.run(soak(parser.parse_args())))


if __name__ == "__main__":
    main()
