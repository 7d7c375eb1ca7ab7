"""structlog set-up: JSON lines in production, readable lines on a terminal. Never a key or a prompt."""

from __future__ import annotations

import logging
import sys

import orjson
import structlog

from gateway.config import LoggingConfig

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(cfg: LoggingConfig) -> None:
    use_json = cfg.format == "json" or (cfg.format == "auto" and not sys.stderr.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if use_json:
        processors = [*shared, structlog.processors.format_exc_info, structlog.processors.JSONRenderer(orjson.dumps)]
        factory: structlog.types.WrapperClass | None = None
        logger_factory = structlog.BytesLoggerFactory(sys.stderr.buffer)
    else:
        # Rich tracebacks show every frame's local variables by default: a posted key, a new key, a token.
        no_locals: structlog.types.ExceptionRenderer = (
            structlog.dev.RichTracebackFormatter(show_locals=False)
            if structlog.dev.rich
            else structlog.dev.plain_traceback
        )
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty(), exception_formatter=no_locals)
        processors = [*shared, renderer]
        logger_factory = structlog.PrintLoggerFactory(sys.stderr)
    factory = structlog.make_filtering_bound_logger(_LEVELS[cfg.level])
    structlog.configure(
        processors=processors, wrapper_class=factory, logger_factory=logger_factory, cache_logger_on_first_use=True
    )
    # aiohttp's own loggers (unhandled errors, client disconnects) go to stderr at warning and above
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
