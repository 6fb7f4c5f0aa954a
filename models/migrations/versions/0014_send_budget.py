"""send budget: one set of platform limits shared by every instance (PostgreSQL)

Revision ID: 0014
Revises: 0011
Create Date: 2026-11-29 03:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.base

revision: str = "0014"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "send_budget",
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("paused_until", models.base.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("channel", name=op.f("pk_send_budget")),
    )
    op.create_table(
        "send_slot",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("chat_id", sa.String(length=128), nullable=False),
        sa.Column("started_at", models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("done_at", models.base.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_send_slot")),
    )
    op.create_index("ix_send_slot_done", "send_slot", ["channel", "done_at"])
    op.create_index("ix_send_slot_chat", "send_slot", ["channel", "chat_id", "started_at"])
    op.create_index("ix_send_slot_started", "send_slot", ["channel", "started_at"])
    op.create_index("ix_outbox_chat", "outbox", ["channel", "chat_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_outbox_chat", table_name="outbox")
    op.drop_table("send_slot")
    op.drop_table("send_budget")
