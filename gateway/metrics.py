"""Prometheus metrics: what on-call needs on a dashboard, cheap enough for every request.

prometheus-client's own Counter/Histogram objects take a lock and walk every bucket in Python on each
observation; at thousands of requests a second that was a tenth of the gateway's CPU. So the request path
only bumps plain dicts here (`bisect` picks a histogram bucket), and a custom collector turns them into
Prometheus metric families when /metrics is scraped. With several workers each one writes its figures to a
file every few seconds (`share`), and the worker that answers a scrape adds up every live worker's file.
"""

from __future__ import annotations

import bisect
import os
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from gateway.config import ModelAlias
from gateway.processes import is_running

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
FLUSH_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OTHER = "other"  # the model label of every id that is neither a configured alias nor a provider model
SHARE_DIR_ENV = "GATEWAY_METRICS_DIR"  # set by `gateway serve --workers N` before forking


class Counters:
    """A labelled counter family as a dict: `inc(labels, n)` is one dict update."""

    def __init__(self, name: str, doc: str, labels: tuple[str, ...]) -> None:
        self.name, self.doc, self.labels = name, doc, labels
        self.values: defaultdict[tuple[str, ...], float] = defaultdict(float)

    def inc(self, key: tuple[str, ...], amount: float = 1.0) -> None:
        self.values[key] += amount

    def family(self, values: dict[tuple[str, ...], float]) -> Metric:
        family = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for key, value in sorted(values.items()):
            family.add_metric(list(key), value)
        return family


