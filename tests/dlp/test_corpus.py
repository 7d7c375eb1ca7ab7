"""The corpus figures the README reports, held as thresholds: recall on planted values, silence on clean text."""

from __future__ import annotations

import pytest

from gateway.dlp import DETECTOR_IDS
from tests.dlp_corpus.measure import Figures, clean_texts, measure, scanner


@pytest.fixture(scope="module")
def figures() -> Figures:
    return measure()


@pytest.mark.parametrize("detector", DETECTOR_IDS)
def test_every_detector_finds_its_planted_values(figures: Figures, detector: str) -> None:
    assert figures.planted[detector] >= 4
    assert figures.found[detector] == figures.planted[detector]
    assert figures.confused[detector] == 0  # never claims another detector's value


def test_the_claude_code_captures_are_clean() -> None:
    assert scanner().scan(clean_texts()["claude_code"]) == []


def test_code_and_logs_raise_no_secret_and_few_personal_findings(figures: Figures) -> None:
    personal = {"email", "phone", "payment_card", "iban"} | {d for d in DETECTOR_IDS if d.startswith("national_id")}
    assert {d: n for d, n in figures.clean.items() if d not in personal} == {}
    # the standard library's author addresses are real addresses; the rest must stay rare (per MB scanned)
    assert sum(n for d, n in figures.clean.items() if d != "email") <= 3 * figures.clean_bytes / 1e6
