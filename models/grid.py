"""The grid tree, buildings and community settings."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, utcnow


class Community(Base):
    """One imported community file: its name and the names of its tree levels."""

    __tablename__ = "community"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    level_names: Mapped[str] = mapped_column(String(500), default="")
    timezone: Mapped[str] = mapped_column(String(64), default="Asia/Shanghai")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Grid(Base):
    """A node of the grid tree (district, street, community, grid, micro-grid, ...).

    ``path`` is the materialised path of ids (``/1/4/17/``) so a subtree is one LIKE query.
    ``ix_grid_path_prefix`` serves that LIKE 'prefix%' on PostgreSQL whatever the database's
    collation (a plain b-tree index does so only under "C").
    """

    __tablename__ = "grid"
    __table_args__ = (
        Index("ix_grid_path_prefix", "path", postgresql_ops={"path": "varchar_pattern_ops"}),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    community_id: Mapped[int] = mapped_column(ForeignKey("community.id", ondelete="CASCADE"))
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("grid.id"), index=True)
    depth: Mapped[int] = mapped_column(default=0)
    path: Mapped[str] = mapped_column(String(1000), default="/", index=True)


class Building(Base):
    """An addressable building or building unit, belonging to one (micro-)grid."""

    __tablename__ = "building"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    grid_id: Mapped[int] = mapped_column(ForeignKey("grid.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    address: Mapped[str] = mapped_column(String(500), default="")
    #: Optional WGS-84 coordinates: the city platform's ``lat``/``long`` find the nearest one.
    latitude: Mapped[float | None] = mapped_column()
    longitude: Mapped[float | None] = mapped_column()


class Category(Base):
    """An order category. Its display name comes from the catalogs (``category.<code>``)."""

    __tablename__ = "category"
    __table_args__ = (UniqueConstraint("code"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(32))
    urgent: Mapped[bool] = mapped_column(default=False)
    deadline_hours: Mapped[int] = mapped_column(default=72)
    points: Mapped[int] = mapped_column(default=10)
    sort: Mapped[int] = mapped_column(default=0)
    #: Open311 ``group`` and ``keywords`` (comma separated) of the service this category is.
    service_group: Mapped[str | None] = mapped_column(String(100))
    keywords: Mapped[str | None] = mapped_column(String(300))
    #: Open311 attributes the city must or may fill in (``None``: the category asks for none),
    #: a list of ``{code, description, datatype, required, values: [{key, name}]}``.
    attributes: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
