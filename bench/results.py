"""What one benchmark run measured, as plain data (saved as JSON beside the printed report)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.load import LoadResult
from bench.ttfb import Ttfb


@dataclass(frozen=True, slots=True)
class Run:
    """One load run against one server."""

    server: str  # gateway | floor | litellm | gateway-2w
    case: str
    conc: int
    load: LoadResult
    cpu_ms_per_req: float  # server process tree: (utime + stime) / completed requests


@dataclass(frozen=True, slots=True)
class Scaling:
    """The c=50 /v1/messages case on one worker and on `workers`, in the order one, N, N, one.

    The mirrored order cancels a load that other processes put on the machine and that drifts linearly.
    """

    workers: int
    one: list[Run]
    many: list[Run]
    rss_mb: list[float]  # per worker
    ready_s: float

    @property
    def one_rps(self) -> float:
        return sum(r.load.rps for r in self.one) / len(self.one)

    @property
    def many_rps(self) -> float:
        return sum(r.load.rps for r in self.many) / len(self.many)

    @property
    def ratio(self) -> float:
        return self.many_rps / self.one_rps if self.one_rps else 0.0


@dataclass(frozen=True, slots=True)
class UsageCheck:
    """Usage rows the gateway wrote vs the requests it was seen to serve.

    wrk stops with up to c requests in flight: the gateway finishes and logs them (status 200 or 499) but
    wrk does not count them, so `rows` may exceed `served` by at most `in_flight`.
    """

    rows: int
    served: int
    in_flight: int
    by_status: dict[int, int]

    @property
    def ok(self) -> bool:
        return self.served <= self.rows <= self.served + self.in_flight


@dataclass(slots=True)
class Results:
    settings: dict[str, Any]
    runs: list[Run] = field(default_factory=list)
    ttfb: dict[str, Ttfb] = field(default_factory=dict)
    ready_s: list[float] = field(default_factory=list)  # `gateway serve` to ready, each start
    rss_mb: dict[str, list[float]] = field(default_factory=dict)  # per server, per worker, after the matrix
    scaling: Scaling | None = None
    usage: UsageCheck | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None  # why the run stopped early, if it did

    def run(self, server: str, case: str, conc: int) -> Run | None:
        return next((r for r in self.runs if (r.server, r.case, r.conc) == (server, case, conc)), None)
