"""Annotated dependencies: the per-process services, the unit of work, the bearer user."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.openapi.models import (
    OAuthFlowAuthorizationCode,
    OAuthFlowPassword,
    OAuthFlows,
)
from fastapi.security import OAuth2
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from provider.audit.service import RequestContext
from provider.clock import Clock
from provider.db import unit_of_work
from provider.logs import note_user
from provider.oauth.errors import (
    InsufficientScope,
    InsufficientUserAuthentication,
    InvalidBearerRequest,
    InvalidToken,
    MissingToken,
)
from provider.oauth.scopes import ACCOUNT, ADMIN, DESCRIPTIONS
from provider.services import Services
from provider.settings import Settings
from provider.tokens.jwt import AccessClaims, TokenRejected
from provider.tokens.revocation import access_token_stands, token_user_id
from provider.users.accounts import Accounts
from provider.users.models import User
from provider.users.service import lock_active_admins


# Dependencies are `async def` on purpose: FastAPI runs a plain `def` in a thread pool,
# which measurably slows every request of the token path (bench/README.md).
async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_clock(services: ServicesDep) -> Clock:
    return services.clock


# Not `async for ... in unit_of_work(...)`: an exception thrown into that loop never
# reaches the inner generator, so an expected error was rolled back (not committed) and
# the connection stayed checked out until the garbage collector closed the generator.
_unit_of_work = asynccontextmanager(unit_of_work)


async def get_session(services: ServicesDep) -> AsyncIterator[AsyncSession]:
    async with _unit_of_work(services.sessions) as session:
        yield session


async def get_accounts(services: ServicesDep) -> Accounts:
    return services.accounts


ClockDep = Annotated[Clock, Depends(get_clock)]
# scope="function": the transaction commits before the response is sent, so a client
# never sees a success that was not stored.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
AccountsDep = Annotated[Accounts, Depends(get_accounts)]


def client_address(request: Request, settings: Settings) -> str:
    """The caller's address; X-Forwarded-For counts only from a trusted proxy (an address
    or a CIDR range of PROVIDER_TRUSTED_PROXIES)."""
    peer = request.client.host if request.client else "unknown"
    proxies = settings.trusted_proxies
    if proxies and is_trusted_proxy(peer, proxies):
        # Every line of the header, in order (RFC 9110 §5.3): a proxy may add its own
        # line after the one the client sent, and only the last hops are the proxies'.
        forwarded = ",".join(request.headers.getlist("x-forwarded-for"))
        if forwarded:
            # The right-most address not of a trusted proxy is the one that reached us.
            for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
                address = forwarded_address(hop)
                if address is None:
                    break  # not an address: believe nothing further, the proxy is the peer
                if not is_trusted_proxy(address, proxies):
                    return address
    return peer


def forwarded_address(hop: str) -> str | None:
    """An X-Forwarded-For hop as an address, without the port some proxies add
    (``203.0.113.9:5678``, ``[2001:db8::1]:443``): else every connection of one client
    would count as a new client in the per-address limits. An IPv4-mapped address is its
    IPv4 one. None when it is no address (an IPv6 one with a port needs its brackets)."""
    host = hop
    if hop.startswith("["):
        host, bracket, port = hop[1:].partition("]")
        if not bracket or (port and not (port[0] == ":" and port[1:].isdigit())):
            return None
    elif hop.count(":") == 1:  # an IPv6 address has at least two
        host, _, port = hop.partition(":")
        if not port.isdigit():
            return None
    try:
        address = ip_address(host.partition("%")[0])  # a scope id means nothing here
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def request_context(request: Request, settings: Settings) -> RequestContext:
    """Where the request came from, for the audit trail."""
    return RequestContext(client_address(request, settings), request.headers.get("user-agent"))


async def get_request_context(request: Request, services: ServicesDep) -> RequestContext:
    return request_context(request, services.settings)


RequestContextDep = Annotated[RequestContext, Depends(get_request_context)]

def is_trusted_proxy(host: str, proxies: Sequence[IPv4Network | IPv6Network]) -> bool:
    try:
        address = ip_address(host)
    except ValueError:
        return False  # not an address (e.g. "unknown"): never trusted
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in proxies)


def bearer_token(request: Request) -> str:
    """RFC 6750 §2.1: the Authorization header only; query and body transport refused."""
    if "access_token" in request.query_params:
        raise InvalidBearerRequest("Access tokens are not accepted in the query string.")
    header = request.headers.get("authorization")
    if not header:
        raise MissingToken()
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise MissingToken()
    return token.strip()


# Declares the scheme to OpenAPI, which gives Swagger UI its Authorize button: the
# password flow and the authorization code flow with PKCE (the login page), both against
# our own endpoints; the token itself is read by bearer_token().
oauth2_scheme = OAuth2(
    flows=OAuthFlows(
        password=OAuthFlowPassword(tokenUrl="/oauth/token", scopes=DESCRIPTIONS),
        authorizationCode=OAuthFlowAuthorizationCode(
            authorizationUrl="/oauth/authorize", tokenUrl="/oauth/token",
            scopes=DESCRIPTIONS),
    ),
    scheme_name="OAuth2",
    description="Password flow (first-party) or authorization code flow with PKCE.",
    auto_error=False,
)


async def get_claims(
    request: Request,
    services: ServicesDep,
    _declared: Annotated[str | None, Security(oauth2_scheme)] = None,
) -> AccessClaims:
    token = bearer_token(request)
    try:
        return services.jwt.verify_access_token(token, now=services.clock.now())
    except TokenRejected:
        raise InvalidToken() from None


ClaimsDep = Annotated[AccessClaims, Depends(get_claims)]


async def get_current_user(claims: ClaimsDep, session: SessionDep) -> User:
    """The token's user, if the token still stands (one query: provider.tokens.revocation)."""
    if token_user_id(claims) is None:
        raise InvalidToken("The access token does not represent a user.")
    user = await session.scalar(select(User).where(access_token_stands(claims)))
    if user is None:
        raise InvalidToken()
    note_user(user.id)
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


