"""An OpenAI-compatible HTTP API as a chat channel.

Each `POST /v1/chat/completions` becomes an inbound message on the bus, like a message from any other
channel, and the request waits for the outbound message whose `reply_to` is that inbound's id. So the
agent (local or behind a distributed bus) serves API requests unchanged.

Endpoints (aiohttp): `POST /v1/chat/completions` (optionally streamed as Server-Sent Events), `GET /v1/models`,
`GET /v1/models/<id>`, `GET /health` (never needs the key). Errors always have OpenAI's shape
`{"error": {"message", "type", "param", "code"}}`, aiohttp's own (404, 405, 413) included. At most
`maxConnections` requests are served at once; more get 503 at once. A client that disconnects cancels
its request's wait (`handler_cancellation`).

Clients and keys: each key in `keys` (key -> client name) authenticates one client; the single `apiKey` is
the client named "api". Keys are compared in constant time (SHA-256 digests, every configured key each time).
With no key at all every request is the anonymous client "api", and the channel refuses to start on a host
that is not loopback (`binding_refusal`). Keys, the throttle and that rule live in `api_auth.py`.

Request extensions to OpenAI's format: `session_id` (default "default"; it must not contain `/`) and `user`.
The chat id is `<client>/<session_id>`, so a client reaches only its own conversations whatever session_id it
sends; the client named "api" keeps `<session_id>` as chat id, as before there were several keys, so existing
conversations (session `api:<session_id>`) carry on (only a session_id with `/` is now refused). The inbound
sender is the authenticated client name: allowFrom lists client names. `user` is whatever the client says: it
is kept as `metadata["api_user"]` and is never used to authorize anything.

Failed authentications are counted per client address (`request.remote`; behind a reverse proxy that is the
proxy): once an address has `authFailuresPerMinute` of them within a sliding minute, it gets 429 with
Retry-After, without its key even being checked, until the oldest leaves the window. Logs name clients,
sessions and message ids, never a key.

Chat completion requests that do not become a message are counted in `nanobot_inbound_messages_total`
(`inbound_outcome`): unauthorized (401), throttled (429, or 503 at the connection cap), refused (403, allowFrom),
invalid (a malformed request), duplicate (an Idempotency-Key answered from a previous attempt or still running).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from nanobot.admission.gate import Refusal
from nanobot.bus.events import InboundMessage, OutboundMessage, new_message_id
from nanobot.bus.queue import MessageBus
from nanobot.channels.api_auth import (
    AUTH_WINDOW_S,
    LEGACY_CLIENT,
    AuthFailureThrottle,
    ClientKeys,
    UnsafeBindError,
    binding_refusal,
)
from nanobot.channels.base import BaseChannel
from nanobot.config.schema import ApiChannelConfig
from nanobot.gateway.http import WebServer
from nanobot.logs import log_context
from nanobot.metrics.instruments import count_inbound

log = logging.getLogger(__name__)

MODEL_ID = "nanobot"
DEFAULT_CHAT_ID = "default"
MAX_ID_LENGTH = 256
# A comment line sent on an idle stream so proxies and clients do not give up on it.
SSE_KEEPALIVE_S = 15.0
# Streamed progress messages are whole messages; this keeps them apart from what follows.
PROGRESS_SEPARATOR = "\n\n"

CHAT_PATH = "/v1/chat/completions"

_EventKind = Literal["progress", "final", "closed"]
# The authenticated client's name, set by the auth middleware for the handler it calls (same task).
_CLIENT: ContextVar[str] = ContextVar("api_client")


class ApiError(Exception):
    """A request that is answered with an OpenAI-style error."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.code = code
        self.headers = headers or {}

    def payload(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> web.Response:
        return web.json_response(self.payload(), status=self.status, headers=self.headers, dumps=_dumps)


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False)


