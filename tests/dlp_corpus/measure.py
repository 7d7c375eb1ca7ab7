"""Recall on the planted samples and findings on clean real-world text, per detector.

    python -m tests.dlp_corpus.measure          # prints the markdown table the README reports

Clean text: the Claude Code request bodies captured in tests/fixtures (only the strings the stage scans), this
repository's own Python code (gateway/ but gateway/dlp/, whose patterns would find themselves), 40 modules of
the running Python's standard library, and 300 KB of real service logs in tests/dlp_corpus/clean/.
Every detector is on, with the built-in allowlists and all national-id countries.
"""

from __future__ import annotations

import re
import sysconfig
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from gateway.dlp import DETECTOR_IDS
from gateway.dlp.detectors import all_detectors
from gateway.dlp.fields import prompt_fields
from gateway.dlp.policy import BUILTIN_ALLOW
from gateway.dlp.scanner import Hit, Scanner
from tests.dlp_corpus.planted import samples

ROOT = Path(__file__).resolve().parents[2]
STDLIB = (
    "json/decoder.py",
    "json/encoder.py",
    "email/utils.py",
    "email/_header_value_parser.py",
    "smtplib.py",
    "imaplib.py",
    "ftplib.py",
    "http/cookiejar.py",
    "http/client.py",
    "http/server.py",
    "urllib/parse.py",
    "urllib/request.py",
    "logging/__init__.py",
    "logging/handlers.py",
    "base64.py",
    "hashlib.py",
    "hmac.py",
    "secrets.py",
    "ssl.py",
    "uuid.py",
    "random.py",
    "datetime.py",
    "_pydecimal.py",
    "calendar.py",
    "locale.py",
    "argparse.py",
    "configparser.py",
    "csv.py",
    "ipaddress.py",
    "socket.py",
    "subprocess.py",
    "tarfile.py",
    "zipfile/__init__.py",
    "textwrap.py",
    "difflib.py",
    "statistics.py",
    "fractions.py",
    "mailbox.py",
    "netrc.py",
    "getpass.py",
)


@dataclass
class Figures:
    planted: Counter[str] = field(default_factory=Counter)
    found: Counter[str] = field(default_factory=Counter)
    confused: Counter[str] = field(default_factory=Counter)  # a finding of another detector on a planted sample
    clean: Counter[str] = field(default_factory=Counter)
    clean_bytes: int = 0
    clean_examples: dict[str, list[str]] = field(default_factory=dict)


def scanner() -> Scanner:
    allow = {d: [re.compile(p) for p in rules] for d, rules in BUILTIN_ALLOW.items()}
    return Scanner(all_detectors(("US",)), allow)


def clean_texts() -> dict[str, list[str]]:
    """kind -> texts (each a file, or a body's scanned strings)."""
    bodies = [orjson.loads((ROOT / "tests/fixtures/claude_code_stream.json").read_bytes())]
    for capture in ("claude_code_requests.jsonl", "cc_api_key.jsonl"):
        for line in (ROOT / "tests/fixtures" / capture).read_bytes().splitlines():
            if isinstance(body := orjson.loads(line).get("body"), dict):
                bodies.append(body)
    code = [p.read_text() for p in sorted((ROOT / "gateway").rglob("*.py")) if "dlp" not in p.parts]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code += [(stdlib / name).read_text(errors="replace") for name in STDLIB if (stdlib / name).exists()]
    logs = [p.read_text(errors="replace") for p in sorted((ROOT / "tests/dlp_corpus/clean").glob("*.log"))]
    return {
        "claude_code": [f.text for body in bodies for f in prompt_fields(body)],
        "code": code,
        "logs": logs,
    }


def measure() -> Figures:
    figures, scan = Figures(), scanner()
    for sample in samples():
        figures.planted[sample.detector] += 1
        hits = scan.scan([sample.text])
        if any(h.detector == sample.detector and _same(h, sample.value) for h in hits):
            figures.found[sample.detector] += 1
        for hit in hits:
            if hit.detector != sample.detector:
                figures.confused[hit.detector] += 1
    for texts in clean_texts().values():
        figures.clean_bytes += sum(len(t.encode()) for t in texts)
        for hit in scan.scan(texts):
            figures.clean[hit.detector] += 1
            figures.clean_examples.setdefault(hit.detector, []).append(hit.value[:40])
    return figures


def _same(hit: Hit, value: str) -> bool:
    return hit.value == value or value in hit.value


def table(figures: Figures) -> str:
    lines = [
        "| detector | planted | recall | findings on clean text | on other detectors' samples |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for detector in DETECTOR_IDS:
        n, found = figures.planted[detector], figures.found[detector]
        recall = f"{100 * found / n:.0f} %" if n else "-"
        lines.append(f"| {detector} | {n} | {recall} | {figures.clean[detector]} | {figures.confused[detector]} |")
    lines.append(f"\nClean text scanned: {figures.clean_bytes / 1e6:.2f} MB.")
    return "\n".join(lines)


if __name__ == "__main__":
    result = measure()
    print(table(result))
    for detector, examples in sorted(result.clean_examples.items()):
        print(f"- {detector}: {', '.join(sorted(set(examples))[:6])}")
