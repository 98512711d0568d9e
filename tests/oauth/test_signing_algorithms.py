"""PROVIDER_SIGNING_ALG: PS256, ES256 and EdDSA beside the default RS256 (tested
everywhere else). Tokens carry the key's algorithm, the JWKS publishes the right key
type with its `alg`, discovery advertises it, another library verifies the tokens, and a
token may only ever be verified under the algorithm of the key its kid names."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from joserfc import jwt as jose_jwt
from joserfc.jwk import ECKey

from provider.app import create_app
from provider.keys.algorithms import REGISTRIES, Algorithm, key_type
from provider.keys.lifecycle import add_key
from provider.keys.store import DirectoryKeyStore
from provider.services import Services
from provider.settings import Settings
from tests.conftest import make_keys_dir, make_settings
from tests.factories import Factory
from tests.helpers import login
from tests.oauth.helpers import assert_invalid_token, b64url, me
from tests.pgserver import run_sync

KTY = {"PS256": ("RSA", None), "ES256": ("EC", "P-256"), "EdDSA": ("OKP", "Ed25519")}


class AlgApp:
    def __init__(self, http: httpx.AsyncClient, services: Services, alg: Algorithm) -> None:
        self.http, self.services, self.alg = http, services, alg


@pytest_asyncio.fixture(scope="module", loop_scope="session",
                        params=["PS256", "ES256", "EdDSA"])
async def alg_app(request: pytest.FixtureRequest, settings: Settings,
                  tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AlgApp]:
    """The provider on the suite's database with a key of the algorithm under test."""
    alg: Algorithm = request.param
    keys = make_keys_dir(tmp_path_factory.mktemp(f"keys-{alg}"), alg)
    configured = make_settings(settings.database_url, keys, signing_alg=alg)
    application = create_app(configured)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport,
                                     base_url=configured.issuer) as http:
            yield AlgApp(http, application.state.services, alg)


async def test_jwks_publishes_the_key_type_and_algorithm(alg_app: AlgApp) -> None:
    response = await alg_app.http.get("/.well-known/jwks.json")
    assert response.headers["cache-control"] == "public, max-age=300"
    [jwk] = response.json()["keys"]
    kty, crv = KTY[alg_app.alg]
    assert (jwk["kty"], jwk.get("crv"), jwk["alg"], jwk["use"]) == (kty, crv, alg_app.alg, "sig")
    assert jwk["kid"] == alg_app.services.keys.signing_key().kid
    assert "d" not in jwk


async def test_discovery_advertises_the_algorithm(alg_app: AlgApp) -> None:
    document = (await alg_app.http.get("/.well-known/openid-configuration")).json()
    assert document["id_token_signing_alg_values_supported"] == [alg_app.alg]


