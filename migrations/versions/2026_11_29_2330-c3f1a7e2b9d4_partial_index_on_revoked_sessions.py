"""index only revoked login sessions by revoked_at

The purge looks for sessions revoked before a cutoff. A full index on revoked_at also
matches `revoked_at IS NULL`, the refresh rotation's test for a live session; with stale
statistics (a table that grew since its last ANALYZE) PostgreSQL chose it and scanned
every live session on each refresh. A partial index over revoked sessions serves the
purge and cannot serve that test.

Revision ID: c3f1a7e2b9d4
Revises: 55588a072e1c
Create Date: 2026-11-29 23:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'c3f1a7e2b9d4'
down_revision: str | None = '55588a072e1c'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REVOKED = sa.text("revoked_at IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table('login_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_login_sessions_revoked_at'))
        batch_op.create_index(batch_op.f('ix_login_sessions_revoked_at'), ['revoked_at'],
                              unique=False, postgresql_where=REVOKED, sqlite_where=REVOKED)


def downgrade() -> None:
    with op.batch_alter_table('login_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_login_sessions_revoked_at'))
        batch_op.create_index(batch_op.f('ix_login_sessions_revoked_at'), ['revoked_at'],
                              unique=False)
