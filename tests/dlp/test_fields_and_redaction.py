"""Which strings are scanned in each request shape, and how placeholders replace values (pure functions)."""

from __future__ import annotations

import re
import time
from typing import Any

import orjson
import pytest

from gateway.dlp.detectors import detectors_for
from gateway.dlp.fields import prompt_fields
from gateway.dlp.inspection import has_duplicate_keys
from gateway.dlp.redaction import placeholders, redact_fields, redact_raw
from gateway.dlp.scanner import MAX_CANDIDATES, Hit, Scanner, TooBusyInline, TooManyCandidates

KEY = "AKIAZ3MSJV4WWNKWW5FG"
IMAGE = {"type": "base64", "media_type": "image/png", "data": KEY}  # a value inside image bytes is not words

CASES = [
    pytest.param(
        {"system": [{"type": "text", "text": "s"}], "messages": [{"role": "user", "content": "m"}]},
        ["system[0]", "messages[0].content"],
        id="messages-system-and-string",
    ),
    pytest.param(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "source": IMAGE},
                        {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "out"}]},
                        {"type": "document", "source": {"type": "text", "data": "doc"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": KEY, "signature": "sig"},
                        {"type": "tool_use", "id": "t", "name": "bash", "input": {"cmd": "ls", "env": ["A=1"]}},
                    ],
                },
            ]
        },
        [
            "messages[0].content[1].content[0]",
            "messages[0].content[2].source.data",
            "messages[1].content[1].name",
            "messages[1].content[1].input.cmd",
            "messages[1].content[1].input.env[0]",
        ],
        id="messages-blocks",
    ),
    pytest.param(
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {}}]},
                {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": '{"a": 1}'}}]},
                {"role": "tool", "tool_call_id": "c", "content": "result"},
            ]
        },
        [
            "messages[0].content[0]",
            "messages[1].tool_calls[0].function.name",
            "messages[1].tool_calls[0].function.arguments",
            "messages[2].content",
        ],
        id="chat",
    ),
    pytest.param(
        {
            "instructions": "be brief",
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "q"}, {"type": "input_image"}]},
                {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c", "output": "42"},
                {"type": "reasoning", "encrypted_content": KEY},
            ],
        },
        ["instructions", "input[0].content[0]", "input[1].name", "input[1].arguments", "input[2].output"],
        id="responses",
    ),
]


CASES += [
    pytest.param(
        {
            "messages": [
                {
                    "role": "assistant",
                    "content": [
                        {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {"query": "q"}},
                        {"type": "mcp_tool_use", "id": "m", "name": "n", "server_name": "srv", "input": {"a": "b"}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "search_result",
                            "source": "u",
                            "title": "t",
                            "content": [{"type": "text", "text": "r"}],
                        },
                        {
                            "type": "document",
                            "title": "d",
                            "source": {"type": "content", "content": [{"type": "text", "text": "c"}]},
                        },
                        {
                            "type": "document",
                            "source": {"type": "base64", "media_type": "application/pdf", "data": KEY},
                        },
                        {"type": "mcp_tool_result", "tool_use_id": "m", "content": [{"type": "text", "text": "o"}]},
                    ],
                },
            ]
        },
        [
            "messages[0].content[0].name",
            "messages[0].content[0].input.query",
            "messages[0].content[1].name",
            "messages[0].content[1].server_name",
            "messages[0].content[1].input.a",
            "messages[1].content[0].source",
            "messages[1].content[0].title",
            "messages[1].content[0].content[0].text",
            "messages[1].content[1].title",
            "messages[1].content[1].source.content[0].text",
            "messages[1].content[3].content[0].text",
        ],
        id="messages-other-blocks",
    ),
    pytest.param(
        {
            "messages": [
                {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}},
                {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}], "refusal": "no"},
                {"role": "user", "content": [{"type": "file", "file": {"filename": "f.txt", "file_data": KEY}}]},
            ]
        },
        [
            "messages[0].function_call.name",
            "messages[0].function_call.arguments",
            "messages[1].content[0].refusal",
            "messages[1].refusal",
            "messages[2].content[0].file.filename",
        ],
        id="chat-other-parts",
    ),
    pytest.param(
        {
            "input": [
                {
                    "type": "reasoning",
                    "id": "rs",
                    "summary": [{"type": "summary_text", "text": "s"}],
                    "encrypted_content": KEY,
                }
            ]
        },
        ["input[0].summary[0].text"],
        id="responses-reasoning-summary",
    ),
    pytest.param(
        {"metadata": {"user_id": "u"}, "stop_sequences": ["s"], "stop": "t", "user": "v", "tools": [{"name": "n"}]},
        ["metadata.user_id", "stop_sequences[0]", "stop", "user"],
        id="settings-sent-as-written",
    ),
]


@pytest.mark.parametrize(("body", "locations"), CASES)
def test_prompt_fields(body: dict[str, Any], locations: list[str]) -> None:
    assert [f.location for f in prompt_fields(body)] == locations


