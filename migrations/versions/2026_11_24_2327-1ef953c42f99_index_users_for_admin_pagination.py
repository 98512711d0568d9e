"""index users for admin pagination

Revision ID: 1ef953c42f99
Revises: 79bbd5c3dec1
Create Date: 2026-11-24 23:27:04.526918
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import provider.db


revision: str = '1ef953c42f99'
down_revision: str | None = '79bbd5c3dec1'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.create_index('ix_users_created_at_id', ['created_at', 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_index('ix_users_created_at_id')

