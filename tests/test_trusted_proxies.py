"""PROVIDER_TRUSTED_PROXIES: addresses and CIDR ranges whose X-Forwarded-For counts
(provider.deps.client_address); anyone else's header is ignored."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from starlette.requests import Request

from provider.deps import client_address
from provider.settings import Settings


def settings(proxies: str) -> Settings:
    return Settings(_env_file=None, env="test", trusted_proxies=proxies)  # type: ignore[call-arg]


def request(peer: str, forwarded: str | list[str] | None = None) -> Request:
    lines = [] if forwarded is None else [forwarded] if isinstance(forwarded, str) \
        else forwarded
    headers = [(b"x-forwarded-for", line.encode()) for line in lines]
    return Request({"type": "http", "method": "POST", "path": "/oauth/token",
                    "headers": headers, "client": (peer, 40000)})


@pytest.mark.parametrize(("proxies", "peer", "forwarded", "expected"), [
    # A proxy inside a trusted range speaks for the client.
    ("10.0.0.0/8", "10.20.30.40", "203.0.113.9", "203.0.113.9"),
    ("10.0.0.0/8, 192.168.1.7", "192.168.1.7", "203.0.113.9", "203.0.113.9"),
    # Chains: the right-most hop that is not a trusted proxy is the client.
    ("10.0.0.0/8", "10.0.0.1", "198.51.100.1, 203.0.113.9, 10.9.9.9", "203.0.113.9"),
    # A client that forges the header in front of the proxy gains nothing.
    ("10.0.0.0/8", "10.0.0.1", "1.2.3.4, 203.0.113.9", "203.0.113.9"),
    # IPv6 ranges, and IPv4-mapped peers.
    ("2001:db8::/32", "2001:db8::5", "203.0.113.9", "203.0.113.9"),
    ("127.0.0.0/8", "::ffff:127.0.0.2", "203.0.113.9", "203.0.113.9"),
    # A port that the proxy wrote after the address is not part of it.
    ("10.0.0.0/8", "10.0.0.1", "203.0.113.9:5678", "203.0.113.9"),
    ("10.0.0.0/8", "10.0.0.1", "[2001:db8::7]:443", "2001:db8::7"),
    ("10.0.0.0/8", "10.0.0.1", "[2001:db8::7]", "2001:db8::7"),
    ("10.0.0.0/8", "10.0.0.1", "203.0.113.9, 10.0.0.2:8080", "203.0.113.9"),
    # Written as the address itself (the audit trail reads the same form every time).
    ("10.0.0.0/8", "10.0.0.1", "2001:DB8:0:0::7", "2001:db8::7"),
    ("10.0.0.0/8", "10.0.0.1", "::ffff:203.0.113.9", "203.0.113.9"),
    ("10.0.0.0/8", "10.0.0.1", "2001:db8::7%free-text", "2001:db8::7"),
    # A hop that is no address: nothing further left is believed; the proxy is the peer.
    ("10.0.0.0/8", "10.0.0.1", "unknown", "10.0.0.1"),
    ("10.0.0.0/8", "10.0.0.1", "203.0.113.9, _hidden", "10.0.0.1"),
    ("10.0.0.0/8", "10.0.0.1", "203.0.113.9:http", "10.0.0.1"),
    ("10.0.0.0/8", "10.0.0.1", "[2001:db8::7]x", "10.0.0.1"),
    ("10.0.0.0/8", "10.0.0.1", "2001:db8:1:2:3:4:5:6:443", "10.0.0.1"),
    # Outside every range: the header is ignored.
    ("10.0.0.0/8", "11.0.0.1", "203.0.113.9", "11.0.0.1"),
    ("", "10.0.0.1", "203.0.113.9", "10.0.0.1"),
    # Several lines are one list (RFC 9110 §5.3): a proxy that appends a line of its own
    # after the client's (HAProxy's option forwardfor) is read at its last hop.
    ("10.0.0.0/8", "10.0.0.1", ["6.6.6.6", "203.0.113.9"], "203.0.113.9"),
    ("10.0.0.0/8", "10.0.0.1", ["6.6.6.6, 7.7.7.7", "203.0.113.9, 10.0.0.2"],
     "203.0.113.9"),
    # Trusted, but no header (or only trusted hops): the peer itself.
    ("10.0.0.0/8", "10.0.0.1", None, "10.0.0.1"),
    ("10.0.0.0/8", "10.0.0.1", "10.1.1.1", "10.0.0.1"),
])
def test_client_address_believes_only_trusted_ranges(
    proxies: str, peer: str, forwarded: str | list[str] | None, expected: str
) -> None:
    assert client_address(request(peer, forwarded), settings(proxies)) == expected


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "not-an-address", "10.0.0.1/8"])
def test_a_malformed_trusted_proxy_fails_at_start_up(bad: str) -> None:
    with pytest.raises(ValidationError):
        settings(bad)
