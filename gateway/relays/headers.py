"""Which headers cross the gateway: the caller's that go upstream, the provider's that come back, and a stream's."""

from __future__ import annotations

from collections.abc import Mapping

# Never forwarded upstream: hop-by-hop headers, framing the gateway redoes, and the caller's credentials.
_REQUEST_HEADERS_DROPPED = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "accept-encoding",
        "authorization",
        "x-api-key",
        "cookie",
    }
)
_GATEWAY_HEADER_PREFIX = "x-gateway-"  # the gateway's own controls (x-gateway-dlp): meant for it, not the provider
_RESPONSE_HEADERS_DROPPED = frozenset(
    {
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "content-encoding",
        "set-cookie",
        "server",
        "date",
    }
)


def forwardable_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The caller's headers that go upstream unchanged (every anthropic-* header among them).

    A header sent as several lines (two `anthropic-beta` lines, say) goes on as one, its values joined with
    ", " as RFC 9110 section 5.3 allows: keeping only one line would drop betas.
    """
    forwarded: dict[str, str] = {}
    spelling: dict[str, str] = {}  # lower-case name -> the spelling of its first line
    for name, value in headers.items():
        lower = name.lower()
        if lower in _REQUEST_HEADERS_DROPPED or lower.startswith(_GATEWAY_HEADER_PREFIX):
            continue
        first = spelling.setdefault(lower, name)
        forwarded[first] = f"{forwarded[first]}, {value}" if first in forwarded else value
    return forwarded


def relayed_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The provider's response headers that reach the caller (request-id, rate-limit and retry-after among them)."""
    return {k: v for k, v in headers.items() if k.lower() not in _RESPONSE_HEADERS_DROPPED}


EVENT_STREAM = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}  # a translated stream's headers
