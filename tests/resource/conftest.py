"""A real provider process for the resource package's tests (`provider serve` on a
SQLite file of its own, with a copy of the session keys, so the forger holds the real
signing key), its accounts made with the real CLI, and token helpers."""

from __future__ import annotations

import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc.jwk import RSAKey

from provider.keys.store import DirectoryKeyStore
from tests.conftest import migrate
from tests.e2e.conftest import LiveServer, OAuthClient, User
from tests.forgeries import Forge, forge_for
from tests.pgserver import run_sync

SCOPE = "openid profile email"


@dataclass
class Provider:
    server: LiveServer
    user: User
    client: OAuthClient
    api: OAuthClient
    """A confidential client_credentials client: the resource server's own, for
    introspection."""

    @property
    def issuer(self) -> str:
        return self.server.issuer

    def login(self, scope: str = SCOPE) -> dict[str, Any]:
        with httpx.Client(base_url=self.server.base_url, timeout=30, trust_env=False) as http:
            response = http.post("/oauth/token", auth=self.client.auth, data={
                "grant_type": "password", "username": self.user.email,
                "password": self.user.password, "scope": scope})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def revoke(self, token: str) -> None:
        with httpx.Client(base_url=self.server.base_url, timeout=30, trust_env=False) as http:
            response = http.post("/oauth/revoke", auth=self.client.auth, data={"token": token})
        assert response.status_code == 200, response.text

    def forge(self, **claims: Any) -> Forge:
        """The provider's real signing key and the claims of a valid token of its."""
        records = DirectoryKeyStore(self.server.keys_dir).read_records()
        active = next(r for r in records if r.status == "active")
        key = run_sync(lambda: DirectoryKeyStore(self.server.keys_dir).private_keys([active]))
        signing_key = key[active.kid]
        assert isinstance(signing_key, RSAKey)
        now = int(time.time())
        return forge_for(signing_key, {
            "iss": self.issuer, "sub": self.user.id, "aud": self.issuer, "exp": now + 600,
            "iat": now, "jti": secrets.token_urlsafe(16), "client_id": self.client.client_id,
            "scope": SCOPE, **claims})


@pytest.fixture(scope="package")
def provider(keys_dir: Path, workdir: Path) -> Iterator[Provider]:
    home = workdir / f"resource-{secrets.token_hex(3)}"
    home.mkdir()
    keys = home / "keys"
    shutil.copytree(keys_dir, keys)
    url = f"sqlite:///{home}/provider.db"
    migrate(url)
    with LiveServer(database_url=url, keys_dir=keys, rundir=home / "run",
                    extra_env={"PROVIDER_JWKS_MAX_AGE": "60"}) as server:
        user, client = server.create_account(client_name="resource tests", scope=SCOPE)
        api = server.cli_json("clients", "create", "--name", "api", "--grant",
                              "client_credentials")
        yield Provider(server, user, client, OAuthClient(api["client_id"],
                                                         api["client_secret"]))


class Counting(httpx.BaseTransport):
    """A real HTTP transport that counts requests by path, and can be cut off (a
    provider that cannot be reached)."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.paths: list[str] = []
        self.down = False
        # Set: a JWKS request waits for this event first (a provider slow to answer).
        self.slow_jwks: threading.Event | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        if self.down:
            raise httpx.ConnectError("the provider is unreachable", request=request)
        if self.slow_jwks is not None and request.url.path.endswith("/jwks.json"):
            self.slow_jwks.wait(30)
        return self.inner.handle_request(request)

    def count(self, suffix: str) -> int:
        return sum(path.endswith(suffix) for path in self.paths)

    def close(self) -> None:
        self.inner.close()


class AsyncCounting(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.paths: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return await self.inner.handle_async_request(request)

    def count(self, suffix: str) -> int:
        return sum(path.endswith(suffix) for path in self.paths)

    async def aclose(self) -> None:
        await self.inner.aclose()


class Clock:
    """The verifier's clock, stopped at its creation and moved only by the test (so that
    cache windows do not depend on how fast a loaded machine runs the test)."""

    def __init__(self) -> None:
        self.base = time.time()
        self.offset = 0.0

    def __call__(self) -> float:
        return self.base + self.offset
