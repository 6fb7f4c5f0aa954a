"""Gridbot's data: typed SQLAlchemy models, engine/session factories and migrations."""

from models.base import Base, utcnow
from models.console import ConsoleAction, ConsoleLink, ConsoleReport, ConsoleSession
from models.duties import (
    ClockSetting,
    DutyFire,
    Household,
    Notice,
    PatrolPlan,
    PatrolRun,
    QuietHours,
    SchedulerJob,
    SchedulerLease,
    VisitLog,
    VisitPlan,
    Whistle,
    WhistleAnswer,
)
from models.facts import OrderFactsRow
from models.grid import Building, Category, Community, Grid
from models.messaging import (
    Conversation,
    KeyValue,
    OfferedChoices,
    OutboxMessage,
    ProcessedUpdate,
    SendBudgetState,
    SendSlot,
    WebChatMessage,
)
from models.open311 import CityRequest
from models.orders import Offer, Order, OrderEvent, PointsEntry, Revisit
from models.people import Identity, Invite, LinkCode, Person, Role
from models.wechat import WeChatCallback, WeChatMedia

__all__ = [
    "Base",
    "Building",
    "Category",
    "CityRequest",
    "ClockSetting",
    "Community",
    "ConsoleAction",
    "ConsoleLink",
    "ConsoleReport",
    "ConsoleSession",
    "Conversation",
    "DutyFire",
    "Grid",
    "Household",
    "Identity",
    "Invite",
    "KeyValue",
    "LinkCode",
    "Notice",
    "Offer",
    "OfferedChoices",
    "Order",
    "OrderEvent",
    "OrderFactsRow",
    "OutboxMessage",
    "PatrolPlan",
    "PatrolRun",
    "Person",
    "PointsEntry",
    "ProcessedUpdate",
    "QuietHours",
    "Revisit",
    "Role",
    "SchedulerJob",
    "SchedulerLease",
    "SendBudgetState",
    "SendSlot",
    "VisitLog",
    "VisitPlan",
    "WeChatCallback",
    "WeChatMedia",
    "WebChatMessage",
    "Whistle",
    "WhistleAnswer",
    "utcnow",
]
