"""The authorization code flow driven over HTTP like a browser: forms read from the
pages, cookies kept by the client, PKCE made here. Shared by the in-process tests and
the e2e tests (any httpx.AsyncClient with a cookie jar)."""

from __future__ import annotations

import base64
import hashlib
import html
import re
import secrets
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

AUTHORIZE = "/oauth/authorize"
CALLBACK = "https://client.example.com/callback"
_INPUT = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')
_FORM = re.compile(r'<form method="post" action="([^"]+)">')


def pkce() -> tuple[str, str]:
    """(verifier, S256 challenge)."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def hidden_fields(page: httpx.Response) -> dict[str, str]:
    return {name: html.unescape(value) for name, value in _INPUT.findall(page.text)}


def form_action(page: httpx.Response) -> str:
    match = _FORM.search(page.text)
    assert match is not None, page.text
    return html.unescape(match.group(1))


def query_of(location: str) -> dict[str, str]:
    values = parse_qs(urlsplit(location).query, keep_blank_values=True)
    assert all(len(v) == 1 for v in values.values()), location
    return {k: v[0] for k, v in values.items()}


def is_page(response: httpx.Response, title: str) -> bool:
    return (response.headers.get("content-type", "").startswith("text/html")
            and f"<h1>{title}</h1>" in response.text)


def assert_unavailable_page(response: httpx.Response) -> None:
    """A page's answer to an outage: 503 with Retry-After, a page for a person (not
    JSON), uncached, under the pages' CSP, and no way back to the client (whose redirect
    URI could not be checked)."""
    assert response.status_code == 503, response.text
    assert is_page(response, "Try again shortly"), response.text
    assert response.headers["retry-after"] == "5"
    assert response.headers["cache-control"] == "no-store"
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert "The service is unavailable right now." in response.text
    assert "location" not in response.headers


@dataclass
class Authorization:
    """One authorization request's parameters and PKCE verifier."""

    client_id: str
    redirect_uri: str | None = CALLBACK
    scope: str | None = "openid profile email"
    state: str | None = field(default_factory=lambda: secrets.token_urlsafe(12))
    nonce: str | None = field(default_factory=lambda: secrets.token_urlsafe(12))
    extra: dict[str, str] = field(default_factory=dict)
    verifier: str = ""
    challenge: str = ""

    def __post_init__(self) -> None:
        if not self.verifier:
            self.verifier, self.challenge = pkce()

    def params(self, **overrides: str | None) -> dict[str, str]:
        values: dict[str, str | None] = {
            "response_type": "code", "client_id": self.client_id,
            "redirect_uri": self.redirect_uri, "scope": self.scope, "state": self.state,
            "nonce": self.nonce, "code_challenge": self.challenge,
            "code_challenge_method": "S256", **self.extra, **overrides,
        }
        return {k: v for k, v in values.items() if v is not None}


class Browser:
    """An httpx client used like a browser on the flow's pages."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def authorize(self, request: Authorization, /, **overrides: str | None
                        ) -> httpx.Response:
        return await self.http.get(AUTHORIZE, params=request.params(**overrides))

    async def submit(self, page: httpx.Response, **fields: str) -> httpx.Response:
        """Post the page's form with its hidden fields and ``fields``."""
        return await self.http.post(form_action(page), data={**hidden_fields(page), **fields})

    async def login(self, page: httpx.Response, username: str, password: str
                    ) -> httpx.Response:
        assert is_page(page, "Sign in"), page.text
        return await self.submit(page, username=username, password=password)

    async def follow(self, response: httpx.Response) -> httpx.Response:
        """Follow a redirect within the server (to the authorization endpoint)."""
        assert response.status_code in (302, 303), response.text
        location = response.headers["location"]
        assert location.startswith("/"), location
        return await self.http.get(location)

    async def sign_in(self, request: Authorization, username: str, password: str, /, *,
                      consent: bool = True, **overrides: str | None) -> dict[str, str]:
        """The whole flow to the client's redirect: its query (code, state, iss)."""
        page = await self.authorize(request, **overrides)
        if is_page(page, "Sign in"):
            page = await self.follow(await self.login(page, username, password))
        if is_page(page, "Allow access?"):
            assert consent, "a consent page where none was expected"
            page = await self.submit(page, decision="allow")
        assert page.status_code in (302, 303), page.text
        location = page.headers["location"]
        assert location.startswith(request.redirect_uri or CALLBACK), location
        return query_of(location)

    def cookie(self, name: str) -> str | None:
        return self.http.cookies.get(name)


async def exchange(http: httpx.AsyncClient, request: Authorization, code: str, *,
                   auth: httpx.BasicAuth | None = None, client_id: str | None = None,
                   **overrides: str | None) -> httpx.Response:
    """The token request of the code flow (client_secret_basic, or a public client)."""
    form: dict[str, str | None] = {
        "grant_type": "authorization_code", "code": code,
        "redirect_uri": request.redirect_uri, "code_verifier": request.verifier,
        **overrides,
    }
    if auth is None:
        form["client_id"] = client_id or request.client_id
    data: dict[str, Any] = {k: v for k, v in form.items() if v is not None}
    return await http.post("/oauth/token", data=data, auth=auth)
