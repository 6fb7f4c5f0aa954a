"""reports: indexes for a period's orders, events, points, visits and patrols of a subtree

Revision ID: 0011
Revises: 0007
Create Date: 2026-11-29 02:30:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: (table, index name, columns); points_entry.created_at is indexed by 0007.
INDEXES = (
    ("orders", "ix_orders_created_at", ["created_at"]),
    ("orders", "ix_orders_grid_id_created_at", ["grid_id", "created_at"]),
    ("order_event", "ix_order_event_created_at", ["created_at"]),
    ("order_event", "ix_order_event_order_id_created_at", ["order_id", "created_at"]),
    ("order_event", "ix_order_event_actor_id_created_at", ["actor_id", "created_at"]),
    ("visit_log", "ix_visit_log_order_id", ["order_id"]),
    ("patrol_run", "ix_patrol_run_due_at", ["due_at"]),
)


def upgrade() -> None:
    for table, name, columns in INDEXES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_index(name, columns, unique=False)


def downgrade() -> None:
    for table, name, _ in reversed(INDEXES):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(name)
