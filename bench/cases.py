"""What the benchmark sends: the cases (route, body, caller headers) and the targets they are judged by."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

BODIES = Path(__file__).resolve().parent / "bodies"
ANTHROPIC_VERSION = "2023-06-01"
CONCURRENCIES = (1, 50)
TARGET_CONC = 50  # the rps targets are judged at this concurrency, the added latency at c=1

# The targets of issue 19, judged on the gateway with its production log line on.
MAX_ADDED_P50_MS = 0.3  # c=1: gateway p50 minus the floor's p50 on the same route
MAX_RSS_MB = 80.0  # per worker, after the whole matrix
MAX_READY_S = 1.0  # `gateway serve` to a 200 from /health, external database
MIN_SCALING_PER_WORKER = 0.8  # two workers serve at least 1.6x what one does

# What Claude Code 2.1.197 sent with its first request (shared/captures), minus the credential.
CLAUDE_CODE_HEADERS = {
    "Accept": "application/json",
    "User-Agent": "claude-cli/2.1.197 (external, sdk-cli)",
    "X-Claude-Code-Session-Id": "db2a91c2-cf66-4478-8104-8175421f0612",
    "X-Stainless-Lang": "js",
    "X-Stainless-Package-Version": "0.94.0",
    "X-Stainless-Retry-Count": "0",
    "X-Stainless-Timeout": "600",
    "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,thinking-token-count-2026-05-13,"
    "context-management-2025-06-27,prompt-caching-scope-2026-01-05,mid-conversation-system-2026-04-07,"
    "effort-2025-11-24",
    "anthropic-dangerous-direct-browser-access": "true",
    "anthropic-version": ANTHROPIC_VERSION,
    "x-app": "cli",
}

Caller = Literal["anthropic", "openai", "claude_code"]


@dataclass(frozen=True, slots=True)
class Case:
    """One request shape, sent to the gateway and to the floor at every concurrency."""

    key: str
    title: str
    path: str
    body_file: str
    caller: Caller  # decides how the key is presented
    stream: bool
    min_ratio: float  # gateway rps / reference floor rps at TARGET_CONC
    floor_ref: str  # the case whose floor figures the targets use (since issue 19: the same route's)

    @property
    def body(self) -> Path:
        return BODIES / self.body_file

    def headers(self, key: str) -> dict[str, str]:
        """The headers this case's caller sends, presenting `key`."""
        if self.caller == "openai":
            return {"Authorization": f"Bearer {key}"}
        if self.caller == "claude_code":
            return {**CLAUDE_CODE_HEADERS, "Authorization": f"Bearer {key}"}
        return {"x-api-key": key, "anthropic-version": ANTHROPIC_VERSION}


CASES = (
    Case("messages", "/v1/messages", "/v1/messages", "anthropic_nonstream.json", "anthropic", False, 0.75, "messages"),
    Case(
        "messages_stream",
        "/v1/messages stream",
        "/v1/messages",
        "anthropic_stream.json",
        "anthropic",
        True,
        0.75,
        "messages_stream",
    ),
    Case(
        "chat",
        "/v1/chat/completions",
        "/v1/chat/completions",
        "openai_nonstream.json",
        "openai",
        False,
        0.65,
        "chat",
    ),
    Case(
        "chat_stream",
        "/v1/chat/completions stream",
        "/v1/chat/completions",
        "openai_stream.json",
        "openai",
        True,
        0.65,
        "chat_stream",
    ),
    Case(
        "cc_stream",
        "Claude Code 77.6 KB body stream",
        "/v1/messages?beta=true",
        "claude_code_stream.json",
        "claude_code",
        True,
        0.70,
        "cc_stream",
    ),
)
CASE_BY_KEY = {case.key: case for case in CASES}
