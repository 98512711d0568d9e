"""mfa: totp_authenticators, recovery_codes, mfa_tokens (issue 8)

One TOTP authenticator per user (the secret Fernet-encrypted, pending until confirmed,
with the replay guard's last used step), its single-use recovery codes as HMAC digests,
and the mfa_tokens of the password grant's mfa_required answer (digest, user, client,
scope, epoch, expiry, attempts, use). New tables only: existing rows are untouched, and
the downgrade drops them (every user's second factor with them).

Revision ID: 55588a072e1c
Revises: ab0d1b37df9a
Create Date: 2026-11-29 23:17:44
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import provider.db

revision: str = '55588a072e1c'
down_revision: str | None = 'ab0d1b37df9a'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('mfa_tokens',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('token_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('client_id', sa.String(length=64), nullable=False),
    sa.Column('scope', sa.Text(), nullable=False),
    sa.Column('session_epoch', sa.Integer(), nullable=False),
    sa.Column('created_at', provider.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', provider.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('used_at', provider.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['client_id'], ['clients.client_id'], name=op.f('fk_mfa_tokens_client_id_clients'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_mfa_tokens_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_mfa_tokens')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_mfa_tokens_token_hash'))
    )
    with op.batch_alter_table('mfa_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_mfa_tokens_client_id'), ['client_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_mfa_tokens_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_mfa_tokens_user_id'), ['user_id'], unique=False)

    op.create_table('recovery_codes',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('code_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('created_at', provider.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('used_at', provider.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_recovery_codes_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_recovery_codes'))
    )
    with op.batch_alter_table('recovery_codes', schema=None) as batch_op:
        batch_op.create_index('ix_recovery_codes_user_id_code_hash', ['user_id', 'code_hash'], unique=True)

    op.create_table('totp_authenticators',
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('secret_encrypted', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', provider.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('confirmed_at', provider.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_used_step', sa.BigInteger(), server_default='0', nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_totp_authenticators_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('user_id', name=op.f('pk_totp_authenticators'))
    )


def downgrade() -> None:
    op.drop_table('totp_authenticators')
    with op.batch_alter_table('recovery_codes', schema=None) as batch_op:
        batch_op.drop_index('ix_recovery_codes_user_id_code_hash')

    op.drop_table('recovery_codes')
    with op.batch_alter_table('mfa_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_mfa_tokens_user_id'))
        batch_op.drop_index(batch_op.f('ix_mfa_tokens_expires_at'))
        batch_op.drop_index(batch_op.f('ix_mfa_tokens_client_id'))

    op.drop_table('mfa_tokens')
