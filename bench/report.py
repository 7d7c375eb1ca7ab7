"""The printed report: markdown tables of gateway vs floor, and each target with PASS or MISS."""

from __future__ import annotations

import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from bench.cases import (
    CASE_BY_KEY,
    CASES,
    CONCURRENCIES,
    MAX_ADDED_P50_MS,
    MAX_READY_S,
    MAX_RSS_MB,
    MIN_SCALING_PER_WORKER,
    TARGET_CONC,
    Case,
)
from bench.results import Results, Run, Scaling, UsageCheck


@dataclass(frozen=True, slots=True)
class Verdict:
    target: str
    measured: str
    ok: bool
    fail_word: str = "MISS"  # a missed performance target; FAIL for a correctness check

    @property
    def word(self) -> str:
        return "PASS" if self.ok else self.fail_word


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def render(results: Results) -> str:
    settings = ", ".join(f"{k}={v}" for k, v in results.settings.items())
    parts = [
        f"## Gateway vs floor ({settings})",
        "`gateway` runs as production does: log level info, one JSON log line per request.",
        matrix_table(results),
        "## The per-request log line: gateway with it (level info) and without it (level warning), same run",
        log_line_table(results),
        "## Time to first byte, streams (sequential, gateway and floor alternating; medians)",
        ttfb_table(results),
        "## Targets",
        table(["target", "measured", "result"], [[v.target, v.measured, v.word] for v in verdicts(results)]),
    ]
    if compared := results.settings.get("compare"):
        title = f"## Before/after: {compared} vs this tree, both with the log line, same floor"
        parts[5:5] = [title, compare_table(results)]
    if any(r.server == "litellm" for r in results.runs):
        parts += ["## LiteLLM vs floor", litellm_table(results)]
    parts += [f"- {note}" for note in results.notes]
    return "\n\n".join(parts)


# --- tables ------------------------------------------------------------------------------------------

MATRIX_HEADER = (
    "case",
    "c",
    "gateway rps",
    "floor rps",
    "gw/floor",
    "gw p50 ms",
    "floor p50 ms",
    "Δp50 ms",
    "gw p99 ms",
    "floor p99 ms",
    "gw CPU ms/req",
    "floor CPU ms/req",
    "gw err/non-2xx",
    "floor err/non-2xx",
)


def matrix_table(results: Results) -> str:
    rows = []
    for case in CASES:
        for conc in CONCURRENCIES:
            gw, floor = results.run("gateway", case.key, conc), results.run("floor", case.key, conc)
            if gw is not None and floor is not None:
                rows.append(_matrix_row(case, gw, floor))
    return table(MATRIX_HEADER, rows)


def _matrix_row(case: Case, gw: Run, floor: Run) -> list[str]:
    g, f = gw.load, floor.load
    return [
        case.title,
        str(gw.conc),
        f"{g.rps:,.0f}",
        f"{f.rps:,.0f}",
        _pct(g.rps, f.rps),
        f"{g.p50_ms:.2f}",
        f"{f.p50_ms:.2f}",
        f"{g.p50_ms - f.p50_ms:+.2f}",
        f"{g.p99_ms:.2f}",
        f"{f.p99_ms:.2f}",
        f"{gw.cpu_ms_per_req:.3f}",
        f"{floor.cpu_ms_per_req:.3f}",
        f"{g.errors}/{g.non2xx}",
        f"{f.errors}/{f.non2xx}",
    ]


NOLOG = "gateway-nolog"


