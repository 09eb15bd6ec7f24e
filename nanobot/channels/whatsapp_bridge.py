"""The transport of upstream nanobot's WhatsApp bridge (Node.js; WhatsApp Web through Baileys).

The protocol, from HKUDS/nanobot `bridge/src/server.ts` and `bridge/src/whatsapp.ts` (releases 0.1.4 to 0.2.x;
0.3.0 replaced the bridge): a websocket server on 127.0.0.1 (default port 3001) exchanging JSON text frames.

To the bridge:

* `{"type": "auth", "token"}`: the first frame. The bridge closes with 4003 on a wrong token; from 0.1.5 it requires
  one (upstream keeps a generated one in `~/.nanobot/whatsapp-auth/bridge-token`), 0.1.4 only when BRIDGE_TOKEN is set.
* `{"type": "send", "to": <chat JID>, "text"}`.
* `{"type": "send_media", "to", "filePath", "mimetype", "fileName"}` (0.1.5 on; the bridge reads the file itself).

From the bridge:

* `{"type": "message", "id", "sender": <chat JID>, "pn": <phone JID or "">, "content", "timestamp", "isGroup"}`, plus
  from 0.1.5 `wasMentioned` and `media` (paths of files the bridge saved), from 0.2.x `participant` in groups;
* `{"type": "status", "status": "connected" | "disconnected"}`: the bridge's link to WhatsApp, not this socket;
* `{"type": "qr", "qr"}`: WhatsApp must be linked by scanning it;
* `{"type": "sent", "to"}` or `{"type": "error", "error"}`: the bridge's answer to each command.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from nanobot.bus.events import OutboundMessage
from nanobot.channels.dedup import RecentIds
from nanobot.channels.whatsapp import Incoming

log = logging.getLogger(__name__)

CLOSE_BAD_TOKEN = 4003
STABLE_S = 30.0  # a connection that lasted this long resets the reconnect backoff
HEARTBEAT_S = 30.0

OnMessage = Callable[[Incoming], Awaitable[None]]


def jid_user(jid: str) -> str:
    """The user part of a JID: `34600111222:3@s.whatsapp.net` gives `34600111222`."""
    return jid.split("@", 1)[0].split(":", 1)[0]


def _media_label(path: str) -> str:
    major = (mimetypes.guess_type(path)[0] or "").split("/", 1)[0]
    return major if major in ("image", "audio", "video") else "document"


def incoming_from_frame(frame: dict[str, Any]) -> Incoming | None:
    """The message of a `message` frame; None without a sender.

    The chat is the `sender` JID (replies go there). The sender id is the author's number: the group `participant`,
    else the phone number (`pn`) and the `sender` user part joined by `|` when they differ (a LID), so allowFrom may
    name either.
    """
    chat = str(frame.get("sender") or "")
    if not chat:
        return None
    is_group = bool(frame.get("isGroup"))
    participant = str(frame.get("participant") or "") if is_group else ""
    authors = [participant] if participant else [str(frame.get("pn") or ""), chat]
    sender_id = "|".join(dict.fromkeys(jid_user(jid) for jid in authors if jid_user(jid)))
    raw_media = frame.get("media")
    media = [str(path) for path in raw_media if path] if isinstance(raw_media, list) else []
    lines = [str(frame.get("content") or ""), *(f"[{_media_label(path)}: {path}]" for path in media)]
    return Incoming(
        wa_id=str(frame.get("id") or ""),
        sender_id=sender_id,
        chat_id=chat,
        content="\n".join(line for line in lines if line),
        media=media,
        metadata={"message_id": frame.get("id"), "timestamp": frame.get("timestamp"), "is_group": is_group},
    )


class BridgeTransport:
    kind = "bridge"
    reconnect_base_s = 1.0  # first pause before reconnecting, doubled up to reconnect_max_s, with jitter
    reconnect_max_s = 30.0

    def __init__(self, url: str, token: str, on_message: OnMessage) -> None:
        self.url = url
        self._token = token
        self._on_message = on_message
        self._recent = RecentIds(maxlen=10_000, ttl_s=86_400.0, channel="whatsapp")
        self._stopped = asyncio.Event()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._linked = True  # WhatsApp's link as the bridge last reported it; assumed up until it says otherwise

    def routes(self) -> list[web.RouteDef]:
        return []

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._ws.closed and self._linked

    # ------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        """Stay connected to the bridge, reconnecting with capped exponential backoff, until `close()`. Runs once."""
        if not self._token:
            log.warning("whatsapp bridge: bridgeToken is empty; bridges from nanobot 0.1.5 on refuse such a client")
        delay = self.reconnect_base_s
        async with aiohttp.ClientSession() as session:
            while not self._stopped.is_set():
                began = time.monotonic()
                try:
                    await self._until_stopped(self._connection(session))
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    log.warning("whatsapp bridge at %s: %s", self.url, str(exc) or type(exc).__name__)
                if self._stopped.is_set():
                    break
                if time.monotonic() - began >= STABLE_S:
                    delay = self.reconnect_base_s
                pause = random.uniform(delay / 2, delay)
                log.info("whatsapp bridge: reconnecting in %.1fs", pause)
                await self._until_stopped(asyncio.sleep(pause))
                delay = min(delay * 2, self.reconnect_max_s)

    async def close(self) -> None:
        """Ends `run()` at once: whatever it awaits is cancelled, and the socket closed."""
        self._stopped.set()

    async def _until_stopped(self, work: Awaitable[None]) -> None:
        """Await `work`, cancelling it when `close()` is called; its exception, if any, is raised."""
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            task.cancel()
            stop.cancel()
            await asyncio.gather(task, stop, return_exceptions=True)
        if not task.cancelled():
            task.result()

    async def _connection(self, session: aiohttp.ClientSession) -> None:
        """One connection: authenticate, then handle frames until the bridge closes it."""
        async with session.ws_connect(self.url, heartbeat=HEARTBEAT_S) as ws:
            if self._token:
                await ws.send_json({"type": "auth", "token": self._token})
            self._ws, self._linked = ws, True
            log.info("whatsapp bridge: connected to %s", self.url)
            try:
                async for frame in ws:
                    if frame.type == aiohttp.WSMsgType.TEXT:
                        await self._handle_frame(frame.data)
            finally:
                self._ws = None
        if ws.close_code == CLOSE_BAD_TOKEN:
            log.error(
                "whatsapp bridge refused the token: set channels.whatsapp.bridgeToken to the bridge's BRIDGE_TOKEN"
            )
        else:
            log.warning("whatsapp bridge: connection closed (code %s)", ws.close_code)

    # ------------------------------------------------------------ inbound
    async def _handle_frame(self, raw: str) -> None:
        try:
            frame = json.loads(raw)
        except ValueError:
            frame = None
        if not isinstance(frame, dict):
            log.warning("whatsapp bridge sent a frame that is not a JSON object; ignored")
            return
        kind = frame.get("type")
        if kind == "message":
            await self._message(frame)
        elif kind == "status":
            self._status(str(frame.get("status")))
        elif kind == "qr":
            log.info(
                "whatsapp bridge: WhatsApp is not linked; run `nanobot channels login whatsapp` (or the bridge in a "
                "terminal) and scan the QR code in WhatsApp > Linked devices"
            )
        elif kind == "sent":
            log.debug("whatsapp bridge delivered a message to %s", frame.get("to"))
        elif kind == "error":
            log.warning("whatsapp bridge error: %s", frame.get("error"))
        else:
            log.debug("whatsapp bridge frame of type %r ignored", kind)

    def _status(self, status: str) -> None:
        log.info("whatsapp bridge: WhatsApp %s", status)
        if status in ("connected", "disconnected"):
            self._linked = status == "connected"

    async def _message(self, frame: dict[str, Any]) -> None:
        incoming = incoming_from_frame(frame)
        if incoming is None:
            log.warning("whatsapp bridge: message frame without a sender ignored")
            return
        session = f"whatsapp:{incoming.chat_id}"
        if incoming.wa_id and self._recent.seen(incoming.wa_id):
            log.info("whatsapp duplicate session=%s message_id=%s dropped", session, incoming.message_id)
            return
        try:
            await self._on_message(incoming)
        except Exception:
            log.exception("whatsapp inbound session=%s message_id=%s not published", session, incoming.message_id)

    # ------------------------------------------------------------ outbound
    async def send(self, msg: OutboundMessage) -> None:
        """Raises ConnectionError while the bridge (or its WhatsApp link) is down."""
        ws = self._ws
        if ws is None or ws.closed or not self._linked:
            raise ConnectionError("the WhatsApp bridge is not connected")
        if msg.content:
            await ws.send_json({"type": "send", "to": msg.chat_id, "text": msg.content})
        for item in msg.media:
            path = Path(item)
            mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            await ws.send_json(
                {
                    "type": "send_media",
                    "to": msg.chat_id,
                    "filePath": str(path),
                    "mimetype": mime,
                    "fileName": path.name,
                }
            )
