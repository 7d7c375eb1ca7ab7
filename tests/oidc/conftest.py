"""Fixtures: the test OpenID provider (tests/oidc/provider.py) and a gateway whose `sso:` / `caller_jwt:` use it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from gateway.app import build_app
from tests.conftest import gateway_config
from tests.fakes.upstream import FakeUpstream
from tests.net import free_port
from tests.oidc.provider import CALLER_AUDIENCE, CLIENT_ID, CLIENT_SECRET, MANAGEMENT_AUDIENCE, SECRET_ENV, OidcProvider

ROLES = {"gateway-admins": "admin", "team-leads": "team_admin", "finance": "viewer", "developers": "user"}


def sso_section(idp: OidcProvider, **overrides: Any) -> dict[str, Any]:
    """The `sso:` section the README shows, for the test provider."""
    return {
        "issuer": idp.issuer,
        "client_id": CLIENT_ID,
        "client_secret_env": SECRET_ENV,
        "redirect_url": idp.redirect_url,
        "scopes": ["openid", "email", "groups"],
        "role_claim": "groups",
        "roles": ROLES,
        "team_claim": "team",
        "api_audience": MANAGEMENT_AUDIENCE,
        "jwks_min_refetch_s": 0,
        **overrides,
    }


def caller_section(idp: OidcProvider, **overrides: Any) -> dict[str, Any]:
    return {
        "issuer": idp.issuer,
        "audience": CALLER_AUDIENCE,
        "user_claim": "email",
        "jwks_min_refetch_s": 0,
        **overrides,
    }


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    """One provider for a test module (its keys never change: rotation tests use `rotating_idp`)."""
    provider = OidcProvider(tmp_path_factory.mktemp("oidc"), free_port())
    provider.start()
    yield provider
    provider.stop()


@pytest.fixture
def rotating_idp(tmp_path: Path) -> Iterator[OidcProvider]:
    """A provider of the test's own, free to rotate its keys."""
    provider = OidcProvider(tmp_path, free_port())
    provider.start()
    yield provider
    provider.stop()


StartGateway = Callable[..., Awaitable[TestServer]]


@pytest.fixture
async def start_gateway(
    database_url: str, upstream: FakeUpstream, pool: asyncpg.Pool, tmp_path: Path
) -> AsyncIterator[StartGateway]:
    """A gateway on the port the provider's client was registered with (its redirect URL names it)."""
    servers: list[TestServer] = []

    async def start(idp: OidcProvider, *, sso: dict[str, Any] | None, caller: dict[str, Any] | None) -> TestServer:
        cfg = gateway_config(
            upstream.url,
            usage_log={"spill_dir": str(tmp_path / "spill")},
            sso=sso,
            caller_jwt=caller,
            environ={SECRET_ENV: CLIENT_SECRET},
        )
        server = TestServer(build_app(cfg, dsn=database_url), host="127.0.0.1", port=idp.gateway_port)
        await server.start_server()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()
