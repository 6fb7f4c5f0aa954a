"""WeChat's HTTP API as Gridbot uses it: a thin async client with one shared access token.

wechatpy's HTTP client is synchronous; the few endpoints used are called through httpx. The
access token comes from the ``stable_token`` endpoint and is shared by every process through
the database (:class:`~bot.channels.shared_token.SharedToken`). WeChat's ``errcode`` becomes
the deliverer's errors (:func:`api_error`): 40001/40014/42001 (token) refresh the token and
call once more, -1 (busy) and 45009 are worth a retry, 45015 (outside the 48-hour window) and
45047 (the window's quota used) have their own errors, 43004/40003 (unsubscribed, unknown
openid) are :class:`~bot.channels.base.Unreachable`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.channels.base import DeliveryError, Unreachable
from bot.channels.shared_token import SharedToken
from bot.media import MAX_BYTES
from models import utcnow

DEFAULT_API_URL = "https://api.weixin.qq.com"
TOKEN_KV_KEY = "wechat_access_token"
#: pg_advisory_xact_lock key of the token refresher ("wxtk").
TOKEN_LOCK_KEY = 0x7778746B
#: Errors that mean the access token is no longer valid.
TOKEN_ERRORS = frozenset({40001, 40014, 42001})
#: Errors that mean the user cannot get customer-service messages now.
WINDOW_CLOSED = 45015
QUOTA_USED = 45047
#: Errors that mean the user cannot be reached at all (unsubscribed, unknown openid).
GONE = frozenset({43004, 40003})
BUSY = -1
_MIME = {"jpg": "image/jpeg", "png": "image/png", "gif": "image/gif", "amr": "audio/amr",
         "mp3": "audio/mpeg"}

Clock = Callable[[], datetime]


class WindowClosed(DeliveryError):
    """45015: the user's 48-hour window is closed."""

    def __init__(self) -> None:
        super().__init__("wechat 45015: outside the 48-hour window", permanent=True)


class QuotaUsed(DeliveryError):
    """45047: the customer-service messages of this window are used up."""

    def __init__(self) -> None:
        super().__init__("wechat 45047: push quota of the window used", permanent=True)


