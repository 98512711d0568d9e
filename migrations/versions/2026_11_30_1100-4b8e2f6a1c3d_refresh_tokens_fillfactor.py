"""refresh_tokens: fillfactor 90 on PostgreSQL, so a rotation's UPDATE stays on its page

A rotation sets rotated_at on the token it consumes. With room left on the page, that
UPDATE is a heap-only tuple (HOT) update: no new entry in any of the table's four
indexes. On full pages (the default fillfactor of 100) most of them were not, and each
cost four index insertions on random leaves. Applies to pages written from now on;
existing pages keep their rows where they are. SQLite has no such setting.

Revision ID: 4b8e2f6a1c3d
Revises: d7e4b1a9c2f0
Create Date: 2026-11-30 11:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = '4b8e2f6a1c3d'
down_revision: str | None = 'd7e4b1a9c2f0'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE refresh_tokens SET (fillfactor = 90)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE refresh_tokens RESET (fillfactor)")
