"""Measure the gateway under the attacks of issue 15, behind a real nginx, with production bcrypt cost.

    python bench/access.py [--seconds 8] [--slow-bodies 400] [--max-concurrency 200]

One `gateway serve` process (bcrypt 12 rounds, server.trusted_proxies 127.0.0.1/32, 20 failures a minute)
behind nginx (tests/fakes/reverse_proxy.py), the fake upstream, a fresh database (bench/database.py).
Clients bind their own loopback addresses, so nginx forwards one X-Forwarded-For address per client:

1. peak RSS (VmHWM) of the gateway after twelve concurrent 30 MB bodies with a wrong key (127.0.0.2);
2. a never-seen valid key (127.0.0.3) verified while 40 wrong secrets for a known prefix arrive at once
   (127.0.0.2), and the gateway's CPU seconds for it;
3. for `--seconds`: Mallory (127.0.0.2) floods wrong keys for Alice's prefix, Eve (127.0.0.4, another
   client behind the same proxy) holds `--slow-bodies` slow unauthenticated bodies open, and Alice (127.0.0.3)
   and Bob (127.0.0.2, Mallory's own address, another key) send requests one after another: their statuses.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if sys.path[0] == str(REPO / "bench"):
    sys.path[0] = str(REPO)

import aiohttp  # noqa: E402
import asyncpg  # noqa: E402

from bench.database import open_database  # noqa: E402
from gateway import db  # noqa: E402
from gateway.keys import generate_key, lookup_id_of  # noqa: E402
from tests.fakes.reverse_proxy import nginx_in_front  # noqa: E402
from tests.fakes.upstream import FakeUpstream  # noqa: E402
from tests.net import free_port  # noqa: E402

BODY = {"model": "claude-fast", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
JSON = {"Content-Type": "application/json"}


def client(address: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0), limit=0))


async def post(s: aiohttp.ClientSession, url: str, key: str, **kwargs: object) -> int:
    try:
        async with s.post(f"{url}/v1/messages", headers={"x-api-key": key, **JSON}, **kwargs) as r:  # type: ignore[arg-type]
            await r.read()
            return r.status
    except aiohttp.ClientError as exc:
        return -1 if not isinstance(exc, aiohttp.ServerDisconnectedError) else -2


def proc_field(pid: int, name: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def big_bodies(url: str, pid: int) -> None:
    before = proc_field(pid, "VmRSS")
    big = b'{"model": "claude-fast", "x": "' + b"a" * (30 * 1024 * 1024) + b'"}'
    async with client("127.0.0.2") as s:
        t0 = time.perf_counter()
        statuses = await asyncio.gather(
            *(post(s, url, "gw-0123456789abcdef_wrong", data=io.BytesIO(big)) for _ in range(12))
        )
        took = time.perf_counter() - t0
    print(
        f"1. twelve 30 MB bodies, wrong key: statuses {dict(collections.Counter(statuses))} in {took:.2f} s; "
        f"gateway RSS before {before:.0f} MB, peak (VmHWM) {proc_field(pid, 'VmHWM'):.0f} MB"
    )


async def fresh_key_under_guessing(url: str, pid: int, victim: str, fresh: str, alone: str) -> None:
    prefix = lookup_id_of(victim)
    async with client("127.0.0.2") as mallory, client("127.0.0.3") as alice:
        t0 = time.perf_counter()
        status = await post(alice, url, alone, json=BODY)
        print(
            f"2a. never-seen valid key, nothing else going on: {status} in {(time.perf_counter() - t0) * 1000:.0f} ms"
        )
        cpu0 = cpu_s(pid)
        guesses = [asyncio.create_task(post(mallory, url, f"gw-{prefix}_wrong{i}", json=BODY)) for i in range(40)]
        await asyncio.sleep(0.05)  # the guesses are in (and their bcrypts queued) before the valid key arrives
        t0 = time.perf_counter()
        status = await post(alice, url, fresh, json=BODY)
        took = time.perf_counter() - t0
        guessed = await asyncio.gather(*guesses)
        cpu = cpu_s(pid) - cpu0
    print(
        f"2b. never-seen valid key: {status} in {took * 1000:.0f} ms while 40 wrong secrets for a known prefix "
        f"got {dict(collections.Counter(guessed))}; gateway CPU for all of it {cpu:.2f} s"
    )


async def flood(url: str, nginx_port: int, seconds: float, slow: int, alice_key: str, bob_key: str) -> None:
    prefix = lookup_id_of(alice_key)
    writers = []
    for _ in range(slow):  # Eve: headers and one byte of a 100 kB body, then nothing
        _, w = await asyncio.open_connection("127.0.0.1", nginx_port, local_addr=("127.0.0.4", 0))
        w.write(
            b"POST /v1/messages HTTP/1.1\r\nHost: g\r\nContent-Type: application/json\r\n"
            b"x-api-key: gw-0123456789abcdef_wrong\r\nContent-Length: 100000\r\n\r\n{"
        )
        writers.append(w)
    stop = time.monotonic() + seconds
    counts: dict[str, collections.Counter[int]] = {n: collections.Counter() for n in ("mallory", "alice", "bob")}

    async def loop(name: str, s: aiohttp.ClientSession, key_for: object) -> None:
        i = 0
        while time.monotonic() < stop:
            key = key_for(i) if callable(key_for) else key_for
            counts[name][await post(s, url, str(key), json=BODY)] += 1
            i += 1

    async with client("127.0.0.2") as mallory, client("127.0.0.3") as alice, client("127.0.0.2") as bob:
        await asyncio.gather(
            *(loop("mallory", mallory, lambda i: f"gw-{prefix}_guess{i}") for _ in range(20)),
            loop("alice", alice, alice_key),
            loop("bob", bob, bob_key),
        )
    for w in writers:
        w.close()
    print(
        f"3. {seconds:g} s, {slow} slow unauthenticated bodies held open by Eve (127.0.0.4) and 20 parallel loops "
        f"of wrong keys by Mallory (127.0.0.2): mallory {dict(counts['mallory'])}, alice (127.0.0.3) "
        f"{dict(counts['alice'])}, bob (127.0.0.2, another key) {dict(counts['bob'])}"
    )


async def main(args: argparse.Namespace) -> None:
    database = await open_database()
    upstream = FakeUpstream()
    await upstream.start()
    tmp = Path(tempfile.mkdtemp(prefix="gw-access-"))
    port = free_port()
    config = tmp / "gateway.yaml"
    config.write_text(
        f"server: {{port: {port}, trusted_proxies: [127.0.0.1/32], max_concurrency: {args.max_concurrency}}}\n"
        f"database: {{url: '{database.dsn}'}}\n"
        f"providers: {{anthropic: {{base_url: '{upstream.url}', api_key: bench-upstream-key-0123456789}}}}\n"
        "models: {claude-fast: {provider: anthropic, model: claude-haiku-4-5}}\n"
        f"usage_log: {{spill_dir: '{tmp}/spill'}}\n"
        "logging: {format: json, level: warning}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "ANTHROPIC_", "DATABASE_URL"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "--config", str(config), "serve", cwd=REPO, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=(tmp / "gateway.log").open("w"),
    )  # fmt: skip
    try:
        async with nginx_in_front(port, tmp) as url:
            async with aiohttp.ClientSession() as s:
                for _ in range(200):
                    try:
                        async with s.get(f"{url}/health") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.05)
            pool = await asyncpg.create_pool(database.dsn, min_size=1, max_size=2)
            keys = {}
            for name in ("victim", "fresh", "alone", "alice", "bob"):
                new = await asyncio.to_thread(generate_key, 12)  # production cost
                await db.insert_key(pool, lookup_id=new.lookup_id, key_hash=new.key_hash, name=name, is_admin=False)
                keys[name] = new.plaintext
            await pool.close()
            print(f"gateway pid {proc.pid}, bcrypt 12 rounds, behind nginx at {url}")
            await big_bodies(url, proc.pid)
            await fresh_key_under_guessing(url, proc.pid, keys["victim"], keys["fresh"], keys["alone"])
            nginx_port = int(url.rsplit(":", 1)[1])
            await flood(url, nginx_port, args.seconds, args.slow_bodies, keys["alice"], keys["bob"])
    finally:
        proc.terminate()
        await proc.wait()
        await upstream.close()
        if database.drop is not None:
            await database.drop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--slow-bodies", type=int, default=400)
    parser.add_argument("--max-concurrency", type=int, default=200)
    asyncio.run(main(parser.parse_args()))
