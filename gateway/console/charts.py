"""Charts as inline SVG, drawn on the server by pygal: no JavaScript, nothing fetched at run time."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from datetime import date
from typing import Any

import pygal
from pygal.style import Style

from gateway.db import LATENCY_BOUNDS_MS

# pygal appends an import hook to sys.meta_path for its map plugins (pygal.maps.*, unused here). The hook has no
# find_spec, so every import that fails anywhere in the process would then raise an ImportWarning: take it out.
sys.meta_path[:] = [finder for finder in sys.meta_path if type(finder).__name__ != "PluginImportFixer"]

# Dark enough on white for WCAG AA (4.5:1) text; series colours are told apart by the legend and the table
# beside each chart, not by colour alone.
_STYLE = Style(
    background="#ffffff",
    plot_background="#ffffff",
    foreground="#1f2937",
    foreground_strong="#111827",
    foreground_subtle="#4b5563",
    colors=("#1d4ed8", "#b45309", "#047857", "#7c3aed", "#be123c", "#0e7490", "#4d7c0f", "#9d174d"),
    font_family="system-ui, sans-serif",
    label_font_size=11,
    major_label_font_size=11,
    legend_font_size=12,
    title_font_size=14,
)
MAX_SERIES = len(_STYLE.colors)  # series in one chart, "other" included
_COMMON: dict[str, Any] = {
    "style": _STYLE,
    "js": [],  # pygal links a tooltip script from the web by default: none here
    "disable_xml_declaration": True,  # inline in the page
    "width": 800,
    "height": 280,
    "show_y_guides": True,
    "x_label_rotation": 0,
    "show_minor_x_labels": False,
    "truncate_legend": 24,
    "margin": 8,
}


# pygal puts its config (series names included: model ids a caller chose) in an inline <script> even with js=[].
# The CSP blocks it, with an error in the browser's console on every chart page: the charts go out without it.
_SCRIPT = re.compile(r"<script\b.*?</script>", re.DOTALL)


def _render(chart: pygal.graph.graph.Graph) -> str:
    """The chart as SVG markup for inline use, without pygal's script (its text is escaped: no `</script>` in it)."""
    return _SCRIPT.sub("", str(chart.render(is_unicode=True)))


def _labels(days: Sequence[date]) -> tuple[list[str], list[str]]:
    labels = [d.strftime("%d") for d in days]
    major = labels[:: max(1, len(labels) // 8)]
    return labels, major


def spend_per_day(rows: Sequence[dict[str, Any]], title: str) -> str:
    """A bar per day: USD spent (rows with `day` and `cost_usd`, one per day)."""
    chart = pygal.Bar(title=title, show_legend=False, value_formatter=lambda v: f"${v:,.2f}", **_COMMON)
    chart.x_labels, chart.x_labels_major = _labels([r["day"] for r in rows])
    chart.add("USD", [float(r["cost_usd"]) for r in rows])
    return _render(chart)


def tokens_per_day_by_model(rows: Sequence[dict[str, Any]], days: Sequence[date], title: str) -> str:
    """Stacked bars per day, one series per provider model: tokens (rows from db.usage_by(..., by_day=True))."""
    chart = pygal.StackedBar(title=title, legend_at_bottom=True, value_formatter=lambda v: f"{v:,.0f}", **_COMMON)
    chart.x_labels, chart.x_labels_major = _labels(days)
    index = {d: i for i, d in enumerate(days)}
    totals: dict[str, float] = {}
    for r in rows:
        totals[r["name"]] = totals.get(r["name"], 0.0) + float(r["tokens"])
    # The largest models each get a series, the rest one "other" series: past the palette, colours repeat, and
    # each series costs pygal ~4 ms of the event loop (model ids a passthrough rule records are the caller's).
    top = sorted(totals, key=lambda name: (-totals[name], name))[: MAX_SERIES - 1 if len(totals) > MAX_SERIES else None]
    other = f"{len(totals) - len(top)} other models"
    kept = set(top)
    series: dict[str, list[float | None]] = {}
    for r in rows:
        values = series.setdefault(r["name"] if r["name"] in kept else other, [None] * len(days))
        values[index[r["day"]]] = (values[index[r["day"]]] or 0.0) + float(r["tokens"])
    for name in sorted(kept):
        chart.add(name, series[name])
    if other in series:
        chart.add(other, series[other])
    return _render(chart)


def percentile_ms(histogram: Sequence[int], fraction: float) -> float | None:
    """The `fraction` quantile of a latency histogram (db.LATENCY_BOUNDS_MS buckets), interpolated in its bucket.

    >>> percentile_ms([0, 0, 10] + [0] * 16, 0.5)  # ten requests between 2 and 5 ms
    3.5
    """
    total = sum(histogram)
    if total == 0:
        return None
    rank, seen = fraction * total, 0
    for bucket, count in enumerate(histogram):
        if count and seen + count >= rank:
            low = LATENCY_BOUNDS_MS[bucket - 1] if bucket > 0 else 0
            high = LATENCY_BOUNDS_MS[bucket] if bucket < len(LATENCY_BOUNDS_MS) else low * 2
            return low + (high - low) * (rank - seen) / count
        seen += count
    return float(LATENCY_BOUNDS_MS[-1])
