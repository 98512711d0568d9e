"""RFC 6749 §4.3: resource owner password credentials, for first-party clients only.

Unknown user, wrong password and disabled account give one answer in about the same
time: the password is verified against a dummy hash when there is no user.
"""

from __future__ import annotations

import uuid
from typing import ClassVar, NoReturn

from provider.clients.service import ClientInfo
from provider.oauth.errors import InvalidGrant, SlowDown
from provider.oauth.grants.base import (
    GrantContext,
    TokenRequest,
    TokenResponse,
    parse_scope,
    require,
    resolve_scope,
    token_response,
)
from provider.passwords import MAX_PASSWORD_LENGTH
from provider.tokens.service import Session, issue_refresh_token
from provider.users.service import find_login_candidate, update_password_hash

BAD_CREDENTIALS = "Invalid username or password."


class PasswordGrant:
    grant_type: ClassVar[str] = "password"

    def __init__(self, ctx: GrantContext) -> None:
        self.ctx = ctx

    async def exchange(self, request: TokenRequest, client: ClientInfo) -> TokenResponse:
        form = request.form
        ctx = self.ctx
        username = require(form, "username")
        password = require(form, "password")
        requested = parse_scope(form.get("scope"))
        throttles = ctx.throttles
        waits = [await throttles.login_account.retry_after(username),
                 await throttles.login_address.retry_after(request.client_address)]
        if any(waits):
            raise SlowDown(max(w for w in waits if w))
        if len(password) > MAX_PASSWORD_LENGTH:
            # Longer than any password we accept: refuse before hashing (DoS guard).
            await self._failed(request, username)

        async with ctx.single.connect() as conn:
            user = await find_login_candidate(conn, username)
        valid, new_hash = await ctx.hasher.verify(password, user.password_hash if user else None)
        if user is None or not valid or not user.is_active:
            await self._failed(request, username)
        await throttles.login_account.clear(username)
        if ctx.settings.require_verified_email and not user.is_verified:
            # Said only to someone who proved the password: it reveals nothing new.
            raise InvalidGrant("The email address has not been verified yet.")

        scope = resolve_scope(requested, client.scopes, may_admin=user.is_admin)

        now = ctx.clock.now()
        session = Session(
            family_id=uuid.uuid4(),
            user_id=user.id,
            client_id=client.client_id,
            scope=scope,
            family_expires_at=now + ctx.settings.refresh_token_absolute_ttl,
            auth_time=now,
        )
        refresh_token = None
        # Two independent statements at most: no transaction round trips needed.
        async with ctx.single.begin() as conn:
            if new_hash is not None:
                await update_password_hash(conn, user.id, new_hash, now=now)
            if "refresh_token" in client.grant_types:
                refresh_token = await issue_refresh_token(
                    conn, session=session, now=now, idle_ttl=ctx.settings.refresh_token_ttl
                )
        return token_response(ctx, sub=str(user.id), client_id=client.client_id, scope=scope,
                              session=session, refresh_token=refresh_token)

    async def _failed(self, request: TokenRequest, username: str) -> NoReturn:
        await self.ctx.throttles.login_account.hit(username)
        await self.ctx.throttles.login_address.hit(request.client_address)
        raise InvalidGrant(BAD_CREDENTIALS)

