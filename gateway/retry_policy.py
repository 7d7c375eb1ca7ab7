"""Reaching the upstream for one request: retries with backoff, fallbacks to other deployments, cool-downs.

A request's alias names a primary deployment and, in order, its fallbacks. Each deployment is tried up to
`retries.attempts` times on connection errors and on 429/500/502/503/529, with exponential backoff and full
jitter, honouring `Retry-After`; all of it within the request's `retries.budget_s`. A deployment whose
requests keep failing rests for `cooldown_s` and is skipped meanwhile (unless every deployment rests).

Everything here happens before a single byte reaches the caller, so a stream is retried only while
nothing of it has been relayed: the relays call `send_with_fallbacks` and only then start answering.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

import structlog

from gateway.config import ModelAlias, Retries
from gateway.errors import GatewayError, UpstreamTimeout, UpstreamUnreachable
from gateway.metrics import Metrics
from gateway.providers.base import Provider, UpstreamCall, UpstreamReply

log = structlog.get_logger("gateway.upstream")

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 529})


@dataclass(slots=True)
class DeploymentHealth:
    """Consecutive failures of one deployment, and until when it rests."""

    retries: Retries
    failures: int = 0
    resting_until: float = 0.0
    clock: Callable[[], float] = field(default=time.monotonic)

    def resting(self) -> bool:
        return self.resting_until > self.clock()

    def succeeded(self) -> None:
        self.failures, self.resting_until = 0, 0.0

    def failed(self) -> None:
        self.failures += 1
        if self.failures >= self.retries.cooldown_after:
            self.resting_until = self.clock() + self.retries.cooldown_s
            log.warning("deployment_cooling_down", failures=self.failures, seconds=self.retries.cooldown_s)


@dataclass(frozen=True, slots=True)
class Target:
    """Where the route stage sent the request: the alias, its provider and the real model id.

    `fallbacks` are the alias's other deployments, tried in order when this one fails; `health` is shared by
    every target of the same (provider, model) so a failing deployment rests for all aliases at once.
    """

    alias: ModelAlias
    provider: Provider
    provider_model: str
    retries: Retries = field(default_factory=Retries)
    health: DeploymentHealth = field(default_factory=lambda: DeploymentHealth(Retries()))
    fallbacks: tuple[Target, ...] = ()


class BufferedReply:
    """An upstream error reply read in full (to decide on a retry), replayed to the relay as if fresh."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status, self.headers, self._body = status, headers, body

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self._body

    async def read(self) -> bytes:
        return self._body

    def release(self) -> None:
        return None


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """Seconds the upstream asked us to wait (`Retry-After`: seconds or an HTTP date), if it said."""
    value = headers.get("retry-after") or headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def backoff_s(retries: Retries, retry: int) -> float:
    """Full jitter: a random delay up to backoff * 2**retry, capped (AWS's recommendation for retry storms)."""
    return random.uniform(0, min(retries.max_backoff_s, retries.backoff_s * (2**retry)))


def _order(targets: list[Target]) -> list[Target]:
    """Resting deployments go last; if all rest, try them all anyway (better a try than a sure refusal)."""
    awake = [t for t in targets if not t.health.resting()]
    return awake + [t for t in targets if t.health.resting()]


@dataclass(slots=True)
class _Outcome:
    """One try: a good reply, or what went wrong and how long to wait before the next."""

    target: Target
    reply: UpstreamReply | None = None
    failed_reply: BufferedReply | None = None
    error: GatewayError | None = None
    wait_s: float = 0.0


async def _try(target: Target, build: Callable[[Target], UpstreamCall], attempt: int, metrics: Metrics) -> _Outcome:
    try:
        reply = await target.provider.send(build(target))
    except (UpstreamUnreachable, UpstreamTimeout) as err:
        metrics.upstream_errors.inc((target.provider.name, type(err).__name__))
        return _Outcome(target, error=err, wait_s=backoff_s(target.retries, attempt))
    if reply.status not in RETRYABLE_STATUSES:
        return _Outcome(target, reply=reply)
    metrics.upstream_errors.inc((target.provider.name, str(reply.status)))
    failed = BufferedReply(reply.status, reply.headers, await _read_and_release(reply))
    wait_s = retry_after_s(reply.headers) or backoff_s(target.retries, attempt)
    return _Outcome(target, failed_reply=failed, wait_s=wait_s)


async def send_with_fallbacks(
    primary: Target, build: Callable[[Target], UpstreamCall], metrics: Metrics
) -> tuple[Target, UpstreamReply]:
    """The first good reply from the alias's deployments, and the deployment that gave it.

    When every try fails, the last upstream error reply is returned (its status and message reach the
    caller), or the last connection error is raised.
    """
    first = None
    if not primary.health.resting():  # the common case ends here: one try, a good reply
        first = await _try(primary, build, 0, metrics)
        if first.reply is not None:
            primary.health.succeeded()
            return primary, first.reply
    deadline = time.monotonic() + primary.retries.budget_s
    last = first or _Outcome(primary)
    for target in _order([primary, *primary.fallbacks]):
        for attempt in range(target.retries.attempts):
            reuse = first is not None and target is primary and attempt == 0
            outcome = first if reuse and first else await _try(target, build, attempt, metrics)
            if outcome.reply is not None:
                target.health.succeeded()
                if target is not primary:
                    metrics.fallbacks.inc((primary.alias.name, target.provider.name))
                return target, outcome.reply
            last = outcome if outcome.failed_reply or not last.failed_reply else last
            if attempt + 1 == target.retries.attempts or time.monotonic() + outcome.wait_s > deadline:
                break
            log.info(
                "upstream_retry", provider=target.provider.name, attempt=attempt + 1, wait_s=round(outcome.wait_s, 3)
            )
            metrics.upstream_retries.inc((target.provider.name,))
            await asyncio.sleep(outcome.wait_s)
        target.health.failed()
        if time.monotonic() >= deadline:
            break
    if last.failed_reply is not None:
        return last.target, last.failed_reply
    assert last.error is not None
    raise last.error


async def _read_and_release(reply: UpstreamReply) -> bytes:
    try:
        return await reply.read()
    except GatewayError:
        return b""
    finally:
        reply.release()
