"""What every request translator is given (TranslationOptions) and raises (TranslationError), whatever the route.

Pure: no I/O. The relays turn a TranslationError into a 400 in the caller's error shape, naming `param`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


class TranslationError(ValueError):
    """The caller's request cannot be expressed in the provider's wire format; the message says what and where.

    `param` names the offending field, e.g. "messages[2].content[0].type".
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class TranslationOptions:
    """Per-route settings the request itself does not carry."""

    provider_model: str  # the real model id to put in "model"
    default_max_tokens: int  # used when max_tokens / max_completion_tokens are absent
    thinking_budgets: Mapping[str, int]  # reasoning_effort -> thinking budget_tokens
    structured_outputs: bool = True  # the model has output_config.format; False: a forced tool stands in
