"""provider-resource's verifiers against a real provider process: valid tokens, scopes,
discovery, the JWKS cache and its rate-limited refetch, algorithm pinning, leeway, a
provider that cannot be reached; sync and async alike."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from provider_resource import (
    AccessToken,
    AsyncTokenVerifier,
    ConfigurationError,
    InsufficientScope,
    InvalidToken,
    TokenVerifier,
    VerifierUnavailable,
    verify,
)
from tests.resource.conftest import AsyncCounting, Clock, Counting, Provider


@contextmanager
def verifier_for(provider: Provider, transport: Counting | None = None, *,
                 issuer: str | None = None, audience: str | None = None,
                 **options: Any) -> Iterator[TokenVerifier]:
    with httpx.Client(transport=transport or Counting(), timeout=10, trust_env=False) as http:
        yield TokenVerifier(issuer or provider.issuer, audience or provider.issuer, http=http,
                            **options)


def test_a_valid_token_gives_its_claims(provider: Provider) -> None:
    tokens = provider.login()
    with verifier_for(provider) as verifier:
        token = verifier.verify(tokens["access_token"], scopes=["openid", "profile"])
    assert isinstance(token, AccessToken)
    assert (token.sub, token.client_id) == (provider.user.id, provider.client.client_id)
    assert token.scopes == frozenset({"openid", "profile", "email"})
    assert token.claims["iss"] == provider.issuer and token.claims["sid"]
    assert token.has_scopes(["email"]) and not token.has_scopes(["admin"])


async def test_the_async_verifier_gives_the_same(provider: Provider) -> None:
    tokens = provider.login()
    transport = AsyncCounting()
    async with httpx.AsyncClient(transport=transport, trust_env=False) as http:
        verifier = AsyncTokenVerifier(provider.issuer, provider.issuer, http=http)
        results = await asyncio.gather(*(verifier.verify(tokens["access_token"])
                                         for _ in range(20)))
    assert {r.jti for r in results} == {results[0].jti}
    # Twenty at once on a cold cache: one discovery, one JWKS fetch between them.
    assert (transport.count("/openid-configuration"), transport.count("/jwks.json")) == (1, 1)


def test_the_module_level_verify_shares_one_verifier(provider: Provider) -> None:
    access = provider.login()["access_token"]
    first = verify(access, issuer=provider.issuer, audience=provider.issuer)
    assert verify(access, issuer=provider.issuer, audience=provider.issuer) == first


def test_missing_scopes_are_insufficient_scope(provider: Provider) -> None:
    access = provider.login(scope="openid")["access_token"]
    with verifier_for(provider) as verifier, pytest.raises(InsufficientScope) as caught:
        verifier.verify(access, scopes=["openid", "profile"])
    assert caught.value.status_code == 403
    assert caught.value.challenge("api") == (
        'Bearer realm="api", error="insufficient_scope", error_description="The access '
        'token does not grant the scope this request needs.", scope="openid profile"')


def test_discovery_and_keys_are_fetched_once_while_fresh(provider: Provider) -> None:
    transport = Counting()
    with verifier_for(provider, transport) as verifier:
        for _ in range(3):
            access = provider.login()["access_token"]
            for _ in range(10):
                verifier.verify(access)
    assert transport.paths == ["/.well-known/openid-configuration", "/.well-known/jwks.json"]


def test_the_jwks_is_fetched_again_after_its_max_age(provider: Provider) -> None:
    transport, clock = Counting(), Clock()
    access = provider.login()["access_token"]
    with verifier_for(provider, transport, clock=clock) as verifier:
        verifier.verify(access)
        clock.offset = 45  # the provider serves it with max-age=60 here
        verifier.verify(access)
        assert transport.count("/jwks.json") == 1
        clock.offset = 60
        verifier.verify(access)
        assert transport.count("/jwks.json") == 2


def test_unknown_kids_refetch_at_most_once_per_interval(provider: Provider) -> None:
    """Garbage kids cannot make the verifier hammer the provider."""
    transport, clock = Counting(), Clock()
    forge = provider.forge()
    with verifier_for(provider, transport, clock=clock, refetch_interval=30) as verifier:
        verifier.verify(forge.sign())
        for _ in range(50):
            garbage = forge.sign(forge.header(kid=secrets.token_urlsafe(32)))
            with pytest.raises(InvalidToken) as caught:
                verifier.verify(garbage)
            assert caught.value.reason == "unknown key"
        assert transport.count("/jwks.json") == 2  # the first fetch, and one refetch
        clock.offset = 30
        with pytest.raises(InvalidToken):
            verifier.verify(forge.sign(forge.header(kid="B" * 43)))
        assert transport.count("/jwks.json") == 3
        verifier.verify(forge.sign())  # the real key is still known
        assert transport.count("/jwks.json") == 3


def test_a_slow_fetch_holds_up_no_token_of_a_known_key(provider: Provider) -> None:
    """A garbage kid's refetch that hangs on a slow provider (up to the timeout) leaves
    every other thread's token of a known key to go through: only the threads that need
    a fetch wait for it."""
    transport, forge = Counting(), provider.forge()
    with verifier_for(provider, transport) as verifier:
        good = forge.sign()
        verifier.verify(good)  # metadata and keys cached
        transport.slow_jwks = threading.Event()
        fetches = transport.count("/jwks.json")
        outcome: list[BaseException] = []

        def garbage() -> None:
            try:
                verifier.verify(forge.sign(forge.header(kid=secrets.token_urlsafe(32))))
            except BaseException as exc:
                outcome.append(exc)

        hanging = threading.Thread(target=garbage)
        hanging.start()
        for _ in range(1000):  # until its refetch is in the transport
            if transport.count("/jwks.json") > fetches:
                break
            time.sleep(0.005)
        assert transport.count("/jwks.json") == fetches + 1
        done = threading.Event()
        meanwhile = threading.Thread(target=lambda: (verifier.verify(good), done.set()))
        meanwhile.start()
        assert done.wait(10), "a token of a known key waited for another thread's fetch"
        transport.slow_jwks.set()
        hanging.join(30)
        meanwhile.join(30)
        assert len(outcome) == 1 and isinstance(outcome[0], InvalidToken)


def test_while_the_provider_is_unreachable_the_cached_keys_stay_in_use(
    provider: Provider,
) -> None:
    transport, clock = Counting(), Clock()
    access = provider.login()["access_token"]
    with verifier_for(provider, transport, clock=clock) as verifier:
        verifier.verify(access)
        transport.down = True
        clock.offset = 120  # the cache is stale: a refetch is tried, fails, and is not fatal
        assert verifier.verify(access).sub == provider.user.id
        assert verifier.verify(access).sub == provider.user.id
        assert transport.count("/jwks.json") == 2  # one retry, then a second's pause


def test_a_provider_never_reached_makes_the_verifier_unavailable(provider: Provider) -> None:
    transport, clock = Counting(), Clock()
    transport.down = True
    access = provider.login()["access_token"]
    with verifier_for(provider, transport, clock=clock) as verifier:
        with pytest.raises(VerifierUnavailable) as caught:
            verifier.verify(access)
        assert caught.value.status_code == 503
        assert caught.value.headers() == {"Retry-After": "5"}
        # Asked again at once: answered at once, without asking the provider again.
        for _ in range(20):
            with pytest.raises(VerifierUnavailable):
                verifier.verify(access)
        assert len(transport.paths) == 1
        clock.offset = 1
        transport.down = False
        assert verifier.verify(access).sub == provider.user.id


def test_a_jwks_that_cannot_be_fetched_at_first_is_unavailable_not_invalid(
    provider: Provider,
) -> None:
    access = provider.login()["access_token"]

    class KeysDown(Counting):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            self.down = request.url.path.endswith("/jwks.json")
            return super().handle_request(request)

    transport = KeysDown()
    with verifier_for(provider, transport) as verifier:
        for _ in range(3):
            with pytest.raises(VerifierUnavailable):
                verifier.verify(access)
        assert transport.count("/jwks.json") == 1


def test_metadata_of_another_issuer_is_refused(provider: Provider) -> None:
    """The same server reached under another name says its issuer is another."""
    other_name = provider.issuer.replace("127.0.0.1", "localhost")
    with verifier_for(provider, issuer=other_name, audience=other_name) as verifier, \
            pytest.raises(ConfigurationError) as caught:
        verifier.verify(provider.login()["access_token"])
    assert "names another issuer" in caught.value.reason


def test_only_the_allowed_algorithms_pass(provider: Provider) -> None:
    access = provider.login()["access_token"]
    with verifier_for(provider, algorithms=["ES256", "EdDSA"]) as verifier, \
            pytest.raises(InvalidToken) as caught:
        verifier.verify(access)
    assert caught.value.reason == "algorithm not allowed"
    with pytest.raises(ValueError, match="algorithms must be among"):
        TokenVerifier(provider.issuer, provider.issuer, algorithms=["HS256"])
    with pytest.raises(ValueError, match="algorithms must be among"):
        TokenVerifier(provider.issuer, provider.issuer, algorithms=["none"])


def test_expiry_has_a_small_leeway(provider: Provider) -> None:
    clock = Clock()
    forge = provider.forge()
    now = int(clock())
    just_expired = forge.sign(exp=now - 5, iat=now - 605)
    with verifier_for(provider, clock=clock, leeway=10) as lenient:
        assert lenient.verify(just_expired).exp == now - 5
    with verifier_for(provider, clock=clock, leeway=0) as strict, \
            pytest.raises(InvalidToken) as caught:
        strict.verify(just_expired)
    assert caught.value.reason == "expired"


def test_another_audience_is_refused(provider: Provider) -> None:
    with verifier_for(provider, audience="https://api.other.example") as verifier, \
            pytest.raises(InvalidToken) as caught:
        verifier.verify(provider.login()["access_token"])
    assert caught.value.reason == "wrong audience"
    assert caught.value.challenge() == (
        'Bearer error="invalid_token", error_description="The access token is invalid, '
        'expired or revoked."')
