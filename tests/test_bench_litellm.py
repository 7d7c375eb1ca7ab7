"""`python bench/run.py --litellm`: LiteLLM's proxy is found, started without the benchmark's database, and answers.

LiteLLM itself is optional (750 MB in a venv of its own): the last test runs it when it is found
($LITELLM_BIN, beside this interpreter, or on PATH) and skips, saying so, when it is not.
"""

from __future__ import annotations

import http.client
import stat
from pathlib import Path

import pytest

from bench import servers

STUB = """#!/bin/sh
# Stands in for `litellm`: records its environment, then answers GET /health/liveliness on --port.
env > "$STUB_ENV_OUT"
while [ "$#" -gt 0 ]; do [ "$1" = "--port" ] && port="$2"; shift; done
cd "$STUB_ROOT" && exec python3 -m http.server --bind 127.0.0.1 "$port"
"""


def test_litellm_is_found_by_litellm_bin_and_started_without_database_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub = tmp_path / "litellm"
    stub.write_text(STUB)
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "root" / "health").mkdir(parents=True)
    (tmp_path / "root" / "health" / "liveliness").write_text("I'm alive!")
    monkeypatch.setenv(servers.LITELLM_BIN_ENV, str(stub))
    monkeypatch.setenv("STUB_ENV_OUT", str(tmp_path / "env.txt"))
    monkeypatch.setenv("STUB_ROOT", str(tmp_path / "root"))
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/bench")  # the benchmark's own

    assert servers.litellm_installed() and servers.litellm_command() == [str(stub)]
    server = servers.start_litellm("http://127.0.0.1:9", tmp_path)
    server.stop()
    env = dict(line.split("=", 1) for line in (tmp_path / "env.txt").read_text().splitlines() if "=" in line)
    assert "DATABASE_URL" not in env  # with it, LiteLLM 1.108 wants Prisma and exits before it is ready
    assert env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    assert "master_key: sk-master-1234" in (tmp_path / "litellm_config.yaml").read_text()


@pytest.mark.skipif(not servers.litellm_installed(), reason="LiteLLM not found (optional: set LITELLM_BIN)")
def test_a_real_litellm_proxy_answers_through_the_fake_upstream(tmp_path: Path) -> None:
    fake = servers.start_fake(tmp_path)
    try:
        litellm = servers.start_litellm(fake.url, tmp_path)
        try:
            body = (servers.BENCH_DIR / "bodies" / "anthropic_nonstream.json").read_bytes()
            conn = http.client.HTTPConnection("127.0.0.1", int(litellm.url.rsplit(":", 1)[1]), timeout=60)
            headers = {"x-api-key": servers.LITELLM_KEY, "content-type": "application/json"}
            try:
                conn.request("POST", "/v1/messages", body=body, headers=headers)
                reply = conn.getresponse()
                answer = reply.read()
            finally:
                conn.close()
            assert reply.status == 200, answer
            assert b"fake upstream" in answer
        finally:
            litellm.stop()
    finally:
        fake.stop()
