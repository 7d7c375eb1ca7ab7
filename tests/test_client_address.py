"""Which address a request comes from: the peer, or the client a trusted proxy names (table-driven)."""

from __future__ import annotations

from unittest.mock import Mock

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from gateway.client_address import ClientAddress

PROXIES = ("10.0.0.0/8", "::1/128")


def request_from(peer: str, *headers: tuple[str, str]) -> object:
    transport = Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (peer, 4711) if name == "peername" else default
    return make_mocked_request("POST", "/v1/messages", headers=CIMultiDict(headers), transport=transport)


@pytest.mark.parametrize(
    ("trusted", "peer", "headers", "client"),
    [
        pytest.param((), "203.0.113.7", [("X-Forwarded-For", "1.2.3.4")], "203.0.113.7", id="no-proxies-trusted"),
        pytest.param(PROXIES, "203.0.113.7", [("X-Forwarded-For", "1.2.3.4")], "203.0.113.7", id="untrusted-peer"),
        pytest.param(PROXIES, "10.0.0.5", [("X-Forwarded-For", "198.51.100.9")], "198.51.100.9", id="one-proxy"),
        pytest.param(
            PROXIES,
            "10.0.0.5",
            [("X-Forwarded-For", "6.6.6.6, 198.51.100.9, 10.1.2.3")],
            "198.51.100.9",
            id="client-written-entries-left-of-the-real-one-are-ignored",
        ),
        pytest.param(
            PROXIES,
            "10.0.0.5",
            [("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "198.51.100.9")],
            "198.51.100.9",
            id="repeated-header-lines",
        ),
        pytest.param(PROXIES, "10.0.0.5", [], "10.0.0.5", id="trusted-peer-without-header"),
        pytest.param(
            PROXIES,
            "10.0.0.5",
            [("Forwarded", 'for=6.6.6.6, for="[2001:db8::7]:443"')],
            "2001:db8::7",
            id="rfc7239-forwarded",
        ),
        pytest.param(
            PROXIES,
            "10.0.0.5",
            [("Forwarded", "for=6.6.6.6"), ("X-Forwarded-For", "198.51.100.9")],
            "198.51.100.9",
            id="x-forwarded-for-wins-over-a-client-sent-forwarded",
        ),
        pytest.param(PROXIES, "::1", [("X-Forwarded-For", "198.51.100.9:5555")], "198.51.100.9", id="ipv4-with-port"),
        pytest.param(PROXIES, "::ffff:10.0.0.5", [("X-Forwarded-For", "198.51.100.9")], "198.51.100.9", id="mapped"),
        pytest.param(PROXIES, "10.0.0.5", [("X-Forwarded-For", "x" * 500)], "x" * 64, id="garbage-is-bounded"),
    ],
)
def test_client_address(trusted: tuple[str, ...], peer: str, headers: list[tuple[str, str]], client: str) -> None:
    assert ClientAddress(trusted)(request_from(peer, *headers)) == client  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("peer", "headers", "guesser"),
    [
        pytest.param("10.0.0.5", [("X-Forwarded-For", "198.51.100.9")], "198.51.100.9", id="ipv4-is-one-address"),
        pytest.param("10.0.0.5", [("X-Forwarded-For", "2001:db8:1:2:a:b:c:d")], "2001:db8:1:2::/64", id="ipv6-by-64"),
        pytest.param("2001:db8:1:2::99", [], "2001:db8:1:2::/64", id="direct-ipv6-peer"),
        pytest.param("::ffff:203.0.113.7", [], "203.0.113.7", id="mapped-ipv4-peer-is-not-lumped-into-::/64"),
        pytest.param("10.0.0.5", [("X-Forwarded-For", "_hidden")], "_hidden", id="a-label-stays-a-label"),
    ],
)
def test_the_throttle_counts_an_ipv6_client_by_its_64(peer: str, headers: list[tuple[str, str]], guesser: str) -> None:
    assert ClientAddress(PROXIES).guesser(request_from(peer, *headers)) == guesser  # type: ignore[arg-type]
