"""The `gateway` command, run as a user runs it: a subprocess against the test database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import asyncpg

from gateway import db

ROOT = Path(__file__).resolve().parent.parent


def gateway(*args: str, dsn: str = "", config: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "ANTHROPIC_", "DATABASE_URL"))}
    if dsn:
        env["DATABASE_URL"] = dsn
    cmd = [sys.executable, "-m", "gateway", *(["--config", str(config)] if config else []), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)


def test_config_check_prints_aliases() -> None:
    result = gateway("config", "check")
    assert result.returncode == 0, result.stderr
    assert "gateway.yaml: ok" in result.stdout
    assert "claude-fast" in result.stdout and "anthropic:claude-haiku-4-5" in result.stdout
    assert "has no API key: ANTHROPIC_API_KEY is unset" in result.stderr  # unset here


def test_config_check_warns_about_unpriced_models(tmp_path: Path) -> None:
    cfg = tmp_path / "g.yaml"
    cfg.write_text(
        "providers: {anthropic: {base_url: 'https://x', api_key: k}}\n"
        "models: {cheap: {provider: anthropic, model: claude-new-1}}\n"
    )
    result = gateway("config", "check", str(cfg))
    assert result.returncode == 0
    assert "warning: pricing.claude-new-1 is missing" in result.stderr


def test_bad_config_is_one_line_without_traceback(tmp_path: Path) -> None:
    cfg = tmp_path / "g.yaml"
    cfg.write_text("providers: {anthropic: {base_url: 'https://x'}}\nmodels: {a: {provider: nope, model: m}}\n")
    result = gateway("--config", str(cfg), "serve")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "gateway: config error: models.a.provider: 'nope' is not a declared provider (anthropic)"
    )


async def test_keys_create_list_revoke(database_url: str, pool: asyncpg.Pool) -> None:
    created = gateway("keys", "create", "--name", "ci-bot", "--quiet", dsn=database_url)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("gw-") and len(key) > 50 and "\n" not in key
    [row] = await db.list_keys(pool)
    assert row.name == "ci-bot" and not row.is_admin and key not in row.key_hash

    admin = gateway("keys", "create", "--name", "ops", "--admin", dsn=database_url)
    assert "created admin key" in admin.stdout

    listed = gateway("keys", "list", dsn=database_url)
    assert "ci-bot" in listed.stdout and "ops" in listed.stdout
    assert key not in listed.stdout  # never a secret

    assert gateway("keys", "revoke", str(row.id), dsn=database_url).returncode == 0
    again = gateway("keys", "revoke", str(row.id), dsn=database_url)
    assert again.returncode == 2 and "no active key" in again.stderr


def test_migrate_is_idempotent(database_url: str) -> None:
    result = gateway("migrate", dsn=database_url)
    assert result.returncode == 0 and "up to date" in result.stdout
