"""Authorization codes (RFC 6749 §4.1.2, §10.5; OAuth 2.1 §4.1.3): issue and redeem.

A code is 256 random bits, stored only as its SHA-256 digest, lives at most 60 seconds
and is bound to the client, the redirect URI, the PKCE challenge, the scope, the nonce,
the user and the login it proves (``auth_time``, ``amr``, the user's session epoch).

Redemption is one conditional ``UPDATE ... RETURNING`` that requires every binding at
once (unused, unexpired, this client, this redirect URI, the challenge of this verifier,
the user still active in the same epoch, the client active and not reactivated since
the code was issued) and records the session it starts, in the
transaction that starts it: of N parallel redemptions exactly one wins. A presentation
that does not match (another client, a wrong verifier) leaves the code alone; a code
presented again after its one use revokes the session that use started (§4.1.2).
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Table, exists, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from provider.tokens.models import AuthorizationCode
from provider.tokens.revocation import client_still_trusts
from provider.users.models import User

codes = cast(Table, AuthorizationCode.__table__)
users = cast(Table, User.__table__)

CODE_BYTES = 32
MAX_CODE_LENGTH = 256
# RFC 6749 §4.1.2 recommends at most 10 minutes; OAuth 2.1 asks for short-lived codes.
CODE_TTL = timedelta(seconds=60)


def _digest(code: str) -> bytes:
    return hashlib.sha256(code.encode("utf-8")).digest()


@dataclass(frozen=True)
class CodeGrant:
    """What an authorization code stands for."""

    client_id: str
    user_id: uuid.UUID
    redirect_uri: str
    redirect_uri_sent: bool
    code_challenge: str
    scope: str
    nonce: str | None
    auth_time: datetime
    amr: tuple[str, ...]
    session_epoch: int


async def issue_code(conn: AsyncConnection, grant: CodeGrant, *, now: datetime) -> str:
    code = secrets.token_urlsafe(CODE_BYTES)
    await conn.execute(insert(codes).values(
        id=uuid.uuid4(), code_hash=_digest(code), client_id=grant.client_id,
        user_id=grant.user_id, redirect_uri=grant.redirect_uri,
        redirect_uri_sent=grant.redirect_uri_sent, code_challenge=grant.code_challenge,
        scope=grant.scope, nonce=grant.nonce, auth_time=grant.auth_time,
        amr=list(grant.amr), session_epoch=grant.session_epoch, created_at=now,
        expires_at=now + CODE_TTL, used_at=None, session_id=None,
    ))
    return code


@dataclass(frozen=True)
class Redeemed:
    """A code's one use: what it grants, and whether its user is an admin now."""

    grant: CodeGrant
    user_is_admin: bool


async def redeem_code(
    conn: AsyncConnection, *, code: str, client_id: str, redirect_uri: str | None,
    code_challenge: str, session_id: uuid.UUID, now: datetime,
) -> Redeemed | None:
    """Use the code up if every binding holds, recording ``session_id`` as what it
    started; None (nothing written) otherwise. ``code_challenge`` is S256 of the
    verifier presented; ``redirect_uri`` the one presented, if any: it must equal the
    authorization request's, and is required when that request named one."""
    if not code or len(code) > MAX_CODE_LENGTH:
        return None
    redirect_matches = (
        codes.c.redirect_uri == redirect_uri if redirect_uri is not None
        else codes.c.redirect_uri_sent.is_(False))
    user_unchanged = exists().where(
        users.c.id == codes.c.user_id, users.c.is_active.is_(True),
        users.c.session_epoch == codes.c.session_epoch)
    # A code that another process's stale client cache issued while the client was
    # deactivated must not start a session once it is active again.
    client_trusts = exists().where(*client_still_trusts(codes))
    row = (await conn.execute(
        update(codes)
        .where(codes.c.code_hash == _digest(code), codes.c.used_at.is_(None),
               codes.c.expires_at > now, codes.c.client_id == client_id,
               codes.c.code_challenge == code_challenge, redirect_matches, user_unchanged,
               client_trusts)
        .values(used_at=now, session_id=session_id)
        .returning(codes.c.client_id, codes.c.user_id, codes.c.redirect_uri,
                   codes.c.redirect_uri_sent, codes.c.code_challenge, codes.c.scope,
                   codes.c.nonce, codes.c.auth_time, codes.c.amr, codes.c.session_epoch)
    )).first()
    if row is None:
        return None
    is_admin = bool((await conn.execute(
        select(users.c.is_admin).where(users.c.id == row.user_id))).scalar())
    grant = CodeGrant(
        client_id=row.client_id, user_id=row.user_id, redirect_uri=row.redirect_uri,
        redirect_uri_sent=row.redirect_uri_sent, code_challenge=row.code_challenge,
        scope=row.scope, nonce=row.nonce, auth_time=row.auth_time,
        amr=tuple(row.amr or ()), session_epoch=row.session_epoch)
    return Redeemed(grant, is_admin)


@dataclass(frozen=True)
class UsedCode:
    """A code presented after its one use: the session that use started, and its user."""

    session_id: uuid.UUID | None
    user_id: uuid.UUID


async def find_used(conn: AsyncConnection, code: str) -> UsedCode | None:
    """The code's use, when the code exists and was used (by any client)."""
    if not code or len(code) > MAX_CODE_LENGTH:
        return None
    row = (await conn.execute(
        select(codes.c.session_id, codes.c.user_id)
        .where(codes.c.code_hash == _digest(code), codes.c.used_at.is_not(None))
    )).first()
    return UsedCode(row.session_id, row.user_id) if row is not None else None

