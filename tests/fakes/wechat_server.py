"""A fake WeChat API server (real HTTP on 127.0.0.1) and a fake WeChat *callback sender*.

:class:`FakeWeChatServer` answers the endpoints Gridbot uses: ``cgi-bin/stable_token``,
``message/custom/send`` (text, ``msgmenu``, ``image`` and ``voice``), ``message/template/send``,
``qrcode/create``, ``menu/create``, ``media/get`` and ``media/upload`` (images and voice
messages the bot pushes). Tokens expire on demand (``expire_token``: the next call answers
40001), and a test can script error codes per user (``script``: 45015, 45047, -1, ...),
refuse uploads (``upload_errors``) or slow every answer down (``delay``).

:class:`WeChatSender` plays WeChat's servers posting callbacks to the bot's ``/wechat`` URL:
it builds the XML, signs it with the token and, in safe mode, encrypts it with the
EncodingAESKey (wechatpy's ``WeChatCrypto``), and decrypts the passive reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.parser
import email.policy
import hashlib
import itertools
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import xmltodict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from wechatpy.crypto import WeChatCrypto

from tests.fakes.telegram_server import serve_asgi

#: WeChat's published sample parameters (消息加解密 sample code of the Official Account docs).
SAMPLE_TOKEN = "spamtest"
SAMPLE_AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
SAMPLE_APPID = "wx2c2769f8efd9abc2"
ACCOUNT = "gh_7f083739789a"

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c63f8cfc0f01f0005000201e2aa46b70000000049454e44ae426082"
)


@dataclass
class Sent:
    """Something the bot sent to a user through the API."""

    kind: str  # "text", "msgmenu", "image", "template"
    touser: str
    text: str
    body: dict[str, Any]


@dataclass
class FakeWeChatServer:
    """The WeChat API, in memory."""

    appid: str = SAMPLE_APPID
    secret: str = "sample-secret"
    delay: float = 0.0
    sent: list[Sent] = field(default_factory=list)
    qrcodes: list[dict[str, Any]] = field(default_factory=list)
    menus: list[dict[str, Any]] = field(default_factory=list)
    media: dict[str, bytes] = field(default_factory=dict)
    #: images the bot uploaded (``media/upload``), by the media_id they were given.
    uploads: dict[str, bytes] = field(default_factory=dict)
    #: what each upload was sent as (``image`` or ``voice``), by media_id.
    upload_types: dict[str, str] = field(default_factory=dict)
    #: errcode to answer to the next ``media/upload`` calls, in order.
    upload_errors: list[int] = field(default_factory=list)
    token_calls: list[dict[str, Any]] = field(default_factory=list)
    #: errcodes to answer to the next customer-service sends to a user, in order.
    scripted: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    #: users whose 48-hour window WeChat considers closed (45015 on every CS send).
    closed: set[str] = field(default_factory=set)
    calls: list[str] = field(default_factory=list)
    base_url: str = ""
    _token: str = "TOKEN-1"
    _valid: set[str] = field(default_factory=lambda: {"TOKEN-1"})
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1000))

    def expire_token(self) -> None:
        """Every token issued so far is refused (40001) from now on."""
        self._valid.clear()

    def script(self, openid: str, *codes: int) -> None:
        """Answer the next customer-service sends to ``openid`` with these errcodes."""
        self.scripted[openid].extend(codes)

    def texts(self, openid: str) -> list[str]:
        """Everything the bot pushed to a user, as text (msgmenus and templates flattened)."""
        return [s.text for s in self.sent if s.touser == openid]

    # ---- HTTP ----------------------------------------------------------------------------
    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/cgi-bin/stable_token", self._stable_token, methods=["POST"]),
                Route("/cgi-bin/message/custom/send", self._custom, methods=["POST"]),
                Route("/cgi-bin/message/template/send", self._template, methods=["POST"]),
                Route("/cgi-bin/qrcode/create", self._qrcode, methods=["POST"]),
                Route("/cgi-bin/menu/create", self._menu, methods=["POST"]),
                Route("/cgi-bin/media/get", self._media, methods=["GET"]),
                Route("/cgi-bin/media/upload", self._upload, methods=["POST"]),
            ]
        )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FakeWeChatServer]:
        async with serve_asgi(self.app()) as url:
            self.base_url = url
            yield self

    async def _slow(self) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)

    async def _stable_token(self, request: Request) -> Response:
        body = await request.json()
        self.calls.append("stable_token")
        self.token_calls.append(body)
        if body.get("appid") != self.appid or body.get("secret") != self.secret:
            return JSONResponse({"errcode": 40013, "errmsg": "invalid appid"})
        if body.get("force_refresh") or self._token not in self._valid:
            self._token = f"TOKEN-{len(self.token_calls) + 1}"
            self._valid.add(self._token)
        return JSONResponse({"access_token": self._token, "expires_in": 7200})

    def _check_token(self, request: Request) -> JSONResponse | None:
        if request.query_params.get("access_token") not in self._valid:
            return JSONResponse({"errcode": 40001, "errmsg": "invalid credential"})
        return None

    async def _custom(self, request: Request) -> Response:
        await self._slow()
        self.calls.append("custom")
        refused = self._check_token(request)
        if refused is not None:
            return refused
        body = json.loads(await request.body())
        user = body["touser"]
        if user in self.closed:
            return JSONResponse({"errcode": 45015, "errmsg": "response out of time limit"})
        if self.scripted[user]:
            code = self.scripted[user].pop(0)
            return JSONResponse({"errcode": code, "errmsg": "scripted"})
        if body["msgtype"] == "text":
            text = body["text"]["content"]
        elif body["msgtype"] == "msgmenu":
            menu = body["msgmenu"]
            text = "\n".join(
                [menu["head_content"], *[f"[{i['id']}] {i['content']}" for i in menu["list"]]]
            )
        elif body["msgtype"] in ("image", "voice"):
            kind = body["msgtype"]
            media_id = body[kind]["media_id"]
            if self.upload_types.get(media_id) != kind:
                return JSONResponse({"errcode": 40007, "errmsg": "invalid media_id"})
            text = f"[{kind} {media_id}]"
        else:
            return JSONResponse({"errcode": 40008, "errmsg": "invalid message type"})
        self.sent.append(Sent(body["msgtype"], user, text, body))
        return JSONResponse({"errcode": 0, "errmsg": "ok"})

    async def _template(self, request: Request) -> Response:
        await self._slow()
        self.calls.append("template")
        refused = self._check_token(request)
        if refused is not None:
            return refused
        body = json.loads(await request.body())
        text = "\n".join(v["value"] for v in body["data"].values())
        self.sent.append(Sent("template", body["touser"], text, body))
        return JSONResponse({"errcode": 0, "errmsg": "ok", "msgid": next(self._ids)})

    async def _qrcode(self, request: Request) -> Response:
        refused = self._check_token(request)
        if refused is not None:
            return refused
        body = json.loads(await request.body())
        self.qrcodes.append(body)
        ticket = f"gQ{len(self.qrcodes)}"
        answer: dict[str, Any] = {"ticket": ticket, "url": f"http://weixin.qq.com/q/{ticket}"}
        if "expire_seconds" in body:
            answer["expire_seconds"] = body["expire_seconds"]
        return JSONResponse(answer)

    async def _menu(self, request: Request) -> Response:
        refused = self._check_token(request)
        if refused is not None:
            return refused
        self.menus.append(json.loads(await request.body()))
        return JSONResponse({"errcode": 0, "errmsg": "ok"})

    async def _media(self, request: Request) -> Response:
        refused = self._check_token(request)
        if refused is not None:
            return refused
        data = self.media.get(request.query_params.get("media_id", ""))
        if data is None:
            return JSONResponse({"errcode": 40007, "errmsg": "invalid media_id"})
        return Response(data, media_type="image/png")

    async def _upload(self, request: Request) -> Response:
        await self._slow()
        self.calls.append("upload")
        refused = self._check_token(request)
        if refused is not None:
            return refused
        kind = request.query_params.get("type")
        if kind not in ("image", "voice"):
            return JSONResponse({"errcode": 40004, "errmsg": "invalid media type"})
        if self.upload_errors:
            return JSONResponse({"errcode": self.upload_errors.pop(0), "errmsg": "scripted"})
        data = _multipart_file(request.headers.get("content-type", ""), await request.body(),
                               "media")
        if data is None:
            return JSONResponse({"errcode": 41005, "errmsg": "media data missing"})
        if kind == "voice" and not data.startswith((b"#!AMR", b"ID3", b"\xff\xfb")):
            return JSONResponse({"errcode": 40005, "errmsg": "invalid file type"})
        media_id = f"MEDIA-UP-{len(self.uploads) + 1}"
        self.uploads[media_id] = data
        self.upload_types[media_id] = kind
        return JSONResponse({"type": kind, "media_id": media_id, "created_at": int(time.time())})

    async def wait_for(
        self, openid: str, predicate: Callable[[str], bool], timeout: float = 10.0  # noqa: ASYNC109
    ) -> str:
        """The first text pushed to ``openid`` that matches."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for text in self.texts(openid):
                if predicate(text):
                    return text
            await asyncio.sleep(0.02)
        raise AssertionError(f"nothing matching pushed to {openid}: {self.texts(openid)}")


