"""console: overview reports kept for every instance (computed in the background)

``console_report`` keeps, per grid and month, the overview's figures (JSON) and when they were
computed, so that no console viewer waits for a report, a second instance and a restart
included; ``viewed_at`` says which overviews people open (recomputed first).

Revision ID: 0021
Revises: 0020
Create Date: 2026-11-29 09:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.base

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "console_report",
        sa.Column("grid_id", sa.Integer(), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("computed_at", models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("viewed_at", models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("report", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["grid_id"], ["grid.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("grid_id", "period"),
    )
    op.create_index("ix_console_report_viewed_at", "console_report", ["viewed_at"])


def downgrade() -> None:
    op.drop_index("ix_console_report_viewed_at", table_name="console_report")
    op.drop_table("console_report")
