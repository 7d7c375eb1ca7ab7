"""A hostile caller (or upstream) against billing and budgets: every way found to get Claude for less than the
gateway records, each pinned by a test against the fake upstream and the real database.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestServer

from gateway import db
from gateway.accounting.spill import SpillDir
from gateway.app_keys import SERVICES
from tests.conftest import GatewayFactory, flushed_usage
from tests.fakes.upstream import FakeUpstream
from tests.test_openai_provider import openai_overrides

MakeUser = Callable[..., Awaitable[tuple[str, db.KeyRow]]]
HI = [{"role": "user", "content": "hi"}]


async def _post(server: TestServer, path: str, key: str, body: Any) -> tuple[int, bytes]:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = {"x-api-key": key, "Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as s, s.post(server.make_url(path), data=raw, headers=headers) as r:
        return r.status, await r.read()


# --- the stream flag: what the relay reads is what the upstream does -------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/v1/chat/completions", {"model": "gpt-fast", "messages": HI}, id="chat-openai-passthrough"),
        pytest.param("/v1/chat/completions", {"model": "claude-fast", "messages": HI}, id="chat-over-anthropic"),
        pytest.param("/v1/responses", {"model": "claude-fast", "input": "hi"}, id="responses-over-anthropic"),
    ],
)
@pytest.mark.parametrize("stream", [1, "true", 0])
async def test_a_stream_flag_that_is_not_a_boolean_is_refused_not_streamed_unbilled(
    make_gateway: GatewayFactory, upstream: FakeUpstream, key: str, path: str, body: dict[str, Any], stream: Any
) -> None:
    """`"stream": 1` made a lenient upstream (the fake, like pydantic's lax mode) stream while the relay awaited a
    whole reply: the caller got the tokens (or the upstream spent them) and the usage row said 0 / 0."""
    server = await make_gateway(**openai_overrides(upstream.url))
    status, data = await _post(server, path, key, {**body, "stream": stream})
    assert status == 400, data
    error = orjson.loads(data)["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "stream"
    assert upstream.requests == []


# --- hostile upstream counts in a stream ------------------------------------------------------------------

TEXT = "x" * 35  # one delta's text: 10 tokens at 3.5 characters per token


def _anthropic_stream(start_usage: dict[str, Any], final_usage: dict[str, Any], deltas: int) -> list[Any]:
    head = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5", "content": []}
    events: list[Any] = [("message_start", {"type": "message_start", "message": head | {"usage": start_usage}})]
    block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    events.append(("content_block_start", block))
    delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": TEXT}}
    events += [("content_block_delta", delta)] * deltas
    events.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
    end = {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": final_usage}
    return [*events, ("message_delta", end), ("message_stop", {"type": "message_stop"})]


STREAM_BODY = {"model": "claude-fast", "max_tokens": 500, "stream": True, "messages": HI}


STREAM_ROUTES = [
    pytest.param("/v1/messages", STREAM_BODY, b"message_stop", id="messages"),
    pytest.param(
        "/v1/chat/completions",
        {"model": "claude-fast", "stream": True, "stream_options": {"include_usage": True}, "messages": HI},
        b"[DONE]",
        id="chat",
    ),
    pytest.param(
        "/v1/responses", {"model": "claude-fast", "stream": True, "input": "hi"}, b"response.completed", id="responses"
    ),
]


@pytest.mark.parametrize("reported", ["lots", True, -5])
@pytest.mark.parametrize(("path", "body", "end"), STREAM_ROUTES)
async def test_a_final_output_count_that_is_no_count_leaves_the_stream_billed_for_what_it_relayed(
    gateway: TestServer,
    upstream: FakeUpstream,
    key: str,
    pool: asyncpg.Pool,
    reported: Any,
    path: str,
    body: dict[str, Any],
    end: bytes,
) -> None:
    """message_delta's `output_tokens: "lots"` (or true, or -5) was taken as the final count, clamped to 0: twenty
    deltas of relayed text were billed as no output at all (and a translated stream broke on the string)."""
    events = _anthropic_stream({"input_tokens": 10, "output_tokens": 1}, {"output_tokens": reported}, deltas=20)
    upstream.enqueue(events=events)
    status, data = await _post(gateway, path, key, body)
    assert status == 200 and end in data and b"internal gateway error" not in data
    [row] = await flushed_usage(gateway, pool)
    assert row["usage_estimated"] is True
    assert row["output_tokens"] >= 20 * len(TEXT) / 3.5  # 700 characters relayed


async def test_an_openai_usage_chunk_with_no_count_leaves_the_stream_billed_for_what_it_relayed(
    make_gateway: GatewayFactory, upstream: FakeUpstream, key: str, pool: asyncpg.Pool
) -> None:
    server = await make_gateway(**openai_overrides(upstream.url))
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> Any:
        return "", base | {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    usage = {"prompt_tokens": 5, "completion_tokens": "lots", "total_tokens": 5}
    events = [chunk({"role": "assistant", "content": ""}), *[chunk({"content": TEXT})] * 20, chunk({}, "stop")]
    upstream.enqueue(events=[*events, ("", base | {"choices": [], "usage": usage}), ("", "[DONE]")])
    status, _ = await _post(server, "/v1/chat/completions", key, {"model": "gpt-fast", "stream": True, "messages": HI})
    assert status == 200
    [row] = await flushed_usage(server, pool)
    assert row["usage_estimated"] is True
    assert row["output_tokens"] >= 20 * len(TEXT) / 3.5


async def test_a_later_lower_cache_write_count_does_not_underprice_the_one_hour_writes(
    gateway: TestServer, upstream: FakeUpstream, key: str, pool: asyncpg.Pool
) -> None:
    """message_start reported 1M one-hour cache writes; a message_delta with `cache_creation_input_tokens: 0`
    left cache_write_tokens 0 under its 1M one-hour part: the writes were priced at 2.00 - 1.25 USD per million
    and the month's token counters missed them."""
    creation = {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 1_000_000}
    start = {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 1_000_000}
    final = {"output_tokens": 0, "cache_creation_input_tokens": 0}
    upstream.enqueue(events=_anthropic_stream(start | {"cache_creation": creation}, final, deltas=0))
    status, _ = await _post(gateway, "/v1/messages", key, STREAM_BODY)
    assert status == 200
    [row] = await flushed_usage(gateway, pool)
    assert (row["cache_write_tokens"], row["cache_write_1h_tokens"]) == (1_000_000, 1_000_000)
    assert row["cost_usd"] == 2  # claude-haiku-4-5: a 1-hour write is 2x the 1.00 USD input price


# --- what admission reserves is what the upstream may spend ---------------------------------------------


@pytest.mark.parametrize(
    ("model", "limits"),
    [
        pytest.param("claude-fast", {"max_tokens": 1, "max_completion_tokens": 50_000}, id="newer-name-wins-upstream"),
        pytest.param("gpt-fast", {"max_tokens": 1, "max_completion_tokens": 50_000}, id="openai-passthrough"),
        pytest.param("gpt-fast", {"max_completion_tokens": 50_000.0}, id="float-to-a-lenient-provider"),
    ],
)
async def test_the_reservation_holds_the_output_limit_the_upstream_is_sent(
    make_gateway: GatewayFactory, upstream: FakeUpstream, make_user: MakeUser, model: str, limits: dict[str, Any]
) -> None:
    """A Chat body with `max_tokens: 1` and `max_completion_tokens: 50000` goes upstream with 50,000 (the newer
    name wins) but reserved 1: a second request was admitted against a 10,000-token limit the first may use 5x."""
    server = await make_gateway(**openai_overrides(upstream.url))
    key, _ = await make_user(limit_tokens=10_000)
    upstream.enqueue(delay_s=0.5)  # the first request is still in flight when the second arrives
    first = asyncio.create_task(_post(server, "/v1/chat/completions", key, {"model": model, "messages": HI, **limits}))
    await asyncio.sleep(0.2)
    second, _ = await _post(server, "/v1/chat/completions", key, {"model": model, "messages": HI})
    assert second == 429
    assert (await first)[0] == 200


# --- a caller that hangs up while a whole (non-stream) reply is being generated ---------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/v1/messages", {"model": "claude-fast", "max_tokens": 500, "messages": HI}, id="messages"),
        pytest.param("/v1/chat/completions", {"model": "claude-fast", "messages": HI}, id="chat"),
        pytest.param("/v1/responses", {"model": "claude-fast", "input": "hi"}, id="responses"),
        pytest.param("/v1/chat/completions", {"model": "gpt-fast", "messages": HI}, id="chat-openai-passthrough"),
        pytest.param(
            "/v1/messages", {"model": "gpt-fast", "max_tokens": 500, "messages": HI}, id="messages-over-openai"
        ),
    ],
)
async def test_a_caller_gone_before_a_whole_reply_is_billed_for_what_the_upstream_generated(
    make_gateway: GatewayFactory, upstream: FakeUpstream, key: str, pool: asyncpg.Pool, path: str, body: dict[str, Any]
) -> None:
    """A non-stream reply comes whole, once generated; the upstream bills it whether or not anyone still waits.
    A caller that hung up a moment before it came left a 499 row with 0 tokens: max_tokens of output for free."""
    server = await make_gateway(**openai_overrides(upstream.url))
    upstream.usage(input_tokens=100, output_tokens=400)
    upstream.enqueue(delay_s=0.6)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(_post(server, path, key, body), 0.2)  # the caller gives up and hangs up
    for _ in range(50):
        if rows := await flushed_usage(server, pool):
            break
        await asyncio.sleep(0.05)
    [row] = rows
    assert row["status"] == 499
    assert (row["input_tokens"], row["output_tokens"]) == (100, 400)


