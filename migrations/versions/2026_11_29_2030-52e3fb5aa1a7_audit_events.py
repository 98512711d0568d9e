"""audit_events: the audit trail (provider.audit)

No foreign keys: an event outlives the user or client it names. Indexes serve the admin
list (newest first, by user, by type) and the retention purge (occurred_at).

Revision ID: 52e3fb5aa1a7
Revises: 5a1c0de5e551
Create Date: 2026-11-29 20:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import provider.db

revision: str = '52e3fb5aa1a7'
down_revision: str | None = '5a1c0de5e551'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('audit_events',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('occurred_at', provider.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('actor', sa.String(length=64), nullable=False),
    sa.Column('subject_user_id', sa.Uuid(), nullable=True),
    sa.Column('client_id', sa.String(length=64), nullable=True),
    sa.Column('address', sa.String(length=64), nullable=True),
    sa.Column('user_agent', sa.String(length=256), nullable=True),
    sa.Column('details', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_events'))
    )
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.create_index('ix_audit_events_occurred_at_id', ['occurred_at', 'id'], unique=False)
        batch_op.create_index('ix_audit_events_subject_user_id_occurred_at', ['subject_user_id', 'occurred_at'], unique=False)
        batch_op.create_index('ix_audit_events_type_occurred_at', ['type', 'occurred_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_events_type_occurred_at')
        batch_op.drop_index('ix_audit_events_subject_user_id_occurred_at')
        batch_op.drop_index('ix_audit_events_occurred_at_id')

    op.drop_table('audit_events')
