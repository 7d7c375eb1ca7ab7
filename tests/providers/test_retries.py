"""Retries, backoff, Retry-After, fallbacks and cool-downs (gateway/retry_policy.py), try by try.

Each case scripts what the primary and the backup deployment answer, in order, and checks who served the
request, how many tries each deployment got, and how long the gateway chose to wait between them. The waits
are recorded instead of slept (asyncio.sleep in gateway/retry_policy.py only), so the table runs in milliseconds.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses

import gateway.retry_policy
from gateway.errors import GatewayError, ProviderRefusedCredentials, UpstreamTimeout, UpstreamUnreachable
from gateway.metrics import Metrics
from gateway.pipeline import Target
from gateway.retry_policy import send_with_fallbacks
from gateway.stages.route import RouteToProvider
from tests.providers.conftest import BACKUP_URL, MESSAGES_URL, call, gateway_config, providers, target, tries

Answer = dict[str, Any]  # aioresponses.post keyword arguments: status, body, headers, exception


def status(code: int, **headers: str) -> Answer:
    return {
        "status": code,
        "payload": {"type": "error", "error": {"type": "api_error", "message": f"e{code}"}},
        "headers": headers,
    }


OK: Answer = {"status": 200, "payload": {"type": "message", "content": []}}
REFUSED: Answer = {"exception": aiohttp.ClientConnectionError("refused")}
TIMEOUT: Answer = {"exception": TimeoutError()}
GONE: Answer = {"exception": aiohttp.ServerDisconnectedError()}


def http_date(seconds_from_now: float) -> Callable[[], str]:
    """Retry-After as an HTTP date, `seconds_from_now` from when the test runs (not from collection)."""
    return lambda: format_datetime(datetime.now(UTC) + timedelta(seconds=seconds_from_now), usegmt=True)


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The delays gateway/retry_policy.py sleeps between tries, recorded rather than slept."""
    slept: list[float] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)

    monkeypatch.setattr(gateway.retry_policy, "asyncio", SimpleNamespace(sleep=sleep))
    return slept


class Sender:
    """Sends one request for `claude-fast` the way the relays do, through the route stage's targets."""

    def __init__(self, session: aiohttp.ClientSession, **retries: Any) -> None:
        cfg = gateway_config(**retries)
        self.route = RouteToProvider(cfg.models, providers(cfg, session), cfg.routing, cfg.providers)
        self.metrics = Metrics()

    async def primary(self) -> Target:
        return await target("claude-fast", self.route)

    async def send(self) -> tuple[Target, Any]:
        return await send_with_fallbacks(await self.primary(), lambda _: call(), self.metrics)


@pytest.fixture
def make_sender(session: aiohttp.ClientSession) -> Callable[..., Sender]:
    return functools.partial(Sender, session)


def script(upstream: aioresponses, primary: list[Answer], backup: list[Answer]) -> None:
    for answer in primary:
        upstream.post(MESSAGES_URL, **answer)
    for answer in backup:
        upstream.post(BACKUP_URL, **answer)


