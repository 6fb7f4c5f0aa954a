"""order_facts: one row per order with what the reports need from its event log

Kept equal to the order's events in the transaction that writes them (``models/facts.py``);
filled here from the existing event log (the same fold the live updates use, in batches).

Revision ID: 0020
Revises: 0016
Create Date: 2026-11-29 09:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "order_facts",
        sa.Column("order_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("submitted_us", sa.BigInteger(), nullable=False),
        sa.Column("first_us", sa.BigInteger(), nullable=False),
        sa.Column("last_us", sa.BigInteger(), nullable=False),
        sa.Column("status_code", sa.SmallInteger(), nullable=False),
        sa.Column("responded_us", sa.BigInteger(), nullable=True),
        sa.Column("handler_id", sa.Integer(), nullable=True),
        sa.Column("dispatched_us", sa.BigInteger(), nullable=True),
        sa.Column("accepted_us", sa.BigInteger(), nullable=True),
        sa.Column("accepted_by_handle", sa.SmallInteger(), nullable=True),
        sa.Column("offer_us", sa.BigInteger(), nullable=True),
        sa.Column("member_code", sa.Integer(), nullable=True),
        sa.Column("done_us", sa.BigInteger(), nullable=True),
        sa.Column("rated_us", sa.BigInteger(), nullable=True),
        sa.Column("stars", sa.Integer(), nullable=True),
        sa.Column("verdict", sa.SmallInteger(), nullable=True),
        sa.Column("reopened", sa.SmallInteger(), nullable=False),
        sa.Column("closed_us", sa.BigInteger(), nullable=True),
        sa.Column("cancelled_us", sa.BigInteger(), nullable=True),
        sa.Column("escalations", sa.SmallInteger(), nullable=False),
        sa.Column("auto_closed", sa.SmallInteger(), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=True),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"],
                                name=op.f("fk_order_facts_order_id_orders"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("order_id", name=op.f("pk_order_facts")),
    )
    op.create_index("ix_order_facts_submitted_us", "order_facts", ["submitted_us"])
    # The backfill: every order's events folded as the live updates fold them.
    from models.facts import rebuild

    rebuild(op.get_bind())


def downgrade() -> None:
    op.drop_index("ix_order_facts_submitted_us", table_name="order_facts")
    op.drop_table("order_facts")