class Histograms:
    """A labelled histogram family: per label set, a count per bucket and a sum; `observe` uses bisect."""

    def __init__(self, name: str, doc: str, labels: tuple[str, ...], buckets: tuple[float, ...]) -> None:
        self.name, self.doc, self.labels, self.buckets = name, doc, labels, buckets
        self.values: dict[tuple[str, ...], list[float]] = {}  # key -> [count per bucket..., +Inf count, sum]

    def observe(self, key: tuple[str, ...], value: float) -> None:
        row = self.values.get(key)
        if row is None:
            row = self.values[key] = [0.0] * (len(self.buckets) + 2)
        row[bisect.bisect_left(self.buckets, value)] += 1
        row[-1] += value

    def family(self, values: dict[tuple[str, ...], list[float]]) -> Metric:
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        for key, row in sorted(values.items()):
            cumulative, buckets = 0.0, []
            for bound, count in zip((*map(str, self.buckets), "+Inf"), row[:-1], strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric(list(key), buckets, row[-1])
        return family


class Metrics:
    def __init__(self) -> None:
        self.requests = Counters("gateway_requests", "Requests answered", ("route", "alias", "status"))
        self.latency = Histograms("gateway_request_seconds", "Time to the last byte", ("route",), LATENCY_BUCKETS)
        self.ttfb = Histograms(
            "gateway_time_to_first_byte_seconds", "Time until the upstream's first byte", ("route",), LATENCY_BUCKETS
        )
        self.upstream_errors = Counters(
            "gateway_upstream_errors", "Failed upstream tries (reason: status or error)", ("provider", "reason")
        )
        self.upstream_retries = Counters("gateway_upstream_retries", "Upstream retries", ("provider",))
        self.fallbacks = Counters("gateway_fallbacks", "Requests served by a fallback", ("alias", "provider"))
        self.tokens = Counters(
            "gateway_tokens", "Tokens (kind: input, output, cache_read, cache_write)", ("alias", "kind")
        )
        self.cost = Counters("gateway_cost_usd", "Priced cost in USD", ("alias",))
        self.budget_rejections = Counters(
            "gateway_budget_rejections", "Requests refused by a monthly limit", ("limit",)
        )
        self.dlp_findings = Counters(
            "gateway_dlp_findings", "Sensitive values found in requests (block, redact, audit)", ("detector", "action")
        )
        self.rate_limit_rejections = Counters(
            "gateway_rate_limit_rejections", "Requests refused by a rate limit", ("scope", "limit")
        )
        self.rate_limit_redis_errors = Counters(
            "gateway_rate_limit_redis_errors", "Failed rate-limit calls to Redis (op: check, settle)", ("op",)
        )
        self.rate_limit_unchecked = Counters(
            "gateway_rate_limit_unchecked", "Requests admitted unchecked while Redis was away (fail: open)", ()
        )
        self.usage_spilled = Counters("gateway_usage_spilled_rows", "Usage rows written to the spill dir", ())
        self.usage_flush = Histograms("gateway_usage_flush_seconds", "Time to write a usage batch", (), FLUSH_BUCKETS)
        self.gauges: dict[str, Callable[[], float]] = {}  # name -> reader, summed across workers
        # Model labels a series may carry: configured aliases and their provider models (`allow_models`). A
        # pass-through routing rule lets callers pick any model id; each would be a new series, so those are
        # counted under one "other" label.
        self.model_labels: frozenset[str] = frozenset()
        self._counters = [v for v in vars(self).values() if isinstance(v, Counters)]
        self._histograms = [v for v in vars(self).values() if isinstance(v, Histograms)]

    def allow_models(self, aliases: Mapping[str, ModelAlias]) -> None:
        """Take the configured aliases and the provider models they name as the allowed model labels."""
        models = {a.model for a in aliases.values()} | {d.model for a in aliases.values() for d in a.fallbacks}
        self.model_labels = frozenset(aliases) | models

    def model_label(self, name: str) -> str:
        """`name` if it is a configured alias or provider model, else "other" (callers cannot grow the series)."""
        return name if name in self.model_labels else OTHER

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        """A gauge read at scrape (and share) time: usage queue depth, pool connections."""
        self.gauges[name] = read

    # --- several workers ---

    def snapshot(self) -> dict[str, Any]:
        counters = {c.name: [[list(k), v] for k, v in c.values.items()] for c in self._counters}
        histograms = {h.name: [[list(k), v] for k, v in h.values.items()] for h in self._histograms}
        gauges = {name: read() for name, read in self.gauges.items()}
        return {"counters": counters, "histograms": histograms, "gauges": gauges}

    def share(self, directory: Path) -> None:
        """Write this worker's figures for whichever worker answers the next scrape (atomic rename)."""
        path = directory / f"worker-{os.getpid()}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(self.snapshot()))
        tmp.replace(path)

    def _snapshots(self) -> list[dict[str, Any]]:
        directory = os.environ.get(SHARE_DIR_ENV)
        if not directory:
            return [self.snapshot()]
        snapshots = [self.snapshot()]
        for path in Path(directory).glob("worker-*.json"):
            pid = path.stem.split("-", 1)[1]
            if pid != str(os.getpid()) and is_running(pid):
                try:
                    snapshots.append(orjson.loads(path.read_bytes()))
                except (OSError, orjson.JSONDecodeError):
                    continue
        return snapshots

    # --- exposition ---

    def collect(self) -> Iterator[Metric]:
        snapshots = self._snapshots()
        for counter in self._counters:
            yield counter.family(_summed(s["counters"].get(counter.name, []) for s in snapshots))
        for histogram in self._histograms:
            yield histogram.family(_summed_rows(s["histograms"].get(histogram.name, []) for s in snapshots))
        for name in sorted({n for s in snapshots for n in s["gauges"]}):
            yield GaugeMetricFamily(
                name, name.replace("_", " "), value=sum(s["gauges"].get(name, 0) for s in snapshots)
            )

    def exposition(self) -> bytes:
        registry = CollectorRegistry()
        registry.register(self)
        return generate_latest(registry)


def _summed(parts: Iterator[list[list[Any]]]) -> dict[tuple[str, ...], float]:
    total: defaultdict[tuple[str, ...], float] = defaultdict(float)
    for part in parts:
        for key, value in part:
            total[tuple(key)] += value
    return total


def _summed_rows(parts: Iterator[list[list[Any]]]) -> dict[tuple[str, ...], list[float]]:
    total: dict[tuple[str, ...], list[float]] = {}
    for part in parts:
        for key, row in part:
            current = total.setdefault(tuple(key), [0.0] * len(row))
            for i, value in enumerate(row):
                current[i] += value
    return total
