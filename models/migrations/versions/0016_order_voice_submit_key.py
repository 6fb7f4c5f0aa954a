"""orders: the resident's voice message, and the key of the confirmation that submitted it

``voice`` keeps a voice message (a media-store reference) with the order, for its handler.
``submit_key`` names the confirmation message a resident pressed 提交 on; unique per resident,
so that pressing it again (or a race of two presses) never makes a second order, and the second
press can be told the first's number.

Revision ID: 0016
Revises: 0019
Create Date: 2026-11-29 06:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("orders", sa.Column("voice", sa.String(length=300), nullable=True))
    op.add_column("orders", sa.Column("submit_key", sa.String(length=32), nullable=True))
    op.create_index(
        "uq_orders_resident_submit_key", "orders", ["resident_id", "submit_key"], unique=True
    )


def downgrade() -> None:
    op.drop_index("uq_orders_resident_submit_key", table_name="orders")
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("submit_key")
        batch.drop_column("voice")
