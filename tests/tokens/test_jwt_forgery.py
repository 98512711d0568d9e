"""Forged and misused JWTs are refused, at /users/me and by JwtService itself.

RFC 8725 (JWT BCP), RFC 9068 §4, RFC 6750 §3 and the JWT CVEs listed in SECURITY.md:
`none`, algorithm confusion, unknown or hostile `kid`, embedded `jwk`, `jku`, `crit`,
issuer prefixes, audience, token kinds, expiry. Tokens are crafted by hand with
cryptography so that no JOSE library's guard rails stand between the attack and us.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from joserfc.jwk import RSAKey

from provider.services import Services
from provider.settings import Settings
from provider.tokens.jwt import TokenRejected
from tests.conftest import TestClock as MovableClock
from tests.factories import Factory
from tests.helpers import assert_oauth_error, bearer, login
from tests.oauth.helpers import assert_invalid_token, b64url, me

ATTACKER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _segment(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def sign_rs(header: dict[str, Any], claims: dict[str, Any], key: rsa.RSAPrivateKey,
            digest: hashes.HashAlgorithm | None = None, *, pss: bool = False) -> str:
    signing_input = f"{_segment(header)}.{_segment(claims)}".encode()
    algorithm = digest or hashes.SHA256()
    pad: padding.AsymmetricPadding = (
        padding.PSS(mgf=padding.MGF1(algorithm), salt_length=algorithm.digest_size)
        if pss else padding.PKCS1v15()
    )
    signature = key.sign(signing_input, pad, algorithm)
    return f"{signing_input.decode()}.{b64url(signature)}"


def sign_hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    signing_input = f"{_segment(header)}.{_segment(claims)}".encode()
    mac = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return f"{signing_input.decode()}.{b64url(mac)}"


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{_segment(header)}.{_segment(claims)}."


@dataclass
class Forge:
    """Our real signing key and the claims of a valid token for a live user."""

    kid: str
    key: rsa.RSAPrivateKey
    public_jwk: dict[str, Any]
    claims: dict[str, Any]

    def header(self, **overrides: Any) -> dict[str, Any]:
        header = {"alg": "RS256", "typ": "at+jwt", "kid": self.kid, **overrides}
        return {k: v for k, v in header.items() if v is not None}

    def with_claims(self, **overrides: Any) -> dict[str, Any]:
        claims = {**self.claims, **overrides}
        return {k: v for k, v in claims.items() if v is not None}

    def sign(self, header: dict[str, Any] | None = None, **claims: Any) -> str:
        return sign_rs(header or self.header(), self.with_claims(**claims), self.key)


@pytest.fixture
async def forge(factory: Factory, services: Services, settings: Settings) -> Forge:
    user = await factory.user()
    oauth = await factory.client()
    signer = services.keys.signing_key()
    kid, key = signer.kid, signer.key
    assert isinstance(key, RSAKey) and key.private_key is not None
    iat = int(services.clock.now().timestamp())
    # Every user token belongs to a live session (its `sid`): the forger gets a real one.
    session_id = await factory.session(user, oauth, scope="openid profile email")
    claims = {
        "iss": settings.issuer, "sub": user.id, "aud": settings.token_audience,
        "exp": iat + 600, "iat": iat, "jti": secrets.token_urlsafe(16),
        "client_id": oauth.client_id, "scope": "openid profile email", "sid": session_id,
    }
    return Forge(kid, key.private_key, key.as_dict(private=False), claims)


async def assert_refused(client: httpx.AsyncClient, services: Services, token: str) -> None:
    with pytest.raises(TokenRejected):
        services.jwt.verify_access_token(token, now=services.clock.now())
    assert_invalid_token(await me(client, token))


async def test_control_a_correctly_made_token_is_accepted(
    client, services: Services, forge: Forge
) -> None:
    # The harness is sound: what it signs properly passes, so every refusal below is
    # the check under test, not a mistake in the forgery.
    token = forge.sign()
    claims = services.jwt.verify_access_token(token, now=services.clock.now())
    assert claims.sub == forge.claims["sub"]
    assert (await me(client, token)).status_code == 200
    media_type = forge.sign(forge.header(typ="application/at+jwt"))
    assert (await me(client, media_type)).status_code == 200


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
async def test_alg_none_is_refused(client, services: Services, forge: Forge, alg: str) -> None:
    await assert_refused(client, services, unsigned(forge.header(alg=alg), forge.claims))
    # ...also with a signature attached that was made for the honest header.
    honest = forge.sign().rsplit(".", 1)[1]
    forged = unsigned(forge.header(alg=alg), forge.claims) + honest
    await assert_refused(client, services, forged)


@pytest.mark.parametrize("secret_form", ["pem", "pem-pkcs1", "jwk-json", "modulus"])
async def test_hs256_with_our_public_key_as_hmac_secret_is_refused(
    client, services: Services, forge: Forge, secret_form: str
) -> None:
    # Algorithm confusion (CVE-2015-9235, CVE-2022-29217): the public key is public.
    public = forge.key.public_key()
    secrets_by_form: dict[str, Callable[[], bytes]] = {
        "pem": lambda: public.public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo),
        "pem-pkcs1": lambda: public.public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.PKCS1),
        "jwk-json": lambda: json.dumps(forge.public_jwk).encode(),
        "modulus": lambda: public.public_numbers().n.to_bytes(256, "big"),
    }
    token = sign_hs256(forge.header(alg="HS256"), forge.claims, secrets_by_form[secret_form]())
    await assert_refused(client, services, token)


@pytest.mark.parametrize(
    ("alg", "digest", "pss"),
    [("RS384", hashes.SHA384(), False), ("RS512", hashes.SHA512(), False),
     ("PS256", hashes.SHA256(), True)],
)
async def test_other_algorithms_with_our_own_key_are_refused(
    client, services: Services, forge: Forge, alg: str, digest: hashes.HashAlgorithm,
    pss: bool
) -> None:
    # One key, one algorithm (RFC 8725 §3.1): a valid signature under another alg fails.
    token = sign_rs(forge.header(alg=alg), forge.claims, forge.key, digest, pss=pss)
    await assert_refused(client, services, token)


async def test_unknown_kid_is_refused(client, services: Services, forge: Forge) -> None:
    attacker_kid = RSAKey.import_key(ATTACKER_KEY).thumbprint()
    token = sign_rs(forge.header(kid=attacker_kid), forge.claims, ATTACKER_KEY)
    await assert_refused(client, services, token)
    # A well-formed kid that is simply not ours, on a token our key signed.
    await assert_refused(client, services, forge.sign(forge.header(kid="A" * 43)))


@pytest.mark.parametrize(
    "kid",
    ["../../../../etc/passwd", "../keys/{kid}", "{kid}/../{kid}", "{kid}.pem", "/{kid}",
     "' OR '1'='1", "{kid}' OR 1=1 --", "{kid}\x00", "", None, 42, ["{kid}"],
     {"kid": "{kid}"}],
)
async def test_hostile_or_malformed_kid_is_refused_even_with_our_signature(
    client, services: Services, forge: Forge, kid: Any
) -> None:
    # RFC 8725 §3.10: kid is only a lookup key, and only a thumbprint-shaped one.
    def fill(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace("{kid}", forge.kid)
        if isinstance(value, list):
            return [fill(v) for v in value]
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value

    header = forge.header()
    if kid is None:
        del header["kid"]
    else:
        header["kid"] = fill(kid)
    await assert_refused(client, services, forge.sign(header))


async def test_tampered_claims_fail_the_signature(
    client, services: Services, forge: Forge
) -> None:
    token = forge.sign()
    header, _payload, signature = token.split(".")
    for changes in ({"scope": "openid admin"}, {"sub": str(secrets.token_hex(8))},
                    {"exp": forge.claims["exp"] + 86400}):
        payload = _segment(forge.with_claims(**changes))
        await assert_refused(client, services, f"{header}.{payload}.{signature}")
    # A flipped bit and a dropped byte of the signature itself.
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    await assert_refused(client, services, f"{header}.{_payload}.{flipped}")
    await assert_refused(client, services, f"{header}.{_payload}.{signature[:-4]}")
    await assert_refused(client, services, f"{header}.{_payload}.")


async def test_expired_token_is_refused(
    client, services: Services, forge: Forge, factory: Factory, clock: MovableClock,
    settings: Settings,
) -> None:
    now = int(services.clock.now().timestamp())
    await assert_refused(client, services, forge.sign(exp=now - 1, iat=now - 901))
    await assert_refused(client, services, forge.sign(exp=now))  # exp is exclusive
    # A real token once its 15 minutes are over.
    user, oauth = await factory.user(), await factory.client()
    tokens = await login(client, oauth, user)
    clock.advance(settings.access_token_ttl)
    await assert_refused(client, services, tokens["access_token"])


async def test_not_yet_valid_tokens_are_refused(
    client, services: Services, forge: Forge
) -> None:
    now = int(services.clock.now().timestamp())
    await assert_refused(client, services, forge.sign(iat=now + 3600, exp=now + 4000))
    await assert_refused(client, services, forge.sign(nbf=now + 3600))
    # Within the tolerated skew is fine.
    assert (await me(client, forge.sign(nbf=now + 5))).status_code == 200


@pytest.mark.parametrize(
    "iss",
    ["http://127.0.0.1:8000/", "http://127.0.0.1:8000.evil.example", "http://127.0.0.1:800",
     "http://127.0.0.1:8000/evil", "https://127.0.0.1:8000", "HTTP://127.0.0.1:8000",
     "evil http://127.0.0.1:8000", ["http://127.0.0.1:8000"], "", None],
)
async def test_wrong_issuer_is_refused(
    client, services: Services, forge: Forge, iss: Any
) -> None:
    # Exact match only: no prefix, substring or list tricks (CVE-2024-53861).
    assert forge.claims["iss"] == "http://127.0.0.1:8000"
    await assert_refused(client, services, forge.sign(iss=iss))  # None: no iss


@pytest.mark.parametrize(
    "aud",
    ["https://api.other.example", ["https://api.other.example"], "http://127.0.0.1:8000/",
     "", [], None, "cl_some_client"],
)
async def test_wrong_audience_is_refused(
    client, services: Services, forge: Forge, aud: Any
) -> None:
    await assert_refused(client, services, forge.sign(aud=aud))  # None: no aud


async def test_audience_list_including_ours_is_accepted(
    client, forge: Forge, settings: Settings
) -> None:
    token = forge.sign(aud=["https://api.other.example", settings.token_audience])
    assert (await me(client, token)).status_code == 200


@pytest.mark.parametrize("missing", ["sub", "jti", "client_id", "exp", "iat"])
async def test_token_without_a_required_claim_is_refused(
    client, services: Services, forge: Forge, missing: str
) -> None:
    claims = dict(forge.claims)
    del claims[missing]
    await assert_refused(client, services, sign_rs(forge.header(), claims, forge.key))


@pytest.mark.parametrize("changes", [{"exp": "9999999999"}, {"iat": True}, {"scope": ["a"]},
                                     {"sub": 12}, {"sid": 7}])
async def test_claims_of_the_wrong_type_are_refused(
    client, services: Services, forge: Forge, changes: dict[str, Any]
) -> None:
    await assert_refused(client, services, forge.sign(**changes))


async def test_real_id_token_is_not_an_access_token(
    client, services: Services, factory: Factory, settings: Settings
) -> None:
    user, oauth = await factory.user(), await factory.client()
    tokens = await login(client, oauth, user, scope="openid")
    await assert_refused(client, services, tokens["id_token"])
    # Even one minted for our own audience: `typ` keeps the kinds apart (RFC 9068 §4).
    assert oauth.client_id != settings.token_audience


@pytest.mark.parametrize("typ", ["JWT", "jwt", "at+JWT+x", "", None, "id_token"])
async def test_token_without_access_token_typ_is_refused(
    client, services: Services, forge: Forge, typ: str | None
) -> None:
    await assert_refused(client, services, forge.sign(forge.header(typ=typ)))


@pytest.mark.parametrize(
    "extra", [{"crit": ["exp"]}, {"crit": ["b64"], "b64": False}, {"crit": []},
              {"crit": ["urn:example:unknown"], "urn:example:unknown": 1}],
)
async def test_crit_header_is_refused(
    client, services: Services, forge: Forge, extra: dict[str, Any]
) -> None:
    # RFC 7515 §4.1.11: an extension we do not understand makes the token invalid.
    await assert_refused(client, services, forge.sign(forge.header(**extra)))


async def test_embedded_jwk_is_never_trusted(client, services: Services, forge: Forge) -> None:
    # CVE-2018-0114: a token that brings its own key.
    attacker = RSAKey.import_key(ATTACKER_KEY)
    attacker_public = attacker.as_dict(private=False)
    for kid in (attacker.thumbprint(), forge.kid):
        header = forge.header(kid=kid, jwk=attacker_public)
        await assert_refused(client, services, sign_rs(header, forge.claims, ATTACKER_KEY))
    no_kid = {"alg": "RS256", "typ": "at+jwt", "jwk": attacker_public}
    await assert_refused(client, services, sign_rs(no_kid, forge.claims, ATTACKER_KEY))


@pytest.mark.parametrize("member", ["jku", "x5u"])
async def test_jku_and_x5u_are_never_followed(
    client, services: Services, forge: Forge, member: str
) -> None:
    attacker_kid = RSAKey.import_key(ATTACKER_KEY).thumbprint()
    for kid in (attacker_kid, forge.kid):
        header = forge.header(kid=kid, **{member: "https://evil.example/jwks.json"})
        await assert_refused(client, services, sign_rs(header, forge.claims, ATTACKER_KEY))


@pytest.mark.parametrize(
    "token",
    ["", "abc", "a.b", "a.b.c", "a.b.c.d", "..", "e30.e30.", "x" * 9000,
     "eyJhbGciOiJSUzI1NiJ9.!!!.sig"],
)
async def test_malformed_tokens_are_refused(
    client, services: Services, token: str
) -> None:
    with pytest.raises(TokenRejected):
        services.jwt.verify_access_token(token, now=services.clock.now())
    if token:
        assert_invalid_token(await me(client, token))


def test_non_ascii_token_is_refused_by_the_service(services: Services) -> None:
    with pytest.raises(TokenRejected):
        services.jwt.verify_access_token("é.é.é", now=services.clock.now())


async def test_too_long_token_is_refused(client, services: Services, forge: Forge) -> None:
    token = forge.sign(padding="x" * 9000)
    await assert_refused(client, services, token)


# --- transport (RFC 6750 §2, §3) ---------------------------------------------------------


QUERY_REFUSED = "Access tokens are not accepted in the query string."


async def test_access_token_in_query_is_invalid_request(client, forge: Forge) -> None:
    token = forge.sign()
    for headers in ({}, bearer(token)):
        response = await client.get("/users/me", params={"access_token": token},
                                    headers=headers)
        assert_oauth_error(
            response, 400, "invalid_request", QUERY_REFUSED,
            www_authenticate=(f'Bearer realm="provider", error="invalid_request", '
                              f'error_description="{QUERY_REFUSED}"'),
        )


@pytest.mark.parametrize(
    "authorization",
    [None, "Basic dXNlcjpwYXNz", "Token abc", "Bearer", "Bearer ", "bearer", "Digest x=1"],
)
async def test_missing_or_non_bearer_credentials_get_a_bare_challenge(
    client, authorization: str | None
) -> None:
    # RFC 6750 §3.1: no bearer credentials at all, so no error code in the challenge.
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = await client.get("/users/me", headers=headers)
    assert_oauth_error(response, 401, "invalid_token", "An access token is required.",
                       www_authenticate='Bearer realm="provider"')


async def test_bearer_scheme_is_case_insensitive(client, forge: Forge) -> None:
    response = await client.get("/users/me",
                                headers={"Authorization": f"bEaReR {forge.sign()}"})
    assert response.status_code == 200, response.text


async def test_revoked_jti_is_refused_at_the_endpoint(
    client, factory: Factory, forge: Forge
) -> None:
    # The signature still verifies offline; our own endpoints also check the denylist.
    user, oauth = await factory.user(), await factory.client()
    tokens = await login(client, oauth, user)
    await client.post("/oauth/revoke", data={"token": tokens["access_token"]}, auth=oauth.auth)
    assert_invalid_token(await me(client, tokens["access_token"]))


async def test_token_of_a_user_that_does_not_exist_is_refused(
    client, forge: Forge
) -> None:
    assert_invalid_token(await me(client, forge.sign(sub=str(uuid.uuid4()))))
