"""Every forgery the server refuses (tests/forgeries.py), refused by provider-resource
too, sync and async, against the real provider's JWKS and metadata; and the real ID token
of a real login, which is no access token."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import pytest_asyncio

from provider_resource import AsyncTokenVerifier, InvalidToken, TokenVerifier
from tests.forgeries import FORGERIES
from tests.resource.conftest import Provider

LEEWAY = 10


@pytest.fixture(scope="module")
def verifier(provider: Provider) -> Iterator[TokenVerifier]:
    with TokenVerifier(provider.issuer, provider.issuer, leeway=LEEWAY) as shared:
        yield shared


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def async_verifier(provider: Provider) -> AsyncIterator[AsyncTokenVerifier]:
    async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
        yield AsyncTokenVerifier(provider.issuer, provider.issuer, leeway=LEEWAY, http=http)


def test_control_an_honest_token_of_the_same_forge_passes(
    provider: Provider, verifier: TokenVerifier,
) -> None:
    forge = provider.forge()
    assert verifier.verify(forge.sign()).sub == provider.user.id
    assert verifier.verify(forge.sign(forge.header(typ="application/at+jwt")))
    assert verifier.verify(forge.sign(aud=["https://api.other.example", provider.issuer]))
    now = int(time.time())
    assert verifier.verify(forge.sign(nbf=now + LEEWAY - 2))


@pytest.mark.parametrize("name", sorted(FORGERIES))
async def test_forged_token_is_refused(
    provider: Provider, verifier: TokenVerifier, async_verifier: AsyncTokenVerifier,
    name: str,
) -> None:
    forge = provider.forge()
    tokens = FORGERIES[name](forge, int(time.time()), LEEWAY)
    assert tokens
    for token in tokens:
        with pytest.raises(InvalidToken) as caught:
            verifier.verify(token)
        assert caught.value.status_code == 401
        with pytest.raises(InvalidToken):
            await async_verifier.verify(token)


def test_a_real_id_token_is_not_an_access_token(
    provider: Provider, verifier: TokenVerifier,
) -> None:
    tokens = provider.login()
    assert verifier.verify(tokens["access_token"]).sub == provider.user.id
    with pytest.raises(InvalidToken) as caught:
        verifier.verify(tokens["id_token"])
    assert caught.value.reason == "not an access token (typ)"
    with pytest.raises(InvalidToken) as caught:
        verifier.verify(tokens["refresh_token"])  # opaque: not even a JWT
    assert caught.value.reason == "malformed"
