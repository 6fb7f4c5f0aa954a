"""wechat: uploaded media ids, callbacks seen (replay guard)

Revision ID: 0006
Revises: 0004
Create Date: 2026-11-23 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.base

revision: str = "0006"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "wechat_callback",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("expires_at", models.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_wechat_callback")),
    )
    with op.batch_alter_table("wechat_callback", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_wechat_callback_expires_at"), ["expires_at"], unique=False
        )

    op.create_table(
        "wechat_media",
        sa.Column("ref", sa.String(length=64), nullable=False),
        sa.Column("media_id", sa.String(length=128), nullable=False),
        sa.Column("expires_at", models.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("ref", name=op.f("pk_wechat_media")),
    )


def downgrade() -> None:
    op.drop_table("wechat_media")
    with op.batch_alter_table("wechat_callback", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_wechat_callback_expires_at"))
    op.drop_table("wechat_callback")
