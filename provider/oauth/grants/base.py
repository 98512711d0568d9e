"""The Grant protocol, the context grants work in, and helpers they share."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from sqlalchemy.ext.asyncio import AsyncEngine

from provider.clients.service import ClientCache, ClientInfo
from provider.clock import Clock
from provider.oauth.errors import InvalidRequest, InvalidScope
from provider.passwords import PasswordHasher
from provider.ratelimit import Throttles
from provider.settings import Settings
from provider.tokens.jwt import JwtService
from provider.tokens.service import Session

ADMIN_SCOPE = "admin"
TokenResponse = dict[str, Any]


@dataclass(frozen=True)
class GrantContext:
    """Everything a grant needs, built once per process."""

    settings: Settings
    engine: AsyncEngine
    # Same pool; autocommit on PostgreSQL (see provider.db.single_statement_engine).
    single: AsyncEngine
    clock: Clock
    jwt: JwtService
    hasher: PasswordHasher
    clients: ClientCache
    throttles: Throttles


@dataclass(frozen=True)
class TokenRequest:
    """A parsed token request: its form parameters and where it came from."""

    form: dict[str, str]
    client_address: str


class Grant(Protocol):
    grant_type: ClassVar[str]

    async def exchange(self, request: TokenRequest, client: ClientInfo) -> TokenResponse: ...


def require(form: dict[str, str], name: str) -> str:
    value = form.get(name)
    if not value:
        raise InvalidRequest(f"The {name} parameter is required.")
    return value


def parse_scope(raw: str | None) -> list[str] | None:
    if raw is None:
        return None
    return list(dict.fromkeys(raw.split()))


def resolve_scope(
    requested: list[str] | None, allowed: Iterable[str], *, may_admin: bool
) -> str:
    """RFC 6749 §3.3: the requested scope, which must be allowed; or the allowed default."""
    permitted = [s for s in allowed if s != ADMIN_SCOPE or may_admin]
    if requested is None:
        # Least privilege (ASVS 10.4.11): admin power is granted only when asked for.
        return " ".join(s for s in permitted if s != ADMIN_SCOPE)
    if not requested:
        raise InvalidScope("The scope parameter is empty.")
    refused = [s for s in requested if s not in permitted]
    if refused:
        raise InvalidScope(f"Scope not allowed: {refused[0]}.")
    return " ".join(requested)


def token_response(
    ctx: GrantContext,
    *,
    sub: str,
    client_id: str,
    scope: str,
    session: Session | None = None,
    refresh_token: str | None = None,
) -> TokenResponse:
    """Sign the access token (and an ID token for `openid`) and shape RFC 6749 §5.1."""
    now = ctx.clock.now()
    settings = ctx.settings
    # `sid` ties the access token to its refresh family, so revoking the family ends it
    # at our own endpoints and at introspection. No refresh token, no family.
    sid = str(session.family_id) if session and refresh_token else None
    access_token, _ = ctx.jwt.issue_access_token(
        sub=sub, client_id=client_id, scope=scope, now=now, ttl=settings.access_token_ttl,
        sid=sid, auth_time=session.auth_time if session else None,
    )
    body: TokenResponse = {
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": int(settings.access_token_ttl.total_seconds()),
        "scope": scope,
    }
    if refresh_token is not None:
        body["refresh_token"] = refresh_token
    if session is not None and "openid" in scope.split():
        body["id_token"] = ctx.jwt.issue_id_token(
            sub=sub, client_id=client_id, now=now, ttl=settings.id_token_ttl,
            auth_time=session.auth_time, sid=sid,
        )
    return body
