"""grid: a prefix index on the materialised path (subtree queries at city scale)

``Grid.path.startswith(...)`` (members who can take an order, duty subtrees) is a LIKE
'prefix%'. PostgreSQL serves it from a b-tree index only under the "C" collation or with a
pattern operator class; databases created with another collation (C.UTF-8, en_US.UTF-8) read
the whole grid table instead: 21,580 rows, ~9 ms per call at Yunfu scale.

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-29 03:15:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_grid_path_prefix",
        "grid",
        ["path"],
        unique=False,
        postgresql_ops={"path": "varchar_pattern_ops"},
    )


def downgrade() -> None:
    op.drop_index("ix_grid_path_prefix", table_name="grid")