# --- spill replay: one unreadable line or refused row must not keep every spilled row out ------------------


async def test_a_torn_spill_line_or_a_refused_row_does_not_block_the_replay_of_the_others(
    make_gateway: GatewayFactory, make_user: MakeUser, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """A worker SIGKILLed while appending leaves a torn last line; a row whose key was deleted since is refused
    by the database. Either made every replay raise: the file stayed claimed, the files after it were never
    replayed, and their rows never reached a month counter."""
    server = await make_gateway(usage_log={"flush_interval_ms": 60_000})  # only this test flushes
    key, _ = await make_user()
    usage_log = server.app[SERVICES].ledger
    for _ in range(4):
        assert (await _post(server, "/v1/messages", key, {"model": "claude-fast", "max_tokens": 8, "messages": HI}))[
            0
        ] == 200
    a, b, c, d = usage_log._rows
    usage_log._rows.clear()
    directory = tmp_path / "spill"
    SpillDir(directory, pid=999_999_991).append([a])
    with (directory / "usage-spill-999999991.jsonl").open("ab") as f:
        f.write(b'["torn by a SIGK')  # no newline: the append was cut short
    unknown_key = list(c)
    unknown_key[db.USAGE_COLUMNS.index("key_id")] = 987_654_321  # no such key (deleted since): refused
    SpillDir(directory, pid=999_999_992).append([b, tuple(unknown_key), d])
    await usage_log.flush()
    stored = {r["id"] for r in await db.usage_rows(pool)}
    assert stored == {a[0], b[0], d[0]}
    assert not SpillDir(directory).has_work()
    kept = sorted(p.name for p in directory.iterdir())
    assert kept == [f"usage-rejected-{os.getpid()}.jsonl", f"usage-unreadable-{os.getpid()}.jsonl"]
    assert b"torn by a SIGK" in (directory / f"usage-unreadable-{os.getpid()}.jsonl").read_bytes()


@pytest.mark.parametrize(
    ("path", "body", "models"),
    [
        pytest.param(
            "/v1/chat/completions",
            {"model": "claude-quality", "max_tokens": 1, "reasoning_effort": "high"},
            {},
            id="chat-reasoning-effort",  # sent with max_tokens 8192 + 4096
        ),
        pytest.param(
            "/v1/responses",
            {"model": "claude-quality", "max_output_tokens": 16, "reasoning": {"effort": "high"}},
            {},
            id="responses-reasoning",
        ),
        pytest.param(
            "/v1/chat/completions",
            {"model": "claude-fast"},
            {"claude-fast": {"provider": "anthropic", "model": "claude-haiku-4-5", "default_max_tokens": 32_000}},
            id="chat-alias-default-max-tokens",  # sent with 32000
        ),
    ],
)
async def test_the_reservation_holds_what_the_translator_sends_upstream(
    make_gateway: GatewayFactory,
    upstream: FakeUpstream,
    make_user: MakeUser,
    path: str,
    body: dict[str, Any],
    models: dict[str, Any],
) -> None:
    """The translator raises max_tokens above the thinking budget, and fills in the alias's default_max_tokens;
    admission reserved the caller's 1 (or 4,096) and let a second request in against a 10,000-token limit."""
    server = await make_gateway(models=models) if models else await make_gateway()
    key, _ = await make_user(limit_tokens=10_000)
    upstream.enqueue(delay_s=0.5)
    conversation = {"input": "hi"} if path == "/v1/responses" else {"messages": HI}
    first = asyncio.create_task(_post(server, path, key, body | conversation))
    await asyncio.sleep(0.2)
    second, _ = await _post(server, path, key, {"model": body["model"], "max_tokens": 8, **conversation})
    assert second == 429
    assert (await first)[0] == 200


async def test_a_later_event_with_lower_counts_does_not_lower_the_bill(
    gateway: TestServer, upstream: FakeUpstream, key: str, pool: asyncpg.Pool
) -> None:
    """Anthropic's counts are cumulative; a message_delta reporting `input_tokens: 0` (or fewer cache reads and
    searches) after message_start's figures replaced them: 5,000 input tokens billed as none."""
    start = {"input_tokens": 5000, "output_tokens": 1, "cache_read_input_tokens": 2000}
    final = {"input_tokens": 0, "output_tokens": 30, "cache_read_input_tokens": 0}
    final |= {"server_tool_use": {"web_search_requests": 0}}
    start |= {"server_tool_use": {"web_search_requests": 2}}
    upstream.enqueue(events=_anthropic_stream(start, final, deltas=3))
    status, _ = await _post(gateway, "/v1/messages", key, STREAM_BODY)
    assert status == 200
    [row] = await flushed_usage(gateway, pool)
    assert (row["input_tokens"], row["output_tokens"], row["cache_read_tokens"]) == (5000, 30, 2000)
    assert row["web_search_requests"] == 2
    assert row["usage_estimated"] is False


# --- the model: what the gateway routes is what any upstream parser reads --------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"model": "claude-fast", "max_tokens": 16, "mod\xc1\xa5l": "claude-opus-4-5"}', id="overlong-e"),
        pytest.param(
            b'{\x0c"model": "claude-fast", "max_tokens": 16, "messages": []}', id="form-feed-is-no-whitespace"
        ),
        pytest.param(b'{"model":\x0b"claude-fast", "max_tokens": 16, "messages": []}', id="vertical-tab"),
    ],
)
async def test_a_sketched_body_that_is_not_json_is_refused_like_a_parsed_one(
    gateway: TestServer, upstream: FakeUpstream, key: str, raw: bytes
) -> None:
    """The sketch skipped strings unchecked, so a key spelled with an overlong UTF-8 "e" (which a lax decoder reads
    as a second "model") went upstream, while the same body with "model" second was refused as not JSON."""
    status, data = await _post(gateway, "/v1/messages", key, raw)
    assert status == 400, data
    assert orjson.loads(data)["error"]["type"] == "invalid_request_error"
    assert upstream.requests == []


