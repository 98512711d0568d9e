"""authorization code flow: client redirect URIs, codes, browser sessions, consents (issue 10)

Clients get redirect_uris, post_logout_redirect_uris (empty lists) and is_first_party
(false): existing clients keep working as before and cannot use the code flow until an
admin registers a redirect URI. New tables: authorization_codes (digests, single use),
browser_sessions (the login page's cookie, digests) and consents (one row per user,
client and scope). The downgrade drops the tables and the columns.

Revision ID: fa58341a5b9d
Revises: c3f1a7e2b9d4
Create Date: 2026-11-29 23:52:30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import provider.db

revision: str = 'fa58341a5b9d'
down_revision: str | None = 'c3f1a7e2b9d4'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('authorization_codes',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('code_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('client_id', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('redirect_uri', sa.Text(), nullable=False),
    sa.Column('redirect_uri_sent', sa.Boolean(), nullable=False),
    sa.Column('code_challenge', sa.String(length=64), nullable=False),
    sa.Column('scope', sa.Text(), nullable=False),
    sa.Column('nonce', sa.Text(), nullable=True),
    sa.Column('auth_time', provider.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('amr', sa.JSON(), nullable=False),
    sa.Column('session_epoch', sa.Integer(), nullable=False),
    sa.Column('created_at', provider.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', provider.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('used_at', provider.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('session_id', sa.Uuid(), nullable=True),
    sa.ForeignKeyConstraint(['client_id'], ['clients.client_id'], name=op.f('fk_authorization_codes_client_id_clients'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_authorization_codes_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_authorization_codes')),
    sa.UniqueConstraint('code_hash', name=op.f('uq_authorization_codes_code_hash'))
    )
    with op.batch_alter_table('authorization_codes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_authorization_codes_client_id'), ['client_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_authorization_codes_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_authorization_codes_user_id'), ['user_id'], unique=False)

    op.create_table('browser_sessions',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('token_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('session_epoch', sa.Integer(), nullable=False),
    sa.Column('auth_time', provider.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('amr', sa.JSON(), nullable=False),
    sa.Column('created_at', provider.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', provider.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('ended_at', provider.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_browser_sessions_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_browser_sessions')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_browser_sessions_token_hash'))
    )
    with op.batch_alter_table('browser_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_browser_sessions_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_browser_sessions_user_id'), ['user_id'], unique=False)

    op.create_table('consents',
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('client_id', sa.String(length=64), nullable=False),
    sa.Column('scope', sa.String(length=64), nullable=False),
    sa.Column('granted_at', provider.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['client_id'], ['clients.client_id'], name=op.f('fk_consents_client_id_clients'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_consents_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('user_id', 'client_id', 'scope', name=op.f('pk_consents'))
    )
    with op.batch_alter_table('consents', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_consents_client_id'), ['client_id'], unique=False)

    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.add_column(sa.Column('redirect_uris', sa.JSON(), server_default='[]', nullable=False))
        batch_op.add_column(sa.Column('post_logout_redirect_uris', sa.JSON(), server_default='[]', nullable=False))
        batch_op.add_column(sa.Column('is_first_party', sa.Boolean(), server_default=sa.false(), nullable=False))



def downgrade() -> None:
    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.drop_column('is_first_party')
        batch_op.drop_column('post_logout_redirect_uris')
        batch_op.drop_column('redirect_uris')

    with op.batch_alter_table('consents', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_consents_client_id'))

    op.drop_table('consents')
    with op.batch_alter_table('browser_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_browser_sessions_user_id'))
        batch_op.drop_index(batch_op.f('ix_browser_sessions_expires_at'))

    op.drop_table('browser_sessions')
    with op.batch_alter_table('authorization_codes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_authorization_codes_user_id'))
        batch_op.drop_index(batch_op.f('ix_authorization_codes_expires_at'))
        batch_op.drop_index(batch_op.f('ix_authorization_codes_client_id'))

    op.drop_table('authorization_codes')