def test_a_secret_as_a_key_name_stays_out_of_the_location() -> None:
    body = {"messages": [{"role": "assistant", "content": [{"type": "tool_use", "input": {KEY: "v", "a b": "w"}}]}]}
    locations = [f.location for f in prompt_fields(body)]
    assert all(KEY not in loc for loc in locations) and len(locations) == 4  # two values, two key names


def test_a_secret_written_as_a_key_name_is_redacted_in_place() -> None:
    call = b'{"type": "tool_use", "input": {"AKIAZ3MSJV4WWNKWW5FG": {"a": 1}, "b": 2}}'
    raw = b'{"messages": [{"role": "assistant", "content": [' + call + b"]}]}"
    body = orjson.loads(raw)
    fields = prompt_fields(body)
    hits = Scanner(detectors_for(["aws_access_key"]), {}).scan([f.text for f in fields])
    mapping = placeholders(hits)
    redact_fields(fields, mapping)
    expected = raw.replace(KEY.encode(), b"[REDACTED:aws_access_key:1]")
    assert redact_raw(raw, mapping, body) == expected  # byte-exact: the key renamed where it stood
    assert list(body["messages"][0]["content"][0]["input"]) == ["[REDACTED:aws_access_key:1]", "b"]


def test_a_deep_tool_input_needs_no_recursion() -> None:
    value: Any = "x"
    for _ in range(5000):
        value = [value]
    body = {"messages": [{"role": "assistant", "content": [{"type": "tool_use", "input": {"v": value}}]}]}
    assert [f.text for f in prompt_fields(body)] == ["x"]


def test_placeholders_are_stable_typed_and_numbered_per_detector() -> None:
    hits = [
        Hit("email", 0, "a@corp.io"),
        Hit("email", 0, "b@corp.io"),
        Hit("email", 1, "a@corp.io"),
        Hit("jwt", 1, "j"),
    ]
    assert placeholders(hits) == {
        "a@corp.io": "[REDACTED:email:1]",
        "b@corp.io": "[REDACTED:email:2]",
        "j": "[REDACTED:jwt:1]",
    }


def test_raw_redaction_keeps_every_other_byte() -> None:
    raw = b'{ "model":"m",\n  "messages": [{"role":"user","content":"key AKIAZ3MSJV4WWNKWW5FG \\u00e9"}] }'
    body = orjson.loads(raw)
    fields = prompt_fields(body)
    mapping = {KEY: "[REDACTED:aws_access_key:1]"}
    redact_fields(fields, mapping)
    assert redact_raw(raw, mapping, body) == raw.replace(KEY.encode(), b"[REDACTED:aws_access_key:1]")


def test_raw_redaction_falls_back_to_equal_json_when_a_value_is_also_in_a_signed_block() -> None:
    body = {"messages": [{"role": "assistant", "content": [{"type": "thinking", "thinking": KEY, "signature": "s"}]}]}
    body["messages"].append({"role": "user", "content": KEY})
    raw = orjson.dumps(body)
    parsed = orjson.loads(raw)
    mapping = {KEY: "[REDACTED:aws_access_key:1]"}
    redact_fields(prompt_fields(parsed), mapping)
    sent = orjson.loads(redact_raw(raw, mapping, parsed))
    assert sent["messages"][0]["content"][0]["thinking"] == KEY  # the signature still matches
    assert sent["messages"][1]["content"] == "[REDACTED:aws_access_key:1]"


@pytest.mark.parametrize(
    ("detector", "text", "found"),
    [
        ("payment_card", "order 4111 1111 1111 1112 failed", False),  # Luhn fails
        ("payment_card", "ts=1795392989773 took 4 ms", False),  # a millisecond timestamp, no card network
        ("iban", "GB82 WEST 1234 5698 7654 33", False),  # mod 97 fails
        ("phone", "released 2026-11-29, ip 192.168.100.200", False),
        ("email", "see logo@2x.png and @decorator", False),
        ("secret_assignment", "password = os.environ['DB_PASSWORD_VALUE1']", False),  # an indirect reference
        ("secret_assignment", "token: ${VAULT_TOKEN_ABC123}", False),  # a template
        ("aws_access_key", "AKIAIOSFODNN7EXAMPLE from the AWS docs", False),  # built-in allowlist
        ("url_credentials", "https://user:pw@host", False),  # too short to be a password
        ("url_credentials", "postgresql://gateway:PASSWORD@db:5432/gateway", False),  # a documentation placeholder
        ("url_credentials", "postgresql://gw:<password>@db/gateway", False),
        ("url_credentials", "redis://:changeme@cache:6379/0", False),
        ("url_credentials", "postgresql://gateway:Zq7-pL2xVm@db:5432/gateway", True),  # a real-looking one still is
    ],
)
def test_near_misses_are_not_findings(detector: str, text: str, found: bool) -> None:
    from gateway.dlp.policy import BUILTIN_ALLOW

    allow = {d: [re.compile(p) for p in rules] for d, rules in BUILTIN_ALLOW.items()}
    assert bool(Scanner(detectors_for([detector]), allow).scan([text])) is found


