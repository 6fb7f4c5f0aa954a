"""Gridbot's data: typed SQLAlchemy models, engine/session factories and migrations."""

from models.base import Base, utcnow
from models.grid import Building, Category, Community, Grid
from models.messaging import (
    Conversation,
    KeyValue,
    OfferedChoices,
    OutboxMessage,
    ProcessedUpdate,
    WebChatMessage,
)
from models.orders import Offer, Order, OrderEvent, PointsEntry, Revisit
from models.people import Identity, Invite, LinkCode, Person, Role

__all__ = [
    "Base",
    "Building",
    "Category",
    "Community",
    "Conversation",
    "Grid",
    "Identity",
    "Invite",
    "KeyValue",
    "LinkCode",
    "Offer",
    "OfferedChoices",
    "Order",
    "OrderEvent",
    "OutboxMessage",
    "Person",
    "PointsEntry",
    "ProcessedUpdate",
    "Revisit",
    "Role",
    "WebChatMessage",
    "utcnow",
]
