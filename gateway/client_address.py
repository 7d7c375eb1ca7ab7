"""Who is on the other end: the TCP peer, or the client a trusted reverse proxy names in X-Forwarded-For.

Behind nginx, Caddy or HAProxy every request comes from the proxy's address, so the peer alone would put all
callers in one throttle bucket. `server.trusted_proxies` lists the proxies (CIDRs); only when the peer is one
of them is the forwarding header read, right to left, skipping trusted hops: the first untrusted hop is the
client. Entries left of it were written by the client itself and are never believed (nginx's
`real_ip_recursive on` reads the header the same way).

X-Forwarded-For is read when present (nginx, Caddy, Traefik and HAProxy's `option forwardfor` set it), else
RFC 7239 `Forwarded: for=...` (HAProxy's `option forwarded`). A proxy that sets only `Forwarded` must drop a
client-sent X-Forwarded-For, or a client could name itself.

    >>> address = ClientAddress(("10.0.0.0/8",))
    >>> # peer 10.0.0.5 (trusted), X-Forwarded-For: 6.6.6.6, 203.0.113.7, 10.0.0.9  -> "203.0.113.7"
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from aiohttp import web

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class ClientAddress:
    """The client address of a request, as a string (an IP, or the peer's own label when it is not one)."""

    def __init__(self, trusted_proxies: Sequence[str] = ()) -> None:
        self._trusted = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in trusted_proxies)

    def __call__(self, request: web.Request) -> str:
        peer = request.remote or "unknown"
        if not self._trusted or not self._is_trusted(_parse(peer)):
            return peer  # no proxies configured (the default), or a caller reaching us directly
        hops = _forwarded_for(request)
        for hop in reversed(hops):
            address = _parse(hop)
            if not self._is_trusted(address):
                return str(address) if address is not None else hop[:64]  # a label; bounded: it keys the throttle
        return peer if not hops else hops[0]  # every hop is a proxy of ours: the first one is the origin

    def guesser(self, request: web.Request) -> str:
        """The client as the auth throttle counts it: its IPv4 address, or the /64 its IPv6 address is in.

        One IPv6 host is usually handed a whole /64, so counting single IPv6 addresses would give a guesser
        2^64 fresh allowances, each a first attempt ranked with a valid key's in the bcrypt queue.
        """
        client = self(request)
        address = _parse(client)
        if isinstance(address, ipaddress.IPv6Address):
            return str(ipaddress.IPv6Network((address, 64), strict=False))
        return str(address) if address is not None else client

    def _is_trusted(self, address: Address | None) -> bool:
        return address is not None and any(address in network for network in self._trusted)


def _forwarded_for(request: web.Request) -> list[str]:
    """The hops a proxy chain recorded, leftmost (furthest from us) first."""
    if xff := request.headers.getall("X-Forwarded-For", ()):
        return [hop.strip() for line in xff for hop in line.split(",") if hop.strip()]
    if "Forwarded" in request.headers:
        return [str(element["for"]) for element in request.forwarded if element.get("for")]
    return []


def _parse(value: str) -> Address | None:
    """An address from `1.2.3.4`, `1.2.3.4:80`, `[2001:db8::1]:443` or `2001:db8::1`; None for `unknown`, `_x`."""
    if value.startswith("["):
        value = value[1 : value.find("]")]
    elif value.count(":") == 1:
        value = value.partition(":")[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    return address
