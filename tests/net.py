"""Loopback helpers the tests that start real servers share: a free port, and waiting for /health."""

from __future__ import annotations

import asyncio
import socket

import aiohttp


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_healthy(session: aiohttp.ClientSession, base_url: str, *, timeout_s: float = 10.0) -> None:
    """Poll GET {base_url}/health until it answers 200; AssertionError after `timeout_s` seconds."""
    for _ in range(int(timeout_s / 0.05)):
        try:
            async with session.get(f"{base_url}/health") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"the gateway at {base_url} did not become healthy within {timeout_s:g} s")
