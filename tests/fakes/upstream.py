"""The project's fake LLM upstream: a real aiohttp server speaking Anthropic Messages and OpenAI Chat Completions.

Tests start it in-process on a random port; benchmarks run it standalone (see `main`).

    fake = FakeUpstream(chunks=3)
    base_url = await fake.start()                       # "http://127.0.0.1:PORT"
    fake.enqueue(status=529, body=anthropic_error("overloaded_error", "Overloaded"))
    fake.enqueue(reset_after_events=4)                  # next reply is the default one, cut after 4 SSE events
    fake.usage(input_tokens=1200, cache_read_input_tokens=1000)
    ...
    assert fake.requests[-1].json["model"] == "claude-fast"
    await fake.close()

Routes: POST /v1/messages, POST /v1/messages/count_tokens, POST /v1/chat/completions, GET /v1/models,
GET /health; anything else is a 404 in Anthropic's error shape. Every request is recorded in `.requests`.

Default replies (nothing queued): `chunks` words of deterministic text, one SSE delta per word. Model
`fake-error-<status>` (or header `x-fake-status`) answers with that status in the route's error shape.
With `tools` in the request and "use_tool" in the last user text, the reply calls the first tool with
{"q": "fake"}; "use_tools:N" in any user text makes it call a tool until N tool results have come back.
Headers `x-fake-latency-ms` and `x-fake-chunks` override the timing and length per request.

POST /v1/messages also behaves as the Messages API does where a translation can go wrong (validate=True, the
default; rules and their sources in tests/fakes/messages_rules.py): a request the API would refuse gets its 400,
scripted reply or not. With thinking on, the default reply opens with a thinking block signed by the fake, and
a signature the fake issued must come back with its thinking text unchanged. With `foreign_signatures = False`
only signatures it issued (in default or scripted replies, or added to `.signatures`) are accepted at all; the
default (True) lets the real signatures of captured Claude Code histories through, which the fake cannot verify.
With output_config.format the reply text is a JSON instance of the schema; a forced tool_choice calls that tool.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict

from tests.fakes import messages_rules

# (event name, data). An empty name writes a data-only frame (OpenAI); str data is written raw ("[DONE]").
Event = tuple[str, dict[str, Any] | str]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REPLY_TEXT = "Hello from the fake upstream, this reply is deterministic and exists only for tests."
WORDS = REPLY_TEXT.split()
MODELS = ("claude-fast", "claude-3-5-haiku-20241022", "claude-sonnet-4-20250514")
ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
OPENAI_ERROR_TYPES = {  # status -> (type, code), as api.openai.com reports them
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}
CACHE_FIELDS = ("cache_creation_input_tokens", "cache_read_input_tokens")
# Start blocks go out empty and are filled by deltas; other keys of the block are sent as they are.
BLOCK_START_FIELDS: dict[str, dict[str, Any]] = {
    "text": {"text": ""},
    "thinking": {"thinking": "", "signature": ""},
    "tool_use": {"input": {}},
    "server_tool_use": {"input": {}},
}


@dataclass
class Recorded:
    """One request the fake received, recorded before any scripted reply or failure."""

    method: str
    path: str
    query_string: str
    headers: CIMultiDict[str]
    raw_body: bytes
    raw_query_string: str = ""  # as it came on the wire; `query_string` is percent-decoded

    @property
    def json(self) -> Any:
        return orjson.loads(self.raw_body)


@dataclass
class Scripted:
    """A queued reply. With neither `body` nor `events`, the route's default reply is sent with these settings."""

    status: int = 200
    body: Any | None = None  # JSON-serialisable, or raw bytes sent as they are
    events: list[Event] | None = None  # SSE events written one by one, as they are
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # before the first byte
    chunk_delay_s: float = 0.0  # between SSE events
    # Abort the connection after this many SSE events, so the chunked body never ends (a mid-stream reset).
    # On a non-stream reply, any value drops the connection before the status line.
    reset_after_events: int | None = None
    # Keep a stream open this long after its last event before ending the body, as a real upstream may
    # (a caller that hangs up right after the final event then leaves while the relay still waits).
    linger_s: float = 0.0
    # Go silent after this many SSE events (for 30 s, the connection open): a stream the gateway must time out.
    stall_after_events: int | None = None