def log_line_table(results: Results) -> str:
    """rps and CPU per request of the gateway with and without its per-request log line, each against the floor."""
    header = ["case", "c", "floor rps", "log on rps", "log off rps", "on/floor", "off/floor"]
    header += ["on CPU ms/req", "off CPU ms/req", "line's CPU ms/req"]
    rows = []
    for case in CASES:
        for conc in CONCURRENCIES:
            on, off = results.run("gateway", case.key, conc), results.run(NOLOG, case.key, conc)
            floor = results.run("floor", case.key, conc)
            if on is None or off is None or floor is None:
                continue
            f = floor.load.rps
            rows.append(
                [
                    case.title,
                    str(conc),
                    f"{f:,.0f}",
                    f"{on.load.rps:,.0f}",
                    f"{off.load.rps:,.0f}",
                    _pct(on.load.rps, f),
                    _pct(off.load.rps, f),
                    f"{on.cpu_ms_per_req:.3f}",
                    f"{off.cpu_ms_per_req:.3f}",
                    f"{on.cpu_ms_per_req - off.cpu_ms_per_req:+.3f}",
                ]
            )
    return table(header, rows)


def compare_table(results: Results) -> str:
    """This tree's gateway and another revision's, each as a share of the same floor run (issue 16's rule:
    ratios within 3 points)."""
    other = str(results.settings["compare"])
    rev = other.partition("@")[2]
    header = ["case", "c", "floor rps", "this rps", f"{rev} rps", "this/floor", f"{rev}/floor", "Δ points"]
    header += ["this CPU ms/req", f"{rev} CPU ms/req", "floor CPU ms/req"]
    rows = []
    for case in CASES:
        for conc in CONCURRENCIES:
            this, then = results.run("gateway", case.key, conc), results.run(other, case.key, conc)
            floor = results.run("floor", case.key, conc)
            if this is None or then is None or floor is None:
                continue
            f = floor.load.rps
            delta = (this.load.rps - then.load.rps) / f * 100 if f else 0.0
            rows.append(
                [
                    case.title,
                    str(conc),
                    f"{f:,.0f}",
                    f"{this.load.rps:,.0f}",
                    f"{then.load.rps:,.0f}",
                    _pct(this.load.rps, f),
                    _pct(then.load.rps, f),
                    f"{delta:+.0f}",
                    f"{this.cpu_ms_per_req:.3f}",
                    f"{then.cpu_ms_per_req:.3f}",
                    f"{floor.cpu_ms_per_req:.3f}",
                ]
            )
    return table(header, rows)


def ttfb_table(results: Results) -> str:
    rows = [
        [CASE_BY_KEY[key].title, str(t.requests), f"{t.gateway_ms:.2f}", f"{t.floor_ms:.2f}", f"{t.added_ms:+.2f}"]
        for key, t in results.ttfb.items()
    ]
    return table(["case", "requests each", "gateway ms", "floor ms", "added ms"], rows)


def litellm_table(results: Results) -> str:
    rows = []
    for case in CASES:
        for conc in CONCURRENCIES:
            lite, floor = results.run("litellm", case.key, conc), results.run("floor", case.key, conc)
            if lite is None:
                continue
            load = lite.load
            ratio = _pct(load.rps, floor.load.rps) if floor else "-"
            cells = [
                f"{load.rps:,.1f}",
                ratio,
                f"{load.p50_ms:.2f}",
                f"{load.p99_ms:.2f}",
                f"{lite.cpu_ms_per_req:.2f}",
            ]
            rows.append([case.title, str(conc), *cells, f"{load.errors}/{load.non2xx}"])
    header = ["case", "c", "litellm rps", "litellm/floor", "p50 ms", "p99 ms", "CPU ms/req", "err/non-2xx"]
    return table(header, rows)


def _pct(part: float, whole: float) -> str:
    return f"{part / whole:.0%}" if whole else "-"


# --- targets -----------------------------------------------------------------------------------------


def verdicts(results: Results) -> list[Verdict]:
    out = [*_rps_verdicts(results), *_latency_verdicts(results)]
    if gw_rss := results.rss_mb.get("gateway"):
        out.append(_rss_verdict("1 worker", gw_rss))
    if results.ready_s:
        out.append(_ready_verdict(results.ready_s))
    if (scaling := results.scaling) is not None:
        out += [_scaling_verdict(scaling), _rss_verdict(f"{scaling.workers} workers", scaling.rss_mb)]
    if results.usage is not None:
        out.append(_usage_verdict(results.usage))
    return out


