"""What the real SDKs make of a DLP block and a redaction: their own BadRequestError, naming detector and place."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anthropic
import openai
import pytest

from gateway import db
from tests.conftest import GatewayFactory
from tests.fakes.upstream import FakeUpstream

KeyFactory = Callable[..., Awaitable[tuple[str, db.KeyRow]]]
CARD = "4539 1488 0343 6467"  # Luhn-valid, Visa range, not a real card
POLICY = {"aliases": {"claude-fast": {"enabled": True, "detectors": {"payment_card": {"action": "block"}}}}}


async def test_the_anthropic_sdk_raises_bad_request_naming_the_detector(
    make_gateway: GatewayFactory, upstream: FakeUpstream, make_key: KeyFactory
) -> None:
    gateway = await make_gateway(dlp=POLICY)
    key, _ = await make_key()
    client = anthropic.AsyncAnthropic(base_url=str(gateway.make_url("")), api_key=key, max_retries=0)
    messages: list[anthropic.types.MessageParam] = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": [{"type": "text", "text": "fine"}, {"type": "text", "text": f"pay {CARD}"}]},
    ]
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client.messages.create(model="claude-fast", max_tokens=16, messages=messages)
    assert "payment_card found in messages[2].content[1]" in caught.value.message
    assert CARD not in str(caught.value.body)
    await client.close()


async def test_the_openai_sdk_streams_a_redacted_request(
    make_gateway: GatewayFactory, upstream: FakeUpstream, make_key: KeyFactory
) -> None:
    policy = {"aliases": {"claude-fast": {"enabled": True, "detectors": {"payment_card": {"action": "redact"}}}}}
    gateway = await make_gateway(dlp=policy)
    key, _ = await make_key()
    client = openai.AsyncOpenAI(base_url=str(gateway.make_url("/v1")), api_key=key, max_retries=0)
    stream = await client.chat.completions.create(
        model="claude-fast", stream=True, messages=[{"role": "user", "content": f"card {CARD}, twice: {CARD}"}]
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text
    sent = upstream.requests[-1].json["messages"][0]["content"]
    assert "card [REDACTED:payment_card:1], twice: [REDACTED:payment_card:1]" in str(sent)
    await client.close()
