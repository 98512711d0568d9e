"""Helpers every suite shares: the in-process password-grant login, refresh, bearer
headers, and assertions on whole error answers (RFC 6749 §5.2 and RFC 9457)."""

from __future__ import annotations

from typing import Any

import httpx

from tests.factories import TestClient, TestUser

TOKEN = "/oauth/token"
BEARER_INVALID = "The access token is invalid, expired or revoked."
INVALID_TOKEN_CHALLENGE = (
    f'Bearer realm="provider", error="invalid_token", error_description="{BEARER_INVALID}"'
)
BASIC_CHALLENGE = 'Basic realm="provider", charset="UTF-8"'


async def password_login(
    http: httpx.AsyncClient, client: TestClient, user: TestUser, **form: str
) -> httpx.Response:
    """A password-grant token request, whatever its answer."""
    data = {"grant_type": "password", "username": user.email, "password": user.password, **form}
    return await http.post(TOKEN, data=data, auth=client.auth)


async def login(
    http: httpx.AsyncClient, client: TestClient, user: TestUser, **form: str
) -> dict[str, Any]:
    """A password-grant login that must succeed; the token response body."""
    response = await password_login(http, client, user, **form)
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


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


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


def assert_problem(response: httpx.Response, status: int, code: str, title: str,
                   **extra: Any) -> None:
    """The whole RFC 9457 answer of a non-OAuth error."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {"type": "about:blank", "title": title, "status": status,
                               "code": code, **extra}
