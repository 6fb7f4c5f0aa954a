"""One store for photos and voice messages whatever platform they came from, so a photo (or a
voice message) a resident sent on one platform reaches a worker on another. References look
like ``media:<32 hex>.<ext>``."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path

from bot.ports import Inbound

log = logging.getLogger(__name__)

PREFIX = "media:"
NAME = re.compile(r"[0-9a-f]{32}\.(?:jpg|png|gif|webp|xlsx|ogg|amr|mp3|m4a|wav)")
#: Voice formats the store keeps: Telegram's OGG/Opus, WeChat's AMR (or MP3), and the usual
#: recorder formats. (WeChat's Speex is not kept: no player the handler has can read it.)
AUDIO_TYPES = ("ogg", "amr", "mp3", "m4a", "wav")
#: Files other than images the store keeps (documents sent to officials: the ledger).
DOCUMENT_TYPES = {"xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}
MAX_BYTES = 10 * 1024 * 1024


def sniff_image(data: bytes) -> str | None:
    """The file extension of a JPEG, PNG, GIF or WebP image, else ``None``."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def sniff_audio(data: bytes) -> str | None:
    """The file extension of an OGG, AMR, MP3, M4A or WAV recording, else ``None``."""
    if data.startswith(b"OggS"):
        return "ogg"
    if data.startswith(b"#!AMR"):
        return "amr"
    if data.startswith(b"ID3") or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):
        return "mp3"
    if data[4:8] == b"ftyp":
        return "m4a"
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    return None


class MediaStore:
    """Image, voice and document files in one folder, named at random."""

    def __init__(self, root: Path) -> None:
        self.root = root

    async def save(self, data: bytes) -> str | None:
        """Store an image; ``None`` when it is not an image we accept."""
        ext = sniff_image(data)
        if ext is None or len(data) > MAX_BYTES:
            return None
        name = f"{secrets.token_hex(16)}.{ext}"
        await asyncio.to_thread(self._write, name, data)
        return PREFIX + name

    async def save_audio(self, data: bytes) -> str | None:
        """Store a voice message; ``None`` when it is not a recording we accept."""
        ext = sniff_audio(data)
        if ext is None or len(data) > MAX_BYTES:
            return None
        name = f"{secrets.token_hex(16)}.{ext}"
        await asyncio.to_thread(self._write, name, data)
        return PREFIX + name

    async def save_document(self, data: bytes, ext: str) -> str:
        """Store a document of a kind in :data:`DOCUMENT_TYPES` (made by us, not uploaded)."""
        if ext not in DOCUMENT_TYPES or len(data) > MAX_BYTES:
            raise ValueError(f"not a document the store keeps: .{ext}, {len(data)} bytes")
        name = f"{secrets.token_hex(16)}.{ext}"
        await asyncio.to_thread(self._write, name, data)
        return PREFIX + name

    def _write(self, name: str, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / name).write_bytes(data)

    def path(self, ref: str) -> Path | None:
        """The file behind a reference, or ``None`` when it is not one of ours."""
        name = ref.removeprefix(PREFIX)
        if not ref.startswith(PREFIX) or not NAME.fullmatch(name):
            return None
        path = self.root / name
        return path if path.is_file() else None


async def keep_inbound_files(
    store: MediaStore | None, event: Inbound, fetch: Callable[[str], Awaitable[bytes]]
) -> None:
    """Copy an inbound event's photo and voice message from the platform into ``store``
    before the event reaches the core, so that whoever sees the order, on whatever platform,
    can see and hear them. Adapters call it before the intake.

    ``event.photo`` / ``event.voice`` become media references. When the platform does not
    give the file, the platform's reference is kept (Telegram can still send it by its id).
    When the store cannot keep it (an unwritable media folder), the message goes on without
    it and ``photo_lost`` / ``voice_lost`` tell the core to say so."""
    if store is None:
        return
    if event.photo and not event.photo.startswith(PREFIX):
        try:
            event.photo = await _copy(fetch, store.save, event.photo, event.channel) or event.photo
        except Exception:  # e.g. an unwritable media folder: keep the message, not the photo
            log.exception("could not store a %s photo", event.channel)
            event.photo, event.photo_lost = None, True
    if event.voice and not event.voice.startswith(PREFIX):
        try:
            event.voice = (
                await _copy(fetch, store.save_audio, event.voice, event.channel) or event.voice
            )
        except Exception:
            log.exception("could not store a %s voice message", event.channel)
            event.voice, event.voice_lost = None, True


async def _copy(
    fetch: Callable[[str], Awaitable[bytes]],
    save: Callable[[bytes], Awaitable[str | None]],
    ref: str,
    channel: str,
) -> str | None:
    """The file's media reference; ``None`` when the platform would not give it (or the store
    does not take its kind). Raises when the store fails."""
    try:
        data = await fetch(ref)
    except Exception as err:
        log.warning("could not fetch a %s file: %s", channel, type(err).__name__)
        return None
    return await save(data)
