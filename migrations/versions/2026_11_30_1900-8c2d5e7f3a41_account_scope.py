"""the `account` scope: the account API (/users/me...) needs it from now on

Until now any access token of a user could use the account API, whatever its scope and
whichever client it was issued to. From this revision the API answers 403
insufficient_scope to a token without `account`. So that first-party apps keep working
through the upgrade, every client trusted as first-party (allowed the password grant, or
marked is_first_party) is allowed `account`, and its live sessions (not revoked, not
expired) get it too, so their next refresh carries it. Third-party clients get nothing:
an admin may allow them `account` by name. The downgrade leaves the rows as they are
(the previous code ignores the scope).

Revision ID: 8c2d5e7f3a41
Revises: 4b8e2f6a1c3d
Create Date: 2026-11-30 19:00:00
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

import provider.db

revision: str = '8c2d5e7f3a41'
down_revision: str | None = '4b8e2f6a1c3d'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACCOUNT = "account"


def upgrade() -> None:
    bind = op.get_bind()
    clients = sa.table("clients", sa.column("client_id", sa.String), sa.column("scopes", sa.JSON),
                       sa.column("grant_types", sa.JSON), sa.column("is_first_party", sa.Boolean))
    sessions = sa.table("login_sessions", sa.column("client_id", sa.String),
                        sa.column("scope", sa.Text), sa.column("revoked_at", provider.db.UTCDateTime()),
                        sa.column("expires_at", provider.db.UTCDateTime()))
    first_party = []
    for client_id, scopes, grant_types, is_first_party in bind.execute(
            sa.select(clients.c.client_id, clients.c.scopes, clients.c.grant_types,
                      clients.c.is_first_party)):
        if not (is_first_party or "password" in (grant_types or [])):
            continue
        first_party.append(client_id)
        if ACCOUNT not in (scopes or []):
            bind.execute(clients.update().where(clients.c.client_id == client_id)
                         .values(scopes=[*(scopes or []), ACCOUNT]))
    if not first_party:
        return
    now = datetime.now(UTC)
    live = sa.and_(sessions.c.client_id.in_(first_party), sessions.c.revoked_at.is_(None),
                   sessions.c.expires_at > now)
    # Space-separated: append to what is there ('' stays without a leading space).
    bind.execute(sessions.update().where(live, sessions.c.scope == "").values(scope=ACCOUNT))
    bind.execute(sessions.update().where(
        live, sessions.c.scope != "",
        sa.not_((" " + sessions.c.scope + " ").contains(f" {ACCOUNT} ")))
        .values(scope=sessions.c.scope + f" {ACCOUNT}"))


def downgrade() -> None:
    pass