async def get_account_user(claims: ClaimsDep, user: CurrentUser) -> User:
    """The account API (/users/me...) is the user's own: a token needs the ``account``
    scope, so an app granted only to read the user (openid, profile, email) cannot
    change the account, its password or its second factor."""
    if ACCOUNT not in claims.scope:
        raise InsufficientScope(ACCOUNT)
    return user


AccountUser = Annotated[User, Depends(get_account_user)]


def require_recent_sign_in(claims: AccessClaims, services: Services) -> None:
    """A change that adds a way to sign in (a second factor) needs a token whose sign-in
    (``auth_time``) is at most ``PROVIDER_REAUTH_MAX_AGE`` old, else 401
    ``insufficient_user_authentication`` with ``max_age`` (RFC 9470 §3; ASVS 7.5.1). A
    refresh keeps the sign-in's ``auth_time``, so a stolen refresh token cannot meet it."""
    max_age = math.ceil(services.settings.reauth_max_age.total_seconds())
    auth_time = claims.raw.get("auth_time")  # whole seconds (RFC 7519 NumericDate)
    # A sign-in after its token was issued is none we made.
    if (not isinstance(auth_time, int) or auth_time > claims.iat
            or int(services.clock.now().timestamp()) - auth_time > max_age):
        raise InsufficientUserAuthentication(max_age)


async def hold_account(session: AsyncSession, user: User) -> None:
    """Before a change to the account: take the user's row as the token found it, until
    the request commits. A revocation that answered first (a password reset or change,
    a disabling: each moves the user's epoch) leaves nothing to change (401), and one
    that comes later waits for this commit and then wins, so a request in flight never
    undoes it (DESIGN: revocation always wins). SQLite's write lock, taken by the
    request's first statement, does the same there. FOR NO KEY UPDATE: it waits for and
    holds off every UPDATE of the row, but not the foreign-key checks of rows that name
    the user (a sign-in's session), which would otherwise wait, or deadlock. The row is
    read again as it stands once held, so the change works on what another change that
    committed meanwhile (an admin's change of address) left, and never undoes it."""
    held = await session.scalar(
        select(User)
        .where(User.id == user.id, User.session_epoch == user.session_epoch,
               User.is_active.is_(True))
        .with_for_update(key_share=True).execution_options(populate_existing=True))
    if held is None:
        session.expunge(user)  # nothing of it is written when the answer commits
        raise InvalidToken()


async def get_admin_user(claims: ClaimsDep, user: CurrentUser) -> User:
    if ADMIN not in claims.scope or not user.is_admin:
        raise InsufficientScope(ADMIN)
    return user


AdminUser = Annotated[User, Depends(get_admin_user)]


async def hold_admin(session: AsyncSession, admin: User) -> None:
    """Before an admin's change: every active admin's row (``lock_active_admins``, as
    ``ensure_another_active_admin`` takes them, so the two never deadlock), this admin's
    among them as the token found it, until the request commits. A disabling, demotion
    or password reset of this admin that answered first leaves nothing to change (401,
    or 403 when only the admin role went), and one that comes later waits for this
    commit and then wins (DESIGN: revocation always wins). SQLite's write lock, taken
    by the request's first statement, does the same there."""
    if (await lock_active_admins(session)).get(admin.id) == admin.session_epoch:
        return
    demoted = await session.scalar(
        select(User.id).where(User.id == admin.id, User.is_active.is_(True),
                              User.session_epoch == admin.session_epoch))
    session.expunge(admin)  # nothing of it is written when the answer commits
    if demoted is not None:
        raise InsufficientScope(ADMIN)
    raise InvalidToken()


async def get_admin_writer(admin: AdminUser, session: SessionDep) -> User:
    await hold_admin(session, admin)
    return admin


# An admin whose change is about to be written (POST, PATCH, DELETE of the admin API).
AdminWriter = Annotated[User, Depends(get_admin_writer)]
