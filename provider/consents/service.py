"""Consents: what a user agreed to share with a third-party client, and withdrawing it.

A consent covers a request when every requested scope was granted before; a wider
request asks again and adds the new scopes (one insert per scope, so parallel consents
lose nothing). Withdrawing deletes the client's consents, uses up the codes it was
issued and has not redeemed yet, and ends the user's sessions with that client: its
refresh tokens (and access tokens, at our endpoints) stop working.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import Table, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from provider.clients.models import Client
from provider.consents.models import Consent
from provider.tokens.models import AuthorizationCode, LoginSession

consents = cast(Table, Consent.__table__)
clients = cast(Table, Client.__table__)
ls = cast(Table, LoginSession.__table__)
codes = cast(Table, AuthorizationCode.__table__)


async def granted_scopes(conn: AsyncConnection, user_id: uuid.UUID, client_id: str
                         ) -> set[str]:
    rows = await conn.execute(select(consents.c.scope).where(
        consents.c.user_id == user_id, consents.c.client_id == client_id))
    return {row.scope for row in rows}


async def grant(conn: AsyncConnection, *, user_id: uuid.UUID, client_id: str,
                scopes: Iterable[str], now: datetime) -> None:
    rows = [{"user_id": user_id, "client_id": client_id, "scope": scope, "granted_at": now}
            for scope in dict.fromkeys(scopes)]
    if not rows:
        return
    dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    await conn.execute(dialect_insert(consents).on_conflict_do_nothing(), rows)


@dataclass(frozen=True)
class ClientConsent:
    client_id: str
    client_name: str
    scopes: list[str]
    granted_at: datetime


async def list_consents(conn: AsyncConnection, user_id: uuid.UUID) -> list[ClientConsent]:
    rows = (await conn.execute(
        select(consents.c.client_id, clients.c.name, consents.c.scope, consents.c.granted_at)
        .join_from(consents, clients, clients.c.client_id == consents.c.client_id)
        .where(consents.c.user_id == user_id)
        .order_by(consents.c.client_id, consents.c.scope)
    )).all()
    found: dict[str, ClientConsent] = {}
    for row in rows:
        entry = found.get(row.client_id)
        if entry is None:
            entry = found[row.client_id] = ClientConsent(row.client_id, row.name, [],
                                                         row.granted_at)
        entry.scopes.append(row.scope)
        if row.granted_at > entry.granted_at:
            found[row.client_id] = ClientConsent(entry.client_id, entry.client_name,
                                                 entry.scopes, row.granted_at)
    return list(found.values())


async def withdraw(conn: AsyncConnection, *, user_id: uuid.UUID, client_id: str,
                   now: datetime) -> bool:
    """Delete the consent, use up the client's unredeemed codes of the user and end the
    user's sessions with the client; whether there was anything to withdraw (a consent,
    a code or a live session)."""
    # The codes first: a redemption in flight holds its code's row, so this waits for it
    # to commit, and the sessions' update below (a statement of its own, which sees that
    # commit) ends the session it started. A redemption that comes later finds its code
    # used (invalid_grant).
    unredeemed = (await conn.execute(
        update(codes)
        .where(codes.c.user_id == user_id, codes.c.client_id == client_id,
               codes.c.used_at.is_(None), codes.c.expires_at > now)
        .values(used_at=now)
        .returning(codes.c.id)
    )).all()
    removed = (await conn.execute(
        delete(consents)
        .where(consents.c.user_id == user_id, consents.c.client_id == client_id)
        .returning(consents.c.scope)
    )).all()
    ended = (await conn.execute(
        update(ls)
        .where(ls.c.user_id == user_id, ls.c.client_id == client_id,
               ls.c.revoked_at.is_(None))
        .values(revoked_at=now)
        .returning(ls.c.id)
    )).all()
    return bool(removed) or bool(unredeemed) or bool(ended)