@dataclass
class FakeUsage:
    """Token counts the default replies report; `None` means derive it as each field's comment says."""

    input_tokens: int | None = None  # None: len(raw request body) // 4
    output_tokens: int | None = None  # None: the number of words in the reply
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0

    def __call__(self, **changes: int | None) -> FakeUsage:
        """Set several fields at once: `upstream.usage(input_tokens=1200, cache_read_input_tokens=1000)`."""
        known = {f.name for f in fields(self)}
        if unknown := set(changes) - known:
            raise TypeError(f"unknown usage fields {sorted(unknown)}; known: {sorted(known)}")
        for name, value in changes.items():
            setattr(self, name, value)
        return self


@dataclass
class _Call:
    """What the default reply builders need to know about one request."""

    raw: bytes
    body: dict[str, Any] | None  # None unless the body is a JSON object
    chunks: int
    forced_status: int | None


Builder = Callable[[_Call, Scripted], Scripted]


def anthropic_error(err_type: str, message: str) -> dict[str, Any]:
    """An Anthropic error body: `{"type": "error", "error": {"type": err_type, "message": message}}`."""
    return {"type": "error", "error": {"type": err_type, "message": message}}


def openai_error(status: int, message: str) -> dict[str, Any]:
    """An OpenAI error body, with the type and code api.openai.com uses for `status`."""
    err_type, code = OPENAI_ERROR_TYPES.get(status, ("server_error", None))
    return {"error": {"message": message, "type": err_type, "param": None, "code": code}}


def sse_frame(name: str, data: dict[str, Any] | str) -> bytes:
    """One SSE frame: `event: NAME\\ndata: JSON\\n\\n`, or only the data line when `name` is empty."""
    payload = data.encode() if isinstance(data, str) else orjson.dumps(data)
    head = f"event: {name}\n".encode() if name else b""
    return head + b"data: " + payload + b"\n\n"


def anthropic_events_for(message: dict[str, Any]) -> list[Event]:
    """The SSE events Anthropic sends for `message` (a full Messages API reply), in order.

    message_start (empty content, input and cache usage, output_tokens 1), then per block a
    content_block_start, its deltas and a content_block_stop (a ping follows the first block start),
    then message_delta (stop reason, final output_tokens) and message_stop.
    """
    usage = message.get("usage", {})
    start_usage = {key: usage.get(key, 0) for key in ("input_tokens", *CACHE_FIELDS)} | {"output_tokens": 1}
    head = {**message, "content": [], "stop_reason": None, "stop_sequence": None, "usage": start_usage}
    events = [_event("message_start", message=head)]
    for index, block in enumerate(message.get("content", [])):
        events += _block_events(index, block)
    events.insert(2 if len(events) > 1 else 1, _event("ping"))
    stop = {"stop_reason": message.get("stop_reason"), "stop_sequence": message.get("stop_sequence")}
    events.append(_event("message_delta", delta=stop, usage={"output_tokens": usage.get("output_tokens", 0)}))
    events.append(_event("message_stop"))
    return events


def _event(name: str, **data: Any) -> Event:
    return name, {"type": name, **data}


def _block_events(index: int, block: dict[str, Any]) -> list[Event]:
    opening = {**block, **BLOCK_START_FIELDS.get(block["type"], {})}
    events = [_event("content_block_start", index=index, content_block=opening)]
    events += [_event("content_block_delta", index=index, delta=delta) for delta in _block_deltas(block)]
    events.append(_event("content_block_stop", index=index))
    return events


