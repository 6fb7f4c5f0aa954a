"""Orders handed to the community by a city platform (12345) through Open311 GeoReport v2."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, utcnow


class CityRequest(Base):
    """The city's side of a city order: which client sent it, under which id of its own.

    The unique ``(client, city_id)`` makes a repeated hand-off (a retry, two concurrent POSTs)
    land on the order the first one created: the database refuses the second row, never a
    read-then-write check.
    """

    __tablename__ = "city_request"
    __table_args__ = (UniqueConstraint("client", "city_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), unique=True)
    #: The name of the API key that handed the order over (``GRIDBOT_OPEN311_KEYS``).
    client: Mapped[str] = mapped_column(String(64))
    #: The city's own id of the request (``attribute[city_id]``, ``device_id`` or ``account_id``).
    city_id: Mapped[str] = mapped_column(String(128))
    #: The location as the city gave it (address text, or ``lat,long``).
    address_string: Mapped[str | None] = mapped_column(Text)
    #: Whether the location matched no building of the community (handled at the top).
    unplaced: Mapped[bool] = mapped_column(default=False)
    media_url: Mapped[str | None] = mapped_column(String(1000))
    #: The ``attribute[...]`` values given, by attribute code.
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
