"""console: how long each kept overview took to compute

``console_report.took_ms`` lets the overview of a subtree with nothing kept for a month decide
whether to keep its viewer waiting for the computation (a quick one) or to answer at once and
compute after the page (a city's month takes seconds).

Revision ID: 0022
Revises: 0021
Create Date: 2026-11-29 13:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("console_report") as batch:
        batch.add_column(sa.Column("took_ms", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("console_report") as batch:
        batch.drop_column("took_ms")
