"""Names people write in the duty commands, turned into rows: a building by its code or its
name (as the community file lists it), a household by its code or name, a member by key or
name — each looked for in the grids the writer looks after — and a household kind or a visit
frequency by its code, its Chinese name (the CSV import's mapping) or its display name.

A lookup finds ``one`` row, or ``choices`` to offer as buttons (several fit, or the text only
fits part of a name), or nothing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.i18n import Translator
from models import Building, Grid, Household, Person, Role
from models.duties import FREQUENCIES, FREQUENCY_NAMES, HOUSEHOLD_KINDS, KIND_NAMES
from models.people import ROLE_ADMIN, ROLE_HEAD, ROLE_MEMBER, ROLE_WORKER

#: Choices offered at most (buttons under one question).
MAX_CHOICES = 8

T = TypeVar("T")


@dataclass
class Found(Generic[T]):
    """What a name matched."""

    one: T | None = None
    choices: list[T] = field(default_factory=list)


async def managed_grids(session: AsyncSession, person_id: int) -> list[Grid]:
    """The grids a person looks after as worker, head or admin (with their subtrees)."""
    return list(
        (
            await session.scalars(
                select(Grid)
                .join(Role, Role.grid_id == Grid.id)
                .where(
                    Role.person_id == person_id,
                    Role.role.in_((ROLE_WORKER, ROLE_HEAD, ROLE_ADMIN)),
                )
                .distinct()
            )
        ).all()
    )


def _within(grids: Sequence[Grid]) -> ColumnElement[bool]:
    return or_(*[Grid.path.startswith(g.path, autoescape=True) for g in grids])


def _pick(exact: Sequence[T], partial: Sequence[T]) -> Found[T]:
    if len(exact) == 1:
        return Found(one=exact[0])
    if exact:
        return Found(choices=list(exact[:MAX_CHOICES]))
    return Found(choices=list(partial[:MAX_CHOICES]))


async def _named(
    session: AsyncSession, model: Any, name_col: Any, grids: Sequence[Grid], text: str,
    join_on: Any,
) -> tuple[list[Any], list[Any]]:
    if not grids:
        return [], []
    rows = list(
        (
            await session.scalars(
                select(model)
                .join(Grid, join_on)
                .where(_within(grids), name_col.contains(text, autoescape=True))
                .order_by(model.id)
                .limit(50)
            )
        ).all()
    )
    exact = [r for r in rows if getattr(r, name_col.key) == text]
    return exact, rows


async def find_building(
    session: AsyncSession, person_id: int, text: str
) -> Found[Building]:
    """A building by its code, else by its name among the buildings one looks after."""
    by_code = await session.scalar(select(Building).where(Building.code == text))
    if by_code is not None:
        return Found(one=by_code)
    grids = await managed_grids(session, person_id)
    exact, partial = await _named(
        session, Building, Building.name, grids, text, Grid.id == Building.grid_id
    )
    return _pick(exact, partial)


async def buildings_of(session: AsyncSession, person_id: int, limit: int) -> list[Building]:
    """The buildings one looks after, if there are at most ``limit`` of them (else none)."""
    grids = await managed_grids(session, person_id)
    if not grids:
        return []
    rows = list(
        (
            await session.scalars(
                select(Building)
                .join(Grid, Grid.id == Building.grid_id)
                .where(_within(grids))
                .order_by(Building.code)
                .limit(limit + 1)
            )
        ).all()
    )
    return rows if len(rows) <= limit else []


async def find_household(
    session: AsyncSession, person_id: int, text: str
) -> Found[Household]:
    """A key household by its code, else by its name in the grids one looks after."""
    by_code = await session.scalar(select(Household).where(Household.code == text))
    if by_code is not None:
        return Found(one=by_code)
    grids = await managed_grids(session, person_id)
    exact, partial = await _named(
        session, Household, Household.name, grids, text, Grid.id == Household.grid_id
    )
    return _pick(exact, partial)


async def find_member(session: AsyncSession, person_id: int, text: str) -> Found[Person]:
    """A party member or volunteer by their key, else by name among the members of the grids
    one looks after."""
    by_key = await session.scalar(select(Person).where(Person.key == text))
    if by_key is not None:
        return Found(one=by_key)
    grids = await managed_grids(session, person_id)
    if not grids:
        return Found()
    rows = list(
        (
            await session.scalars(
                select(Person)
                .join(Role, Role.person_id == Person.id)
                .join(Grid, Grid.id == Role.grid_id)
                .where(
                    Role.role == ROLE_MEMBER,
                    _within(grids),
                    Person.name.contains(text, autoescape=True),
                )
                .distinct()
                .order_by(Person.id)
                .limit(50)
            )
        ).all()
    )
    return _pick([r for r in rows if r.name == text], rows)


def _code(text: str, codes: Sequence[str], names: dict[str, str], tr: Translator,
          prefix: str) -> str | None:
    text = text.strip()
    if text.lower() in codes:
        return text.lower()
    if text in names:
        return names[text]
    for code in codes:
        if text.casefold() in {v.casefold() for v in tr.all_variants(f"{prefix}.{code}")}:
            return code
    return None


def kind_code(text: str, tr: Translator) -> str | None:
    """A household kind from its code (elderly_alone), Chinese name (独居老人) or display
    name in any language; ``None`` if it is none of them."""
    return _code(text, HOUSEHOLD_KINDS, KIND_NAMES, tr, "household.kind")


def frequency_code(text: str, tr: Translator) -> str | None:
    """A visit frequency from its code (weekly), Chinese name (每周) or display name."""
    return _code(text, FREQUENCIES, FREQUENCY_NAMES, tr, "frequency")
