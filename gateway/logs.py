"""structlog set-up: JSON lines in production, readable lines on a terminal. Never a key or a prompt."""

from __future__ import annotations

import logging
import sys
from typing import IO, Any

import orjson
import structlog
from aiohttp.http_exceptions import HttpProcessingError

from gateway.config import LoggingConfig

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def console_renderer(*, colors: bool) -> structlog.dev.ConsoleRenderer:
    """Readable lines; a traceback without its frames' local variables, which hold the caller's key, the
    provider's request headers and the prompt (structlog's rich tracebacks show them by default)."""
    if getattr(structlog.dev, "rich", None) is None:  # structlog.dev sets it to the rich module if importable
        return structlog.dev.ConsoleRenderer(colors=colors, exception_formatter=structlog.dev.plain_traceback)
    formatter = structlog.dev.RichTracebackFormatter(show_locals=False)
    return structlog.dev.ConsoleRenderer(colors=colors, exception_formatter=formatter)


def configure_logging(cfg: LoggingConfig) -> None:
    use_json = cfg.format == "json" or (cfg.format == "auto" and not sys.stderr.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    processors: list[structlog.types.Processor]
    logger_factory: structlog.BytesLoggerFactory | structlog.PrintLoggerFactory
    if use_json:
        processors = [*shared, structlog.processors.format_exc_info, structlog.processors.JSONRenderer(orjson.dumps)]
        logger_factory = structlog.BytesLoggerFactory(sys.stderr.buffer)
    else:
        processors = [*shared, console_renderer(colors=sys.stderr.isatty())]
        logger_factory = structlog.PrintLoggerFactory(sys.stderr)
    factory = structlog.make_filtering_bound_logger(_LEVELS[cfg.level])
    structlog.configure(
        processors=processors, wrapper_class=factory, logger_factory=logger_factory, cache_logger_on_first_use=True
    )
    global _json_output
    _json_output = (tuple(processors), sys.stderr.buffer) if use_json and _LEVELS[cfg.level] <= logging.INFO else None
    # aiohttp's own loggers (unhandled errors, client disconnects) go to stderr at warning and above
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.server").addFilter(not_a_malformed_request)


def not_a_malformed_request(record: logging.LogRecord) -> bool:
    """Drop aiohttp's ERROR for a request it could not parse (it answered 400): that is the client's fault, any
    scanner on the internet can fill the log with it, and it quotes the offending header line, a key perhaps."""
    error = record.exc_info[1] if record.exc_info else None
    return not (isinstance(error, HttpProcessingError) and 400 <= error.code < 500)


# --- the per-request line, rendered cheaply -------------------------------------------------------------

_stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)  # the same stamp as configure_logging's
# (the JSON set-up's processors, its output) while configure_logging's JSON lines at info or below are set up
_json_output: tuple[tuple[structlog.types.Processor, ...], IO[bytes]] | None = None


def request_line(fields: dict[str, Any]) -> None:
    """Log the line every model request writes (`event: request`), `fields` in order after the event name.

    Under the production set-up (JSON lines) it is rendered here, as the processor chain would render it
    (fields, level, timestamp; one orjson call, one write), because it is written for every request; any other
    set-up (a terminal's readable lines, a test's `capture_logs`, a level above info) takes structlog's path.
    The request id is one of `fields`, so the line carries it without merging the context variables.
    """
    output = _json_output
    # still in force? (structlog.testing.capture_logs, for one, swaps the processors inside the same list)
    if output is None or tuple(structlog.get_config()["processors"]) != output[0]:
        # a fresh proxy each time: one cached under an earlier set-up would keep writing there
        structlog.get_logger("gateway").info("request", **fields)
        return
    line = _stamp(None, "info", {**fields, "event": "request", "level": "info"})
    output[1].write(orjson.dumps(line) + b"\n")
    output[1].flush()
