"""users.is_registration_pending

A self-registration whose address nobody has verified yet: a later registration of the
address replaces its password, username and profile, so that a stranger who registered
someone's address first does not get the account when its owner verifies the address
(pre-account hijacking). Existing accounts are not pending: nothing changes for them.

Revision ID: d2f7b8c3e1a6
Revises: c4e8a1f6d2b9
Create Date: 2026-12-01 17:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'd2f7b8c3e1a6'
down_revision: str | None = 'c4e8a1f6d2b9'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('is_registration_pending', sa.Boolean(),
                                      server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('is_registration_pending')
