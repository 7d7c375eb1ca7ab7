"""A closed-loop aiohttp load generator, used by bench/run.py where wrk is not installed.

C connections post the body back to back for D seconds; each reads its whole answer (a stream to its end).
Requests still running at the deadline are finished and counted, so the count is exact. Prints the same
RESULT line as wrk_post.lua.

    python bench/loadgen.py http://127.0.0.1:8000/v1/messages --body bench/bodies/anthropic_stream.json \\
        -c 50 -d 10 -H 'x-api-key: gw-...' -H 'anthropic-version: 2023-06-01'
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp


@dataclass(slots=True)
class Tally:
    latencies_ms: list[float] = field(default_factory=list)
    read_errors: int = 0
    connect_errors: int = 0
    timeouts: int = 0
    non2xx: int = 0


async def _worker(session: aiohttp.ClientSession, url: str, body: bytes, deadline: float, tally: Tally) -> None:
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        try:
            async with session.post(url, data=body) as resp:
                await resp.read()
                tally.non2xx += resp.status >= 400
        except aiohttp.ClientConnectorError:
            tally.connect_errors += 1
            continue
        except TimeoutError:
            tally.timeouts += 1
            continue
        except aiohttp.ClientError:
            tally.read_errors += 1
            continue
        tally.latencies_ms.append((time.perf_counter() - started) * 1000)


def _percentile(ordered: list[float], pct: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))] if ordered else 0.0


async def run(url: str, body: bytes, headers: dict[str, str], conc: int, duration_s: float) -> str:
    tally = Tally()
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=conc)
    async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout) as session:
        started = time.perf_counter()
        deadline = started + duration_s
        await asyncio.gather(*(_worker(session, url, body, deadline, tally) for _ in range(conc)))
        elapsed = time.perf_counter() - started
    lat = sorted(tally.latencies_ms)
    done = len(lat)  # non-2xx answers included, as wrk counts them
    return (
        f"RESULT rps={done / elapsed:.1f} p50_ms={_percentile(lat, 50):.3f} p90_ms={_percentile(lat, 90):.3f} "
        f"p99_ms={_percentile(lat, 99):.3f} max_ms={max(lat, default=0.0):.3f} reqs={done} "
        f"connect={tally.connect_errors} read={tally.read_errors} write=0 status={tally.non2xx} "
        f"timeout={tally.timeouts}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("--body", type=Path, required=True, help="file holding the JSON body")
    parser.add_argument("-c", type=int, default=50, help="connections")
    parser.add_argument("-d", type=float, default=10, help="seconds")
    parser.add_argument("-H", action="append", default=[], help="'Name: value' (repeatable)")
    args = parser.parse_args()
    headers = {"Content-Type": "application/json"}
    for raw in args.H:
        name, _, value = raw.partition(":")
        headers[name.strip()] = value.strip()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a gateway dependency
        runner = asyncio.run
    else:
        runner = uvloop.run
    print(runner(run(args.url, args.body.read_bytes(), headers, args.c, args.d)), flush=True)


if __name__ == "__main__":
    main()
