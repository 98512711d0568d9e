"""signing keys in the database (issue 9): signing_keys, signing_key_state

For PROVIDER_KEY_STORE=database: one row per signing key (kid, algorithm, state, the
private key encrypted under a key derived from the server secret), and a one-row version
counter that every change moves on, polled by each server process once a second. New
tables only; the downgrade drops them (keys kept in the database go with them: export
them first with `provider keys export DIR`).

Revision ID: d7e4b1a9c2f0
Revises: fa58341a5b9d
Create Date: 2026-11-30 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import provider.db

revision: str = 'd7e4b1a9c2f0'
down_revision: str | None = 'fa58341a5b9d'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('signing_keys',
    sa.Column('kid', sa.String(length=64), nullable=False),
    sa.Column('alg', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', provider.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('activated_at', provider.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('deactivated_at', provider.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('private_key_encrypted', sa.LargeBinary(), nullable=True),
    sa.PrimaryKeyConstraint('kid', name=op.f('pk_signing_keys'))
    )
    state = op.create_table('signing_key_state',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('version', sa.BigInteger(), nullable=False),
    sa.CheckConstraint('id = 1', name=op.f('ck_signing_key_state_single_row')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_signing_key_state'))
    )
    op.bulk_insert(state, [{'id': 1, 'version': 0}])


def downgrade() -> None:
    op.drop_table('signing_key_state')
    op.drop_table('signing_keys')
