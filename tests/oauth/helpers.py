"""Assertions and small helpers of the OAuth, token and user HTTP suites (the ones every
suite shares are in tests/helpers.py)."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any
from urllib.parse import quote_plus

import httpx
import jwt as pyjwt

from tests.helpers import (  # noqa: F401 (re-exported to the oauth suites)
    BASIC_CHALLENGE,
    BEARER_INVALID,
    INVALID_TOKEN_CHALLENGE,
    assert_oauth_error,
    bearer,
)

FORM = "application/x-www-form-urlencoded"


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