def _multipart_file(content_type: str, body: bytes, name: str) -> bytes | None:
    """The bytes of the form field ``name`` of a multipart/form-data body."""
    if not content_type.startswith("multipart/form-data"):
        return None
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == name:
            payload = part.get_payload(decode=True)
            return payload if isinstance(payload, bytes) else None
    return None


def sign(*parts: str) -> str:
    """WeChat's signature: SHA-1 of the sorted parts."""
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


@dataclass
class Reply:
    """The webhook's answer: status, raw body and the passive reply's text (if any)."""

    status: int
    body: str
    text: str | None


class WeChatSender:
    """Posts callbacks to the bot the way WeChat does (signed; encrypted in safe mode)."""

    def __init__(
        self,
        url: str,
        *,
        token: str = SAMPLE_TOKEN,
        aes_key: str | None = None,
        appid: str = SAMPLE_APPID,
    ) -> None:
        self.url = url
        self.token = token
        self.crypto = WeChatCrypto(token, aes_key, appid) if aes_key else None
        self.http = httpx.AsyncClient(timeout=30)
        self._msg_ids = itertools.count(int(time.time() * 1000))
        self._nonces = itertools.count(1320562132)
        self.clock_offset = 0

    async def close(self) -> None:
        await self.http.aclose()

    def now(self) -> int:
        return int(time.time()) + self.clock_offset

    def xml(self, openid: str, msg_type: str, *, create_time: int | None = None,
            msg_id: int | None = None, **fields: Any) -> str:
        data: dict[str, Any] = {
            "ToUserName": ACCOUNT,
            "FromUserName": openid,
            "CreateTime": create_time or self.now(),
            "MsgType": msg_type,
            **fields,
        }
        if msg_type != "event":
            data["MsgId"] = msg_id or next(self._msg_ids)
        return xmltodict.unparse({"xml": data}, full_document=False)

    async def post_raw(self, xml: str | bytes, *, timestamp: int | None = None,
                       bad_signature: bool = False, nonce: str | None = None) -> Reply:
        params, body = self.signed(xml, timestamp=timestamp, bad_signature=bad_signature,
                                   nonce=nonce)
        return await self.post_signed(params, body)

    async def post_signed(self, params: dict[str, str], body: bytes) -> Reply:
        """POST exactly this query string and body (a retry sends them again unchanged)."""
        response = await self.http.post(self.url, params=params, content=body)
        return self._reply(response, params["timestamp"], params["nonce"])

    def signed(self, xml: str | bytes, *, timestamp: int | None = None,
               bad_signature: bool = False, nonce: str | None = None,
               ) -> tuple[dict[str, str], bytes]:
        """The query string and body WeChat would send for ``xml`` (encrypted in safe mode)."""
        ts = str(timestamp if timestamp is not None else self.now())
        nonce = nonce or str(next(self._nonces))
        params: dict[str, str] = {"timestamp": ts, "nonce": nonce, "openid": "x"}
        params["signature"] = sign(self.token, ts, nonce)
        body = xml.encode() if isinstance(xml, str) else xml
        if self.crypto is not None:
            encrypted = self.crypto.encrypt_message(body.decode(), nonce, ts)
            outer = xmltodict.parse(encrypted)["xml"]
            params["encrypt_type"] = "aes"
            params["msg_signature"] = outer["MsgSignature"]
            body = xmltodict.unparse(
                {"xml": {"ToUserName": ACCOUNT, "Encrypt": outer["Encrypt"]}},
                full_document=False,
            ).encode()
        if bad_signature:
            params["signature"] = "0" * 40
            if "msg_signature" in params:
                params["msg_signature"] = "0" * 40
        return params, body

    def _reply(self, response: httpx.Response, ts: str, nonce: str) -> Reply:
        body = response.text
        text = None
        if response.status_code == 200 and body.startswith("<xml"):
            if self.crypto is not None:
                outer = xmltodict.parse(body)["xml"]
                plain = self.crypto.decrypt_message(
                    body, outer["MsgSignature"], outer["TimeStamp"], outer["Nonce"]
                )
                body = plain
            text = xmltodict.parse(body)["xml"].get("Content")
        return Reply(response.status_code, body, text)

    async def text(self, openid: str, content: str, **extra: Any) -> Reply:
        return await self.post_raw(self.xml(openid, "text", Content=content, **extra))

    async def event(self, openid: str, event: str, key: str | None = None,
                    **extra: Any) -> Reply:
        fields: dict[str, Any] = {"Event": event}
        if key is not None:
            fields["EventKey"] = key
        return await self.post_raw(self.xml(openid, "event", **fields, **extra))

    async def image(self, openid: str, media_id: str, pic_url: str = "") -> Reply:
        return await self.post_raw(
            self.xml(openid, "image", PicUrl=pic_url or "http://invalid.example/p.jpg",
                     MediaId=media_id)
        )

    async def voice(self, openid: str, media_id: str, recognition: str | None = None) -> Reply:
        fields: dict[str, Any] = {"MediaId": media_id, "Format": "amr"}
        if recognition is not None:
            fields["Recognition"] = recognition
        return await self.post_raw(self.xml(openid, "voice", **fields))

    async def location(self, openid: str, lat: float, lon: float) -> Reply:
        return await self.post_raw(
            self.xml(openid, "location", Location_X=lat, Location_Y=lon, Scale=15,
                     Label="somewhere")
        )
