"""The wire formats a caller (or a provider) can speak, and so the shape of the error body it reads."""

from __future__ import annotations

import enum


class ErrorShape(enum.Enum):
    ANTHROPIC = "anthropic"  # Messages API: /v1/messages
    OPENAI = "openai"  # Chat Completions API: /v1/chat/completions (and /v1/responses' HTTP errors)
    MANAGEMENT = "management"  # the management API's {"error": "..."}; never a provider's or a model route's
