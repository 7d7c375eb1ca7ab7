"""The access layer attacked again (issue a15): each test is one fault found by probing the merged gateway.

An attacker on the internet, a careless operator, a new user: odd header bytes, a database that hangs
instead of going away, an upstream that splits its echoed key across reads, IPv6 callers with a /64 each.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.state import SERVICES
from tests.conftest import GatewayFactory
from tests.fakes.tcp_proxy import TcpProxy, through, upstream_of

BODY = {"model": "claude-fast", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def db_proxy(database_url: str) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(upstream_of(database_url))
    await proxy.start()
    yield proxy
    await proxy.close()


async def post(server: TestServer, key: str) -> tuple[int, Any, float]:
    started = time.monotonic()
    async with (
        aiohttp.ClientSession() as s,
        s.post(str(server.make_url("/v1/messages")), json=BODY, headers={"x-api-key": key}) as r,
    ):
        return r.status, await r.json(), time.monotonic() - started


# --- the database hangs (rather than going away) during auth --------------------------------------------------


async def test_a_database_that_stops_answering_delays_a_known_key_by_the_lookup_timeout_only(
    make_gateway: GatewayFactory, db_proxy: TcpProxy, database_url: str, make_key: Any
) -> None:
    server = await make_gateway(dsn=through(database_url, db_proxy.port), auth={"cache_ttl_s": 0.1})
    known, _ = await make_key("known")
    unknown, _ = await make_key("unknown")
    assert (await post(server, known))[0] == 200  # verified once, now in the cache
    await server.app[SERVICES].usage_log.flush()  # written now: the lookup finds an idle connection, sends its query

    db_proxy.freeze()
    await asyncio.sleep(0.2)  # the verdict expires: the lookup goes to a database that never answers
    (status, _, took), (unknown_status, body, unknown_took) = await asyncio.gather(
        post(server, known), post(server, unknown)
    )
    assert status == 200 and took < 10  # before: 33 s (the query's timeout, then its cancel and the pool's reset)
    assert unknown_status == 503 and "database is unreachable" in body["error"]["message"] and unknown_took < 10
