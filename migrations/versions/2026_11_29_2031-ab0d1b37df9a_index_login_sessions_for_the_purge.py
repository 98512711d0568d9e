"""index login_sessions.expires_at and revoked_at for the purge

`provider purge` finds dead sessions by these two columns in batches; without them each
batch would scan the table.

Revision ID: ab0d1b37df9a
Revises: 52e3fb5aa1a7
Create Date: 2026-11-29 20:31:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'ab0d1b37df9a'
down_revision: str | None = '52e3fb5aa1a7'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('login_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_login_sessions_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_login_sessions_revoked_at'), ['revoked_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('login_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_login_sessions_revoked_at'))
        batch_op.drop_index(batch_op.f('ix_login_sessions_expires_at'))

