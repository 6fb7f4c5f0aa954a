"""security: a callback's body digest (WeChat replay guard); pushes never bound to a group

Revision ID: 0013
Revises: 0010
Create Date: 2026-11-29 02:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("wechat_callback", schema=None) as batch_op:
        batch_op.add_column(sa.Column("body_digest", sa.String(length=64), nullable=True))
    # A person's Telegram chat was once moved to whatever chat they last wrote in, a group
    # included: their pushes (offers, a resident's phone) went there. A private chat's id is
    # the user's id.
    op.execute(
        "UPDATE identity SET chat_id = external_id "
        "WHERE channel = 'telegram' AND chat_id LIKE '-%'"
    )


def downgrade() -> None:
    with op.batch_alter_table("wechat_callback", schema=None) as batch_op:
        batch_op.drop_column("body_digest")