class WeChatApi:
    """A thin async client for the endpoints Gridbot uses, with one shared access token."""

    def __init__(
        self,
        appid: str,
        secret: str,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        base_url: str = DEFAULT_API_URL,
        clock: Clock = utcnow,
        timeout: float = 10.0,
    ) -> None:
        self.appid = appid
        self.secret = secret
        self.sessionmaker = sessionmaker
        self.base_url = base_url.rstrip("/")
        self.clock = clock
        self.http = httpx.AsyncClient(timeout=timeout)
        self.token = SharedToken(
            sessionmaker, TOKEN_KV_KEY, TOKEN_LOCK_KEY, self._fetch_token, clock
        )
        self.token_fetches = 0

    async def close(self) -> None:
        """Close the HTTP client."""
        await self.http.aclose()

    # ---- access token --------------------------------------------------------------------
    async def access_token(self, *, stale: str | None = None) -> str:
        """The current access token; ``stale`` is one WeChat just refused. Shared by every
        instance (:class:`~bot.channels.shared_token.SharedToken`); fetched from the
        ``stable_token`` endpoint, which hands every caller the same token instead of
        invalidating the previous one."""
        return await self.token.get(stale=stale)

    async def _fetch_token(self, force: bool) -> tuple[str, datetime]:
        self.token_fetches += 1
        try:
            response = await self.http.post(
                f"{self.base_url}/cgi-bin/stable_token",
                json={
                    "grant_type": "client_credential",
                    "appid": self.appid,
                    "secret": self.secret,
                    "force_refresh": force,
                },
            )
            data = response.json()
        except (httpx.HTTPError, ValueError) as err:
            raise DeliveryError(f"wechat token: {type(err).__name__}") from err
        if not isinstance(data, dict) or "access_token" not in data:
            code = data.get("errcode") if isinstance(data, dict) else None
            raise DeliveryError(f"wechat token refused: {code}")
        expires_in = int(data.get("expires_in") or 7200)
        return str(data["access_token"]), self.clock() + timedelta(seconds=expires_in)

    # ---- calls -------------------------------------------------------------------------------
    async def call(self, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        """POST JSON to ``/cgi-bin/<path>``; map WeChat's ``errcode`` to delivery errors.

        An expired token (40001/42001/40014) is refreshed and the call made once more; ``-1``
        (busy) and network errors are worth a retry; 45015/45047 have their own errors.
        """
        token = await self.access_token()
        for attempt in range(2):
            try:
                response = await self.http.post(
                    f"{self.base_url}/cgi-bin/{path}",
                    params={"access_token": token},
                    content=json.dumps(payload or {}, ensure_ascii=False).encode(),
                    headers={"content-type": "application/json"},
                )
                data = response.json()
            except (httpx.HTTPError, ValueError) as err:
                raise DeliveryError(f"wechat {path}: {type(err).__name__}") from err
            code = int(data.get("errcode") or 0) if isinstance(data, dict) else 0
            if code == 0:
                return data if isinstance(data, dict) else {}
            if code in TOKEN_ERRORS and attempt == 0:
                token = await self.access_token(stale=token)
                continue
            raise api_error(path, code)
        raise DeliveryError(f"wechat {path}: token refused twice")

    async def send_custom(self, openid: str, msgtype: str, content: dict[str, Any]) -> None:
        """A customer-service message (``message/custom/send``) of ``msgtype``: ``text``,
        ``image``, ``voice``, ``msgmenu``."""
        await self.call(
            "message/custom/send", {"touser": openid, "msgtype": msgtype, msgtype: content}
        )

    async def send_template(
        self, openid: str, template_id: str, data: dict[str, dict[str, str]]
    ) -> str:
        """A template message (``message/template/send``); WeChat's msgid."""
        result = await self.call(
            "message/template/send", {"touser": openid, "template_id": template_id, "data": data}
        )
        return str(result.get("msgid", ""))

    async def get_media(self, media_id: str) -> bytes:
        """Download a user's temporary media (an image they sent)."""
        token = await self.access_token()
        for attempt in range(2):
            try:
                response = await self.http.get(
                    f"{self.base_url}/cgi-bin/media/get",
                    params={"access_token": token, "media_id": media_id},
                )
            except httpx.HTTPError as err:
                raise DeliveryError(f"wechat media: {type(err).__name__}") from err
            if not response.headers.get("content-type", "").startswith(("application/json",
                                                                           "text/")):
                return response.content[: MAX_BYTES + 1]
            try:
                code = int(response.json().get("errcode") or 0)
            except (ValueError, AttributeError):
                code = 0
            if code in TOKEN_ERRORS and attempt == 0:
                token = await self.access_token(stale=token)
                continue
            raise api_error("media/get", code)
        raise DeliveryError("wechat media: token refused twice")

    async def upload_image(self, data: bytes, filename: str) -> str:
        """``media/upload`` (type image): temporary media, valid three days; its media_id."""
        return await self.upload_media(data, filename, "image")

    async def upload_media(self, data: bytes, filename: str, kind: str) -> str:
        """``media/upload`` of an ``image`` or a ``voice``: temporary media, valid three days;
        its media_id."""
        token = await self.access_token()
        ext = filename.rsplit(".", 1)[-1].lower()
        mime = _MIME.get(ext, "image/jpeg" if kind == "image" else "audio/amr")
        for attempt in range(2):
            try:
                response = await self.http.post(
                    f"{self.base_url}/cgi-bin/media/upload",
                    params={"access_token": token, "type": kind},
                    files={"media": (filename, data, mime)},
                )
                answer = response.json()
            except (httpx.HTTPError, ValueError) as err:
                raise DeliveryError(f"wechat media/upload: {type(err).__name__}") from err
            if not isinstance(answer, dict):
                raise DeliveryError("wechat media/upload: unexpected answer")
            code = int(answer.get("errcode") or 0)
            if code == 0 and answer.get("media_id"):
                return str(answer["media_id"])
            if code in TOKEN_ERRORS and attempt == 0:
                token = await self.access_token(stale=token)
                continue
            raise api_error("media/upload", code or 40007)
        raise DeliveryError("wechat media/upload: token refused twice")


def api_error(path: str, code: int) -> DeliveryError:
    """WeChat's ``errcode`` from ``path`` as the deliverer's error (see the module)."""
    if code == WINDOW_CLOSED:
        return WindowClosed()
    if code == QUOTA_USED:
        return QuotaUsed()
    if code in GONE:
        return Unreachable(f"wechat {path}: {code}")
    if code == BUSY or code in TOKEN_ERRORS or code == 45009:
        return DeliveryError(f"wechat {path}: {code} (busy)", permanent=False)
    return DeliveryError(f"wechat {path}: error {code}", permanent=True)


async def create_qr(api: WeChatApi, scene: str, expire_seconds: int | None) -> dict[str, Any]:
    """``qrcode/create`` with ``scene_str``; returns WeChat's answer (ticket, url)."""
    if not scene or len(scene) > 64:
        raise ValueError("scene_str must be 1-64 characters")
    payload: dict[str, Any] = {"action_info": {"scene": {"scene_str": scene}}}
    if expire_seconds is None:
        payload["action_name"] = "QR_LIMIT_STR_SCENE"
    else:
        payload["action_name"] = "QR_STR_SCENE"
        payload["expire_seconds"] = max(60, min(expire_seconds, 30 * 24 * 3600))
    return await api.call("qrcode/create", payload)