async def test_invalid_utf8_in_a_value_of_a_sketched_body_is_the_upstreams_400(
    gateway: TestServer, upstream: FakeUpstream, key: str
) -> None:
    """The sketch checks the top-level keys (what decides the model), not every value: a body with invalid UTF-8
    inside a value goes up as sent with its one model, and the Messages API refuses it as not JSON."""
    raw = b'{"model": "claude-fast", "max_tokens": 16, "x": "\xff", "messages": []}'
    status, data = await _post(gateway, "/v1/messages", key, raw)
    assert status == 400, data
    assert orjson.loads(data)["error"]["type"] == "invalid_request_error"


# --- a whole reply without a usable output count ---------------------------------------------------------

WHOLE_TEXT = "y" * 700  # 200 tokens at 3.5 characters per token


def _message(usage: Any) -> dict[str, Any]:
    head = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5"}
    return head | {"content": [{"type": "text", "text": WHOLE_TEXT}], "stop_reason": "end_turn", "usage": usage}


@pytest.mark.parametrize(
    "usage",
    [
        pytest.param({"input_tokens": 10, "output_tokens": "lots"}, id="string"),
        pytest.param({"input_tokens": 10}, id="missing"),
        pytest.param([10, 200], id="a-list"),  # was a 500 for a 200 reply
    ],
)
@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/v1/messages", {"model": "claude-fast", "max_tokens": 500, "messages": HI}, id="messages"),
        pytest.param("/v1/chat/completions", {"model": "claude-fast", "messages": HI}, id="chat"),
        pytest.param("/v1/responses", {"model": "claude-fast", "input": "hi"}, id="responses"),
    ],
)
async def test_a_whole_reply_without_an_output_count_is_billed_for_its_content(
    gateway: TestServer, upstream: FakeUpstream, key: str, pool: asyncpg.Pool, path: str, body: Any, usage: Any
) -> None:
    """`output_tokens: "lots"` (or none) in a whole reply was clamped to 0 (and a list-valued usage raised a 500):
    700 characters of reply for free. It is billed as a broken stream is, from its content."""
    upstream.enqueue(body=_message(usage))
    status, data = await _post(gateway, path, key, body)
    assert status == 200, data
    [row] = await flushed_usage(gateway, pool)
    assert row["usage_estimated"] is True
    assert row["output_tokens"] >= len(WHOLE_TEXT) / 3.5


