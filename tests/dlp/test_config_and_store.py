"""gateway.yaml's `dlp:` section (errors name the path) and the findings writer when the database is away."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
import yaml
from structlog.testing import capture_logs

from gateway import db
from gateway.config import ConfigError, parse_config
from gateway.dlp.findings import Finding, FindingsLog, RequestFacts
from gateway.dlp.policy import PolicyBook

MINIMAL: dict[str, Any] = {
    "providers": {"anthropic": {"base_url": "https://api.anthropic.com"}},
    "models": {"claude-fast": {"provider": "anthropic", "model": "claude-haiku-4-5"}},
}


def config(dlp: Any, **more: Any) -> Any:
    return parse_config({**MINIMAL, "dlp": dlp, **more}, environ={})


@pytest.mark.parametrize(
    ("dlp", "more", "message"),
    [
        ({"detectors": {"aws_key": {"action": "block"}}}, {}, "dlp.detectors.aws_key: unknown key"),
        ({"detectors": {"email": {"action": "drop"}}}, {}, "dlp.detectors.email.action: 'drop' is not one of"),
        ({"detectors": {"email": {"allow": ["("]}}}, {}, "dlp.detectors.email.allow[0]: '(' is not a regular"),
        ({"aliases": {"claude-slow": {"enabled": True}}}, {}, "dlp.aliases.claude-slow: unknown key"),
        ({"national_ids": ["xx"]}, {}, "dlp.national_ids: 'xx' is not one of"),
        ({"phone_regions": ["usa"]}, {}, "dlp.phone_regions: 'usa' is not a two-letter region"),
        ({"phone_regions": ["US", "UK"]}, {}, "dlp.phone_regions: 'UK' is not a region libphonenumber knows"),
        ({"bypass_roles": ["root"]}, {}, "dlp.bypass_roles: 'root' is not one of admin, user"),
        ({"enabled": True}, {"pipeline": ["auth", "route"]}, "dlp: enabled, but `pipeline:` leaves out the dlp stage"),
    ],
)
def test_config_errors_name_the_path(dlp: Any, more: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        config(dlp, **more)


def test_off_by_default_and_alias_rules_layer_over_the_section() -> None:
    assert not parse_config(MINIMAL, environ={}).dlp.any_enabled()
    cfg = config(
        {
            "national_ids": ["de"],
            "detectors": {"email": {"action": "block", "allow": ["@corp\\.io$"]}},
            "aliases": {"claude-fast": {"enabled": True, "detectors": {"email": {"action": "redact"}}}},
        }
    )
    book = PolicyBook(cfg.dlp, cfg.models, cfg.routing)
    inspector = book.for_model("claude-fast")
    assert inspector is not None
    assert inspector.actions["email"] == "redact"  # the alias's action wins
    assert inspector.actions["aws_access_key"] == "redact" and inspector.actions["phone"] == "audit"  # defaults
    assert inspector.actions["national_id_de"] == "audit" and "national_id_us" not in inspector.actions
    assert inspector.scanner.scan(["mail a@corp.io or b@corp-mail.io"])[0].value == "b@corp-mail.io"  # allowlist
    assert book.for_model("claude-3-haiku") is None  # no rule routes it: the route stage answers 404


async def test_findings_are_logged_without_value_when_the_database_is_away(database_url: str) -> None:
    pool = await db.create_pool(database_url, min_size=1, max_size=1)
    await pool.close()  # every acquire now fails, as it does while PostgreSQL is down
    store = FindingsLog(pool)
    with capture_logs() as logs:
        store.record(RequestFacts("r1", None, None, "messages", "claude-fast"), [Finding("email", "audit", "input")])
        await store.flush()
    [entry] = [e for e in logs if e["event"] == "dlp_findings_not_stored"]
    assert entry["request_id"] == "r1" and entry["detectors"] == ["email"]


async def test_findings_rows_hold_no_value(pool: asyncpg.Pool) -> None:
    columns = {r["column_name"] for r in await pool.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'dlp_findings'"
    )}  # fmt: skip
    assert columns == {"id", "created_at", *db.DLP_FINDING_COLUMNS}


def test_a_bare_yaml_off_is_the_action_off() -> None:
    doc = yaml.safe_load(
        "detectors: {email: {action: off}}\naliases: {claude-fast: {detectors: {iban: {action: off}}}}"
    )
    dlp = config(doc).dlp
    assert dlp.detectors["email"].action == "off" and dlp.aliases["claude-fast"].detectors["iban"].action == "off"


async def test_a_nul_in_the_model_id_does_not_lose_the_finding(pool: asyncpg.Pool) -> None:
    # The stage runs before route refuses a non-printable model, and PostgreSQL text holds no NUL.
    findings = FindingsLog(pool)
    findings.record(RequestFacts("r-nul", None, None, "messages", "claude-3-haiku\x00"), [Finding("jwt", "block", "m")])
    await findings.flush()
    row = await pool.fetchrow("SELECT alias, detector FROM dlp_findings WHERE request_id = 'r-nul'")
    assert row is not None and row["alias"] == "claude-3-haiku\ufffd" and row["detector"] == "jwt"
