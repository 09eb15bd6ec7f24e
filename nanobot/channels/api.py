"""An OpenAI-compatible HTTP API as a chat channel.

Each `POST /v1/chat/completions` becomes an inbound message on the bus, like a message from any other
channel, and the request waits for the outbound message whose `reply_to` is that inbound's id. So the
agent (local or behind a distributed bus) serves API requests unchanged.

Endpoints: `POST /v1/chat/completions` (optionally streamed as Server-Sent Events), `GET /v1/models`,
`GET /v1/models/<id>`, `GET /health` (never needs the key). Errors always have OpenAI's shape
`{"error": {"message", "type", "param", "code"}}`.

Request extensions to OpenAI's format: `session_id` (the chat id; the session is `api:<session_id>`,
default chat id "default") and `user` (the sender id checked against allowFrom, default "api").
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from nanobot.bus.events import OutboundMessage, new_message_id
from nanobot.bus.queue import MessageBus
from nanobot.channels.base import BaseChannel
from nanobot.channels.http import (
    HttpServer,
    Request,
    Response,
    StreamResponse,
    json_response,
    sse_event,
)
from nanobot.config.schema import ApiChannelConfig

log = logging.getLogger(__name__)

MODEL_ID = "nanobot"
DEFAULT_CHAT_ID = "default"
DEFAULT_SENDER = "api"
MAX_ID_LENGTH = 256
# A comment line sent on an idle stream so proxies and clients do not give up on it.
SSE_KEEPALIVE_S = 15.0
# Streamed progress messages are whole messages; this keeps them apart from what follows.
PROGRESS_SEPARATOR = "\n\n"

_EventKind = Literal["progress", "final", "closed"]


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

    def response(self) -> Response:
        return json_response(self.payload(), self.status, self.headers)


@dataclass
class _ChatRequest:
    content: str
    chat_id: str
    sender_id: str
    model: str
    stream: bool
    idempotency_key: str | None = None

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
    events: asyncio.Queue[tuple[_EventKind, str]] = field(default_factory=asyncio.Queue)


class ApiChannel(BaseChannel):
    name = "api"

    def __init__(self, config: ApiChannelConfig, bus: MessageBus) -> None:
        super().__init__(config, bus)
        self.config: ApiChannelConfig = config
        self.started = asyncio.Event()
        self._server: HttpServer | None = None
        self._stop_event = asyncio.Event()
        self._pending: dict[str, _Pending] = {}
        self._recent: OrderedDict[str, tuple[float, str]] = OrderedDict()  # message id -> (time, final reply)
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
        """Listen, then wait until `stop()` is called (or this task is cancelled)."""
        if self._server is not None:
            raise RuntimeError("api channel already started")
        self._stop_event.clear()
        server = HttpServer(self._route, self.config.host, self.config.port)
        await server.start()
        self._server = server
        self._running = True
        self.started.set()
        log.info(
            "api channel listening on http://%s:%d (auth %s)",
            self.config.host,
            server.port,
            "on" if self.config.api_key else "off",
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

    def _fail_pending(self) -> None:
        for pending in list(self._pending.values()):
            pending.events.put_nowait(("closed", "the API channel is shutting down"))
        self._pending.clear()

    # ------------------------------------------------------------------ outbound
    async def send(self, msg: OutboundMessage) -> None:
        """Hand an agent message to the request it answers. A final reply is also kept a while, so a client
        that lost its connection (or a gateway restart) can retry with the same Idempotency-Key."""
        if msg.reply_to and not msg.is_progress:
            self._remember(msg.reply_to, msg.content)
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
        pending.events.put_nowait(("final", msg.content))

    # ------------------------------------------------------------------ routing
    async def _route(self, request: Request) -> Response | StreamResponse:
        try:
            return await self._dispatch(request)
        except ApiError as exc:
            return exc.response()

    async def _dispatch(self, request: Request) -> Response | StreamResponse:
        path = request.path.rstrip("/") or "/"
        if path == "/health":
            self._require_method(request, "GET", "HEAD")
            return json_response({"status": "ok", "pending": len(self._pending)})
        self._check_auth(request)
        if path == "/v1/chat/completions":
            self._require_method(request, "POST")
            return await self._chat_completions(request)
        if path == "/v1/models":
            self._require_method(request, "GET", "HEAD")
            return json_response({"object": "list", "data": [self._model_card()]})
        if path.startswith("/v1/models/"):
            self._require_method(request, "GET", "HEAD")
            model = path.removeprefix("/v1/models/")
            if model != MODEL_ID:
                raise ApiError(404, f"The model '{model}' does not exist", param="model", code="model_not_found")
            return json_response(self._model_card())
        raise ApiError(404, f"Unknown path: {request.method} {request.path}", code="unknown_url")

    @staticmethod
    def _require_method(request: Request, *allowed: str) -> None:
        if request.method not in allowed:
            raise ApiError(
                405,
                f"Method {request.method} not allowed for {request.path}; use {', '.join(allowed)}",
                code="method_not_allowed",
                headers={"Allow": ", ".join(allowed)},
            )

    def _check_auth(self, request: Request) -> None:
        key = self.config.api_key
        if not key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        supplied = token.strip() if scheme.lower() == "bearer" else ""
        if not supplied or not hmac.compare_digest(supplied.encode("utf-8"), key.encode("utf-8")):
            raise ApiError(
                401,
                "Missing or invalid API key; send 'Authorization: Bearer <apiKey>'",
                kind="authentication_error",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def _model_card(self) -> dict[str, Any]:
        return {"id": MODEL_ID, "object": "model", "owned_by": "nanobot", "created": self._created}

    # ------------------------------------------------------------------ chat completions
    async def _chat_completions(self, request: Request) -> Response | StreamResponse:
        if not self._running:
            raise self._unavailable()
        parsed = self._parse_chat_request(request)
        parsed.idempotency_key = self._idempotency_key(request)
        message_id = parsed.message_id()
        session_key = f"{self.name}:{parsed.chat_id}"
        known = self._recall(message_id)
        if known is not None:
            log.info("api request session=%s message_id=%s answered from a previous attempt", session_key, message_id)
            return json_response(self._completion(message_id, parsed.model, known))
        if message_id in self._pending:
            raise ApiError(409, "A request with this Idempotency-Key is still running", code="request_in_progress")
        # The waiter exists before the message is published, so even an instant reply finds it.
        pending = _Pending(message_id=message_id, session_key=session_key, stream=parsed.stream)
        self._pending[message_id] = pending
        log.info(
            "api request session=%s message_id=%s sender=%s stream=%s",
            session_key,
            message_id,
            parsed.sender_id,
            parsed.stream,
        )
        try:
            inbound = await self._handle_message(
                parsed.sender_id,
                parsed.chat_id,
                parsed.content,
                metadata={"api": {"model": parsed.model, "stream": parsed.stream}},
                message_id=message_id,
            )
        except Exception as exc:
            self._pending.pop(message_id, None)
            log.exception("api request session=%s message_id=%s: publishing failed", session_key, message_id)
            raise ApiError(
                503, "The assistant is unavailable, try again later", kind="server_error", code="bus_unavailable"
            ) from exc
        if inbound is None:
            self._pending.pop(message_id, None)
            log.info("api request session=%s message_id=%s refused: sender not allowed", session_key, message_id)
            raise ApiError(
                403,
                f"Sender '{parsed.sender_id}' is not allowed to use this assistant",
                kind="permission_error",
                param="user",
                code="sender_not_allowed",
            )
        if not self._running:
            # stop() ran while the message was being published.
            self._pending.pop(message_id, None)
            raise self._unavailable()
        if parsed.stream:
            return StreamResponse(
                chunks=self._stream(pending, parsed.model),
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return await self._complete(pending, parsed.model)

    def _parse_chat_request(self, request: Request) -> _ChatRequest:
        try:
            body = request.json()
        except ValueError as exc:
            raise ApiError(400, str(exc), code="invalid_json") from exc
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
        return _ChatRequest(
            content=content,
            chat_id=self._optional_id(body, "session_id", DEFAULT_CHAT_ID),
            sender_id=self._optional_id(body, "user", DEFAULT_SENDER),
            model=self._optional_id(body, "model", MODEL_ID),
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

    def _remember(self, message_id: str, content: str) -> None:
        self._recent[message_id] = (time.monotonic(), content)
        self._recent.move_to_end(message_id)
        while len(self._recent) > RECENT_REPLIES:
            self._recent.popitem(last=False)

    def _recall(self, message_id: str) -> str | None:
        entry = self._recent.get(message_id)
        if entry is None or time.monotonic() - entry[0] > RECENT_TTL_S:
            return None
        return entry[1]

    @staticmethod
    def _idempotency_key(request: Request) -> str | None:
        value = request.headers.get("idempotency-key")
        if value is None:
            return None
        if not value.strip() or len(value) > MAX_ID_LENGTH:
            raise ApiError(400, f"Idempotency-Key must be 1 to {MAX_ID_LENGTH} characters", param="Idempotency-Key")
        return value

    @staticmethod
    def _optional_id(body: dict[str, Any], key: str, default: str) -> str:
        value = body.get(key)
        if value is None:
            return default
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

    async def _complete(self, pending: _Pending, model: str) -> Response:
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
                    return json_response(self._completion(pending.message_id, model, text))
                if kind == "closed":
                    raise self._unavailable()
        finally:
            self._pending.pop(pending.message_id, None)

    async def _stream(self, pending: _Pending, model: str) -> AsyncIterator[bytes]:
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

        try:
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
        finally:
            if self._pending.pop(pending.message_id, None) is not None:
                log.info(
                    "api request session=%s message_id=%s: stream closed before the reply",
                    pending.session_key,
                    pending.message_id,
                )

    @staticmethod
    def _completion(message_id: str, model: str, content: str) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{message_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        }
