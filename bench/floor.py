"""The project's performance floor: the thinnest aiohttp proxy that does what any gateway must.

For POST /v1/messages and /v1/chat/completions it reads the body, parses it as JSON (a gateway has to look
at `model` and `stream` at least), forwards it to the same path upstream with one shared ClientSession,
and relays the answer: whole, or a stream chunk by chunk as it arrives. No auth, no database, no logging,
no translation (chat goes to the upstream's own OpenAI endpoint). Whatever the gateway costs on top of
this is its own work.

    python bench/floor.py --port 9300 --upstream http://127.0.0.1:9100

It parses with orjson, as the gateway does: with the stdlib `json` the floor would be slower on the
77.6 KB Claude Code body and flatter the gateway.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator

import aiohttp
import orjson
from aiohttp import web

UPSTREAM = web.AppKey("upstream", str)
SESSION = web.AppKey("session", aiohttp.ClientSession)
# Hop-by-hop and framing headers: aiohttp writes its own.
HOP = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive", "accept-encoding"})


async def proxy(request: web.Request) -> web.StreamResponse:
    """Forward the request to the same path upstream and relay the reply."""
    raw = await request.read()
    body = orjson.loads(raw)
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
    url = request.app[UPSTREAM] + request.path_qs
    async with request.app[SESSION].post(url, data=raw, headers=headers) as up:
        content_type = up.headers.get("Content-Type", "application/json")
        if not body.get("stream"):
            return web.Response(body=await up.read(), status=up.status, headers={"Content-Type": content_type})
        resp = web.StreamResponse(status=up.status, headers={"Content-Type": content_type, "Cache-Control": "no-cache"})
        await resp.prepare(request)
        async for chunk in up.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        return resp


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def session_ctx(app: web.Application) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        app[SESSION] = session
        yield


def build_app(upstream: str) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[UPSTREAM] = upstream.rstrip("/")
    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/v1/messages", proxy)
    app.router.add_post("/v1/chat/completions", proxy)
    app.router.add_get("/health", health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "9300")))
    parser.add_argument("--upstream", default=os.environ.get("UPSTREAM", "http://127.0.0.1:9100"))
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a gateway dependency
        loop = None
    else:
        loop = uvloop.new_event_loop()
    web.run_app(build_app(args.upstream), host=args.host, port=args.port, access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    main()
