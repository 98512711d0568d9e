"""Discovery documents (RFC 8414, OIDC Discovery 1.0) and the JWKS (RFC 7517, 7638)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import pytest
import pytest_asyncio
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from authlib.oidc.discovery import OpenIDProviderMetadata

from provider.app import create_app
from provider.oauth.grants import GRANTS
from provider.services import Services
from provider.settings import Settings
from tests.oauth.helpers import rfc7638_thumbprint

OIDC = "/.well-known/openid-configuration"
RFC8414 = "/.well-known/oauth-authorization-server"
JWKS = "/.well-known/jwks.json"
HTTPS_ISSUER = "https://auth.example.com"
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def https_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The same provider published at an https issuer (Authlib insists on https)."""
    application = create_app(settings.model_copy(update={"issuer": HTTPS_ISSUER}))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url=HTTPS_ISSUER) as http:
            yield http


async def get_document(http: httpx.AsyncClient, path: str) -> dict:
    response = await http.get(path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "public, max-age=3600"
    body: dict = response.json()
    return body


@pytest.mark.parametrize("path", [OIDC, RFC8414])
async def test_discovery_document_facts(
    client, services: Services, settings: Settings, path: str
) -> None:
    document = await get_document(client, path)
    issuer = settings.issuer
    assert document["issuer"] == issuer == "http://127.0.0.1:8000"
    assert document["token_endpoint"] == f"{issuer}/oauth/token"
    assert document["jwks_uri"] == f"{issuer}/.well-known/jwks.json"
    assert document["revocation_endpoint"] == f"{issuer}/oauth/revoke"
    assert document["introspection_endpoint"] == f"{issuer}/oauth/introspect"
    assert document["userinfo_endpoint"] == f"{issuer}/oauth/userinfo"
    # Exactly the grants the token endpoint has registered.
    assert sorted(document["grant_types_supported"]) == sorted(GRANTS)
    assert {"openid", "profile", "email"} <= set(document["scopes_supported"])
    assert document["token_endpoint_auth_methods_supported"] == [
        "client_secret_basic", "client_secret_post", "none"]
    # A public client proves nothing: introspection takes confidential clients only.
    assert "none" not in document["introspection_endpoint_auth_methods_supported"]
    # The authorization code flow (issue 10): code only, in the query, PKCE S256, iss.
    assert document["authorization_endpoint"] == f"{issuer}/oauth/authorize"
    assert document["response_types_supported"] == ["code"]
    assert document["response_modes_supported"] == ["query"]
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert document["authorization_response_iss_parameter_supported"] is True
    assert "authorization_code" in document["grant_types_supported"]


async def test_oidc_document_adds_the_openid_members(client) -> None:
    oidc, oauth = await get_document(client, OIDC), await get_document(client, RFC8414)
    # Same facts: the OIDC document only adds members.
    assert {k: oidc[k] for k in oauth} == oauth
    assert oidc["subject_types_supported"] == ["public"]
    assert oidc["id_token_signing_alg_values_supported"] == ["RS256"]
    assert oidc["end_session_endpoint"] == "http://127.0.0.1:8000/oauth/logout"
    assert oidc["prompt_values_supported"] == ["none", "login", "consent"]
    assert {"nonce", "at_hash", "auth_time", "amr"} <= set(oidc["claims_supported"])
    assert {"sub", "iss", "aud", "exp", "iat", "email", "email_verified",
            "preferred_username"} <= set(oidc["claims_supported"])


async def test_rfc8414_document_validates_with_authlib(https_client) -> None:
    document = await get_document(https_client, RFC8414)
    assert document["issuer"] == HTTPS_ISSUER
    AuthorizationServerMetadata(document).validate()


async def test_openid_configuration_validates_with_authlib(https_client) -> None:
    document = await get_document(https_client, OIDC)
    assert document["issuer"] == HTTPS_ISSUER
    assert document["token_endpoint"] == f"{HTTPS_ISSUER}/oauth/token"
    OpenIDProviderMetadata(document).validate()


async def test_advertised_endpoints_exist(client) -> None:
    document = await get_document(client, OIDC)

    def path(member: str) -> str:
        return urlsplit(document[member]).path

    # Each answers as its protocol says an anonymous caller should: never 404.
    token = await client.post(path("token_endpoint"), data={"grant_type": "password"})
    assert token.status_code == 401
    for member in ("revocation_endpoint", "introspection_endpoint"):
        response = await client.post(path(member), data={"token": "x"})
        assert response.status_code == 401
        assert response.json()["error"] == "invalid_client"
    userinfo = await client.get(path("userinfo_endpoint"))
    assert userinfo.status_code == 401
    assert (await client.get(path("jwks_uri"))).status_code == 200
    # An authorization request without a client gets an error page, never a redirect.
    authorize = await client.get(path("authorization_endpoint"))
    assert authorize.status_code == 400
    assert authorize.headers["content-type"].startswith("text/html")
    assert (await client.get(path("end_session_endpoint"))).status_code == 200
    assert (await client.get(path("service_documentation"))).status_code == 200


async def test_jwks_is_cacheable_json(client) -> None:
    response = await client.get(JWKS)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "public, max-age=300"


async def test_jwks_fast_answer_has_the_headers_of_the_route(
        client, https_client, app, monkeypatch: pytest.MonkeyPatch) -> None:
    # GET is answered in the edge layer; HEAD goes through the route and send_wrapped.
    inner = app.edge.app
    for http in (client, https_client):
        async def not_reached(scope, receive, send) -> None:
            raise AssertionError("GET of the JWKS went past the edge layer")

        monkeypatch.setattr(app.edge, "app", not_reached)
        fast = await http.get(JWKS)
        monkeypatch.setattr(app.edge, "app", inner)
        routed = await http.head(JWKS)
        assert fast.status_code == routed.status_code == 200
        headers = {k: v for k, v in fast.headers.items() if k != "x-request-id"}
        assert headers == {k: v for k, v in routed.headers.items() if k != "x-request-id"}
        assert "no-store" not in headers["cache-control"]
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["content-security-policy"].startswith("default-src 'none'")
        assert ("strict-transport-security" in headers) == (http is https_client)
        assert int(headers["content-length"]) == len(fast.content)


async def test_jwks_keys_are_public_rsa_signing_keys(client, services: Services) -> None:
    keys = (await client.get(JWKS)).json()["keys"]
    assert keys, "the JWKS must publish at least the active key"
    kids = [key["kid"] for key in keys]
    assert len(kids) == len(set(kids))
    assert services.keys.signing_key().kid in kids
    for key in keys:
        assert set(key) == {"kty", "n", "e", "kid", "use", "alg"}
        assert not PRIVATE_MEMBERS & set(key)
        assert key["kty"] == "RSA"
        assert key["use"] == "sig"
        assert key["alg"] == "RS256"
        assert key["kid"] == rfc7638_thumbprint(key)
        modulus = base64.urlsafe_b64decode(key["n"] + "=" * (-len(key["n"]) % 4))
        assert len(modulus) * 8 >= 2048


async def test_jwks_is_the_same_at_any_issuer(client, https_client) -> None:
    plain = (await client.get(JWKS)).json()
    secure = (await https_client.get(JWKS)).json()
    assert {k["kid"] for k in plain["keys"]} == {k["kid"] for k in secure["keys"]}