async def test_a_whole_completion_without_usage_is_billed_for_its_content(
    make_gateway: GatewayFactory, upstream: FakeUpstream, key: str, pool: asyncpg.Pool
) -> None:
    """An OpenAI-compatible server that reports no usage left the row at 0 output tokens."""
    server = await make_gateway(**openai_overrides(upstream.url))
    choice = {"index": 0, "message": {"role": "assistant", "content": WHOLE_TEXT}, "finish_reason": "stop"}
    upstream.enqueue(
        body={"id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini", "choices": [choice]}
    )
    status, _ = await _post(server, "/v1/chat/completions", key, {"model": "gpt-fast", "messages": HI})
    assert status == 200
    [row] = await flushed_usage(server, pool)
    assert row["usage_estimated"] is True
    assert row["output_tokens"] >= len(WHOLE_TEXT) / 3.5


@pytest.mark.parametrize(("path", "body", "end"), STREAM_ROUTES)
async def test_a_stream_whose_usage_is_not_an_object_is_relayed_and_billed_for_its_text(
    gateway: TestServer, upstream: FakeUpstream, key: str, pool: asyncpg.Pool, path: str, body: Any, end: bytes
) -> None:
    """`"usage": [30]` in message_delta broke the translated streams mid-way (the translator read it as an object)."""
    events = _anthropic_stream({"input_tokens": 10, "output_tokens": 1}, {}, deltas=20)
    events[-2][1]["usage"] = [30]
    upstream.enqueue(events=events)
    status, data = await _post(gateway, path, key, body)
    assert status == 200 and end in data and b"internal gateway error" not in data
    [row] = await flushed_usage(gateway, pool)
    assert row["status"] == 200
    assert row["output_tokens"] >= 20 * len(TEXT) / 3.5


