"""The console's SVG charts: bounded however many distinct model ids the usage rows hold."""

from __future__ import annotations

import re
from datetime import date, timedelta

from gateway.console import charts

DAYS = [date(2026, 11, 1) + timedelta(days=i) for i in range(30)]


def legends(svg: str) -> int:
    return len(re.findall(r'class="legend reactive', svg))


def test_a_flood_of_model_ids_folds_into_one_other_series() -> None:
    """A passthrough routing rule records whatever model id the caller sent: 1,000 of them made a 10 MB chart
    that held the event loop for seconds on each view of the user's page."""
    rows = [{"name": f"flood-{i:04}", "day": DAYS[i % 30], "tokens": 1} for i in range(1000)]
    rows += [{"name": "claude-sonnet-4-5", "day": DAYS[0], "tokens": 5000}]
    svg = charts.tokens_per_day_by_model(rows, DAYS, "Tokens")
    assert legends(svg) == charts.MAX_SERIES
    assert "claude-sonnet-4-5" in svg and "994 other models" in svg
    assert len(svg) < 500_000


def test_a_few_models_each_get_their_series() -> None:
    rows = [{"name": f"model-{i}", "day": DAYS[i], "tokens": 10 * (i + 1)} for i in range(charts.MAX_SERIES)]
    svg = charts.tokens_per_day_by_model(rows, DAYS, "Tokens")
    assert legends(svg) == charts.MAX_SERIES and "other models" not in svg
    assert all(f"model-{i}" in svg for i in range(charts.MAX_SERIES))
