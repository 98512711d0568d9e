"""Forged and misused JWTs are refused, at /users/me and by JwtService itself.

Every case of the shared catalogue (tests/forgeries.py: `none`, algorithm confusion,
unknown or hostile `kid`, embedded `jwk`, `jku`, `crit`, issuer and audience tricks,
token kinds, expiry, claim types; RFC 8725, RFC 9068 §4, RFC 6750 §3 and the JWT CVEs of
SECURITY.md), which the resource servers' package must refuse too (tests/resource/);
plus what only the server can check: revoked tokens, users that do not exist.
"""

from __future__ import annotations

import uuid

import httpx
import pytest
from joserfc.jwk import RSAKey

from provider.services import Services
from provider.settings import Settings
from provider.tokens.jwt import CLOCK_SKEW, TokenRejected
from tests.factories import Factory
from tests.forgeries import FORGERIES, Forge, forge_for
from tests.helpers import assert_oauth_error, bearer, login
from tests.oauth.helpers import assert_invalid_token, me


@pytest.fixture
async def forge(factory: Factory, services: Services, settings: Settings) -> Forge:
    user = await factory.user()
    oauth = await factory.client()
    signer = services.keys.signing_key()
    assert isinstance(signer.key, RSAKey) and signer.key.private_key is not None
    iat = int(services.clock.now().timestamp())
    # Every user token belongs to a live session (its `sid`): the forger gets a real one.
    session_id = await factory.session(user, oauth, scope="openid profile email account")
    claims = {
        "iss": settings.issuer, "sub": user.id, "aud": settings.token_audience,
        "exp": iat + 600, "iat": iat, "jti": uuid.uuid4().hex,
        "client_id": oauth.client_id, "scope": "openid profile email account", "sid": session_id,
    }
    return forge_for(signer.key, claims)


async def assert_refused(client: httpx.AsyncClient, services: Services, token: str) -> None:
    with pytest.raises(TokenRejected):
        services.jwt.verify_access_token(token, now=services.clock.now())
    if token and token.isascii():  # (an empty or non-ASCII header cannot be sent)
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


@pytest.mark.parametrize("name", sorted(FORGERIES))
async def test_forged_token_is_refused(
    client, services: Services, forge: Forge, name: str
) -> None:
    now = int(services.clock.now().timestamp())
    # The server grants no leeway on exp (its own clock) and 30 s on iat/nbf.
    tokens = FORGERIES[name](forge, now, 0)
    assert tokens
    for token in tokens:
        await assert_refused(client, services, token)


# JSON headers that are not objects but name "alg", which joserfc's parse lets through.
NOT_AN_OBJECT = ["WyJhbGciXQ.e30.eA", "ImFsZyI.e30.eA"]


@pytest.mark.parametrize("token", NOT_AN_OBJECT)
async def test_a_header_that_is_not_an_object_is_refused_everywhere_a_token_is_read(
    client, factory: Factory, services: Services, token: str
) -> None:
    """Each endpoint answers what its RFC says for a token it cannot read, never a 500."""
    for verify in (lambda: services.jwt.verify_access_token(token, now=services.clock.now()),
                   lambda: services.jwt.verify_id_token_hint(token)):
        with pytest.raises(TokenRejected):
            verify()
    oauth = await factory.client()
    for path in ("/users/me", "/oauth/userinfo", "/admin/users"):
        assert_invalid_token(await client.get(path, headers=bearer(token)))
    introspected = await client.post("/oauth/introspect", data={"token": token},
                                     auth=oauth.auth)
    assert (introspected.status_code, introspected.json()) == (200, {"active": False})
    for hint in ({}, {"token_type_hint": "access_token"}):
        revoked = await client.post("/oauth/revoke", data={"token": token, **hint},
                                    auth=oauth.auth)
        assert revoked.status_code == 200, revoked.text  # RFC 7009 §2.2
    for logout in (client.get("/oauth/logout", params={"id_token_hint": token}),
                   client.post("/oauth/logout", data={"id_token_hint": token})):
        answer = await logout
        assert answer.status_code < 500, answer.text


async def test_a_real_token_once_its_lifetime_is_over_is_refused(
    client, services: Services, factory: Factory, clock, settings: Settings,
) -> None:
    user, oauth = await factory.user(), await factory.client()
    tokens = await login(client, oauth, user)
    clock.advance(settings.access_token_ttl)
    await assert_refused(client, services, tokens["access_token"])


async def test_nbf_within_the_tolerated_skew_is_fine(
    client, services: Services, forge: Forge
) -> None:
    now = int(services.clock.now().timestamp())
    assert CLOCK_SKEW.total_seconds() >= 5
    assert (await me(client, forge.sign(nbf=now + 5))).status_code == 200


async def test_audience_list_including_ours_is_accepted(
    client, forge: Forge, settings: Settings
) -> None:
    token = forge.sign(aud=["https://api.other.example", settings.token_audience])
    assert (await me(client, token)).status_code == 200


async def test_real_id_token_is_not_an_access_token(
    client, services: Services, factory: Factory, settings: Settings
) -> None:
    user, oauth = await factory.user(), await factory.client()
    tokens = await login(client, oauth, user, scope="openid")
    await assert_refused(client, services, tokens["id_token"])
    # Even one minted for our own audience: `typ` keeps the kinds apart (RFC 9068 §4).
    assert oauth.client_id != settings.token_audience


def test_the_catalogue_covers_the_attacks_by_family() -> None:
    families = {name.rsplit("-", 1)[0] if name[-1].isdigit() else name for name in FORGERIES}
    assert {"alg-none", "hs256-public-key-pem", "other-alg", "unknown-kid",
            "hostile-kid", "embedded-jwk", "jku-not-followed", "x5u-not-followed",
            "tampered-claims", "broken-signature", "expired", "not-yet-valid",
            "wrong-issuer", "wrong-audience", "missing-sub", "claim-of-wrong-type",
            "not-an-access-token-typ", "crit", "malformed", "too-long"} <= families


# --- transport (RFC 6750 §2, §3) ---------------------------------------------------------


QUERY_REFUSED = "Access tokens are not accepted in the query string."


@pytest.mark.parametrize(("method", "path"), [("GET", "/users/me"),
                                             ("POST", "/users/me/password")])
async def test_access_token_in_query_is_invalid_request(client, forge: Forge, method: str,
                                                        path: str) -> None:
    """An OAuth error body (application/json), also where the operation's own 400s are
    problems: openapi.yaml documents both."""
    token = forge.sign()
    for headers in ({}, bearer(token)):
        response = await client.request(method, path, params={"access_token": token},
                                        headers=headers, json={})
        assert response.headers["content-type"] == "application/json"
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
