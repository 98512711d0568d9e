"""Test data through the real services (no fixtures written around them)."""

from __future__ import annotations

import base64
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import select

from provider.clients.models import Client
from provider.clients.service import create_client
from provider.oauth.grants import CLIENT_GRANT_RULES
from provider.services import Services
from provider.tokens.refresh import new_session, start_session
from provider.users.models import User
from provider.users.service import create_user

DEFAULT_PASSWORD = "correct horse battery staple"


@dataclass
class TestUser:
    __test__ = False  # not a test class, whatever its name
    id: str
    email: str
    password: str
    username: str | None


@dataclass
class TestClient:
    __test__ = False
    client_id: str
    client_secret: str | None

    @property
    def basic(self) -> dict[str, str]:
        raw = f"{self.client_id}:{self.client_secret or ''}".encode()
        return {"Authorization": "Basic " + base64.b64encode(raw).decode()}

    @property
    def auth(self) -> httpx.BasicAuth:
        return httpx.BasicAuth(self.client_id, self.client_secret or "")


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{secrets.token_hex(6)}@example.com"


class Factory:
    def __init__(self, services: Services) -> None:
        self.services = services

    async def user(
        self,
        *,
        email: str | None = None,
        password: str = DEFAULT_PASSWORD,
        username: str | None = None,
        is_admin: bool = False,
        is_verified: bool = True,
        **profile: Any,
    ) -> TestUser:
        services = self.services
        async with services.sessions() as session:
            user = await create_user(
                session, services.hasher, email=email or unique_email(), password=password,
                min_password_length=services.settings.password_min_length,
                now=services.clock.now(), username=username, is_admin=is_admin,
                is_verified=is_verified, profile=profile or None,
            )
            await session.commit()
            return TestUser(str(user.id), user.email, password, user.username)

    async def client(
        self,
        *,
        grants: tuple[str, ...] = ("password", "refresh_token"),
        scopes: str = "openid profile email account admin",
        public: bool = False,
        name: str = "test client",
        redirect_uris: tuple[str, ...] = (),
        post_logout_redirect_uris: tuple[str, ...] = (),
        first_party: bool | None = None,
    ) -> TestClient:
        """``first_party`` defaults to whether the client may use the password grant
        (which is for first-party clients only)."""
        if first_party is None:
            first_party = "password" in grants
        services = self.services
        async with services.sessions() as session:
            client, secret = await create_client(
                session, name=name, grant_types=grants, scopes=[scopes], is_public=public,
                now=services.clock.now(), grant_rules=CLIENT_GRANT_RULES,
                redirect_uris=redirect_uris, post_logout_redirect_uris=post_logout_redirect_uris,
                is_first_party=first_party,
            )
            await session.commit()
            return TestClient(client.client_id, secret)

    async def code_client(
        self, *, redirect_uris: tuple[str, ...] = ("https://client.example.com/callback",),
        first_party: bool = False, public: bool = False,
        scopes: str = "openid profile email account admin", name: str = "Example App",
        post_logout_redirect_uris: tuple[str, ...] = ("https://client.example.com/bye",),
    ) -> TestClient:
        """A client of the authorization code flow (with refresh tokens)."""
        return await self.client(
            grants=("authorization_code", "refresh_token"), scopes=scopes, public=public,
            name=name, redirect_uris=redirect_uris, first_party=first_party,
            post_logout_redirect_uris=post_logout_redirect_uris)

    async def session(self, user: TestUser, client: TestClient, *, scope: str) -> str:
        """A live session (what a sign-in records) of ``user`` with ``client``: its id."""
        services = self.services
        async with services.engine.begin() as conn:
            epoch = (await conn.execute(select(User.session_epoch)
                                        .where(User.id == uuid.UUID(user.id)))).scalar_one()
            now = services.clock.now()
            session = new_session(
                user_id=uuid.UUID(user.id), client_id=client.client_id, scope=scope,
                amr=("pwd",), now=now,
                absolute_ttl=services.settings.refresh_token_absolute_ttl)
            await start_session(conn, session, session_epoch=epoch, now=now)
        return str(session.id)

    async def set_client(self, client_id: str, **values: Any) -> None:
        services = self.services
        async with services.sessions() as session:
            client = await session.get(Client, client_id)
            assert client is not None
            for name, value in values.items():
                setattr(client, name, value)
            await session.commit()
        services.clients.invalidate(client_id)

    async def set_user(self, user_id: str, **values: Any) -> None:
        services = self.services
        async with services.sessions() as session:
            user = await session.get(User, uuid.UUID(user_id))
            assert user is not None
            for name, value in values.items():
                setattr(user, name, value)
            await session.commit()