def _block_deltas(block: dict[str, Any]) -> list[dict[str, Any]]:
    kind = block["type"]
    if kind == "text":
        return [{"type": "text_delta", "text": part} for part in _fragments(block["text"])]
    if kind == "thinking":
        deltas = [{"type": "thinking_delta", "thinking": part} for part in _fragments(block["thinking"])]
        if block.get("signature"):  # the signature comes whole, after the last thinking delta
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        return deltas
    if kind in ("tool_use", "server_tool_use"):
        # Anthropic opens every tool input with an empty fragment before the JSON arrives in pieces.
        parts = ["", *_json_fragments(block.get("input", {}))]
        return [{"type": "input_json_delta", "partial_json": part} for part in parts]
    return []  # redacted_thinking and friends arrive whole in content_block_start


def _fragments(text: str) -> list[str]:
    """Split text before each run of whitespace: "Hi there you" -> ["Hi", " there", " you"]."""
    return [part for part in re.split(r"(?<=\S)(?=\s)", text) if part]


def _json_fragments(value: Any, pieces: int = 3) -> list[str]:
    text = orjson.dumps(value).decode()
    size = max(1, -(-len(text) // pieces))
    return [text[i : i + size] for i in range(0, len(text), size)]


def openai_events_for(completion: dict[str, Any], *, include_usage: bool) -> list[Event]:
    """The `data:` chunks OpenAI streams for `completion` (a full chat.completion), ending with [DONE]."""
    base = {"id": completion["id"], "object": "chat.completion.chunk"}
    base |= {"created": completion["created"], "model": completion["model"]}
    choice = completion["choices"][0]
    message = choice["message"]
    usage_field = {"usage": None} if include_usage else {}  # OpenAI adds a null usage to every chunk then

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> Event:
        choices = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
        return "", {**base, "choices": choices, **usage_field}

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": part}) for part in _fragments(message.get("content") or "")]
    for i, call in enumerate(message.get("tool_calls") or []):
        opening = {"index": i, "id": call["id"], "type": "function"}
        events.append(
            chunk({"tool_calls": [opening | {"function": {"name": call["function"]["name"], "arguments": ""}}]})
        )
        args = _json_fragments(orjson.loads(call["function"]["arguments"]))
        events += [chunk({"tool_calls": [{"index": i, "function": {"arguments": part}}]}) for part in args]
    events.append(chunk({}, choice["finish_reason"]))
    if include_usage:
        events.append(("", {**base, "choices": [], "usage": completion["usage"]}))
    events.append(("", "[DONE]"))
    return events


def _new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def _reply_words(count: int) -> list[str]:
    return [(" " if i else "") + WORDS[i % len(WORDS)] for i in range(max(count, 1))]


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            return " ".join(str(part.get("text", "")) for part in content or [] if isinstance(part, dict))
    return ""


def _requested_tool(body: dict[str, Any], *, openai: bool) -> str | None:
    """The tool to call: the forced one (tool_choice), else the first tool when the caller asks for a call
    ("use_tool" in its last user text, or "use_tools:N" in any user text with fewer than N results back)."""
    tools = body.get("tools") or []
    choice = body.get("tool_choice") or {}
    if not openai and tools and choice.get("type") == "tool":
        return str(choice["name"])
    if not tools or not (choice.get("type") == "any" or _wants_tool(body["messages"])):
        return None
    return str(tools[0]["function"]["name"] if openai else tools[0]["name"])


def _wants_tool(messages: list[Any]) -> bool:
    if "use_tool" in _last_user_text(messages) and "use_tools:" not in _last_user_text(messages):
        return True
    texts = [_last_user_text([m]) for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    rounds = [int(m.group(1)) for text in texts for m in [re.search(r"use_tools:(\d+)", text)] if m]
    return bool(rounds) and _tool_results(messages) < rounds[0]


def _tool_results(messages: list[Any]) -> int:
    """Tool results sent back so far: Anthropic tool_result blocks and OpenAI role "tool" messages."""
    count = 0
    for message in messages:
        if not isinstance(message, dict):
            continue
        count += message.get("role") == "tool"
        content = message.get("content")
        blocks = content if isinstance(content, list) else []
        count += sum(1 for b in blocks if isinstance(b, dict) and b.get("type") == "tool_result")
    return count


def _tool_input(body: dict[str, Any], name: str) -> Any:
    """{"q": "fake"}, or an instance of the tool's input schema when the call is forced (structured output)."""
    if (body.get("tool_choice") or {}).get("type") != "tool":
        return {"q": "fake"}
    tool = next((t for t in body.get("tools") or [] if t.get("name") == name), {})
    return messages_rules.example(tool.get("input_schema") or {})


def _reply_text(body: dict[str, Any], words: list[str]) -> str:
    """The reply's words, or a JSON instance of the schema when output_config.format asks for one."""
    fmt = (body.get("output_config") or {}).get("format")
    if isinstance(fmt, dict) and isinstance(fmt.get("schema"), dict):
        return orjson.dumps(messages_rules.example(fmt["schema"])).decode()
    return "".join(words)


def _issued(value: Any) -> set[str]:
    """Every signature and redacted_thinking data in a scripted reply (body or events), found by walking it."""
    found: set[str] = set()
    if isinstance(value, dict):
        if isinstance(value.get("signature"), str) and value["signature"]:
            found.add(value["signature"])
        if value.get("type") == "redacted_thinking" and isinstance(value.get("data"), str):
            found.add(value["data"])
        values: Any = value.values()
    elif isinstance(value, list | tuple):
        values = value
    else:
        return found
    for inner in values:
        found |= _issued(inner)
    return found


def _missing_field(body: dict[str, Any] | None, required: Sequence[str]) -> str | None:
    if body is None:
        return "the request body must be a JSON object"
    for name in required:
        if name not in body:
            return f"{name}: Field required"
    if "messages" in required and (not isinstance(body["messages"], list) or not body["messages"]):
        return "messages: at least one message is required"
    return None


class FakeUpstream:
    """A fake Anthropic/OpenAI upstream with a FIFO queue of scripted replies (`enqueue`) and a request log."""

    def __init__(
        self,
        *,
        chunks: int = 5,
        latency_s: float = 0.0,
        chunk_delay_s: float = 0.0,
        record: bool = True,
        fail_rate: float = 0.0,
        validate: bool = True,
    ) -> None:
        self.chunks, self.latency_s, self.chunk_delay_s = chunks, latency_s, chunk_delay_s
        self.fail_rate = fail_rate  # share of default replies that are a 529 overloaded_error (soak tests)
        self.hits = 0  # API requests received, counted even when not recorded
        self.usage = FakeUsage()
        self.requests: list[Recorded] = []
        self.url = ""
        self._record = record  # off when benchmarking, so the log does not grow without bound
        self.validate = validate  # refuse /v1/messages requests the real API would refuse
        self.signatures: set[str] = set()  # thinking signatures / redacted data issued by scripted replies
        self.foreign_signatures = True  # accept signatures the fake did not issue (captured real ones)
        self._queue: deque[Scripted] = deque()
        self._runner: web.AppRunner | None = None

    def enqueue(self, **fields: Any) -> None:
        """Queue `Scripted(**fields)` for the next API request, whatever its route (not /health)."""
        script = Scripted(**fields)
        self.signatures.update(_issued(script.body), _issued(script.events))  # the fake "signed" what it scripts
        self._queue.append(script)

    def app(self) -> web.Application:
        """The aiohttp application; `start` serves it, `main` runs it standalone."""
        app = web.Application(middlewares=[self._record_request], client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/messages", self._route(self._messages_reply))
        app.router.add_post("/v1/messages/count_tokens", self._route(self._count_tokens_reply))
        app.router.add_post("/v1/chat/completions", self._route(self._chat_reply))
        app.router.add_get("/v1/models", self._route(self._models_reply))
        app.router.add_get("/health", self._health)
        app.router.add_get("/_stats", self._stats)
        app.router.add_route("*", "/{tail:.*}", self._no_route)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on `host:port` (0: a free port) and return the base URL, also kept in `.url`."""
        # A short shutdown timeout: a test may close the fake while a scripted slow reply is still pending.
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.url = f"http://{host}:{self._runner.addresses[0][1]}"
        return self.url

    async def close(self) -> None:
        """Stop serving; safe to call twice."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeUpstream:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @web.middleware
    async def _record_request(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        raw = await request.read()
        if self._record:
            headers = CIMultiDict(request.headers)
            raw_query = request.rel_url.raw_query_string
            self.requests.append(Recorded(request.method, request.path, request.query_string, headers, raw, raw_query))
        return await handler(request)

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response({"requests": self.hits})

    def _route(self, build: Builder) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            self.hits += 1
            call = self._parse(request, await request.read())
            if refusal := self._refusal(request, call):
                return await _send(request, refusal)
            script = self._queue.popleft() if self._queue else self._default_script(request)
            if script.body is None and script.events is None:
                script = build(call, script)
            return await _send(request, script)

        return handle

    def _parse(self, request: web.Request, raw: bytes) -> _Call:
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        body = body if isinstance(body, dict) else None
        chunks = int(request.headers.get("x-fake-chunks", self.chunks))
        return _Call(raw, body, chunks, _forced_status(request, body))

    def _refusal(self, request: web.Request, call: _Call) -> Scripted | None:
        """The API's 400 for a Messages request it would refuse (left queued replies stay queued)."""
        if not self.validate or request.path != "/v1/messages" or call.body is None or call.forced_status:
            return None
        if self._queue and self._queue[0].status >= 400:  # a scripted failure answers first, as scripted
            return None
        found = messages_rules.problem(call.body, self._accepted)
        return Scripted(status=400, body=anthropic_error("invalid_request_error", found)) if found else None

    def _accepted(self, block: dict[str, Any]) -> bool:
        key = "data" if block.get("type") == "redacted_thinking" else "signature"
        signature = block.get(key)
        if not isinstance(signature, str) or not signature:
            return False
        if signature.startswith(messages_rules.SIGNATURE_PREFIX):  # the fake's own: it must verify
            thinking = block.get("thinking")
            return isinstance(thinking, str) and signature == messages_rules.sign(thinking)
        return self.foreign_signatures or signature in self.signatures

    def _default_script(self, request: web.Request) -> Scripted:
        latency_ms = request.headers.get("x-fake-latency-ms")
        latency_s = float(latency_ms) / 1000 if latency_ms else self.latency_s
        if self.fail_rate and random.random() < self.fail_rate:
            return Scripted(status=529, delay_s=latency_s)
        return Scripted(delay_s=latency_s, chunk_delay_s=self.chunk_delay_s)

    def _usage(self, call: _Call, words: int) -> dict[str, int]:
        input_tokens = self.usage.input_tokens
        return {
            "input_tokens": max(1, len(call.raw) // 4) if input_tokens is None else input_tokens,
            "cache_creation_input_tokens": self.usage.cache_creation_input_tokens,
            "cache_read_input_tokens": self.usage.cache_read_input_tokens,
            "output_tokens": words if self.usage.output_tokens is None else self.usage.output_tokens,
        }

    def _messages_reply(self, call: _Call, script: Scripted) -> Scripted:
        if failure := _failure(call, script, openai=False):
            return failure
        if problem := _missing_field(call.body, ("model", "max_tokens", "messages")):
            return replace(script, status=400, body=anthropic_error("invalid_request_error", problem))
        assert call.body is not None  # _missing_field refused anything else
        words = _reply_words(call.chunks)
        content: list[dict[str, Any]] = [{"type": "text", "text": _reply_text(call.body, words)}]
        if (call.body.get("thinking") or {}).get("type") == "enabled":
            thought = f"Thinking about turn {len(call.body['messages'])}."
            content.insert(0, {"type": "thinking", "thinking": thought, "signature": messages_rules.sign(thought)})
        if tool := _requested_tool(call.body, openai=False):
            if (call.body.get("tool_choice") or {}).get("type") in ("any", "tool"):
                # A forced call comes with no text before it (the API prefills the turn to force the tool:
                # https://platform.claude.com/docs/en/agents-and-tools/tool-use/implement-tool-use#forcing-tool-use).
                content = [b for b in content if b["type"] != "text"]
            content.append(
                {"type": "tool_use", "id": _new_id("toolu_fake_"), "name": tool, "input": _tool_input(call.body, tool)}
            )
        message = {"id": _new_id("msg_fake_"), "type": "message", "role": "assistant", "model": call.body["model"]}
        message |= {"content": content, "stop_reason": "tool_use" if tool else "end_turn", "stop_sequence": None}
        message["usage"] = self._usage(call, len(words))
        if call.body.get("stream"):
            return replace(script, events=anthropic_events_for(message))
        return replace(script, body=message)

    def _count_tokens_reply(self, call: _Call, script: Scripted) -> Scripted:
        if failure := _failure(call, script, openai=False):
            return failure
        if problem := _missing_field(call.body, ("model", "messages")):
            return replace(script, status=400, body=anthropic_error("invalid_request_error", problem))
        return replace(script, body={"input_tokens": self._usage(call, 0)["input_tokens"]})

    def _chat_reply(self, call: _Call, script: Scripted) -> Scripted:
        if failure := _failure(call, script, openai=True):
            return failure
        if problem := _missing_field(call.body, ("model", "messages")):
            return replace(script, status=400, body=openai_error(400, problem))
        assert call.body is not None  # _missing_field refused anything else
        completion = self._completion(call, call.body)
        if call.body.get("stream"):
            include_usage = bool((call.body.get("stream_options") or {}).get("include_usage"))
            return replace(script, events=openai_events_for(completion, include_usage=include_usage))
        return replace(script, body=completion)

    def _completion(self, call: _Call, body: dict[str, Any]) -> dict[str, Any]:
        words = _reply_words(call.chunks)
        message: dict[str, Any] = {"role": "assistant", "content": "".join(words), "refusal": None}
        if tool := _requested_tool(body, openai=True):
            function = {"name": tool, "arguments": orjson.dumps({"q": "fake"}).decode()}
            message |= {
                "content": None,
                "tool_calls": [{"id": _new_id("call_fake_"), "type": "function", "function": function}],
            }
        usage = self._usage(call, len(words))
        prompt, completion = usage["input_tokens"], usage["output_tokens"]
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "tool_calls" if tool else "stop"}
        return {
            "id": _new_id("chatcmpl-fake"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [choice],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": usage["cache_read_input_tokens"]},
            },
        }

    def _models_reply(self, call: _Call, script: Scripted) -> Scripted:
        if failure := _failure(call, script, openai=False):
            return failure
        data = [
            {"id": m, "object": "model", "type": "model", "display_name": m, "created": 0, "owned_by": "fake"}
            for m in MODELS
        ]
        page = {"first_id": MODELS[0], "last_id": MODELS[-1], "has_more": False}
        return replace(script, body={"object": "list", "data": data, **page})

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _no_route(self, request: web.Request) -> web.Response:
        body = anthropic_error("not_found_error", f"fake upstream has no route {request.method} {request.path}")
        return web.json_response(body, status=404, dumps=lambda v: orjson.dumps(v).decode())


def _forced_status(request: web.Request, body: dict[str, Any] | None) -> int | None:
    """The status asked for by header `x-fake-status` or by model `fake-error-<status>`."""
    raw = request.headers.get("x-fake-status")
    model = body.get("model") if body else None
    if raw is None and isinstance(model, str) and model.startswith("fake-error-"):
        raw = model.removeprefix("fake-error-")
    return int(raw) if raw and raw.isdigit() else None


def _failure(call: _Call, script: Scripted, *, openai: bool) -> Scripted | None:
    """The route's error reply when the script or the request (`fake-error-<status>`) asks for one."""
    status = call.forced_status or script.status
    if status < 400:
        return None
    message = f"fake upstream error {status}"
    body = (
        openai_error(status, message)
        if openai
        else anthropic_error(ANTHROPIC_ERROR_TYPES.get(status, "api_error"), message)
    )
    headers = {"retry-after": "1", **script.headers} if status == 429 else script.headers
    return replace(script, status=status, body=body, events=None, headers=headers)


async def _send(request: web.Request, script: Scripted) -> web.StreamResponse:
    if script.delay_s > 0:
        await asyncio.sleep(script.delay_s)
    headers = CIMultiDict({"request-id": _new_id("req_fake_")})
    if script.events is None:
        if script.reset_after_events is not None:
            _drop_connection(request)
        body = script.body if isinstance(script.body, bytes) else orjson.dumps(script.body)
        headers["Content-Type"] = "application/json"
        headers.update(script.headers)
        return web.Response(status=script.status, body=body, headers=headers)
    headers.update({"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"})
    headers.update(script.headers)
    resp = web.StreamResponse(status=script.status, headers=headers)
    await resp.prepare(request)
    for sent, (name, data) in enumerate(script.events):
        if sent and script.chunk_delay_s > 0:
            await asyncio.sleep(script.chunk_delay_s)
        if sent == script.reset_after_events:
            _drop_connection(request)
            return resp
        if sent == script.stall_after_events:
            await asyncio.sleep(30)
        try:
            await resp.write(sse_frame(name, data))  # one write per event, so relays can be seen relaying each one
        except ConnectionResetError:  # the gateway hung up (its own caller went away): nothing more to send
            return resp
    if script.reset_after_events is not None:
        _drop_connection(request)
        return resp
    if script.linger_s > 0:
        await asyncio.sleep(script.linger_s)
    await resp.write_eof()
    return resp


def _drop_connection(request: web.Request) -> None:
    # abort() closes the socket without the terminating chunk; aiohttp then swallows the ConnectionError
    # its own write_eof raises, so the client sees a truncated body and nothing is logged here.
    if request.transport is not None:
        request.transport.abort()


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not a number") from None


def _event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # the gateway runs on uvloop; a benchmark's fake should not be the slower side
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the fake upstream until interrupted, e.g.

    FAKE_LATENCY_MS=200 FAKE_CHUNKS=20 python -m tests.fakes.upstream --port 9100
    """
    epilog = (
        "environment: FAKE_HOST, FAKE_PORT (defaults for --host/--port), FAKE_LATENCY_MS (before the first byte),\n"
        "FAKE_CHUNK_DELAY_MS (between SSE events), FAKE_CHUNKS (words per reply, default 5),\n"
        "FAKE_FAIL_RATE (share of replies that are a 529, default 0); GET /_stats counts API requests"
    )
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.upstream",
        description=__doc__,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default=os.environ.get("FAKE_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(_env_number("FAKE_PORT", 9100)))
    args = parser.parse_args(argv)
    fake = FakeUpstream(
        chunks=int(_env_number("FAKE_CHUNKS", 5)),
        latency_s=_env_number("FAKE_LATENCY_MS", 0) / 1000,
        chunk_delay_s=_env_number("FAKE_CHUNK_DELAY_MS", 0) / 1000,
        record=False,
        fail_rate=_env_number("FAKE_FAIL_RATE", 0),
    )
    url = f"http://{args.host}:{args.port}"
    web.run_app(
        fake.app(),
        host=args.host,
        port=args.port,
        access_log=None,
        loop=_event_loop(),
        print=lambda *_: print(f"fake upstream on {url}", flush=True),
    )


if __name__ == "__main__":
    main()