def _floor_name(case: Case) -> str:
    return CASE_BY_KEY[case.floor_ref].title


def _rps_verdicts(results: Results) -> Iterator[Verdict]:
    for case in CASES:
        gw = results.run("gateway", case.key, TARGET_CONC)
        ref = results.run("floor", case.floor_ref, TARGET_CONC)
        if gw is None or ref is None:
            continue
        ratio = gw.load.rps / ref.load.rps
        measured = (
            f"{ratio:.0%} ({gw.load.rps:,.0f} vs {ref.load.rps:,.0f} rps; CPU/req floor/gw {_cpu_ratio(ref, gw)})"
        )
        same = results.run("floor", case.key, TARGET_CONC)
        if case.floor_ref != case.key and same is not None:
            measured += f"; vs floor {case.title}: {_pct(gw.load.rps, same.load.rps)} ({same.load.rps:,.0f} rps)"
        target = f"{case.title} c={TARGET_CONC} ≥ {case.min_ratio:.0%} of floor {_floor_name(case)} rps"
        yield Verdict(target, measured, ratio >= case.min_ratio)


def _cpu_ratio(floor: Run, gw: Run) -> str:
    """Floor CPU per request over the gateway's: the rps ratio both would reach if each had a core to itself."""
    return _pct(floor.cpu_ms_per_req, gw.cpu_ms_per_req)


def _latency_verdicts(results: Results) -> Iterator[Verdict]:
    for case in CASES:
        gw, ref = results.run("gateway", case.key, 1), results.run("floor", case.floor_ref, 1)
        if gw is None or ref is None:
            continue
        added = gw.load.p50_ms - ref.load.p50_ms
        measured = f"{added:+.2f} ms ({gw.load.p50_ms:.2f} vs {ref.load.p50_ms:.2f})"
        same = results.run("floor", case.key, 1)
        if case.floor_ref != case.key and same is not None:
            measured += f"; vs floor {case.title}: {gw.load.p50_ms - same.load.p50_ms:+.2f} ms"
        target = f"{case.title} c=1 p50 - floor {_floor_name(case)} p50 ≤ {MAX_ADDED_P50_MS} ms"
        yield Verdict(target, measured, added <= MAX_ADDED_P50_MS)


def _rss_verdict(label: str, rss_mb: list[float]) -> Verdict:
    measured = ", ".join(f"{mb:.1f} MB" for mb in rss_mb) + " (after the matrix)"
    return Verdict(f"RSS < {MAX_RSS_MB:g} MB per worker, {label}", measured, max(rss_mb) < MAX_RSS_MB)


def _ready_verdict(ready_s: list[float]) -> Verdict:
    median = statistics.median(ready_s)
    each = ", ".join(f"{s:.2f}" for s in ready_s)
    measured = f"{median:.2f} s median of {len(ready_s)} starts ({each} s)"
    return Verdict(f"`gateway serve` ready < {MAX_READY_S:g} s (external database)", measured, median < MAX_READY_S)


def _scaling_verdict(s: Scaling) -> Verdict:
    want = MIN_SCALING_PER_WORKER * s.workers
    each = "/".join(f"{r.load.rps:,.0f}" for r in (s.one[0], *s.many, s.one[1]))
    measured = f"{s.ratio:.2f}x ({s.many_rps:,.0f} vs {s.one_rps:,.0f} rps, mean of 2 each; runs 1-N-N-1: {each})"
    measured += f"; {s.workers} workers ready in {s.ready_s:.2f} s"
    return Verdict(f"{s.workers} workers ≥ {want:.1f}x one, /v1/messages c={TARGET_CONC}", measured, s.ratio >= want)


def _usage_verdict(u: UsageCheck) -> Verdict:
    statuses = ", ".join(f"{status}: {n}" for status, n in sorted(u.by_status.items()))
    measured = f"{u.rows} rows ({statuses}); served {u.served} (+ ≤ {u.in_flight} cut off in flight by wrk)"
    return Verdict("usage rows == gateway requests served", measured, u.ok, fail_word="FAIL")
