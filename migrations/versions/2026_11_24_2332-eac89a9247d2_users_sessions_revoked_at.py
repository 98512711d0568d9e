"""users.sessions_revoked_at

Revision ID: eac89a9247d2
Revises: 1ef953c42f99
Create Date: 2026-11-24 23:32:32.650650
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import provider.db


revision: str = 'eac89a9247d2'
down_revision: str | None = '1ef953c42f99'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sessions_revoked_at', provider.db.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('sessions_revoked_at')

