"""A fake WeCom (企业微信) API server (real HTTP on 127.0.0.1) and a fake WeCom *callback sender*.

:class:`FakeWeComServer` answers what Gridbot calls: ``gettoken``, ``message/send`` (text,
image, file, ``template_card``), ``message/update_template_card``, ``media/upload`` and
``media/get``. It keeps every template card as a member sees it; :meth:`FakeWeComServer.press`
plays a member pressing a card's button the way WeCom does: the card greys out with its
``replace_text``, and a ``template_card_event`` with a fresh single-use ``ResponseCode`` is due
to the app. Tokens expire on demand, members outside the app's visible range get 81013, and a
test may script error codes per member (45009, 60020, ...).

:class:`WeComSender` plays WeCom's servers calling the app's URL: the XML encrypted with the
EncodingAESKey and signed with the token (wechatpy's ``wechatpy.enterprise.crypto``), with
WeCom's published sample parameters by default.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from wechatpy.enterprise.crypto import PrpCrypto, WeChatCrypto

from tests.fakes.telegram_server import serve_asgi
from tests.fakes.wechat_server import PNG, _multipart_file, sign

#: WeCom's published sample parameters (加解密方案说明, the sample code's values).
SAMPLE_TOKEN = "QDG6eK"
SAMPLE_AES_KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
SAMPLE_CORP_ID = "wx5823bf96d3bd56c7"
#: The URL check of the same sample: its query string and the echostr's plaintext.
SAMPLE_CHECK = {
    "msg_signature": "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3",
    "timestamp": "1409659589",
    "nonce": "263014780",
    "echostr": "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZX"
    "vnaqQ==",
}
SAMPLE_ECHO = "1616140317555161061"
AGENT_ID = 1000002


@dataclass
class Card:
    """A template card as the member sees it."""

    task_id: str
    user: str
    title: str
    subtitle: str
    #: (text, key) per button; empty once the card is greyed out.
    buttons: list[tuple[str, str]]
    replace_text: str
    grey: str | None = None

    @property
    def text(self) -> str:
        lines = [self.title, *([self.subtitle] if self.subtitle else [])]
        lines += [f"[{label}]" for label, _ in self.buttons] if self.grey is None else [
            f"({self.grey})"
        ]
        return "\n".join(lines)


@dataclass
class Sent:
    """Something the app sent a member."""

    kind: str  # "text", "image", "file", "template_card"
    touser: str
    body: dict[str, Any]
    text: str = ""
    card: Card | None = None

    def shown(self) -> str:
        return self.card.text if self.card is not None else self.text


@dataclass
class Press:
    """A button press the member made: what WeCom will call the app with."""

    user: str
    task_id: str
    key: str
    response_code: str


@dataclass
class FakeWeComServer:
    """The WeCom API, in memory."""

    corp_id: str = SAMPLE_CORP_ID
    agent_id: int = AGENT_ID
    secret: str = "sample-corp-secret"
    sent: list[Sent] = field(default_factory=list)
    cards: dict[str, Card] = field(default_factory=dict)
    #: ``message/update_template_card`` bodies, in order.
    updates: list[dict[str, Any]] = field(default_factory=list)
    #: Members outside the app's visible range (81013).
    outsiders: set[str] = field(default_factory=set)
    #: errcodes to answer to the next sends to a member, in order.
    scripted: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    #: errcodes to answer to the next ``update_template_card`` calls, in order.
    update_errors: list[int] = field(default_factory=list)
    uploads: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    #: Files members sent (``media/get``), by media_id.
    media: dict[str, bytes] = field(default_factory=lambda: {"MEDIA-IN-1": PNG})
    token_calls: int = 0
    calls: list[str] = field(default_factory=list)
    base_url: str = ""
    _codes: dict[str, Press] = field(default_factory=dict)
    _valid: set[str] = field(default_factory=set)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def expire_token(self) -> None:
        """Every token issued so far is refused (42001) from now on."""
        self._valid.clear()

    def script(self, user: str, *codes: int) -> None:
        self.scripted[user].extend(codes)

    def texts(self, user: str) -> list[str]:
        """What a member sees, oldest first (cards as they look now)."""
        return [s.shown() for s in self.sent if s.touser == user and s.kind != "image"]

    def cards_of(self, user: str) -> list[Card]:
        return [s.card for s in self.sent if s.touser == user and s.card is not None]

    def press(self, card: Card, label: str) -> Press:
        """The member presses the button labelled ``label``: the card greys out (its
        ``replace_text``) and WeCom owes the app a callback with a fresh response code."""
        keys = [key for text, key in card.buttons if text == label]
        assert keys and card.grey is None, f"no button {label!r} to press on {card.text!r}"
        card.grey = card.replace_text
        code = f"RC-{next(self._ids)}"
        self._codes[code] = Press(card.user, card.task_id, keys[0], code)
        return self._codes[code]

    async def wait_for(
        self, user: str, predicate: Callable[[str], bool], timeout: float = 10.0  # noqa: ASYNC109
    ) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for text in self.texts(user):
                if predicate(text):
                    return text
            await asyncio.sleep(0.02)
        raise AssertionError(f"nothing matching sent to {user}: {self.texts(user)}")

    async def wait_for_card(
        self, user: str, predicate: Callable[[Card], bool], timeout: float = 10.0  # noqa: ASYNC109
    ) -> Card:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for card in self.cards_of(user):
                if predicate(card):
                    return card
            await asyncio.sleep(0.02)
        raise AssertionError(f"no such card for {user}: {self.texts(user)}")

    # ---- HTTP ----------------------------------------------------------------------------
    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/cgi-bin/gettoken", self._gettoken, methods=["GET"]),
            Route("/cgi-bin/message/send", self._send, methods=["POST"]),
            Route("/cgi-bin/message/update_template_card", self._update, methods=["POST"]),
            Route("/cgi-bin/media/upload", self._upload, methods=["POST"]),
            Route("/cgi-bin/media/get", self._media_get, methods=["GET"]),
        ])

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FakeWeComServer]:
        async with serve_asgi(self.app()) as url:
            self.base_url = f"{url}/cgi-bin"
            yield self

    async def _gettoken(self, request: Request) -> Response:
        self.calls.append("gettoken")
        self.token_calls += 1
        q = request.query_params
        if q.get("corpid") != self.corp_id:
            return JSONResponse({"errcode": 40013, "errmsg": "invalid corpid"})
        if q.get("corpsecret") != self.secret:
            return JSONResponse({"errcode": 40001, "errmsg": "invalid credential"})
        if not self._valid:
            self._valid.add(f"WC-TOKEN-{self.token_calls}")
        token = sorted(self._valid)[-1]
        return JSONResponse(
            {"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": 7200}
        )

    def _refused(self, request: Request) -> JSONResponse | None:
        if request.query_params.get("access_token") not in self._valid:
            return JSONResponse({"errcode": 42001, "errmsg": "access_token expired"})
        return None

    async def _send(self, request: Request) -> Response:
        self.calls.append("send")
        refused = self._refused(request)
        if refused is not None:
            return refused
        body = json.loads(await request.body())
        user = str(body.get("touser") or "")
        if body.get("agentid") != self.agent_id:
            return JSONResponse({"errcode": 40056, "errmsg": "invalid agentid"})
        if user in self.outsiders:
            return JSONResponse({"errcode": 81013, "errmsg": "user & party & tag all invalid"})
        if self.scripted[user]:
            return JSONResponse({"errcode": self.scripted[user].pop(0), "errmsg": "scripted"})
        kind = body["msgtype"]
        sent = Sent(kind, user, body)
        if kind == "text":
            sent.text = body["text"]["content"]
            if len(sent.text.encode()) > 2048:
                return JSONResponse({"errcode": 44004, "errmsg": "text too long"})
        elif kind in ("image", "file"):
            media_id = body[kind]["media_id"]
            if media_id not in self.uploads or self.uploads[media_id][0] != kind:
                return JSONResponse({"errcode": 40007, "errmsg": "invalid media_id"})
            sent.text = f"[{kind} {media_id}]"
        elif kind == "template_card":
            card = body["template_card"]
            task = card.get("task_id", "")
            keys = [b["key"] for b in card.get("button_list", [])]
            if (
                card.get("card_type") != "button_interaction" or not task or task in self.cards
                or not 1 <= len(keys) <= 6 or len(set(keys)) != len(keys)
                or not card.get("main_title", {}).get("title")
            ):
                return JSONResponse({"errcode": 40058, "errmsg": "invalid template_card"})
            sent.card = self.cards[task] = Card(
                task, user, card["main_title"]["title"], card.get("sub_title_text", ""),
                [(b["text"], b["key"]) for b in card["button_list"]],
                card.get("replace_text", "已提交"),
            )
        else:
            return JSONResponse({"errcode": 40008, "errmsg": "invalid message type"})
        self.sent.append(sent)
        return JSONResponse(
            {"errcode": 0, "errmsg": "ok", "invaliduser": "", "msgid": f"MSG{next(self._ids)}"}
        )

    async def _update(self, request: Request) -> Response:
        self.calls.append("update_template_card")
        refused = self._refused(request)
        if refused is not None:
            return refused
        if self.update_errors:
            return JSONResponse({"errcode": self.update_errors.pop(0), "errmsg": "scripted"})
        body = json.loads(await request.body())
        press = self._codes.pop(str(body.get("response_code") or ""), None)
        if press is None or body.get("agentid") != self.agent_id:
            return JSONResponse({"errcode": 40002, "errmsg": "invalid response_code"})
        if body.get("userids") != [press.user]:
            return JSONResponse({"errcode": 40003, "errmsg": "invalid userid"})
        self.updates.append(body)
        card = self.cards[press.task_id]
        new = body.get("template_card")
        if new is not None:
            card.title = new["main_title"]["title"]
            card.subtitle = new.get("sub_title_text", "")
            card.buttons = [(b["text"], b["key"]) for b in new.get("button_list", [])]
            card.replace_text = new.get("replace_text", card.replace_text)
            only_grey = all(k.startswith("wecom-done:") for _, k in card.buttons)
            card.grey = card.replace_text if only_grey else None
        else:
            card.grey = body["button"]["replace_name"]
        return JSONResponse({"errcode": 0, "errmsg": "ok", "invaliduser": []})

    async def _upload(self, request: Request) -> Response:
        self.calls.append("upload")
        refused = self._refused(request)
        if refused is not None:
            return refused
        kind = request.query_params.get("type", "")
        if kind not in ("image", "file", "voice", "video"):
            return JSONResponse({"errcode": 40004, "errmsg": "invalid media type"})
        data = _multipart_file(
            request.headers.get("content-type", ""), await request.body(), "media"
        )
        if data is None:
            return JSONResponse({"errcode": 41005, "errmsg": "media data missing"})
        media_id = f"WC-UP-{len(self.uploads) + 1}"
        self.uploads[media_id] = (kind, data)
        return JSONResponse({"errcode": 0, "errmsg": "", "type": kind, "media_id": media_id,
                             "created_at": str(int(time.time()))})

    async def _media_get(self, request: Request) -> Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        data = self.media.get(request.query_params.get("media_id", ""))
        if data is None:
            return JSONResponse({"errcode": 40007, "errmsg": "invalid media_id"})
        return Response(data, media_type="image/png")


class WeComSender:
    """Calls the app's URL the way WeCom does: encrypted, signed callbacks."""

    def __init__(
        self,
        url: str,
        *,
        token: str = SAMPLE_TOKEN,
        aes_key: str = SAMPLE_AES_KEY,
        corp_id: str = SAMPLE_CORP_ID,
        agent_id: int = AGENT_ID,
    ) -> None:
        self.url = url
        self.token = token
        self.corp_id = corp_id
        self.agent_id = agent_id
        self.crypto = WeChatCrypto(token, aes_key, corp_id)
        self.http = httpx.AsyncClient(timeout=30)
        self._msg_ids = itertools.count(int(time.time() * 1000))
        self._nonces = itertools.count(1372623149)

    async def close(self) -> None:
        await self.http.aclose()

    def xml(self, user: str, msg_type: str, *, create_time: int | None = None,
            **fields: Any) -> str:
        data: dict[str, Any] = {
            "ToUserName": self.corp_id, "FromUserName": user,
            "CreateTime": create_time or int(time.time()), "MsgType": msg_type,
            **fields,
        }
        if msg_type != "event":
            data["MsgId"] = next(self._msg_ids)
        data["AgentID"] = self.agent_id
        return xmltodict.unparse({"xml": data}, full_document=False)

    def signed(self, xml: str, *, timestamp: int | None = None,
               nonce: str | None = None) -> tuple[dict[str, str], bytes]:
        """The query string and body WeCom sends for ``xml``."""
        ts = str(timestamp if timestamp is not None else int(time.time()))
        nonce = nonce or str(next(self._nonces))
        outer = xmltodict.parse(self.crypto.encrypt_message(xml, nonce, ts))["xml"]
        body = xmltodict.unparse({"xml": {
            "ToUserName": self.corp_id, "Encrypt": outer["Encrypt"], "AgentID": self.agent_id,
        }}, full_document=False).encode()
        return {"msg_signature": outer["MsgSignature"], "timestamp": ts, "nonce": nonce}, body

    async def post_signed(self, params: dict[str, str], body: bytes) -> httpx.Response:
        return await self.http.post(self.url, params=params, content=body)

    async def post(self, xml: str, **kw: Any) -> httpx.Response:
        params, body = self.signed(xml, **kw)
        return await self.post_signed(params, body)

    def check_url(self, echo: str, *, timestamp: int | None = None) -> dict[str, str]:
        """The URL check's query string for plaintext ``echo``."""
        ts = str(timestamp if timestamp is not None else int(time.time()))
        nonce = str(next(self._nonces))
        cipher = PrpCrypto(self.crypto.key).encrypt(echo, self.corp_id)
        cipher_text = cipher.decode() if isinstance(cipher, bytes) else str(cipher)
        return {"msg_signature": sign(self.token, ts, nonce, cipher_text), "timestamp": ts,
                "nonce": nonce, "echostr": cipher_text}

    async def text(self, user: str, content: str) -> httpx.Response:
        return await self.post(self.xml(user, "text", Content=content))

    async def image(self, user: str, media_id: str) -> httpx.Response:
        return await self.post(self.xml(
            user, "image", PicUrl="http://invalid.example/p.jpg", MediaId=media_id
        ))

    async def location(self, user: str, lat: float, lon: float) -> httpx.Response:
        return await self.post(self.xml(
            user, "location", Location_X=lat, Location_Y=lon, Scale=15, Label="somewhere"
        ))

    def press_xml(self, press: Press) -> str:
        return self.xml(
            press.user, "event", Event="template_card_event", EventKey=press.key,
            TaskId=press.task_id, CardType="button_interaction",
            ResponseCode=press.response_code,
        )

    async def pressed(self, press: Press) -> httpx.Response:
        """WeCom tells the app about a press (:meth:`FakeWeComServer.press`)."""
        return await self.post(self.press_xml(press))
