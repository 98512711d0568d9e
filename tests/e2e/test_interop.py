"""Independent client libraries against the real server: Authlib's OAuth 2 client gets
and refreshes tokens, PyJWT verifies them from the served JWKS, both find the endpoints
through the served discovery documents only.
"""

from __future__ import annotations

import warnings
from typing import Any

import httpx
import jwt
import pytest
from authlib.deprecate import AuthlibDeprecationWarning
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata

from tests.e2e.conftest import LiveServer, OAuthClient, User

with warnings.catch_warnings():
    # Authlib >= 1.7 prefers the `httpx2` fork and warns, at import, when it falls back
    # to httpx. The fallback is what we test; the warning is not ours to fix.
    warnings.filterwarnings("ignore", message="The httpx module is deprecated",
                            category=AuthlibDeprecationWarning)
    from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError

ACCESS_TOKEN_CLAIMS = ["iss", "sub", "aud", "exp", "iat", "jti", "client_id", "scope"]
ID_TOKEN_CLAIMS = ["iss", "sub", "aud", "exp", "iat", "auth_time"]


async def discover(live: LiveServer) -> dict[str, Any]:
    async with live.http() as http:
        response = await http.get("/.well-known/openid-configuration")
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def verify_access_token(jwks: jwt.PyJWKClient, token: str, *, issuer: str,
                        client_id: str) -> dict[str, Any]:
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt"
    assert header["alg"] == "RS256"
    key = jwks.get_signing_key_from_jwt(token)
    assert key.key_id == header["kid"]
    claims: dict[str, Any] = jwt.decode(
        token, key, algorithms=["RS256"], audience=issuer, issuer=issuer,
        options={"require": ACCESS_TOKEN_CLAIMS},
    )
    assert claims["client_id"] == client_id
    return claims


def verify_id_token(jwks: jwt.PyJWKClient, token: str, *, issuer: str,
                    client_id: str) -> dict[str, Any]:
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS256"
    assert header["typ"] != "at+jwt"  # an ID token never passes as an access token
    claims: dict[str, Any] = jwt.decode(
        token, jwks.get_signing_key_from_jwt(token), algorithms=["RS256"], audience=client_id,
        issuer=issuer, options={"require": ID_TOKEN_CLAIMS},
    )
    assert claims["azp"] == client_id
    return claims


async def test_discovery_documents_point_at_working_endpoints(live: LiveServer) -> None:
    oidc = await discover(live)
    async with live.http() as http:
        rfc8414 = (await http.get("/.well-known/oauth-authorization-server")).json()
        jwks = await http.get(oidc["jwks_uri"])
    # Authlib's reading of RFC 8414 accepts the document.
    AuthorizationServerMetadata(rfc8414).validate()
    assert oidc["issuer"] == rfc8414["issuer"] == live.issuer
    for name in ("token_endpoint", "jwks_uri", "revocation_endpoint",
                 "introspection_endpoint", "userinfo_endpoint"):
        assert oidc[name] == rfc8414[name]
        assert oidc[name].startswith(live.issuer + "/")
    assert jwks.status_code == 200
    assert [k["alg"] for k in jwks.json()["keys"]].count("RS256") >= 1
    assert {"client_secret_basic", "client_secret_post"} <= set(
        oidc["token_endpoint_auth_methods_supported"])


@pytest.mark.parametrize("auth_method", ["client_secret_basic", "client_secret_post"])
async def test_authlib_password_grant_and_refresh_verify_with_pyjwt(
    live: LiveServer, live_account: tuple[User, OAuthClient], auth_method: str
) -> None:
    user, oauth_client = live_account
    meta = await discover(live)
    token_endpoint, issuer = meta["token_endpoint"], meta["issuer"]
    jwks = jwt.PyJWKClient(meta["jwks_uri"])
    sent: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        sent.append(request)

    async with AsyncOAuth2Client(
        client_id=oauth_client.client_id, client_secret=oauth_client.client_secret,
        token_endpoint_auth_method=auth_method, scope="openid profile email account",
        event_hooks={"request": [record]}, trust_env=False, timeout=30.0,
    ) as oauth:
        token = await oauth.fetch_token(token_endpoint, grant_type="password",
                                        username=user.email, password=user.password)
        assert token["token_type"] == "Bearer"
        assert token["scope"] == "openid profile email account"
        assert sent[-1].url == token_endpoint
        # The client authenticated the way it was told to, and only that way.
        body = sent[-1].content.decode()
        if auth_method == "client_secret_basic":
            assert sent[-1].headers["authorization"].startswith("Basic ")
            assert "client_secret" not in body
        else:
            assert "authorization" not in sent[-1].headers
            assert f"client_secret={oauth_client.client_secret}" in body

        claims = verify_access_token(jwks, token["access_token"], issuer=issuer,
                                     client_id=oauth_client.client_id)
        assert claims["sub"] == user.id
        assert claims["scope"] == "openid profile email account"
        id_claims = verify_id_token(jwks, token["id_token"], issuer=issuer,
                                    client_id=oauth_client.client_id)
        assert id_claims["sub"] == user.id
        me = await oauth.get(f"{issuer}/users/me")  # Authlib adds the bearer token
        assert me.status_code == 200, me.text
        assert me.json()["email"] == user.email

        refreshed = await oauth.refresh_token(token_endpoint,
                                              refresh_token=token["refresh_token"])
        assert refreshed["refresh_token"] != token["refresh_token"]
        assert refreshed["access_token"] != token["access_token"]
        new_claims = verify_access_token(jwks, refreshed["access_token"], issuer=issuer,
                                         client_id=oauth_client.client_id)
        assert new_claims["sub"] == user.id
        assert new_claims["jti"] != claims["jti"]
        assert new_claims["sid"] == claims["sid"]  # the same refresh family
        new_id = verify_id_token(jwks, refreshed["id_token"], issuer=issuer,
                                 client_id=oauth_client.client_id)
        assert new_id["auth_time"] == id_claims["auth_time"]  # no new authentication
        me = await oauth.get(f"{issuer}/users/me")  # now with the refreshed token
        assert me.status_code == 200, me.text
        assert sent[-1].headers["authorization"] == f"Bearer {refreshed['access_token']}"

        # The rotated refresh token is spent: Authlib surfaces the RFC 6749 error.
        with pytest.raises(OAuthError) as spent:
            await oauth.refresh_token(token_endpoint, refresh_token=token["refresh_token"])
        assert spent.value.error == "invalid_grant"
