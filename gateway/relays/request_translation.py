"""The request side of a translating relay: what the translators need to know, and their failures as 400s."""

from __future__ import annotations

import structlog

from gateway.dialects.translation import TranslationError, TranslationOptions
from gateway.errors import BadRequest
from gateway.retry_policy import Target

log = structlog.get_logger("gateway.relay")


def unexpected_shape(exc: Exception) -> BadRequest:
    """A 400 for a request body whose fields have types the translator does not handle (logged: it is our gap)."""
    log.warning("untranslatable_request", error=repr(exc))
    return BadRequest("request body has a field of an unexpected type or shape; check it against the API reference")


class _Translating:
    """See `translating`; a class, not a @contextmanager, so that a request builds no generator for it."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            return
        if isinstance(exc, TranslationError):
            raise BadRequest(str(exc), param=exc.param) from None
        if isinstance(exc, TypeError | AttributeError | KeyError):  # a shape the translator did not foresee
            raise unexpected_shape(exc) from None  # still the caller's


_TRANSLATING = _Translating()


def translating() -> _Translating:
    """A request body the translator cannot take is the caller's 400, never a 500."""
    return _TRANSLATING


def translation_options(target: Target) -> TranslationOptions:
    """What the OpenAI-dialect translators need to know about the alias and deployment they write for."""
    alias = target.alias
    return TranslationOptions(
        provider_model=target.provider_model,
        default_max_tokens=alias.default_max_tokens,
        thinking_budgets=alias.thinking_budgets,
        structured_outputs=alias.structured_outputs,
    )
