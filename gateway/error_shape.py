"""The wire formats a caller (or a provider) can speak."""

from __future__ import annotations

import enum


class ErrorShape(enum.Enum):
    ANTHROPIC = "anthropic"  # Messages API: /v1/messages
    OPENAI = "openai"  # Chat Completions API: /v1/chat/completions
