"""Introspection mode (RFC 7662): after the local checks the provider is asked whether
the token is still active, so a revocation is seen at once (within the short cache);
the cache is bounded; forged tokens never reach the provider."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from provider_resource import InvalidToken, TokenVerifier, VerifierUnavailable
from tests.forgeries import ATTACKER_KEY, sign_rs
from tests.resource.conftest import Clock, Counting, Provider

INTROSPECT = "/oauth/introspect"


@contextmanager
def introspecting(provider: Provider, transport: Counting, **options: Any
                  ) -> Iterator[TokenVerifier]:
    options.setdefault("client_id", provider.api.client_id)
    options.setdefault("client_secret", provider.api.client_secret)
    with httpx.Client(transport=transport, timeout=10, trust_env=False) as http:
        yield TokenVerifier(provider.issuer, provider.issuer, introspect=True, http=http,
                            **options)


def test_a_revoked_token_is_refused_once_the_short_cache_has_passed(
    provider: Provider,
) -> None:
    transport, clock = Counting(), Clock()
    tokens = provider.login()
    with introspecting(provider, transport, clock=clock,
                       introspection_cache_ttl=30) as verifier:
        for _ in range(5):
            assert verifier.verify(tokens["access_token"]).sub == provider.user.id
        assert transport.count(INTROSPECT) == 1  # cached

        provider.revoke(tokens["refresh_token"])  # the whole session ends
        assert verifier.verify(tokens["access_token"])  # still the cached answer
        clock.offset = 30
        with pytest.raises(InvalidToken) as caught:
            verifier.verify(tokens["access_token"])
        assert caught.value.reason == "not active (introspection)"
        # The "inactive" answer is cached too.
        with pytest.raises(InvalidToken):
            verifier.verify(tokens["access_token"])
        assert transport.count(INTROSPECT) == 2


def test_with_no_cache_every_request_asks(provider: Provider) -> None:
    transport = Counting()
    tokens = provider.login()
    with introspecting(provider, transport, introspection_cache_ttl=0) as verifier:
        verifier.verify(tokens["access_token"])
        provider.revoke(tokens["access_token"])  # RFC 7009 on the access token itself
        with pytest.raises(InvalidToken):
            verifier.verify(tokens["access_token"])
    assert transport.count(INTROSPECT) == 2


def test_the_cache_is_bounded(provider: Provider) -> None:
    transport = Counting()
    first, second, third = (provider.login()["access_token"] for _ in range(3))
    with introspecting(provider, transport, introspection_cache_ttl=60,
                       introspection_cache_size=2) as verifier:
        for token in (first, second, first, third):  # third evicts the oldest: second
            verifier.verify(token)
        assert transport.count(INTROSPECT) == 3
        verifier.verify(first)
        assert transport.count(INTROSPECT) == 3
        verifier.verify(second)
        assert transport.count(INTROSPECT) == 4


def test_forged_tokens_never_reach_the_provider(provider: Provider) -> None:
    transport = Counting()
    forge = provider.forge()
    attacker = sign_rs(forge.header(), forge.claims, ATTACKER_KEY)  # our kid, their key
    with introspecting(provider, transport) as verifier:
        for token in (attacker, forge.sign(exp=int(time.time()) - 3600), "x.y.z"):
            with pytest.raises(InvalidToken):
                verifier.verify(token)
    assert transport.count(INTROSPECT) == 0


def test_wrong_credentials_of_the_resource_server_make_it_unavailable(
    provider: Provider,
) -> None:
    transport = Counting()
    with introspecting(provider, transport, client_secret="not-the-secret") as verifier, \
            pytest.raises(VerifierUnavailable) as caught:
        verifier.verify(provider.login()["access_token"])
    assert caught.value.reason == "introspection answered 401"


def test_introspection_needs_the_resource_servers_credentials(provider: Provider) -> None:
    with pytest.raises(ValueError, match="needs the resource server's client_id"):
        TokenVerifier(provider.issuer, provider.issuer, introspect=True)