# (primary's answers, backup's answers) -> who served it (None: raised), the status or error, tries per
# deployment, and how many retries waited (with backoff_s=0.5: a retry's wait is at most 0.5 * 2**retry).
CASES = [
    pytest.param([OK], [], "primary", 200, (1, 0), 0, id="first-try"),
    *(
        pytest.param([status(code), OK], [], "primary", 200, (2, 0), 1, id=f"{code}-then-ok")
        for code in (429, 500, 502, 503, 529)
    ),
    *(
        pytest.param([status(code)], [], "primary", code, (1, 0), 0, id=f"{code}-not-retried")
        for code in (400, 404, 413)
    ),
    pytest.param([REFUSED, OK], [], "primary", 200, (2, 0), 1, id="refused-then-ok"),
    pytest.param([TIMEOUT, OK], [], "primary", 200, (2, 0), 1, id="timeout-then-ok"),
    pytest.param([GONE, OK], [], "primary", 200, (2, 0), 1, id="disconnected-then-ok"),
    pytest.param([status(503), TIMEOUT, OK], [], "primary", 200, (3, 0), 2, id="mixed-then-ok-on-last-attempt"),
    pytest.param([status(429)] * 3, [OK], "backup", 200, (3, 1), 2, id="falls-back-after-attempts"),
    pytest.param([REFUSED] * 3, [status(503), OK], "backup", 200, (3, 2), 3, id="backup-retried-too"),
    pytest.param([status(503)] * 3, [status(529)] * 3, "backup", 529, (3, 3), 4, id="all-fail-last-reply-relayed"),
    pytest.param([status(503)] * 3, [REFUSED] * 3, "primary", 503, (3, 3), 4, id="a-reply-beats-a-later-error"),
    pytest.param([REFUSED] * 3, [TIMEOUT] * 3, None, UpstreamTimeout, (3, 3), 4, id="all-errors-last-raised"),
    pytest.param([TIMEOUT] * 3, [REFUSED] * 3, None, UpstreamUnreachable, (3, 3), 4, id="all-errors-unreachable"),
]


@pytest.mark.parametrize(("primary", "backup", "served_by", "outcome", "expected_tries", "retries"), CASES)
async def test_retries_and_fallbacks(
    upstream: aioresponses,
    make_sender: Callable[..., Sender],
    waits: list[float],
    primary: list[Answer],
    backup: list[Answer],
    served_by: str | None,
    outcome: int | type[GatewayError],
    expected_tries: tuple[int, int],
    retries: int,
) -> None:
    script(upstream, primary, backup)
    sender = make_sender(cooldown_after=100)
    if served_by is None:
        assert isinstance(outcome, type)
        with pytest.raises(outcome):
            await sender.send()
    else:
        served, reply = await sender.send()
        assert (served.provider.name, reply.status) == (served_by, outcome)
    assert (tries(upstream, MESSAGES_URL), tries(upstream, BACKUP_URL)) == expected_tries
    assert len(waits) == retries == sum(sender.metrics.upstream_retries.values.values())
    # full jitter: the n-th retry of a deployment waits at most backoff_s * 2**n, never less than nothing
    assert all(0 <= w <= 0.5 * 2**2 for w in waits)
    answered = served_by is not None and outcome not in (429, 500, 502, 503, 529)  # the last try succeeded
    assert sum(sender.metrics.upstream_errors.values.values()) == sum(expected_tries) - answered
    assert sum(sender.metrics.fallbacks.values.values()) == (served_by == "backup" and outcome == 200)


async def test_the_error_reply_relayed_is_the_upstreams_own(
    upstream: aioresponses, make_sender: Callable[..., Sender], waits: list[float]
) -> None:
    script(upstream, [status(503)] * 3, [status(529, **{"request-id": "req_b"})] * 3)
    sender = make_sender()
    _, reply = await sender.send()
    assert reply.headers["request-id"] == "req_b"
    assert b'"message": "e529"' in await reply.read()


@pytest.mark.parametrize(
    ("retry_after", "waited"),
    [
        pytest.param(lambda: "2", (2.0, 2.0), id="seconds"),
        pytest.param(lambda: "0.25", (0.25, 0.25), id="fraction"),
        pytest.param(http_date(5), (3.5, 5.0), id="http-date"),  # whole seconds, and the test's own clock
        # Retry-After: 0, a date in the past or nonsense: the usual backoff (at most 0.5 s for the first retry)
        pytest.param(lambda: "0", (0.0, 0.5), id="zero"),
        pytest.param(http_date(-60), (0.0, 0.5), id="past-date"),
        pytest.param(lambda: "soon", (0.0, 0.5), id="unreadable"),
    ],
)
async def test_retry_after_is_honoured(
    upstream: aioresponses,
    make_sender: Callable[..., Sender],
    waits: list[float],
    retry_after: Callable[[], str],
    waited: tuple[float, float],
) -> None:
    script(upstream, [status(429, **{"Retry-After": retry_after()}), OK], [])
    sender = make_sender()
    served, reply = await sender.send()
    assert (served.provider.name, reply.status) == ("primary", 200)
    [wait] = waits
    assert waited[0] <= wait <= waited[1]


