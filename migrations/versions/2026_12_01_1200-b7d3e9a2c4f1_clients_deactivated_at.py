"""clients.deactivated_at

When a client was last deactivated. Its own access tokens (client_credentials) carry a
whole-second `iat`; one issued in the second of a deactivation may be older than it, and
stays dead even when the client is reactivated within that same second. Existing rows get
NULL, as if never deactivated: a reactivation from now on cannot fall in the second of a
deactivation made before this revision.

Revision ID: b7d3e9a2c4f1
Revises: 3f9a6c1d2e85
Create Date: 2026-12-01 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import provider.db

revision: str = 'b7d3e9a2c4f1'
down_revision: str | None = '3f9a6c1d2e85'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.add_column(sa.Column('deactivated_at', provider.db.UTCDateTime(timezone=True),
                                      nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.drop_column('deactivated_at')
