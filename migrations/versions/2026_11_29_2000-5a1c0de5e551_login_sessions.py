"""login_sessions: one row per sign-in (the refresh family), users.session_epoch,
clients.reactivated_at

Revocation moves from refresh-token rows to the session row that rotation reads, so a
revocation always wins over a rotation in flight. Existing families become sessions
(their root token gives scope and times; a family with any revoked token is revoked).
Access tokens without `sid` (issued to clients without the refresh grant before this
revision) are no longer accepted: their users sign in again.

Revision ID: 5a1c0de5e551
Revises: eac89a9247d2
Create Date: 2026-11-29 20:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import provider.db
from provider.db import NAMING_CONVENTION

revision: str = '5a1c0de5e551'
down_revision: str | None = 'eac89a9247d2'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json_literal(value: str) -> str:
    # PostgreSQL needs the cast; SQLite stores JSON as text (a CAST would make it 0).
    return f"CAST('{value}' AS JSON)" if op.get_bind().dialect.name == "postgresql" else f"'{value}'"


def upgrade() -> None:
    op.create_table('login_sessions',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('client_id', sa.String(length=64), nullable=False),
    sa.Column('scope', sa.Text(), nullable=False),
    sa.Column('amr', sa.JSON(), nullable=False),
    sa.Column('auth_time', provider.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('created_at', provider.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', provider.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('session_epoch', sa.Integer(), nullable=False),
    sa.Column('revoked_at', provider.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['client_id'], ['clients.client_id'], name=op.f('fk_login_sessions_client_id_clients'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_login_sessions_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_login_sessions'))
    )
    with op.batch_alter_table('login_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_login_sessions_client_id'), ['client_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_login_sessions_user_id'), ['user_id'], unique=False)

    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('session_epoch', sa.Integer(), server_default='0', nullable=False))
    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reactivated_at', provider.db.UTCDateTime(timezone=True), nullable=True))

    # Every family has exactly one root token (the sign-in's).
    op.execute(f"""
        INSERT INTO login_sessions (id, user_id, client_id, scope, amr, auth_time, created_at,
                                    expires_at, session_epoch, revoked_at)
        SELECT r.family_id, r.user_id, r.client_id, r.scope, {_json_literal('["pwd"]')},
               r.auth_time, r.issued_at, r.family_expires_at, 0,
               (SELECT MAX(o.revoked_at) FROM refresh_tokens o WHERE o.family_id = r.family_id)
        FROM refresh_tokens r WHERE r.parent_id IS NULL
    """)
    op.execute("DELETE FROM refresh_tokens WHERE family_id NOT IN (SELECT id FROM login_sessions)")

    with op.batch_alter_table('refresh_tokens', schema=None,
                              naming_convention=NAMING_CONVENTION) as batch_op:
        batch_op.drop_constraint('fk_refresh_tokens_client_id_clients', type_='foreignkey')
        batch_op.drop_constraint('fk_refresh_tokens_user_id_users', type_='foreignkey')
        batch_op.drop_index('ix_refresh_tokens_family_id')
        batch_op.drop_index('ix_refresh_tokens_user_id')
        batch_op.alter_column('family_id', new_column_name='session_id')
        batch_op.drop_column('client_id')
        batch_op.drop_column('user_id')
        batch_op.drop_column('scope')
        batch_op.drop_column('family_expires_at')
        batch_op.drop_column('auth_time')
        batch_op.drop_column('revoked_at')
    with op.batch_alter_table('refresh_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_refresh_tokens_session_id'), ['session_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_refresh_tokens_session_id_login_sessions'), 'login_sessions', ['session_id'], ['id'], ondelete='CASCADE')

    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('sessions_revoked_at')


def downgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sessions_revoked_at', provider.db.UTCDateTime(timezone=True), nullable=True))

    with op.batch_alter_table('refresh_tokens', schema=None,
                              naming_convention=NAMING_CONVENTION) as batch_op:
        batch_op.drop_constraint('fk_refresh_tokens_session_id_login_sessions', type_='foreignkey')
        batch_op.drop_index('ix_refresh_tokens_session_id')
        batch_op.alter_column('session_id', new_column_name='family_id')
        batch_op.add_column(sa.Column('client_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('user_id', sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column('scope', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('family_expires_at', provider.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('auth_time', provider.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('revoked_at', provider.db.UTCDateTime(timezone=True), nullable=True))
    for column, source in (("client_id", "client_id"), ("user_id", "user_id"), ("scope", "scope"),
                           ("family_expires_at", "expires_at"), ("auth_time", "auth_time"),
                           ("revoked_at", "revoked_at")):
        op.execute(f"UPDATE refresh_tokens SET {column} = (SELECT s.{source} FROM login_sessions s "
                   f"WHERE s.id = refresh_tokens.family_id)")
    with op.batch_alter_table('refresh_tokens', schema=None) as batch_op:
        for column in ("client_id", "user_id", "scope", "family_expires_at", "auth_time"):
            batch_op.alter_column(column, nullable=False)
        batch_op.create_index(batch_op.f('ix_refresh_tokens_family_id'), ['family_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_refresh_tokens_user_id'), ['user_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_refresh_tokens_client_id_clients'), 'clients', ['client_id'], ['client_id'], ondelete='CASCADE')
        batch_op.create_foreign_key(batch_op.f('fk_refresh_tokens_user_id_users'), 'users', ['user_id'], ['id'], ondelete='CASCADE')

    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('session_epoch')
    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.drop_column('reactivated_at')

    with op.batch_alter_table('login_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_login_sessions_user_id'))
        batch_op.drop_index(batch_op.f('ix_login_sessions_client_id'))
    op.drop_table('login_sessions')
