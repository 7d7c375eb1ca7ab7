"""The log set-up: a traceback on a terminal shows no local variables (a posted key, a new key, a token)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog

from gateway.config import LoggingConfig
from gateway.logs import configure_logging

SECRET = "gw-0123456789abcdef_this-is-the-secret-part"


@pytest.fixture
def restore_structlog() -> Iterator[None]:
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def _sign_in(key: str) -> None:
    form = {"csrf": "x", "key": key}  # a local, as in console.session.sign_in
    raise RuntimeError(f"a bug while signing in ({len(form)} fields)")


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_a_traceback_does_not_print_local_variables(
    capsys: pytest.CaptureFixture[str], restore_structlog: None, fmt: str
) -> None:
    configure_logging(LoggingConfig(format=fmt, level="info"))
    log = structlog.get_logger("test_logs")
    try:
        _sign_in(SECRET)
    except RuntimeError:
        log.exception("unhandled_error", path="/console/sign-in")
    err = capsys.readouterr().err
    assert "a bug while signing in" in err and "_sign_in" in err  # the traceback is there
    assert "this-is-the-secret-part" not in err
