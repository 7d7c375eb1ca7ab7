"""A real nginx (or HAProxy) in front of a gateway, as the README tells operators to run it, on a free loopback port.

Debian's nginx (`/usr/sbin/nginx`; `.ci/run` installs it). The config is generated in the test's tmp_path and
mirrors the README's: X-Forwarded-For appended, responses unbuffered for event streams, and request bodies
passed on as they arrive (`proxy_request_buffering off`), the harder case for the gateway: nginx does not
absorb a slow or huge body for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.net import free_port

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)
HAPROXY = shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy",) if os.path.exists(p)), None)

HAPROXY_CONFIG = """
global
    maxconn 4096
defaults
    mode http
    option forwardfor
    timeout connect 5s
    timeout client 60s
    timeout server 600s
frontend gateway
    bind 127.0.0.1:{port}
    default_backend gateway
backend gateway
    server gw1 127.0.0.1:{backend_port}
"""

CONFIG = """
daemon off;
worker_processes 1;
{user}
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    client_max_body_size 64m;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{backend_port};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


@contextlib.asynccontextmanager
async def nginx_in_front(backend_port: int, tmp_path: Path) -> AsyncIterator[str]:
    """Run nginx proxying to 127.0.0.1:`backend_port`; yields its base URL. Skips when nginx is not installed."""
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install nginx; .ci/run does) : the reverse-proxy tests need it")
    directory = tmp_path / "nginx"
    directory.mkdir()
    port = free_port()
    user = "user root;" if os.geteuid() == 0 else ""  # as root, workers would otherwise switch to nobody
    config = directory / "nginx.conf"
    config.write_text(CONFIG.format(tmp=directory, port=port, backend_port=backend_port, user=user))
    proc = await asyncio.create_subprocess_exec(
        NGINX, "-e", str(directory / "error.log"), "-c", str(config), "-p", str(directory),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await _wait_listening(port, proc, "nginx")
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


@contextlib.asynccontextmanager
async def haproxy_in_front(backend_port: int, tmp_path: Path) -> AsyncIterator[str]:
    """Run HAProxy (`option forwardfor`) proxying to 127.0.0.1:`backend_port`; yields its URL. Skips without it."""
    if HAPROXY is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy; .ci/run does): this test needs it")
    port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(HAPROXY_CONFIG.format(port=port, backend_port=backend_port))
    proc = await asyncio.create_subprocess_exec(
        HAPROXY, "-db", "-f", str(config), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        await _wait_listening(port, proc, "haproxy")
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


async def _wait_listening(port: int, proc: asyncio.subprocess.Process, name: str) -> None:
    for _ in range(100):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if proc.returncode is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}") from None
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on {port}")