def sse_event(data: str | dict[str, Any] | list[Any]) -> bytes:
    """One Server-Sent Event; dicts and lists are sent as compact JSON."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return ("\n".join(f"data: {line}" for line in text.split("\n")) + "\n\n").encode("utf-8")


_AIOHTTP_ERRORS = {
    404: ("unknown_url", "invalid_request_error"),
    405: ("method_not_allowed", "invalid_request_error"),
    413: ("request_too_large", "invalid_request_error"),
}


@dataclass
class _ChatRequest:
    content: str
    session_id: str
    user: str | None  # what the client says; metadata only
    model: str
    stream: bool
    client: str = LEGACY_CLIENT
    idempotency_key: str | None = None

    @property
    def chat_id(self) -> str:
        """`<client>/<session_id>`; the legacy client "api" keeps `<session_id>` (its conversations predate keys)."""
        return self.session_id if self.client == LEGACY_CLIENT else f"{self.client}/{self.session_id}"

    def message_id(self) -> str:
        """A fresh id, or one derived from the Idempotency-Key, so a retried request is the same message."""
        if self.idempotency_key is None:
            return new_message_id()
        digest = hashlib.sha256(f"{self.chat_id}\0{self.idempotency_key}".encode()).hexdigest()
        return f"idem-{digest[:32]}"


RECENT_REPLIES = 2048  # final replies kept for retries with the same Idempotency-Key
RECENT_TTL_S = 600.0


@dataclass(eq=False)
class _Pending:
    """One request waiting for its reply."""

    message_id: str
    session_key: str
    stream: bool
    started: float = field(default_factory=time.monotonic)
    usage: dict[str, int] = field(default_factory=dict)  # the reply's, once it came
    events: asyncio.Queue[tuple[_EventKind, str]] = field(default_factory=asyncio.Queue)


def inbound_outcome(status: int, code: str | None) -> str | None:
    """The inbound outcome an error response to a chat completion request counts as; None (not counted) for our
    own failures (5xx: the message was not refused, it could not be handled)."""
    if status == 401:
        return "unauthorized"
    if status == 429 or (status == 503 and code == "server_busy"):
        return "throttled"
    if status == 403:
        return "refused"
    if status == 409:
        return "duplicate"
    if 400 <= status < 500:
        return "invalid"
    return None


class ApiChannel(BaseChannel):
    name = "api"

    def __init__(
        self,
        config: ApiChannelConfig,
        bus: MessageBus,
        *,
        auth_window_s: float = AUTH_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`auth_window_s` and `clock` time the failed-authentication window (tests shorten it)."""
        super().__init__(config, bus)
        self.config: ApiChannelConfig = config
        self.keys = ClientKeys(config)
        self.auth_throttle = AuthFailureThrottle(config.auth_failures_per_minute, auth_window_s, clock)
        self.started = asyncio.Event()
        self._server: WebServer | None = None
        self._serving = 0  # requests being served now (the maxConnections cap)
        self._stop_event = asyncio.Event()
        self._pending: dict[str, _Pending] = {}
        self._recent: OrderedDict[str, tuple[float, str, dict[str, int]]] = OrderedDict()  # id -> (time, reply, usage)
        self._created = int(time.time())

    # ------------------------------------------------------------------ lifecycle
    @property
    def port(self) -> int:
        """The bound port once listening (so port 0 works), else the configured one."""
        return self._server.port if self._server is not None else self.config.port

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    async def start(self) -> None:
        """Listen, then wait until `stop()` is called (or this task is cancelled). UnsafeBindError when the host
        is not loopback and no key is configured."""
        if self._server is not None:
            raise RuntimeError("api channel already started")
        refusal = binding_refusal(self.config)
        if refusal is not None:
            log.error("api: %s", refusal)
            raise UnsafeBindError(refusal)
        self._stop_event.clear()
        server = WebServer(self._app(), self.config.host, self.config.port, handler_cancellation=True)
        await server.start()
        self._server = server
        self._running = True
        self.started.set()
        log.info(
            "api channel listening on http://%s:%d (%s)",
            self.config.host,
            server.port,
            f"clients: {', '.join(sorted(self.keys.clients))}" if self.keys.required else "no key: anonymous client",
        )
        try:
            await self._stop_event.wait()
        finally:
            await self._shutdown()

    async def stop(self) -> None:
        self._stop_event.set()
        await self._shutdown()

    async def _shutdown(self) -> None:
        server, self._server = self._server, None
        self._running = False
        self.started.clear()
        self._fail_pending()
        if server is not None:
            await server.stop()
            log.info("api channel stopped")

    def _app(self) -> web.Application:
        app = web.Application(
            middlewares=[self._errors_middleware, self._limit_middleware, self._auth_middleware],
            client_max_size=self.config.max_body_bytes,
        )
        app.router.add_get("/health", self._health)
        app.router.add_post(CHAT_PATH, self._chat_completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{model}", self._model)
        return app

    def _fail_pending(self) -> None:
        for pending in list(self._pending.values()):
            pending.events.put_nowait(("closed", "the API channel is shutting down"))
        self._pending.clear()

    # ------------------------------------------------------------------ outbound
    async def send(self, msg: OutboundMessage) -> None:
        """Hand an agent message to the request it answers. A final reply is also kept a while, so a client
        that lost its connection (or a gateway restart) can retry with the same Idempotency-Key."""
        if msg.reply_to and not msg.is_progress:
            self._remember(msg.reply_to, msg.content, msg.usage)
        pending = self._pending.get(msg.reply_to) if msg.reply_to else None
        if pending is None:
            log.info(
                "api: dropping outbound message chat_id=%s reply_to=%s progress=%s: no pending request",
                msg.chat_id,
                msg.reply_to,
                msg.is_progress,
            )
            return
        if msg.is_progress:
            if pending.stream and msg.content:
                pending.events.put_nowait(("progress", msg.content))
            return
        self._pending.pop(pending.message_id, None)
        pending.usage = msg.usage
        pending.events.put_nowait(("final", msg.content))

    async def _refused(self, msg: InboundMessage, refusal: Refusal) -> None:
        """A fair limit refused the request: 429 with Retry-After, in OpenAI's shape; nothing was queued."""
        raise ApiError(
            429, refusal.text, kind="rate_limit_error", code=f"{refusal.limit}_limit_exceeded",
            headers={"Retry-After": str(refusal.retry_after_s)},
        )

    # ------------------------------------------------------------------ routing
    @web.middleware
    async def _errors_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Every error in OpenAI's shape: ours (ApiError), aiohttp's (404, 405, 413...), and crashes (500)."""
        try:
            return await handler(request)
        except ApiError as exc:
            self._count_refusal(request, exc.status, exc.code)
            return exc.response()
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code, kind = _AIOHTTP_ERRORS.get(exc.status, (None, "invalid_request_error"))
            self._count_refusal(request, exc.status, code)
            message = f"{exc.reason}: {request.method} {request.path}"
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return ApiError(exc.status, message, kind=kind, code=code, headers=headers).response()
        except Exception:
            log.exception("api: %s %s failed", request.method, request.path)
            return ApiError(500, "Internal server error", kind="server_error", code="internal_error").response()

    def _count_refusal(self, request: web.Request, status: int, code: str | None) -> None:
        """Count a chat completion request that was answered with an error instead of becoming a message."""
        if request.method != "POST" or request.path.rstrip("/") != CHAT_PATH:
            return
        outcome = inbound_outcome(status, code)
        if outcome is not None:
            count_inbound(self.name, outcome)

    @web.middleware
    async def _limit_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self._serving >= self.config.max_connections:
            log.warning("api: %d requests in progress, refusing %s %s", self._serving, request.method, request.path)
            raise ApiError(503, "Too many requests in progress, try again shortly", kind="server_error",
                           code="server_busy", headers={"Retry-After": "1"})
        self._serving += 1
        try:
            return await handler(request)
        finally:
            self._serving -= 1

    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.rstrip("/") == "/health":
            return await handler(request)
        token = _CLIENT.set(self._authenticate(request))
        try:
            return await handler(request)
        finally:
            _CLIENT.reset(token)

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "pending": len(self._pending)})

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [self._model_card()]})

    async def _model(self, request: web.Request) -> web.Response:
        model = request.match_info["model"]
        if model != MODEL_ID:
            raise ApiError(404, f"The model '{model}' does not exist", param="model", code="model_not_found")
        return web.json_response(self._model_card())

    def _authenticate(self, request: web.Request) -> str:
        """The client name the request's key belongs to. An address with too many recent failures gets 429
        before its key is even looked at, so guessing cannot go on."""
        if not self.keys.required:
            return LEGACY_CLIENT
        address = request.remote or "unknown"
        wait = self.auth_throttle.retry_after(address)
        if wait is not None:
            seconds = max(1, math.ceil(wait))
            raise ApiError(
                429,
                f"Too many failed authentications from this address; try again in {seconds} seconds",
                kind="rate_limit_error",
                code="too_many_auth_failures",
                headers={"Retry-After": str(seconds)},
            )
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        supplied = token.strip() if scheme.lower() == "bearer" else ""
        client = self.keys.client_for(supplied) if supplied else None
        if client is not None:
            return client
        log.info("api: authentication failed from %s: %s %s", address, request.method, request.path)
        if self.auth_throttle.record_failure(address):
            log.warning(
                "api: %s throttled after %d failed authentications within %gs",
                address,
                self.auth_throttle.limit,
                self.auth_throttle.window_s,
            )
        raise ApiError(
            401,
            "Missing or invalid API key; send 'Authorization: Bearer <key>'",
            kind="authentication_error",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )

    def _model_card(self) -> dict[str, Any]:
        return {"id": MODEL_ID, "object": "model", "owned_by": "nanobot", "created": self._created}

    # ------------------------------------------------------------------ chat completions
    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        if not self._running:
            raise self._unavailable()
        client = _CLIENT.get()
        if not self.is_allowed(client):
            log.warning("api request client=%s refused: not in allowFrom", client)
            raise self._not_allowed(client)
        parsed = self._parse_chat_request(await self._json_body(request))
        parsed.client = client
        parsed.idempotency_key = self._idempotency_key(request)
        message_id = parsed.message_id()
        session_key = f"{self.name}:{parsed.chat_id}"
        with log_context(session_key=session_key, message_id=message_id, channel=self.name):
            return await self._answer_chat(request, parsed, client, message_id, session_key)

    async def _answer_chat(
        self, request: web.Request, parsed: _ChatRequest, client: str, message_id: str, session_key: str
    ) -> web.StreamResponse:
        known = self._recall(message_id)
        if known is not None:
            count_inbound(self.name, "duplicate")
            log.info(
                "api request client=%s session=%s message_id=%s answered from a previous attempt",
                client,
                session_key,
                message_id,
            )
            return web.json_response(self._completion(message_id, parsed.model, *known), dumps=_dumps)
        if message_id in self._pending:
            raise ApiError(409, "A request with this Idempotency-Key is still running", code="request_in_progress")
        # The waiter exists before the message is published, so even an instant reply finds it.
        pending = _Pending(message_id=message_id, session_key=session_key, stream=parsed.stream)
        self._pending[message_id] = pending
        log.info(
            "api request client=%s session=%s message_id=%s stream=%s",
            client,
            session_key,
            message_id,
            parsed.stream,
        )
        metadata: dict[str, Any] = {"api": {"model": parsed.model, "stream": parsed.stream}}
        if parsed.user is not None:
            metadata["api_user"] = parsed.user
        try:
            # allowFrom was checked above, before a remembered reply could be given: this publishes (or raises
            # ApiError 429 when a fair limit refuses it, `_refused`).
            await self._handle_message(client, parsed.chat_id, parsed.content, metadata=metadata, message_id=message_id)
        except ApiError:
            self._pending.pop(message_id, None)
            raise
        except Exception as exc:
            self._pending.pop(message_id, None)
            log.exception("api request session=%s message_id=%s: publishing failed", session_key, message_id)
            raise ApiError(
                503, "The assistant is unavailable, try again later", kind="server_error", code="bus_unavailable"
            ) from exc
        if not self._running:
            # stop() ran while the message was being published.
            self._pending.pop(message_id, None)
            raise self._unavailable()
        if parsed.stream:
            return await self._stream(request, pending, parsed.model)
        return await self._complete(pending, parsed.model)

    @staticmethod
    async def _json_body(request: web.Request) -> Any:
        """The body parsed as JSON; ApiError 400 (or 413 from aiohttp) with a readable message when it is not."""
        raw = await request.read()
        if not raw.strip():
            raise ApiError(400, "request body is empty", code="invalid_json")
        try:
            return json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ApiError(400, "request body is not valid UTF-8", code="invalid_json") from exc
        except json.JSONDecodeError as exc:
            message = f"request body is not valid JSON: {exc.msg} (line {exc.lineno} column {exc.colno})"
            raise ApiError(400, message, code="invalid_json") from exc

    def _parse_chat_request(self, body: Any) -> _ChatRequest:
        if not isinstance(body, dict):
            raise ApiError(400, "The request body must be a JSON object")

        messages = body.get("messages")
        if messages is None:
            raise ApiError(400, "'messages' is required", param="messages", code="missing_required_parameter")
        if not isinstance(messages, list):
            raise ApiError(400, "'messages' must be an array", param="messages", code="invalid_type")
        if not messages:
            raise ApiError(400, "'messages' must not be empty", param="messages", code="empty_array")
        for index, message in enumerate(messages):
            if not isinstance(message, dict):
                raise ApiError(400, f"messages[{index}] must be an object", param=f"messages[{index}]")
        user_indexes = [index for index, message in enumerate(messages) if message.get("role") == "user"]
        if not user_indexes:
            raise ApiError(400, "'messages' has no message with role 'user'", param="messages")
        index = user_indexes[-1]
        content = self._message_text(messages[index].get("content"), f"messages[{index}].content")

        stream = body.get("stream")
        if stream is None:
            stream = False
        elif not isinstance(stream, bool):
            raise ApiError(400, "'stream' must be a boolean", param="stream", code="invalid_type")
        session_id = self._optional_id(body, "session_id") or DEFAULT_CHAT_ID
        if "/" in session_id:
            raise ApiError(
                400,
                "'session_id' must not contain '/' (each API client's sessions are its own)",
                param="session_id",
                code="invalid_session_id",
            )
        return _ChatRequest(
            content=content,
            session_id=session_id,
            user=self._optional_id(body, "user"),
            model=self._optional_id(body, "model") or MODEL_ID,
            stream=stream,
        )

    @staticmethod
    def _message_text(content: Any, param: str) -> str:
        """A message's text: a string, or the text parts of a content array joined by newlines."""
        if isinstance(content, str):
            text = content
        elif isinstance(content, list):
            texts: list[str] = []
            for index, part in enumerate(content):
                if not isinstance(part, dict):
                    raise ApiError(400, f"{param}[{index}] must be an object", param=f"{param}[{index}]")
                if part.get("type") != "text":
                    continue  # images, audio...: not supported by this channel, skipped
                value = part.get("text")
                if not isinstance(value, str):
                    raise ApiError(400, f"{param}[{index}].text must be a string", param=f"{param}[{index}].text")
                texts.append(value)
            text = "\n".join(texts)
        elif content is None:
            text = ""
        else:
            raise ApiError(400, f"{param} must be a string or an array of content parts", param=param)
        if not text.strip():
            raise ApiError(400, "The last user message has no text content", param=param)
        return text

    def _remember(self, message_id: str, content: str, usage: dict[str, int]) -> None:
        self._recent[message_id] = (time.monotonic(), content, usage)
        self._recent.move_to_end(message_id)
        while len(self._recent) > RECENT_REPLIES:
            self._recent.popitem(last=False)

    def _recall(self, message_id: str) -> tuple[str, dict[str, int]] | None:
        """A reply given a while ago, with its usage."""
        entry = self._recent.get(message_id)
        if entry is None or time.monotonic() - entry[0] > RECENT_TTL_S:
            return None
        return entry[1], entry[2]

    @staticmethod
    def _idempotency_key(request: web.Request) -> str | None:
        value = request.headers.get("Idempotency-Key")
        if value is None:
            return None
        if not value.strip() or len(value) > MAX_ID_LENGTH:
            raise ApiError(400, f"Idempotency-Key must be 1 to {MAX_ID_LENGTH} characters", param="Idempotency-Key")
        return value

    @staticmethod
    def _not_allowed(client: str) -> ApiError:
        return ApiError(
            403,
            f"API client '{client}' is not allowed to use this assistant",
            kind="permission_error",
            code="sender_not_allowed",
        )

    @staticmethod
    def _optional_id(body: dict[str, Any], key: str) -> str | None:
        value = body.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise ApiError(400, f"'{key}' must be a string", param=key, code="invalid_type")
        if not value.strip():
            raise ApiError(400, f"'{key}' must not be empty", param=key)
        if len(value) > MAX_ID_LENGTH or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
            raise ApiError(400, f"'{key}' must be at most {MAX_ID_LENGTH} printable characters", param=key)
        return value

    # ------------------------------------------------------------------ waiting for the reply
    def _remaining(self, pending: _Pending) -> float:
        return self.config.timeout_s - (time.monotonic() - pending.started)

    def _timeout_error(self, pending: _Pending) -> ApiError:
        self._pending.pop(pending.message_id, None)
        log.warning(
            "api request session=%s message_id=%s timed out after %.1fs",
            pending.session_key,
            pending.message_id,
            self.config.timeout_s,
        )
        return ApiError(
            504,
            f"No reply from the assistant within {self.config.timeout_s:g} seconds",
            kind="timeout_error",
            code="timeout",
        )

    @staticmethod
    def _unavailable() -> ApiError:
        return ApiError(503, "The API channel is shutting down", kind="server_error", code="service_unavailable")

    def _log_reply(self, pending: _Pending) -> None:
        log.info(
            "api reply session=%s message_id=%s after %.2fs",
            pending.session_key,
            pending.message_id,
            time.monotonic() - pending.started,
        )

    async def _complete(self, pending: _Pending, model: str) -> web.Response:
        try:
            while True:
                remaining = self._remaining(pending)
                if remaining <= 0:
                    raise self._timeout_error(pending)
                try:
                    kind, text = await asyncio.wait_for(pending.events.get(), remaining)
                except TimeoutError:
                    raise self._timeout_error(pending) from None
                if kind == "final":
                    self._log_reply(pending)
                    completion = self._completion(pending.message_id, model, text, pending.usage)
                    return web.json_response(completion, dumps=_dumps)
                if kind == "closed":
                    raise self._unavailable()
        finally:
            self._pending.pop(pending.message_id, None)

    async def _stream(self, request: web.Request, pending: _Pending, model: str) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        try:
            await response.prepare(request)
            async for event in self._events(pending, model):
                await response.write(event)
            await response.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            log.info("api request session=%s message_id=%s: client went away during the stream",
                     pending.session_key, pending.message_id)
            raise
        finally:
            if self._pending.pop(pending.message_id, None) is not None:
                log.info(
                    "api request session=%s message_id=%s: stream closed before the reply",
                    pending.session_key,
                    pending.message_id,
                )
        return response

    async def _events(self, pending: _Pending, model: str) -> AsyncIterator[bytes]:
        """The SSE events of one streamed completion, ending with `data: [DONE]`."""
        completion_id = f"chatcmpl-{pending.message_id}"
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            return sse_event(
                {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
                }
            )

        yield chunk({"role": "assistant", "content": ""})
        while True:
            remaining = self._remaining(pending)
            if remaining <= 0:
                yield sse_event(self._timeout_error(pending).payload())
                break
            try:
                kind, text = await asyncio.wait_for(pending.events.get(), min(remaining, SSE_KEEPALIVE_S))
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if kind == "progress":
                yield chunk({"content": text + PROGRESS_SEPARATOR})
            elif kind == "final":
                self._log_reply(pending)
                if text:
                    yield chunk({"content": text})
                yield chunk({}, "stop")
                break
            else:
                yield sse_event(self._unavailable().payload())
                break
        yield b"data: [DONE]\n\n"

    @staticmethod
    def _completion(message_id: str, model: str, content: str, usage: dict[str, int]) -> dict[str, Any]:
        """A chat completion; `usage` is what the provider reported for the whole turn (every LLM call of it)."""
        prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        return {
            "id": f"chatcmpl-{message_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": usage.get("total_tokens", prompt + completion)},
        }
