"""SIMULATED WhatsApp endpoints on loopback, for tests: Meta's Graph API with its webhook deliveries, and upstream
nanobot's Node.js bridge.

Nothing here talks to WhatsApp. Each fake is an aiohttp server on 127.0.0.1 served by a daemon thread with its own
event loop, so a test drives it with plain (blocking) calls; from a test's event loop, wrap the calls that wait
(`deliver_*`, `verify`, `wait_for_*`) in `asyncio.to_thread`.

`FakeGraphAPI` (set the channel's `apiBase` to its `base_url`):

* `POST /v21.0/<phone number id>/messages`, `POST /v21.0/<phone number id>/media` (multipart `file`, `type`,
  `messaging_product`), `GET /v21.0/<media id>` (metadata with a download `url`), `GET <url>` (the bytes): all need
  `Authorization: Bearer <access token>` (401 otherwise) and answer Graph-style errors
  `{"error": {"message", "type", "code", "fbtrace_id"}}`;
* `fail_next(status, count, retry_after)` makes the next message sends / uploads fail;
* `deliver_*` build a webhook delivery the way Meta does (compact JSON, `/` escaped, signed with the app secret in
  `X-Hub-Signature-256`) and POST it to the webhook URL; `verify` runs the subscription handshake.

`FakeBridge` (set the channel's `bridgeUrl` to its `url`): the bridge's websocket protocol (see
`nanobot/channels/whatsapp_bridge.py`): the auth frame (4003 on a wrong token), `send` / `send_media` answered with
`sent`, and `message`, `qr`, `status` frames pushed by the test; `disconnect()` drops every client.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import secrets
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Self, TypeVar

import httpx
from aiohttp import WSCloseCode, WSMsgType, web

__all__ = ["API_VERSION", "Call", "FakeBridge", "FakeGraphAPI", "StoredMedia"]

API_VERSION = "v21.0"
TEXT_LIMIT = 4096
MESSAGE_TYPES = ("text", "image", "audio", "video", "document", "sticker")

_T = TypeVar("_T")


class _LoopbackServer(ABC):
    """An aiohttp application on loopback, served by a daemon thread running its own event loop."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self._requested_port = port
        self._port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    @abstractmethod
    def _make_app(self) -> web.Application:
        """The application to serve (called on the server's loop)."""

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError(f"{type(self).__name__} is already running")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._requested_port))
        self._port = sock.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"{type(self).__name__}", daemon=True)
        self._thread.start()
        self._runner = self._call(self._open(sock))
        return self

    async def _open(self, sock: socket.socket) -> web.AppRunner:
        runner = web.AppRunner(self._make_app(), access_log=None)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        return runner

    def stop(self) -> None:
        """Close every connection and stop the thread. Idempotent."""
        loop, thread, runner = self._loop, self._thread, self._runner
        if loop is None or thread is None:
            return
        if runner is not None:
            self._call(runner.cleanup(), timeout=10.0)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.close()
        self._loop, self._thread, self._runner = None, None, None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def running(self) -> bool:
        return self._thread is not None

    def _call(self, coro: Coroutine[Any, Any, _T], timeout: float = 5.0) -> _T:
        """Run `coro` on the server's loop and wait for its result (from any other thread)."""
        if self._loop is None:
            coro.close()
            raise RuntimeError(f"{type(self).__name__} is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)


def _wait_until(condition: threading.Condition, ready: Callable[[], bool], timeout: float, what: str) -> None:
    with condition:
        if not condition.wait_for(ready, timeout):
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")


# ---------------------------------------------------------------- Graph API
@dataclass
class StoredMedia:
    media_id: str
    data: bytes
    mime_type: str
    filename: str | None = None


@dataclass
class Call:
    """One request the fake Graph API answered."""

    method: str
    path: str
    status: int


@dataclass
class _Failure:
    status: int
    retry_after: float | None


def _graph_error(status: int, message: str, code: int, kind: str = "OAuthException") -> web.Response:
    error = {"message": message, "type": kind, "code": code, "fbtrace_id": secrets.token_urlsafe(12)}
    return web.json_response({"error": error}, status=status)


def _new_wamid() -> str:
    return "wamid." + base64.b64encode(os.urandom(30)).decode()


def _message_problem(body: Any) -> str | None:
    """Why Meta would refuse this message body, or None."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    if body.get("messaging_product") != "whatsapp":
        return "messaging_product must be 'whatsapp'"
    if not isinstance(body.get("to"), str) or not body["to"]:
        return "'to' is required"
    kind = body.get("type", "text")
    if kind not in MESSAGE_TYPES:
        return f"unsupported message type {kind!r}"
    part = body.get(kind)
    if not isinstance(part, dict):
        return f"'{kind}' must be an object"
    if kind == "text":
        text = part.get("body")
        if not isinstance(text, str) or not text:
            return "text.body is required"
        if len(text) > TEXT_LIMIT:
            return f"text.body is longer than {TEXT_LIMIT} characters"
    elif not part.get("id") and not part.get("link"):
        return f"{kind}.id or {kind}.link is required"
    return None


class FakeGraphAPI(_LoopbackServer):
    """A SIMULATED WhatsApp Cloud API (see the module docstring)."""

    def __init__(
        self,
        *,
        access_token: str = "test-access-token",
        phone_number_id: str = "100200300400",
        app_secret: str = "test-app-secret",
        webhook_url: str | None = None,
        display_phone_number: str = "15550001111",
        business_account_id: str = "900800700600",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host, port)
        self.access_token = access_token
        self.phone_number_id = phone_number_id
        self.app_secret = app_secret
        self.webhook_url = webhook_url
        self.display_phone_number = display_phone_number
        self.business_account_id = business_account_id
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._messages: list[dict[str, Any]] = []
        self._calls: list[Call] = []
        self._failures: deque[_Failure] = deque()
        self._media: dict[str, StoredMedia] = {}
        self._uploads: list[StoredMedia] = []
        self._media_seq = 0

    @property
    def base_url(self) -> str:
        """What the channel's `apiBase` should be."""
        return f"http://{self.host}:{self.port}/{API_VERSION}"

    # ------------------------------------------------------------ what the test sets up
    def fail_next(self, status: int, count: int = 1, retry_after: float | None = None) -> None:
        """The next `count` message sends or media uploads fail with `status` (and `Retry-After` when given)."""
        with self._lock:
            self._failures.extend(_Failure(status, retry_after) for _ in range(count))

    def add_media(self, data: bytes, mime_type: str, filename: str | None = None) -> str:
        """Store a file as if a user had sent it; returns its media id, for `deliver_image` and the like."""
        return self._store(data, mime_type, filename).media_id

    def set_webhook(self, url: str, app_secret: str | None = None) -> None:
        self.webhook_url = url
        if app_secret is not None:
            self.app_secret = app_secret

    # ------------------------------------------------------------ what the channel did
    def sent_messages(self, to: str | None = None) -> list[dict[str, Any]]:
        """The message bodies accepted, in order (only those to `to` when given)."""
        with self._lock:
            return self._matching(to)

    def wait_for_messages(self, to: str | None, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Wait until at least `n` messages (to `to`, or to anyone) were accepted; returns them all."""
        _wait_until(self._changed, lambda: len(self._matching(to)) >= n, timeout, f"{n} message(s) to {to}")
        return self.sent_messages(to)

    def _matching(self, to: str | None) -> list[dict[str, Any]]:
        return [m for m in self._messages if to is None or m["to"] == to]

    def calls(self) -> list[Call]:
        """Every request answered (webhook deliveries are not requests to this server)."""
        with self._lock:
            return list(self._calls)

    def uploads(self) -> list[StoredMedia]:
        with self._lock:
            return list(self._uploads)

    # ------------------------------------------------------------ webhook deliveries (blocking calls)
    def sign(self, body: bytes, app_secret: str | None = None) -> str:
        key = (app_secret if app_secret is not None else self.app_secret).encode()
        return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()

    def deliver_text(
        self, from_number: str, text: str, *, wamid: str | None = None, name: str = "User"
    ) -> tuple[int, str]:
        """POST a signed text message delivery; returns (the webhook's HTTP status, the message's wamid)."""
        return self.deliver_message(from_number, "text", {"body": text}, wamid=wamid, name=name)

    def deliver_image(
        self,
        from_number: str,
        media_id: str,
        *,
        caption: str | None = None,
        wamid: str | None = None,
        name: str = "User",
    ) -> tuple[int, str]:
        """POST a signed image message delivery for media stored with `add_media`."""
        fields: dict[str, Any] = {"mime_type": self._media[media_id].mime_type, "sha256": "", "id": media_id}
        if caption is not None:
            fields["caption"] = caption
        return self.deliver_message(from_number, "image", fields, wamid=wamid, name=name)

    def deliver_message(
        self, from_number: str, kind: str, fields: dict[str, Any], *, wamid: str | None = None, name: str = "User"
    ) -> tuple[int, str]:
        """POST a signed delivery of one message of type `kind` whose `kind` object is `fields`."""
        wamid = wamid or _new_wamid()
        message = {"from": from_number, "id": wamid, "timestamp": str(int(time.time())), "type": kind, kind: fields}
        value = {"contacts": [{"profile": {"name": name}, "wa_id": from_number}], "messages": [message]}
        return self._deliver_value(value), wamid

    def deliver_status(self, wamid: str, recipient: str, status: str = "delivered") -> int:
        """POST a signed status callback about a message sent to `recipient`."""
        update = {"id": wamid, "status": status, "timestamp": str(int(time.time())), "recipient_id": recipient}
        return self._deliver_value({"statuses": [update]})

    def deliver_raw(self, body: bytes, signature: str | None) -> int:
        """POST `body` as is, with `signature` as X-Hub-Signature-256 (none when None); returns the HTTP status."""
        if self.webhook_url is None:
            raise RuntimeError("no webhook URL: pass webhook_url or call set_webhook")
        headers = {"Content-Type": "application/json", "User-Agent": "facebookexternalua"}
        if signature is not None:
            headers["X-Hub-Signature-256"] = signature
            headers["X-Hub-Signature"] = "sha1=" + hmac.new(self.app_secret.encode(), body, hashlib.sha1).hexdigest()
        return httpx.post(self.webhook_url, content=body, headers=headers, timeout=10, trust_env=False).status_code

    def verify(self, url: str, verify_token: str, challenge: str) -> tuple[int, str]:
        """The subscription handshake Meta runs on a new webhook; returns (status, body)."""
        query = {"hub.mode": "subscribe", "hub.verify_token": verify_token, "hub.challenge": challenge}
        response = httpx.get(url, params=query, timeout=10, trust_env=False)
        return response.status_code, response.text

    def _deliver_value(self, value: dict[str, Any]) -> int:
        metadata = {"display_phone_number": self.display_phone_number, "phone_number_id": self.phone_number_id}
        change = {"value": {"messaging_product": "whatsapp", "metadata": metadata, **value}, "field": "messages"}
        payload = {
            "object": "whatsapp_business_account",
            "entry": [{"id": self.business_account_id, "changes": [change]}],
        }
        # Like Meta: compact, non-ASCII as \u escapes, "/" escaped; so only the raw body verifies.
        body = json.dumps(payload, separators=(",", ":")).replace("/", "\\/").encode()
        return self.deliver_raw(body, self.sign(body))

    # ------------------------------------------------------------ server
    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._record_call])
        app.router.add_post(f"/{API_VERSION}/{{phone_number_id}}/messages", self._send_message)
        app.router.add_post(f"/{API_VERSION}/{{phone_number_id}}/media", self._upload_media)
        app.router.add_get(f"/{API_VERSION}/{{media_id}}", self._media_metadata)
        app.router.add_get("/_download/{media_id}", self._download)
        return app

    @web.middleware
    async def _record_call(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = exc
        with self._changed:
            self._calls.append(Call(request.method, request.path, response.status))
            self._changed.notify_all()
        return response

    def _refusal(self, request: web.Request, phone_number_id: str | None = None) -> web.Response | None:
        """The error to answer instead, if any: a bad token; for calls on a phone number, another phone number or
        a failure scheduled by `fail_next`."""
        if request.headers.get("Authorization") != f"Bearer {self.access_token}":
            return _graph_error(401, "Invalid OAuth access token - Cannot parse access token", 190)
        if phone_number_id is None:
            return None
        if phone_number_id != self.phone_number_id:
            return _graph_error(400, f"Object with ID '{phone_number_id}' does not exist", 100, "GraphMethodException")
        return self._scheduled_failure()

    def _scheduled_failure(self) -> web.Response | None:
        with self._lock:
            failure = self._failures.popleft() if self._failures else None
        if failure is None:
            return None
        response = _graph_error(failure.status, "Simulated failure", 130429 if failure.status == 429 else 2)
        if failure.retry_after is not None:
            response.headers["Retry-After"] = f"{failure.retry_after:g}"
        return response

    async def _send_message(self, request: web.Request) -> web.Response:
        refusal = self._refusal(request, request.match_info["phone_number_id"])
        if refusal is not None:
            return refusal
        try:
            body = await request.json()
        except ValueError:
            body = None
        problem = _message_problem(body)
        if problem is not None:
            return _graph_error(400, f"(#100) Invalid parameter: {problem}", 100)
        wamid = _new_wamid()
        with self._changed:
            self._messages.append(body)
            self._changed.notify_all()
        return web.json_response(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": body["to"], "wa_id": body["to"]}],
                "messages": [{"id": wamid}],
            }
        )

    async def _upload_media(self, request: web.Request) -> web.Response:
        refusal = self._refusal(request, request.match_info["phone_number_id"])
        if refusal is not None:
            return refusal
        form = await request.post()
        upload = form.get("file")
        if not isinstance(upload, web.FileField) or form.get("messaging_product") != "whatsapp":
            return _graph_error(400, "(#100) The parameters file and messaging_product are required", 100)
        mime_type = str(form.get("type") or upload.content_type)
        stored = self._store(upload.file.read(), mime_type, upload.filename)
        with self._changed:
            self._uploads.append(stored)
            self._changed.notify_all()
        return web.json_response({"id": stored.media_id})

    async def _media_metadata(self, request: web.Request) -> web.Response:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        media = self._media.get(request.match_info["media_id"])
        if media is None:
            return _graph_error(400, "(#100) Invalid media id", 100)
        return web.json_response(
            {
                "messaging_product": "whatsapp",
                "url": f"http://{self.host}:{self.port}/_download/{media.media_id}?hash={secrets.token_hex(8)}",
                "mime_type": media.mime_type,
                "sha256": hashlib.sha256(media.data).hexdigest(),
                "file_size": len(media.data),
                "id": media.media_id,
            }
        )

    async def _download(self, request: web.Request) -> web.Response:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        media = self._media.get(request.match_info["media_id"])
        if media is None:
            return web.Response(status=404)
        return web.Response(body=media.data, content_type=media.mime_type.split(";", 1)[0])

    def _store(self, data: bytes, mime_type: str, filename: str | None) -> StoredMedia:
        with self._lock:
            self._media_seq += 1
            media = StoredMedia(str(1_000_000_000_000_000 + self._media_seq), data, mime_type, filename)
            self._media[media.media_id] = media
        return media


# ---------------------------------------------------------------- the bridge
class FakeBridge(_LoopbackServer):
    """A SIMULATED upstream nanobot WhatsApp bridge (see the module docstring). An empty `token` accepts clients
    without authentication, like bridge 0.1.4 without BRIDGE_TOKEN."""

    def __init__(self, token: str = "test-bridge-token", *, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.token = token
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._clients: set[web.WebSocketResponse] = set()  # authenticated and open
        self._auth_frames: list[Any] = []
        self._sent: list[dict[str, Any]] = []
        self._connections = 0

    @property
    def url(self) -> str:
        """What the channel's `bridgeUrl` should be."""
        return f"ws://{self.host}:{self.port}"

    # ------------------------------------------------------------ what the channel did
    def auth_frames(self) -> list[Any]:
        """The first frame of every connection (when a token is required), in order."""
        with self._lock:
            return list(self._auth_frames)

    @property
    def connections(self) -> int:
        """Clients accepted so far (after authentication)."""
        with self._lock:
            return self._connections

    @property
    def connected_clients(self) -> int:
        with self._lock:
            return len(self._clients)

    def wait_for_connection(self, n: int = 1, timeout: float = 5.0) -> None:
        """Wait until `n` clients in all were accepted, the latest still connected."""
        _wait_until(self._changed, lambda: self._connections >= n and bool(self._clients), timeout, f"connection #{n}")

    def sent(self) -> list[dict[str, Any]]:
        """The `send` and `send_media` frames received, in order."""
        with self._lock:
            return list(self._sent)

    def wait_for_sent(self, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        _wait_until(self._changed, lambda: len(self._sent) >= n, timeout, f"{n} send frame(s)")
        return self.sent()

    # ------------------------------------------------------------ what the test does
    def user_message(
        self,
        sender: str,
        text: str,
        *,
        pn: str = "",
        msg_id: str | None = None,
        is_group: bool = False,
        participant: str | None = None,
        media: list[str] | None = None,
    ) -> str:
        """Push a `message` frame to every client, as when someone writes on WhatsApp; returns its id."""
        msg_id = msg_id or secrets.token_hex(10).upper()
        frame: dict[str, Any] = {
            "type": "message",
            "id": msg_id,
            "sender": sender,
            "pn": pn,
            "content": text,
            "timestamp": int(time.time()),
            "isGroup": is_group,
        }
        if participant is not None:
            frame["participant"] = participant
        if media:
            frame["media"] = media
        self.push(frame)
        return msg_id

    def qr(self, code: str = "2@simulated-qr-code") -> None:
        self.push({"type": "qr", "qr": code})

    def status(self, status: str) -> None:
        self.push({"type": "status", "status": status})

    def push(self, frame: dict[str, Any]) -> int:
        """Send a frame to every client; returns how many got it."""
        return self._call(self._broadcast(frame))

    def disconnect(self) -> None:
        """Drop every client (they may reconnect)."""
        self._call(self._close_clients(WSCloseCode.SERVICE_RESTART))

    # ------------------------------------------------------------ server
    def _make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self._websocket)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_shutdown(self, _app: web.Application) -> None:
        await self._close_clients(WSCloseCode.GOING_AWAY)

    async def _broadcast(self, frame: dict[str, Any]) -> int:
        with self._lock:
            clients = list(self._clients)
        for ws in clients:
            await ws.send_json(frame)
        return len(clients)

    async def _close_clients(self, code: int) -> None:
        with self._lock:
            clients = list(self._clients)
            self._clients.clear()
        await asyncio.gather(*(ws.close(code=code) for ws in clients), return_exceptions=True)

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        if self.token and not await self._authenticated(ws):
            return ws
        with self._changed:
            self._clients.add(ws)
            self._connections += 1
            self._changed.notify_all()
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    await self._command(ws, message.data)
        finally:
            with self._changed:
                self._clients.discard(ws)
                self._changed.notify_all()
        return ws

    async def _authenticated(self, ws: web.WebSocketResponse) -> bool:
        """Like the bridge: the first frame must be `{"type": "auth", "token": <token>}` within 5 seconds."""
        try:
            first = await ws.receive(timeout=5)
        except TimeoutError:
            await ws.close(code=4001, message=b"Auth timeout")
            return False
        try:
            frame = json.loads(first.data) if first.type == WSMsgType.TEXT else None
        except ValueError:
            frame = None
        with self._lock:
            self._auth_frames.append(frame)
        if isinstance(frame, dict) and frame.get("type") == "auth" and frame.get("token") == self.token:
            return True
        await ws.close(code=4003, message=b"Invalid token")
        return False

    async def _command(self, ws: web.WebSocketResponse, raw: str) -> None:
        try:
            frame = json.loads(raw)
        except ValueError:
            await ws.send_json({"type": "error", "error": "SyntaxError: invalid JSON"})
            return
        if not isinstance(frame, dict) or frame.get("type") not in ("send", "send_media"):
            await ws.send_json({"type": "error", "error": "unknown command"})
            return
        with self._changed:
            self._sent.append(frame)
            self._changed.notify_all()
        await ws.send_json({"type": "sent", "to": frame.get("to")})
