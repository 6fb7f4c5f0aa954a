"""SQL pieces the figures are computed with, the same on SQLite and PostgreSQL.

* :class:`epoch_us` — a timestamp as integer microseconds since 1970 (exact on both: PostgreSQL's
  ``EXTRACT(EPOCH …)`` is a numeric; SQLite stores ``YYYY-MM-DD HH:MM:SS.ffffff`` in UTC).
  Clock comparisons and times are made on these integers, so nothing depends on floating point.
* :class:`digits` — the text is one or more ASCII digits (a rating's note).
* :class:`path_segment` — the id that follows a path prefix of ``prefix_len`` characters in a
  materialised path (``/1/4/17/`` after ``/1/`` → ``4``): the child grid an order falls under.
* :func:`first_of` / :func:`last_of` — the value carried by the first or last event (in the order
  of the events) that meets a condition, as one aggregate: the event's position times
  :data:`SLOT` plus the value, the smallest or largest kept, the position divided off.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    ColumnElement,
    String,
    case,
    func,
    literal,
    literal_column,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

#: Room for a value (a person id + 1, a code) beside the event's position in an encoded
#: aggregate; the position (at most a few hundred events per order) goes above it.
SLOT = 1 << 40


class epoch_us(FunctionElement[int]):
    """Microseconds since 1970-01-01 UTC of a ``UTCDateTime`` column."""

    type = BigInteger()
    name = "epoch_us"
    inherit_cache = True


@compiles(epoch_us)
def _epoch_us_default(element: epoch_us, compiler: SQLCompiler, **kw: Any) -> str:
    (arg,) = list(element.clauses)
    return f"CAST(EXTRACT(EPOCH FROM {compiler.process(arg, **kw)}) * 1000000 AS BIGINT)"


@compiles(epoch_us, "sqlite")
def _epoch_us_sqlite(element: epoch_us, compiler: SQLCompiler, **kw: Any) -> str:
    (arg,) = list(element.clauses)
    x = compiler.process(arg, **kw)
    return (f"(CAST(strftime('%s', substr({x}, 1, 19)) AS INTEGER) * 1000000"
            f" + CAST(substr({x}, 21, 6) AS INTEGER))")


class digits(FunctionElement[bool]):
    """The text is non-empty and made of the digits 0-9 only."""

    type = Boolean()
    name = "digits"
    inherit_cache = True


@compiles(digits)
def _digits_default(element: digits, compiler: SQLCompiler, **kw: Any) -> str:
    (arg,) = list(element.clauses)
    return f"({compiler.process(arg, **kw)} ~ '^[0-9]{{1,9}}$')"


@compiles(digits, "sqlite")
def _digits_sqlite(element: digits, compiler: SQLCompiler, **kw: Any) -> str:
    (arg,) = list(element.clauses)
    x = compiler.process(arg, **kw)
    return f"({x} <> '' AND length({x}) <= 9 AND {x} NOT GLOB '*[^0-9]*')"


class path_segment(FunctionElement[str]):
    """``path_segment(path, n)``: the text from character ``n`` (1-based) to the next ``/``."""

    type = String()
    name = "path_segment"
    inherit_cache = True


@compiles(path_segment)
def _segment_default(element: path_segment, compiler: SQLCompiler, **kw: Any) -> str:
    path, start = (compiler.process(c, **kw) for c in element.clauses)
    return f"split_part(substr({path}, {start}), '/', 1)"


@compiles(path_segment, "sqlite")
def _segment_sqlite(element: path_segment, compiler: SQLCompiler, **kw: Any) -> str:
    path, start = (compiler.process(c, **kw) for c in element.clauses)
    rest = f"substr({path}, {start})"
    return f"substr({rest}, 1, instr({rest} || '/', '/') - 1)"


def first_of(seq: Any, condition: Any, value: Any) -> ColumnElement[int]:
    """The ``value`` (0 ≤ value < :data:`SLOT`) of the first row by ``seq`` meeting
    ``condition`` in the group; NULL when none does."""
    slot = literal(SLOT, BigInteger)
    return func.min(case((condition, seq * slot + value))) % slot


def last_of(seq: Any, condition: Any, value: Any) -> ColumnElement[int]:
    """The ``value`` of the last row by ``seq`` meeting ``condition``; NULL when none does."""
    slot = literal(SLOT, BigInteger)
    return func.max(case((condition, seq * slot + value))) % slot


def flag(condition: Any) -> ColumnElement[int]:
    """1 when ``condition`` holds, else 0 (to be summed)."""
    return case((condition, literal_column("1")), else_=literal_column("0"))