@pytest.mark.parametrize(
    ("primary", "budget_s", "expected_tries"),
    [
        # a wait past the request's retry budget is not waited: the next deployment is tried at once
        pytest.param([status(429, **{"Retry-After": "60"})], 30.0, (1, 1), id="retry-after-past-budget"),
        pytest.param([status(429, **{"Retry-After": "20"}), OK], 30.0, (2, 0), id="retry-after-within-budget"),
    ],
)
async def test_the_retry_budget_bounds_the_waiting(
    upstream: aioresponses,
    make_sender: Callable[..., Sender],
    waits: list[float],
    primary: list[Answer],
    budget_s: float,
    expected_tries: tuple[int, int],
) -> None:
    script(upstream, primary, [OK])
    sender = make_sender(budget_s=budget_s)
    _, reply = await sender.send()
    assert reply.status == 200
    assert (tries(upstream, MESSAGES_URL), tries(upstream, BACKUP_URL)) == expected_tries
    assert sum(waits) <= budget_s


async def test_a_refused_provider_key_is_neither_retried_nor_failed_over(
    upstream: aioresponses, make_sender: Callable[..., Sender], waits: list[float]
) -> None:
    # 401/403 is about the gateway's own provider key, the same on every try: retrying would only repeat it
    script(upstream, [status(401)], [OK])
    sender = make_sender()
    with pytest.raises(ProviderRefusedCredentials):
        await sender.send()
    assert (tries(upstream, MESSAGES_URL), tries(upstream, BACKUP_URL), waits) == (1, 0, [])


async def test_a_failing_deployment_rests_then_is_tried_again(
    upstream: aioresponses, make_sender: Callable[..., Sender], waits: list[float]
) -> None:
    sender = make_sender(attempts=1, cooldown_after=2, cooldown_s=30)
    script(upstream, [status(503), status(503)], [OK, OK])
    for _ in range(2):  # two failed requests in a row: the primary rests
        served, _reply = await sender.send()
        assert served.provider.name == "backup"
    script(upstream, [], [OK])
    served, _reply = await sender.send()  # resting: the backup first, and the primary not even tried
    assert served.provider.name == "backup"
    assert (tries(upstream, MESSAGES_URL), tries(upstream, BACKUP_URL)) == (2, 3)

    primary = await sender.primary()
    primary.health.clock = lambda: time.monotonic() + 31  # the 30 s rest is over
    script(upstream, [OK], [])
    served, _reply = await sender.send()
    assert served.provider.name == "primary" and tries(upstream, MESSAGES_URL) == 3


async def test_every_deployment_resting_is_still_tried(
    upstream: aioresponses, make_sender: Callable[..., Sender], waits: list[float]
) -> None:
    sender = make_sender(attempts=1, cooldown_after=1, cooldown_s=30)
    script(upstream, [status(503)], [status(503)])
    _, reply = await sender.send()  # both fail once: both rest
    assert reply.status == 503
    script(upstream, [OK], [])
    served, reply = await sender.send()  # better a try than a sure refusal
    assert (served.provider.name, reply.status) == ("primary", 200)


async def test_a_success_resets_the_failure_count(
    upstream: aioresponses, make_sender: Callable[..., Sender], waits: list[float]
) -> None:
    sender = make_sender(attempts=1, cooldown_after=2, cooldown_s=30)
    script(upstream, [status(503), OK, status(503), OK], [OK, OK])
    names = [(await sender.send())[0].provider.name for _ in range(4)]
    # fail, succeed, fail: never two failures in a row, so the primary never rests and is tried every time
    assert names == ["backup", "primary", "backup", "primary"]
    assert tries(upstream, MESSAGES_URL) == 4
