"""Time to first byte of a stream, gateway vs floor: sequential requests, interleaved, medians compared.

TTFB here is from sending the request to holding the first chunk of the response body (the first SSE event,
or more when they arrive together), as a client waiting for the first token sees it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from bench.servers import BenchError


@dataclass(frozen=True, slots=True)
class Endpoint:
    url: str
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Ttfb:
    gateway_ms: float  # median
    floor_ms: float  # median
    requests: int  # to each side

    @property
    def added_ms(self) -> float:
        return self.gateway_ms - self.floor_ms


async def probe(gateway: Endpoint, floor: Endpoint, body: bytes, requests: int) -> Ttfb:
    """`requests` streams to each side, alternating, each on its own kept-alive connection."""
    samples: dict[str, list[float]] = {"gateway": [], "floor": []}
    async with aiohttp.ClientSession() as session:
        for _ in range(requests):
            samples["floor"].append(await _first_byte_ms(session, floor, body))
            samples["gateway"].append(await _first_byte_ms(session, gateway, body))
    return Ttfb(statistics.median(samples["gateway"]), statistics.median(samples["floor"]), requests)


async def _first_byte_ms(session: aiohttp.ClientSession, endpoint: Endpoint, body: bytes) -> float:
    headers = {"Content-Type": "application/json", **endpoint.headers}
    started = time.perf_counter()
    async with session.post(endpoint.url, data=body, headers=headers) as resp:
        await resp.content.readany()
        first = time.perf_counter()
        await resp.read()
    if resp.status != 200:
        raise BenchError(f"TTFB probe: {endpoint.url} answered {resp.status}")
    return (first - started) * 1000
