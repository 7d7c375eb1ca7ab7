"""Stage 3b: data-loss prevention, between the budget check and routing (gateway/dlp/ does the scanning).

For a model whose alias has `dlp` enabled, the strings the caller wrote are scanned; per detector a finding
blocks the request (400 in the caller's dialect naming the detector and where, never the value), is
redacted (the request leaves with placeholders) or only recorded. Every finding is counted in
`gateway_dlp_findings` and stored in dlp_findings. An alias with DLP off costs one dict lookup.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import structlog

from gateway.config import DlpConfig, ModelAlias, RoutingConfig
from gateway.dlp.findings import FindingsLog, RequestFacts
from gateway.dlp.inspection import TextTooLarge, Verdict, has_duplicate_keys, inspect
from gateway.dlp.policy import Inspector, PolicyBook
from gateway.dlp.scanner import TooBusyInline, TooManyCandidates
from gateway.errors import BadRequest, BodyTooLarge, Forbidden
from gateway.metrics import Metrics
from gateway.pipeline import Exchange, Next

log = structlog.get_logger("gateway.dlp")

BYPASS_HEADER = "x-gateway-dlp"
MAX_SCAN_BYTES = 8 * 1024 * 1024  # more body than this (images aside, it is text) is refused rather than let through
IN_THREAD_BYTES = 512 * 1024  # a body this big is scanned in a worker thread: the event loop keeps serving others
# A smaller body is scanned inline while it has at most this many candidates (validating one, say a phone number,
# costs up to 50 µs); past that it is scanned again in a thread: 10,000 phone numbers in 160 KB took 0.6 s.
INLINE_CANDIDATES = 500
# ... and while its text is at most this many characters: finding the anchors costs about 1 µs each, and 400 KB of
# digits holds 400,000 of them (0.4 s, 1.7 s with every national id on). A Claude Code turn's text is 12 KB or more.
INLINE_TEXT = 32 * 1024


class PreventDataLoss:
    """Block, redact or record secrets and personal data per the alias's `dlp` policy."""

    def __init__(
        self,
        cfg: DlpConfig,
        models: Mapping[str, ModelAlias],
        routing: RoutingConfig,
        metrics: Metrics,
        findings: FindingsLog,
    ) -> None:
        self._book = PolicyBook(cfg, models, routing) if cfg.any_enabled() else None
        self._bypass_roles = frozenset(cfg.bypass_roles)
        self._metrics, self._findings = metrics, findings

    async def __call__(self, ex: Exchange, call_next: Next) -> None:
        inspector = self._book.for_model(ex.alias_name) if self._book is not None else None
        if inspector is not None and not self._bypassed(ex):
            await self._inspect(ex, inspector)
        await call_next(ex)

    def _bypassed(self, ex: Exchange) -> bool:
        if ex.request.headers.get(BYPASS_HEADER, "").strip().lower() != "off":
            return False
        role = "admin" if ex.principal is not None and ex.principal.is_admin else "user"
        if role not in self._bypass_roles:
            allowed = ", ".join(sorted(self._bypass_roles)) or "none"
            raise Forbidden(f"{BYPASS_HEADER}: off is not allowed for {role} keys (dlp.bypass_roles: {allowed})")
        # No finding is stored for an unscanned request, so the skip itself leaves the trace
        log.warning("dlp_bypassed", key_id=ex.principal.key_id if ex.principal else None, alias=ex.alias_name)
        return True

    async def _inspect(self, ex: Exchange, inspector: Inspector) -> None:
        body = ex.full_body()  # a sketched passthrough body is parsed here, and only here
        small = len(ex.raw_body) <= IN_THREAD_BYTES
        if small:
            duplicate = has_duplicate_keys(ex.raw_body, body)
        else:  # 0.1 s or more of byte counting: off the event loop
            duplicate = await asyncio.to_thread(has_duplicate_keys, ex.raw_body, body)
        if duplicate:
            raise BadRequest("request body has a duplicate key; send each key once")
        try:
            verdict = _inline(body, ex.raw_body, inspector) if small else None
            if verdict is None:  # a big or a busy body: scanned in a worker thread, the event loop serves others
                verdict = await asyncio.to_thread(inspect, body, ex.raw_body, inspector, MAX_SCAN_BYTES)
        except TooManyCandidates as flood:
            raise BadRequest(f"request text has too many {flood} candidates for the data-loss scan") from None
        except TextTooLarge:
            raise BodyTooLarge(f"request text is over the data-loss scan limit of {MAX_SCAN_BYTES} bytes") from None
        if verdict.findings:
            self._record(ex, verdict)
        if verdict.blocked is not None:
            where, detector = verdict.blocked.location, verdict.blocked.detector
            raise BadRequest(
                f"blocked by the gateway's data-loss policy: {detector} found in {where} (the value is not shown);"
                " remove it, or ask an admin to allowlist it",
                param=where,
            )
        if verdict.raw_body is not None:
            ex.raw_body = verdict.raw_body  # ex.body was redacted in place; both now say the same

    def _record(self, ex: Exchange, verdict: Verdict) -> None:
        for finding in verdict.findings:
            self._metrics.dlp_findings.inc((finding.detector, finding.action), finding.occurrences)
        who = ex.principal
        facts = RequestFacts(
            ex.request_id,
            who.key_id if who else None,
            who.user_id if who else None,
            ex.route,
            ex.alias_name,
        )
        self._findings.record(facts, verdict.findings)


def _inline(body: dict[str, Any], raw: bytes, inspector: Inspector) -> Verdict | None:
    """The scan on the event loop, or None (body unchanged) past INLINE_TEXT characters or INLINE_CANDIDATES."""
    try:
        return inspect(body, raw, inspector, INLINE_TEXT, INLINE_CANDIDATES)
    except (TextTooLarge, TooBusyInline):
        return None
