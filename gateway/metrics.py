"""Prometheus metrics: what on-call needs on a dashboard, cheap enough for every request.

One registry per application (tests start many). With several workers, `gateway serve` sets
PROMETHEUS_MULTIPROC_DIR before forking and /metrics sums every live worker's values.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

disable_created_metrics()  # the *_created samples double the exposition and no dashboard here reads them

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "gateway_requests", "Requests answered, by route, alias and status", ["route", "alias", "status"],
            registry=registry,
        )  # fmt: skip
        self.latency = Histogram(
            "gateway_request_seconds", "Time to the last byte, by route", ["route"],
            buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.ttfb = Histogram(
            "gateway_time_to_first_byte_seconds", "Time until the upstream's first byte, by route", ["route"],
            buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.upstream_errors = Counter(
            "gateway_upstream_errors", "Failed upstream tries, by provider and reason (status or connect)",
            ["provider", "reason"], registry=registry,
        )  # fmt: skip
        self.upstream_retries = Counter(
            "gateway_upstream_retries", "Upstream retries, by provider", ["provider"], registry=registry
        )
        self.fallbacks = Counter(
            "gateway_fallbacks", "Requests served by a fallback deployment", ["alias", "provider"], registry=registry
        )
        self.tokens = Counter(
            "gateway_tokens", "Tokens, by alias and kind (input, output, cache_read, cache_write)",
            ["alias", "kind"], registry=registry,
        )  # fmt: skip
        self.cost = Counter("gateway_cost_usd", "Priced cost in USD, by alias", ["alias"], registry=registry)
        self.budget_rejections = Counter(
            "gateway_budget_rejections", "Requests refused by a monthly limit", ["limit"], registry=registry
        )
        self.usage_queue = Gauge(
            "gateway_usage_queue_rows", "Usage rows waiting to be written", registry=registry,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.usage_spilled = Counter(
            "gateway_usage_spilled_rows", "Usage rows written to the local spill file", registry=registry
        )
        self.usage_flush = Histogram(
            "gateway_usage_flush_seconds", "Time to write one batch of usage rows", registry=registry
        )
        self.db_pool = Gauge(
            "gateway_db_pool_connections", "Database pool connections, by state (in_use, idle)", ["state"],
            registry=registry, multiprocess_mode="livesum",
        )  # fmt: skip
        self._before_scrape: list[Callable[[], None]] = []

    def before_scrape(self, update: Callable[[], None]) -> None:
        """Register a gauge update to run on each scrape (pool use, queue depth)."""
        self._before_scrape.append(update)

    def exposition(self) -> bytes:
        """The text format for GET /metrics: this worker's registry, or every worker's when several run."""
        for update in self._before_scrape:
            update()
        if (directory := multiprocess_dir()) is None:
            return generate_latest(self.registry)
        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined, path=directory)
        return generate_latest(combined)