def test_a_flood_of_one_detectors_anchors_is_refused() -> None:
    scanner = Scanner(detectors_for(["aws_access_key"]), {})
    with pytest.raises(TooManyCandidates, match="aws_access_key"):
        scanner.scan(["AKIA " * (MAX_CANDIDATES + 1)])
    assert len(scanner.scan([f"{KEY} " * 100])) == 100  # below the cap: every one found


def test_multibyte_text_keeps_findings_in_the_right_string() -> None:
    scanner = Scanner(detectors_for(["aws_access_key", "email"]), {})
    texts = ["🙂" * 50 + "é", f"ü {KEY} ✓", "日本語 jane@corp-mail.io", "\u202e" + KEY[::-1]]
    assert [(h.detector, h.text, h.value) for h in scanner.scan(texts)] == [
        ("aws_access_key", 1, KEY),
        ("email", 2, "jane@corp-mail.io"),
    ]


@pytest.mark.parametrize(
    ("raw", "duplicate"),
    [
        (rb'{"a": "x\"y", "b": "\\", "c": "\\\"", "d": "\u0022\/"}', False),  # escapes of every kind, no duplicate
        (rb'{"a": "\\\\", "b": ["\\u0022"]}', False),  # an escaped backslash before u0022 is text, not a quote
        (rb'{"a": 1, "a": "\u0022\u0022\u0022\u0022"}', True),  # escaped quotes do not make up for a dropped key
        (rb'{"a": {"b": 1, "b": 2}}', True),
    ],
)
def test_duplicate_keys_are_told_from_escaped_quotes(raw: bytes, duplicate: bool) -> None:
    assert has_duplicate_keys(raw, orjson.loads(raw)) is duplicate


def test_many_pem_headers_without_an_end_are_scanned_in_linear_time() -> None:
    # Each BEGIN line once started a search for an END up to 16 KB on: 1.8 s of event loop for a 255 KB prompt.
    scanner = Scanner(detectors_for(["private_key"]), {})
    started = time.perf_counter()
    hits = scanner.scan(["-----BEGIN PRIVATE KEY-----\n" * (MAX_CANDIDATES - 1)])
    assert time.perf_counter() - started < 0.5
    assert hits and all(h.detector == "private_key" for h in hits)  # still redacted, header by header


def test_an_encrypted_pem_block_is_one_finding_with_its_headers() -> None:
    pem = (
        "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: DES-EDE3-CBC,8A4F0C3E21D1B0F3\n\n"
        + "MIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM9Oi-Zz\n" * 3
        + "-----END RSA PRIVATE KEY-----"
    )
    hits = Scanner(detectors_for(["private_key"]), {}).scan([f"key:\n{pem}\nthanks"])
    assert [h.value for h in hits] == [pem]


def test_overlapping_anchors_of_long_numbers_are_no_flood() -> None:
    # 1,200 twelve-digit order numbers (16 KB) hold 10,800 overlapping `0000` anchors: once refused with a 400
    # under the default policy, though payment_card only records.
    scanner = Scanner(detectors_for(["payment_card", "phone"]), {})
    assert scanner.scan(["123456789012 " * 1200]) == []
    with pytest.raises(TooManyCandidates, match="payment_card"):  # a flood of separate numbers still is one
        scanner.scan(["\n".join(["1234"] * (MAX_CANDIDATES + 1))])


def test_a_busy_scan_stops_at_its_inline_budget() -> None:
    scanner = Scanner(detectors_for(["phone", "email"]), {})
    texts = ["\n".join(["+1 415 555 2671"] * 400), "\n".join(["a.b@corp-mail.io"] * 200)]
    with pytest.raises(TooBusyInline):  # 600 candidates of two detectors together, against 500
        scanner.scan(texts, max_examined=500)
    assert len(scanner.scan(texts)) == 600  # without a budget every one is found


@pytest.mark.parametrize("invisible", ["\u200b", "\u200d", "\u2060", "\u00ad", "\ufeff", "\u202c"])
def test_a_value_split_by_an_invisible_character_is_found_as_written(invisible: str) -> None:
    scanner = Scanner(detectors_for(["aws_access_key", "email"]), {})
    hidden = KEY[:4] + invisible + KEY[4:10] + invisible + KEY[10:]
    texts = ["clean", f"key {hidden} ok", f"jane{invisible}.roe@corp-mail.io"]
    assert [(h.detector, h.text, h.value) for h in scanner.scan(texts)] == [
        ("aws_access_key", 1, hidden),  # the span as written, so the placeholder covers it whole
        ("email", 2, f"jane{invisible}.roe@corp-mail.io"),
    ]
    assert scanner.scan(["an emoji family 👨\u200d👩\u200d👧 and nothing else"]) == []
