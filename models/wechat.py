"""WeChat-only bookkeeping: uploaded media ids and callbacks already seen (replay guard)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base


class WeChatMedia(Base):
    """A photo of the media store uploaded to WeChat as temporary media: its ``media_id`` is
    valid for three days, so a photo pushed to many people is uploaded once."""

    __tablename__ = "wechat_media"

    ref: Mapped[str] = mapped_column(String(64), primary_key=True)
    media_id: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column()


class WeChatCallback(Base):
    """A verified callback (hash of nonce, timestamp and signature), kept while its timestamp
    is still inside the accepted skew: the same query string posted again with the same body
    (``body_digest``, SHA-256) is WeChat's retry; with another body it is a replay, refused."""

    __tablename__ = "wechat_callback"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    body_digest: Mapped[str | None] = mapped_column(String(64))


__all__ = ["WeChatCallback", "WeChatMedia"]
