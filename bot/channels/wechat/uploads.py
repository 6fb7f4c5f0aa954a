"""Media-store files as WeChat temporary media: uploaded once (``media/upload``), their
media_id kept in ``wechat_media`` for every instance while WeChat keeps the file (three days)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.channels.base import DeliveryError
from bot.channels.wechat.api import WeChatApi
from bot.media import PREFIX as MEDIA_PREFIX
from bot.media import MediaStore
from models import WeChatMedia

log = logging.getLogger(__name__)

#: Temporary media stays valid three days; a cached media_id is reused until an hour before.
MEDIA_VALIDITY = timedelta(days=3)
MEDIA_MARGIN = timedelta(hours=1)
#: Image types WeChat accepts as ``image`` media (WebP is not one of them).
UPLOADABLE = frozenset({"jpg", "png", "gif"})
#: Recordings WeChat accepts as ``voice`` media (a Telegram OGG is only mentioned in the text).
VOICE_UPLOADABLE = frozenset({"amr", "mp3"})


class MediaUploads:
    """The media_ids of the media store's files on one account."""

    def __init__(
        self,
        api: WeChatApi,
        media: MediaStore | None,
        sessionmaker: async_sessionmaker[AsyncSession],
        clock: Callable[[], datetime],
    ) -> None:
        self.api = api
        self.media = media
        self.sessionmaker = sessionmaker
        self.clock = clock

    def uploadable(self, ref: str | None, types: frozenset[str] = UPLOADABLE) -> bool:
        """Whether ``ref`` is a file of the media store that WeChat takes (an image, or with
        ``types`` :data:`VOICE_UPLOADABLE`, a voice)."""
        if not ref or self.media is None or not ref.startswith(MEDIA_PREFIX):
            return False
        path = self.media.path(ref)
        return path is not None and path.suffix.lstrip(".").lower() in types

    async def media_id(self, ref: str | None, kind: str = "image") -> str | None:
        """The WeChat media_id of a media-store photo (or voice, ``kind``): cached (three
        days, shared by every instance through the database), else uploaded now. ``None`` if
        it cannot be."""
        if not ref or self.media is None:
            return None
        now = self.clock()
        async with self.sessionmaker() as session:
            cached = await session.get(WeChatMedia, ref)
            if cached is not None and cached.expires_at - MEDIA_MARGIN > now:
                return cached.media_id
        path = self.media.path(ref)
        if path is None:
            return None
        try:
            data = await asyncio.to_thread(path.read_bytes)
            media_id = await self.api.upload_media(data, path.name, kind)
        except OSError as err:
            log.warning("photo %s could not be read (%s): sending text only", ref, err)
            return None
        except DeliveryError as err:
            if not err.permanent:
                raise
            log.warning("photo %s refused by media/upload (%s): sending text only", ref, err)
            return None
        async with self.sessionmaker() as session, session.begin():
            row = await session.get(WeChatMedia, ref, with_for_update=True)
            if row is None:
                session.add(
                    WeChatMedia(ref=ref, media_id=media_id, expires_at=now + MEDIA_VALIDITY)
                )
            else:
                row.media_id, row.expires_at = media_id, now + MEDIA_VALIDITY
        return media_id
