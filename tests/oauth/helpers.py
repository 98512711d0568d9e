"""Assertions and small helpers shared by the OAuth, token and user HTTP suites."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any
from urllib.parse import quote_plus

import httpx
import jwt as pyjwt

from tests.factories import TestClient, TestUser

TOKEN = "/oauth/token"
FORM = "application/x-www-form-urlencoded"
BEARER_INVALID = "The access token is invalid, expired or revoked."
INVALID_TOKEN_CHALLENGE = (
    f'Bearer realm="provider", error="invalid_token", error_description="{BEARER_INVALID}"'
)
BASIC_CHALLENGE = 'Basic realm="provider", charset="UTF-8"'


def assert_no_store(response: httpx.Response) -> None:
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"


def assert_oauth_error(
    response: httpx.Response,
    status: int,
    error: str,
    description: str,
    *,
    www_authenticate: str | None = None,
    **extra: Any,
) -> None:
    """The whole RFC 6749 §5.2 answer: status, body, no-store, and the challenge or none."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": error, "error_description": description, **extra}
    assert_no_store(response)
    assert response.headers.get("www-authenticate") == www_authenticate


def assert_problem(response: httpx.Response, status: int, code: str, title: str) -> None:
    """The whole RFC 9457 answer of a non-OAuth error."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {"type": "about:blank", "title": title, "status": status,
                               "code": code}


def assert_invalid_token(response: httpx.Response,
                         description: str = BEARER_INVALID) -> None:
    assert_oauth_error(
        response, 401, "invalid_token", description,
        www_authenticate=(
            f'Bearer realm="provider", error="invalid_token", '
            f'error_description="{description}"'
        ),
    )


def basic(client_id: str, secret: str, *, encode: bool = True) -> dict[str, str]:
    """client_secret_basic, form-urlencoding both parts first (RFC 6749 §2.3.1)."""
    if encode:
        client_id, secret = quote_plus(client_id), quote_plus(secret)
    raw = f"{client_id}:{secret}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def login(
    http: httpx.AsyncClient, client: TestClient, user: TestUser, **form: str
) -> dict[str, Any]:
    """A password-grant login that must succeed; the token response body."""
    data = {"grant_type": "password", "username": user.email, "password": user.password,
            **form}
    response = await http.post(TOKEN, data=data, auth=client.auth)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def refresh(
    http: httpx.AsyncClient, client: TestClient, refresh_token: str, **form: str
) -> httpx.Response:
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token, **form}
    if client.client_secret is None:
        return await http.post(TOKEN, data={**data, "client_id": client.client_id})
    return await http.post(TOKEN, data=data, auth=client.auth)


def assert_refresh_refused(response: httpx.Response) -> None:
    assert_oauth_error(response, 400, "invalid_grant",
                       "The grant or refresh token is invalid, expired or revoked.")


async def me(http: httpx.AsyncClient, access_token: str) -> httpx.Response:
    return await http.get("/users/me", headers=bearer(access_token))


def unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, claims) of a JWT, without checking anything: for looking, not trusting."""
    header = pyjwt.get_unverified_header(token)
    claims = pyjwt.decode(token, options={"verify_signature": False})
    return header, claims


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def rfc7638_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 §3 for an RSA key, computed here rather than by the library under test."""
    members = {"e": jwk["e"], "kty": jwk["kty"], "n": jwk["n"]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return b64url(hashlib.sha256(canonical).digest())
