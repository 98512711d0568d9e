"""PROVIDER_CORS_ORIGINS: a browser app on an allowed origin may call the token endpoint
and fetch the JWKS, the two endpoints answered ahead of the router (provider.middleware),
and gets the same CORS answer there as anywhere else; any other origin gets none."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest_asyncio

from provider.app import create_app
from provider.settings import Settings
from tests.conftest import TestClock
from tests.factories import Factory
from tests.oauth.helpers import basic

ORIGIN = "https://spa.example.com"


@pytest_asyncio.fixture(loop_scope="session")
async def cors_http(settings: Settings, clock: TestClock) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings.model_copy(update={"cors_origins": [ORIGIN]}), clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport,
                                     base_url="http://127.0.0.1:8000") as http:
            yield http


async def test_token_endpoint_answers_an_allowed_origin(cors_http: httpx.AsyncClient,
                                                        factory: Factory) -> None:
    oauth = await factory.client(grants=("client_credentials",), scopes="api")
    preflight = await cors_http.options("/oauth/token", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN

    response = await cors_http.post(
        "/oauth/token", data={"grant_type": "client_credentials", "scope": "api"},
        headers={"Origin": ORIGIN, **basic(oauth.client_id, oauth.client_secret)})
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-request-id"]

    refused = await cors_http.post(
        "/oauth/token", data={"grant_type": "client_credentials", "scope": "api"},
        headers={"Origin": ORIGIN, **basic(oauth.client_id, "wrong")})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == ORIGIN

    other = await cors_http.post(
        "/oauth/token", data={"grant_type": "client_credentials", "scope": "api"},
        headers={"Origin": "https://evil.example.net",
                 **basic(oauth.client_id, oauth.client_secret)})
    assert other.status_code == 200
    assert "access-control-allow-origin" not in other.headers


async def test_jwks_answers_an_allowed_origin(cors_http: httpx.AsyncClient) -> None:
    response = await cors_http.get("/.well-known/jwks.json", headers={"Origin": ORIGIN})
    assert response.status_code == 200
    assert response.json()["keys"]
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert response.headers["cache-control"].startswith("public, max-age=")

    other = await cors_http.get("/.well-known/jwks.json",
                                headers={"Origin": "https://evil.example.net"})
    assert other.status_code == 200
    assert "access-control-allow-origin" not in other.headers
