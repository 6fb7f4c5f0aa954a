"""open311: order source, building coordinates, category service fields, city requests

Revision ID: 0010
Revises: 0012
Create Date: 2026-11-29 02:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.base

revision: str = "0010"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("source", sa.String(length=16), server_default="resident", nullable=False)
        )
    with op.batch_alter_table("building", schema=None) as batch_op:
        batch_op.add_column(sa.Column("latitude", sa.Double(), nullable=True))
        batch_op.add_column(sa.Column("longitude", sa.Double(), nullable=True))
    with op.batch_alter_table("category", schema=None) as batch_op:
        batch_op.add_column(sa.Column("service_group", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("keywords", sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column("attributes", sa.JSON(), nullable=True))
    op.create_table(
        "city_request",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("order_id", sa.Integer(), nullable=False),
        sa.Column("client", sa.String(length=64), nullable=False),
        sa.Column("city_id", sa.String(length=128), nullable=False),
        sa.Column("address_string", sa.Text(), nullable=True),
        sa.Column("unplaced", sa.Boolean(), nullable=False),
        sa.Column("media_url", sa.String(length=1000), nullable=True),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("created_at", models.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["order_id"],
            ["orders.id"],
            name=op.f("fk_city_request_order_id_orders"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_city_request")),
        sa.UniqueConstraint("client", "city_id", name=op.f("uq_city_request_client_city_id")),
        sa.UniqueConstraint("order_id", name=op.f("uq_city_request_order_id")),
    )


def downgrade() -> None:
    op.drop_table("city_request")
    with op.batch_alter_table("category", schema=None) as batch_op:
        batch_op.drop_column("attributes")
        batch_op.drop_column("keywords")
        batch_op.drop_column("service_group")
    with op.batch_alter_table("building", schema=None) as batch_op:
        batch_op.drop_column("longitude")
        batch_op.drop_column("latitude")
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_column("source")
