"""A TCP proxy in front of the test PostgreSQL that a test can cut and restore: a database outage on demand."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import parse_qs, urlsplit, urlunsplit


def upstream_of(dsn: str) -> tuple[str, int] | str:
    """Where a DSN connects: (host, port) for TCP, or the unix socket's path."""
    parts = urlsplit(dsn)
    query_host = parse_qs(parts.query).get("host", [None])[0]
    port = parts.port or int(parse_qs(parts.query).get("port", ["5432"])[0])
    if query_host and query_host.startswith("/"):
        return f"{query_host}/.s.PGSQL.{port}"
    return (parts.hostname or "127.0.0.1", port)


def through(dsn: str, port: int) -> str:
    """The same DSN, connecting to the proxy on 127.0.0.1:`port` instead."""
    parts = urlsplit(dsn)
    user = f"{parts.username}@" if parts.username else ""
    if parts.password:
        user = f"{parts.username}:{parts.password}@"
    return urlunsplit(("postgresql", f"{user}127.0.0.1:{port}", parts.path, "", ""))


class TcpProxy:
    def __init__(self, target: tuple[str, int] | str) -> None:
        self._target = target
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        self._answering = asyncio.Event()
        self._answering.set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if isinstance(self._target, str):
            return await asyncio.open_unix_connection(self._target)
        return await asyncio.open_connection(*self._target)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await self._open()
        except OSError:
            client_w.close()
            return
        self._writers |= {client_w, server_w}
        await asyncio.gather(self._pipe(client_r, server_w), self._pipe(server_r, client_w))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                await self._answering.wait()
                writer.write(data)
                await writer.drain()
        writer.close()
        self._writers.discard(writer)

    async def cut(self) -> None:
        """The database is gone: established connections drop, new ones are refused."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def freeze(self) -> None:
        """The database stops answering, its connections open (a hung host, a full disk): nothing is relayed."""
        self._answering.clear()

    def thaw(self) -> None:
        self._answering.set()

    async def restore(self) -> None:
        await self.start()

    async def close(self) -> None:
        self.thaw()
        await self.cut()
