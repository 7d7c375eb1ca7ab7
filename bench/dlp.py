"""CPU cost of the DLP stage per request: the stage timed directly, DLP on against DLP off, N iterations each.

    python -m bench.dlp                 # 2000 iterations per case, about 5 s
    python -m bench.dlp -n 500 --check  # exit 1 if a target is missed (used by tests/dlp/test_bench.py)

Each iteration builds the Exchange the edge would (a /v1/messages body opening with "model" is only sketched,
by gateway.app.body_sketch, as on the hot path), then runs the stage with a no-op relay; CPU time comes from
time.process_time(), so other processes on the machine do not count. "on" is the default policy (every secret
detector redacts, personal data is recorded) enabled for the alias; "off" is the stage with DLP off for it.
Targets: at most 1 ms more CPU per request for the Claude Code body, 0.1 ms for a small one. The
claude_code_redacted case pastes a GitHub token into the body, so the redaction path (placeholders, the raw
bytes patched and checked by a second parse) is timed too.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from aiohttp.test_utils import make_mocked_request

from gateway.app import body_sketch
from gateway.config import DlpConfig, DlpPolicy, ModelAlias, RoutingConfig
from gateway.dlp.findings import FindingsLog
from gateway.error_shape import ErrorShape
from gateway.metrics import Metrics
from gateway.pipeline import Exchange
from gateway.stages.dlp import PreventDataLoss

BODIES = Path(__file__).resolve().parent / "bodies"
TARGETS_MS = {"claude_code": 1.0, "small_messages": 0.1, "small_chat": 0.1}  # issue 22; the redacted case: no target
TOKEN = "ghp_" + "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5"  # well-formed, not real: the redaction path's case


class _NoFindings(FindingsLog):
    def __init__(self) -> None:
        super().__init__(None)  # type: ignore[arg-type]

    def record(self, *args: object) -> None:  # the clean bodies have none; a planted case must not reach a database
        return None


def _stage(enabled: bool) -> PreventDataLoss:
    models = {"claude-fast": ModelAlias(name="claude-fast", provider="anthropic", model="claude-haiku-4-5")}
    cfg = DlpConfig(aliases={"claude-fast": DlpPolicy(enabled=enabled)})
    return PreventDataLoss(cfg, models, RoutingConfig(), Metrics(), _NoFindings())


def _cases() -> dict[str, tuple[ErrorShape, str, bytes]]:
    small = {"model": "claude-fast", "max_tokens": 64, "messages": [{"role": "user", "content": "hi, how are you?"}]}
    chat = {"model": "claude-fast", "messages": [{"role": "user", "content": "hi, how are you?"}]}
    claude_code = (BODIES / "claude_code_stream.json").read_bytes()
    with_token = claude_code.replace(b'"say hi"', f'"say hi, my token is {TOKEN}"'.encode(), 1)
    return {
        "claude_code": (ErrorShape.ANTHROPIC, "messages", claude_code),
        "claude_code_redacted": (ErrorShape.ANTHROPIC, "messages", with_token),
        "small_messages": (ErrorShape.ANTHROPIC, "messages", orjson.dumps(small)),
        "small_chat": (ErrorShape.OPENAI, "chat_completions", orjson.dumps(chat)),
    }


def _exchange_factory(dialect: ErrorShape, route: str, raw: bytes) -> Callable[[], Exchange]:
    request = make_mocked_request("POST", "/v1/messages" if route == "messages" else "/v1/chat/completions")

    def make() -> Exchange:
        sketch = body_sketch(raw) if dialect is ErrorShape.ANTHROPIC else None
        body, sketched = (sketch, True) if sketch is not None else (orjson.loads(raw), False)
        return Exchange(dialect, route, request, raw, body, "bench", sketched=sketched)

    return make


async def _noop(ex: Exchange) -> None:
    return None


async def _cpu_us(stage: PreventDataLoss, make: Callable[[], Exchange], n: int) -> float:
    """CPU µs per request, the median of 5 rounds of n/5 requests."""
    rounds = []
    for _ in range(5):
        start = time.process_time()
        for _ in range(n // 5):
            await stage(make(), _noop)
        rounds.append((time.process_time() - start) / (n // 5) * 1e6)
    return statistics.median(rounds)


async def run(n: int) -> dict[str, tuple[float, float]]:
    """case -> (off µs, on µs) per request."""
    on, off = _stage(True), _stage(False)
    out = {}
    for name, (dialect, route, raw) in _cases().items():
        make = _exchange_factory(dialect, route, raw)
        await _cpu_us(on, make, n // 5)  # warm-up: phonenumbers and detect-secrets load lazily
        out[name] = (await _cpu_us(off, make, n), await _cpu_us(on, make, n))
    return out


def report(figures: dict[str, tuple[float, float]]) -> tuple[str, bool]:
    lines = [
        "| case | body | off µs | on µs | added µs | target µs | |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    ok = True
    sizes = {name: len(raw) for name, (_, _, raw) in _cases().items()}
    for name, (off, on) in figures.items():
        target = TARGETS_MS.get(name, 0) * 1000
        passed = not target or on - off <= target
        ok &= passed
        verdict = ("PASS" if passed else "MISS") if target else ""
        shown = f"{target:.0f}" if target else "-"
        lines.append(f"| {name} | {sizes[name]} B | {off:.1f} | {on:.1f} | {on - off:.1f} | {shown} | {verdict} |")
    return "\n".join(lines), ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="requests per case and setting")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    text, ok = report(asyncio.run(run(args.n)))
    print(text)
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
