"""What an adapter does with an inbound photo or voice message before the core sees it
(:func:`bot.media.keep_inbound_files`): kept in the media store, or the message goes on
without it and says so."""

from __future__ import annotations

from pathlib import Path

from bot.media import PREFIX, MediaStore, keep_inbound_files
from bot.ports import Inbound
from tests.fakes.wechat_server import PNG

OGG = b"OggS" + bytes(60)


def _event(**kwargs: object) -> Inbound:
    return Inbound(channel="telegram", user_id="1", chat_id="1", **kwargs)  # type: ignore[arg-type]


async def _platform(ref: str) -> bytes:
    return {"photo-1": PNG, "voice-1": OGG}[ref]


async def test_a_photo_and_a_voice_are_copied_into_the_store(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    event = _event(photo="photo-1", voice="voice-1")
    await keep_inbound_files(store, event, _platform)
    assert event.photo and event.photo.startswith(PREFIX)
    assert event.voice and event.voice.startswith(PREFIX)
    photo, voice = store.path(event.photo), store.path(event.voice)
    assert photo is not None and photo.read_bytes() == PNG
    assert voice is not None and voice.read_bytes() == OGG
    assert not event.photo_lost and not event.voice_lost


async def test_a_file_the_platform_does_not_give_keeps_its_platform_reference(
    tmp_path: Path,
) -> None:
    async def gone(ref: str) -> bytes:
        raise ConnectionError("the platform is away")

    event = _event(photo="photo-1", voice="voice-1")
    await keep_inbound_files(MediaStore(tmp_path), event, gone)
    assert (event.photo, event.voice) == ("photo-1", "voice-1")
    assert not event.photo_lost and not event.voice_lost


async def test_an_unwritable_store_loses_the_files_not_the_message(tmp_path: Path) -> None:
    blocker = tmp_path / "read-only-install"
    blocker.write_text("a file where the media folder should go")  # even root cannot mkdir
    event = _event(text="楼道灯坏了", photo="photo-1", voice="voice-1")
    await keep_inbound_files(MediaStore(blocker / "media"), event, _platform)
    assert event.photo is None and event.photo_lost
    assert event.voice is None and event.voice_lost
    assert event.text == "楼道灯坏了"