@pytest.mark.parametrize("max_tokens", [None, 1.5, "64000", True, 0])
async def test_a_messages_body_for_an_openai_provider_needs_a_max_tokens(
    make_gateway: GatewayFactory, upstream: FakeUpstream, key: str, max_tokens: Any
) -> None:
    """The Messages API requires max_tokens; translated for an OpenAI-compatible server, a body without one went
    up with no limit at all (the server writes until the context ends) while admission reserved 4,096 tokens."""
    server = await make_gateway(**openai_overrides(upstream.url))
    body: dict[str, Any] = {"model": "gpt-fast", "messages": HI}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    status, data = await _post(server, "/v1/messages", key, body)
    assert status == 400, data
    answer = orjson.loads(data)
    assert answer["type"] == "error" and answer["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in answer["error"]["message"]
    assert upstream.requests == []


async def test_a_replay_interrupted_and_done_again_counts_each_row_once_in_the_budget_view(
    make_gateway: GatewayFactory,
    make_user: MakeUser,
    pool: asyncpg.Pool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A replay stored its file's first chunk, then the database went away again; the next replay stored the
    file from the start (the first chunk skipped as already stored) but told the budget view a second time that
    the chunk was now in the database: the view subtracted its tokens twice and under-counted the user."""
    server = await make_gateway(usage_log={"flush_interval_ms": 60_000})  # only this test flushes
    key, row = await make_user()
    services = server.app[SERVICES]
    for _ in range(4):
        body = {"model": "claude-fast", "max_tokens": 8, "messages": HI}
        assert (await _post(server, "/v1/messages", key, body))[0] == 200
    rows = list(services.ledger._rows)
    services.ledger._rows.clear()
    assert len(rows) == 4
    SpillDir(tmp_path / "spill").append(rows)  # this process's own spill file, its rows counted by the view
    services.ledger._flush_rows = 2  # replayed in two chunks of two rows
    real_insert, calls = db.insert_usage, 0

    async def away_on_the_second_chunk(pool: asyncpg.Pool, batch: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ConnectionRefusedError("the database went away again")
        await real_insert(pool, batch)

    monkeypatch.setattr(db, "insert_usage", away_on_the_second_chunk)
    await services.ledger.flush()  # the first chunk stored, the second not
    monkeypatch.setattr(db, "insert_usage", real_insert)
    await services.ledger.flush()  # the whole file again
    await services.month_view.refresh()
    stored = await pool.fetchval(
        "SELECT tokens FROM usage_counters WHERE scope = 'user' AND scope_id = $1", str(row.user_id)
    )
    assert stored == sum(r["input_tokens"] + r["output_tokens"] for r in await db.usage_rows(pool))
    assert services.month_view.tokens_used(row.user_id) == stored


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/v1/chat/completions", {"model": "gpt-fast", "messages": HI}, id="chat-passthrough"),
        pytest.param(
            "/v1/messages", {"model": "gpt-fast", "max_tokens": 64, "messages": HI}, id="messages-over-openai"
        ),
    ],
)
async def test_an_openai_usage_with_a_prompt_count_that_is_no_number_is_no_500(
    make_gateway: GatewayFactory, upstream: FakeUpstream, key: str, pool: asyncpg.Pool, path: str, body: Any
) -> None:
    """`prompt_tokens: "lots"` was subtracted from (cached tokens moved out of input): a 500 for a 200 reply."""
    server = await make_gateway(**openai_overrides(upstream.url))
    choice = {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
    usage = {"prompt_tokens": "lots", "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 3}}
    completion = {"id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini", "choices": [choice]}
    upstream.enqueue(body=completion | {"usage": usage})
    status, data = await _post(server, path, key, body)
    assert status == 200, data
    [row] = await flushed_usage(server, pool)
    assert (row["input_tokens"], row["output_tokens"], row["cache_read_tokens"]) == (0, 5, 3)
