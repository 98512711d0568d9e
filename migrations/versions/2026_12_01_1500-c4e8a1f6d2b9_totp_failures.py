"""totp_authenticators.failures

Wrong second-factor codes in a row at sign-in (NIST SP 800-63B §3.2.2): at
PROVIDER_MFA_LOCKOUT_FAILURES (100) the second factor takes no code until an
administrator resets it. Existing authenticators start at 0.

Revision ID: c4e8a1f6d2b9
Revises: b7d3e9a2c4f1
Create Date: 2026-12-01 15:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'c4e8a1f6d2b9'
down_revision: str | None = 'b7d3e9a2c4f1'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('totp_authenticators', schema=None) as batch_op:
        batch_op.add_column(sa.Column('failures', sa.Integer(), server_default='0',
                                      nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('totp_authenticators', schema=None) as batch_op:
        batch_op.drop_column('failures')
