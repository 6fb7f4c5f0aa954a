"""points: the ledger names the event of each award (exactly once) and who adjusted, and why

Revision ID: 0007
Revises: 0013
Create Date: 2026-11-29 02:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("points_entry", schema=None) as batch_op:
        batch_op.add_column(sa.Column("award_key", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("note", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("actor_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("actor_name", sa.String(length=100), nullable=True))
        batch_op.create_unique_constraint(batch_op.f("uq_points_entry_award_key"), ["award_key"])
        batch_op.create_foreign_key(
            batch_op.f("fk_points_entry_actor_id_person"),
            "person",
            ["actor_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch_op.create_index(
            batch_op.f("ix_points_entry_created_at"), ["created_at"], unique=False
        )
    # Awards made before the ledger had keys: name their event, so they are not made twice.
    op.execute(
        "UPDATE points_entry SET award_key = 'order_done:' || CAST(order_id AS VARCHAR(20)) "
        "WHERE reason = 'order_done' AND order_id IS NOT NULL"
    )
    # The counter on person is a cache of the ledger's sum: make it so.
    op.execute(
        "UPDATE person SET points = COALESCE("
        "(SELECT SUM(e.points) FROM points_entry e WHERE e.person_id = person.id), 0)"
    )


def downgrade() -> None:
    with op.batch_alter_table("points_entry", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_points_entry_created_at"))
        batch_op.drop_constraint(batch_op.f("fk_points_entry_actor_id_person"), type_="foreignkey")
        batch_op.drop_constraint(batch_op.f("uq_points_entry_award_key"), type_="unique")
        batch_op.drop_column("actor_name")
        batch_op.drop_column("actor_id")
        batch_op.drop_column("note")
        batch_op.drop_column("award_key")
