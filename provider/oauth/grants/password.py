"""RFC 6749 §4.3: resource owner password credentials, for first-party clients only.

Unknown user, wrong password and disabled account give one answer in about the same
time: the password is verified against a dummy hash when there is no user.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, NoReturn

from provider.clients.service import ClientInfo
from provider.metrics import LOGIN_FAILURES
from provider.oauth.errors import InvalidGrant, SlowDown
from provider.oauth.grants.base import TokenRequest, TokenResponse, require, token_response
from provider.oauth.scopes import parse_scope, resolve_scope
from provider.passwords import MAX_PASSWORD_LENGTH
from provider.tokens.refresh import issue_refresh_token, start_session
from provider.users.service import find_login_candidate, update_password_hash

if TYPE_CHECKING:
    from provider.services import Services

BAD_CREDENTIALS = "Invalid username or password."
# RFC 8176: a password.
PASSWORD_AMR = ("pwd",)


class PasswordGrant:
    grant_type: ClassVar[str] = "password"
    allows_public_clients: ClassVar[bool] = True

    async def exchange(
        self, services: Services, request: TokenRequest, client: ClientInfo
    ) -> TokenResponse:
        form = request.form
        username = require(form, "username")
        password = require(form, "password")
        requested = parse_scope(form.get("scope"))
        throttles = services.throttles
        waits = [await throttles.login_account.retry_after(username),
                 await throttles.login_address.retry_after(request.client_address)]
        if any(waits):
            raise SlowDown(max(w for w in waits if w))
        if len(password) > MAX_PASSWORD_LENGTH:
            # Longer than any password we accept: refuse before hashing (DoS guard).
            await self._failed(services, request, username)

        async with services.single.connect() as conn:
            user = await find_login_candidate(conn, username)
        valid, new_hash = await services.hasher.verify(
            password, user.password_hash if user else None)
        if user is None or not valid or not user.is_active:
            await self._failed(services, request, username)
        await throttles.login_account.clear(username)
        if services.settings.require_verified_email and not user.is_verified:
            # Said only to someone who proved the password: it reveals nothing new.
            raise InvalidGrant("The email address has not been verified yet.")

        scope = resolve_scope(requested, client.scopes, may_admin=user.is_admin)
        now = services.clock.now()
        settings = services.settings
        refresh_token = None
        async with services.engine.begin() as conn:
            if new_hash is not None:
                await update_password_hash(conn, user.id, new_hash, now=now)
            # Every sign-in is a session, refresh token or not: it is the `sid` that lets
            # a revocation reach the access token. The epoch was read with the password.
            session = await start_session(
                conn, user_id=user.id, client_id=client.client_id, scope=scope,
                session_epoch=user.session_epoch, amr=PASSWORD_AMR, now=now,
                absolute_ttl=settings.refresh_token_absolute_ttl,
            )
            if "refresh_token" in client.grant_types:
                refresh_token = await issue_refresh_token(
                    conn, session=session, now=now, idle_ttl=settings.refresh_token_ttl
                )
        return token_response(services, sub=str(user.id), client_id=client.client_id,
                              scope=scope, session=session, refresh_token=refresh_token)

    async def _failed(self, services: Services, request: TokenRequest,
                      username: str) -> NoReturn:
        LOGIN_FAILURES.inc()
        await services.throttles.login_account.hit(username)
        await services.throttles.login_address.hit(request.client_address)
        raise InvalidGrant(BAD_CREDENTIALS)
