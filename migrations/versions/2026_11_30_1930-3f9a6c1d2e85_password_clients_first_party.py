"""clients allowed the password grant are first-party

The password grant is for first-party clients only (RFC 9700 §2.4): from this revision a
client needs is_first_party to be allowed it (registration refuses it otherwise) and to
use it (the token endpoint answers unauthorized_client). A client that was allowed it
before was trusted with users' passwords, so it is marked first-party and keeps working;
the consequence is that the login page asks it no consent, as for every first-party
client. The downgrade leaves the flag as it is.

Revision ID: 3f9a6c1d2e85
Revises: 8c2d5e7f3a41
Create Date: 2026-11-30 19:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '3f9a6c1d2e85'
down_revision: str | None = '8c2d5e7f3a41'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    bind = op.get_bind()
    clients = sa.table("clients", sa.column("client_id", sa.String),
                       sa.column("grant_types", sa.JSON), sa.column("is_first_party", sa.Boolean))
    password_clients = [
        client_id for client_id, grant_types in bind.execute(
            sa.select(clients.c.client_id, clients.c.grant_types)
            .where(clients.c.is_first_party.is_(False)))
        if "password" in (grant_types or [])]
    if password_clients:
        bind.execute(clients.update().where(clients.c.client_id.in_(password_clients))
                     .values(is_first_party=True))


def downgrade() -> None:
    pass
