"""An API access token shared by every instance (WeChat's and WeCom's work the same way).

One refresher at a time: in this process an asyncio lock, across processes the token's row in
``kv`` (on PostgreSQL under an advisory lock). Each instance keeps the token it last read and
goes back to the row only when that one is near its end or the platform refused it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from models import KeyValue

#: A token this close to its end is refreshed rather than used.
TOKEN_MARGIN = timedelta(minutes=5)

#: Fetch a new token from the platform (``force``: the last one was refused); the token and
#: when it ends.
Fetch = Callable[[bool], Awaitable[tuple[str, datetime]]]


class SharedToken:
    """The token kept in ``kv`` under ``key``; refreshed by ``fetch`` under ``lock_key``."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        key: str,
        lock_key: int,
        fetch: Fetch,
        clock: Callable[[], datetime],
    ) -> None:
        self.sessionmaker = sessionmaker
        self.key = key
        self.lock_key = lock_key
        self.fetch = fetch
        self.clock = clock
        self._token: str | None = None
        self._expires_at: datetime | None = None
        self._lock = asyncio.Lock()

    def _fresh(self, token: str | None, expires_at: datetime | None, stale: str | None) -> bool:
        return (
            token is not None
            and token != stale
            and expires_at is not None
            and expires_at - TOKEN_MARGIN > self.clock()
        )

    async def get(self, *, stale: str | None = None) -> str:
        """The current token; ``stale`` is one the platform just refused."""
        if self._fresh(self._token, self._expires_at, stale):
            assert self._token is not None
            return self._token
        async with self._lock:
            if self._fresh(self._token, self._expires_at, stale):
                assert self._token is not None
                return self._token
            async with self.sessionmaker() as session, session.begin():
                if session.bind is not None and session.bind.dialect.name == "postgresql":
                    await session.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": self.lock_key}
                    )
                row = await session.get(KeyValue, self.key, populate_existing=True)
                token: str | None = None
                expires_at: datetime | None = None
                if row is not None:
                    try:
                        cached = json.loads(row.value)
                        token = str(cached["token"])
                        expires_at = datetime.fromisoformat(cached["expires_at"])
                    except (ValueError, KeyError, TypeError):
                        token = None
                if not self._fresh(token, expires_at, stale):
                    token, expires_at = await self.fetch(stale is not None)
                    value = json.dumps({"token": token, "expires_at": expires_at.isoformat()})
                    if row is None:
                        session.add(KeyValue(key=self.key, value=value))
                    else:
                        row.value = value
            self._token, self._expires_at = token, expires_at
            assert token is not None
            return token