async def test_tokens_are_signed_with_it_and_verify_in_another_library(
    alg_app: AlgApp, factory: Factory, settings: Settings,
) -> None:
    user, oauth = await factory.user(), await factory.client()
    tokens = await login(alg_app.http, oauth, user, scope="openid profile account")
    jwks = pyjwt.PyJWKSet.from_dict((await alg_app.http.get("/.well-known/jwks.json")).json())
    for token, audience, typ in ((tokens["access_token"], settings.token_audience, "at+jwt"),
                                 (tokens["id_token"], oauth.client_id, "JWT")):
        header = pyjwt.get_unverified_header(token)
        assert (header["alg"], header["typ"]) == (alg_app.alg, typ)
        claims = pyjwt.decode(token, jwks[header["kid"]].key, algorithms=[alg_app.alg],
                              audience=audience, issuer=settings.issuer)
        assert claims["sub"] == user.id
    assert (await me(alg_app.http, tokens["access_token"])).status_code == 200
    # at_hash with the ID token's hash (OIDC Core §3.1.3.6; Ed25519: SHA-512).
    hashed = hashlib.sha512 if alg_app.alg == "EdDSA" else hashlib.sha256
    digest = hashed(tokens["access_token"].encode()).digest()
    id_claims = pyjwt.decode(tokens["id_token"], options={"verify_signature": False})
    assert id_claims["at_hash"] == b64url(digest[: len(digest) // 2])
    # And the ID token comes back as a logout hint, verified under its key's algorithm.
    assert alg_app.services.jwt.verify_id_token_hint(tokens["id_token"])["sub"] == user.id
    refreshed = await alg_app.http.post("/oauth/token", auth=oauth.auth, data={
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert pyjwt.get_unverified_header(refreshed.json()["access_token"])["alg"] == alg_app.alg


def segment(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


async def forged_tokens(alg_app: AlgApp, claims: dict[str, Any]) -> dict[str, str]:
    """Tokens made with our own key but under another algorithm than the key's, and
    tokens that use the public key as an HMAC secret, or a null signature."""
    signer = alg_app.services.keys.signing_key()
    key, kid = signer.key, signer.kid
    forged: dict[str, str] = {}
    others: list[Algorithm] = [a for a in ("RS256", "PS256", "ES256", "EdDSA") if a != signer.alg]
    for other in others:
        header = {"alg": other, "typ": "at+jwt", "kid": kid}
        if key_type(other) == key_type(signer.alg):
            # A real signature under the other algorithm (PS256 and RS256 share RSA keys).
            forged[f"signed-{other}"] = jose_jwt.encode(header, claims, key,
                                                        registry=REGISTRIES[other])
        honest = jose_jwt.encode({**header, "alg": signer.alg}, claims, key,
                                 registry=REGISTRIES[signer.alg])
        forged[f"relabelled-{other}"] = (f"{segment(header)}.{honest.split('.', 1)[1]}")
    public = key.as_dict(private=False)
    public_pem = serialization.load_pem_public_key(key.as_pem(private=False)).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    for name, secret in (("pem", public_pem), ("jwk", json.dumps(public).encode())):
        header = {"alg": "HS256", "typ": "at+jwt", "kid": kid}
        signing_input = f"{segment(header)}.{segment(claims)}"
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        forged[f"hs256-{name}"] = f"{signing_input}.{b64url(mac)}"
    header = {"alg": signer.alg, "typ": "at+jwt", "kid": kid}
    signing_input = f"{segment(header)}.{segment(claims)}"
    size = {"ES256": 64, "EdDSA": 64}.get(signer.alg, 256)
    # ECDSA r = s = 0 (CVE-2022-21449) and its kin: an all-zero signature.
    forged["zero-signature"] = f"{signing_input}.{b64url(bytes(size))}"
    forged["none"] = f"{segment({**header, 'alg': 'none'})}.{segment(claims)}."
    return forged


async def test_no_token_passes_under_another_algorithm_than_its_keys(
    alg_app: AlgApp, factory: Factory, settings: Settings,
) -> None:
    user, oauth = await factory.user(), await factory.client()
    real = await login(alg_app.http, oauth, user, scope="openid account")
    claims = pyjwt.decode(real["access_token"], options={"verify_signature": False})
    forged = await forged_tokens(alg_app, claims)
    assert len(forged) >= 7
    for name, token in forged.items():
        response = await me(alg_app.http, token)
        assert response.status_code == 401, (name, response.text)
        assert_invalid_token(response)
    # The control: the same claims, honestly signed, pass.
    assert (await me(alg_app.http, real["access_token"])).status_code == 200


async def test_during_a_change_of_algorithm_discovery_lists_both(
    settings: Settings, tmp_path: Path,
) -> None:
    from datetime import UTC, datetime

    keys = make_keys_dir(tmp_path / "keys", "RS256")
    run_sync(lambda: add_key(DirectoryKeyStore(keys), ECKey.generate_key("P-256", private=True),
                             "ES256", now=datetime.now(UTC), actor="test"))
    configured = make_settings(settings.database_url, keys, signing_alg="ES256",
                               jwks_max_age=120)
    application = create_app(configured)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url=configured.issuer) as http:
            document = (await http.get("/.well-known/openid-configuration")).json()
            assert document["id_token_signing_alg_values_supported"] == ["ES256", "RS256"]
            jwks = await http.get("/.well-known/jwks.json")
            assert jwks.headers["cache-control"] == "public, max-age=120"
            assert [k["alg"] for k in jwks.json()["keys"]] == ["RS256", "ES256"]
