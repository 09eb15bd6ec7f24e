"""A SIMULATED LLM: a real HTTP server on loopback that speaks the OpenAI chat-completions protocol.

Nothing here is a language model. `FakeLLM` stands in for the LLM in nanobot's tests, benchmark and
demo: it answers ``POST /v1/chat/completions`` (JSON or SSE streaming, tool calls included) with
replies that are either scripted (`Rule`) or derived deterministically from the request:

* last message from the user  -> ``"echo: " + <its text>``
* last message a tool result  -> ``"tool said: " + <first 500 chars of the tool output>``

so a test can check that every reply belongs to its own request and nothing was mixed up.

Every chat request is recorded (`RecordedRequest`). Latency (with jitter) is simulated with a sleep
in a per-connection daemon thread (`ThreadingHTTPServer`, HTTP/1.1 keep-alive), so a hundred
concurrent requests that each "think" for one second all finish after about one second.

It can run in-process::

    with FakeLLM(latency_s=0.2) as llm:
        llm.script("hello", Rule(tool_calls=[{"name": "read_file", "arguments": {"path": "a"}}]))
        client = openai.OpenAI(base_url=llm.base_url, api_key="x")

or in another process (``python -m nanobot.testing.llm_server --port-file PATH``), driven through
the control endpoints (``/_requests``, ``/_rules``, ``/_reset``, ``/_config``, ``/_health``) or
with `RemoteFakeLLM`.

The server side uses only the standard library; `RemoteFakeLLM` imports httpx lazily.
"""

from __future__ import annotations

import argparse
import email.policy
import json
import logging
import math
import os
import random
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    import httpx

__all__ = [
    "DEFAULT_MODEL",
    "SIMULATED_OWNER",
    "FakeLLM",
    "RecordedRequest",
    "RemoteFakeLLM",
    "Rule",
    "main",
    "peak_concurrency",
]

log = logging.getLogger("nanobot.testing.llm_server")  # fixed name, also under `python -m`

SIMULATED_OWNER = "nanobot-simulated"
DEFAULT_MODEL = "nanobot-simulated"
TOOL_OUTPUT_ECHO_CHARS = 500
_LOG_PREFIX = "[simulated LLM]"

_ERROR_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "not_found"),
    409: ("conflict_error", None),
    422: ("invalid_request_error", None),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


# --------------------------------------------------------------------------------------------------
# Message helpers


def peak_concurrency(requests: Iterable[RecordedRequest]) -> int:
    """The most requests that were being answered at one moment."""
    edges = sorted(edge for r in requests for edge in ((r.received_at, 1), (r.finished_at, -1)))
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def content_text(content: Any) -> str:
    """Text of a message ``content``: a string, or a list of ``{"type": "text", "text": ...}`` parts
    (joined with newlines; non-text parts such as images are ignored). ``None`` gives ``""``."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping) and part.get("type", "text") == "text":
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
        return "\n".join(parts)
    return str(content)


def last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """Text of the most recent message whose role is ``user`` (``""`` if there is none)."""
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def _last_role(messages: Sequence[Mapping[str, Any]]) -> str | None:
    if messages and isinstance(messages[-1], Mapping):
        role = messages[-1].get("role")
        return role if isinstance(role, str) else None
    return None


def _estimate_tokens(text: str) -> int:
    """A deterministic stand-in for a tokenizer: about four characters per token."""
    return math.ceil(len(text) / 4) if text else 0


def _normalize_tool_call(call: Any) -> dict[str, Any]:
    """Accept ``{"name", "arguments"}`` or the OpenAI shape ``{"function": {"name", "arguments"}}``;
    return ``{"name": str, "arguments": dict | str}``."""
    if not isinstance(call, Mapping):
        raise ValueError(f"tool call must be a dict, got {type(call).__name__}")
    source: Mapping[str, Any] = call
    if "name" not in call and isinstance(call.get("function"), Mapping):
        source = call["function"]
    name = source.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"tool call needs a non-empty 'name': {dict(call)!r}")
    arguments = source.get("arguments", {})
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict | str):
        raise ValueError(f"tool call 'arguments' must be a dict or a JSON string: {dict(call)!r}")
    return {"name": name, "arguments": arguments}


def _retry_after_header(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    kind, code = _ERROR_KINDS.get(status, ("server_error" if status >= 500 else "api_error", None))
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# --------------------------------------------------------------------------------------------------
# Data classes that cross the process boundary


@dataclass
class Rule:
    """One scripted behaviour of the simulated LLM.

    A rule applies to a chat request when ``match`` (a substring) occurs in the text of the last
    *user* message (``None`` matches anything) and, if ``when_last_role`` is set, the very last
    message has that role. Rules are tried in insertion order; each serves ``times`` requests
    (``None`` = forever) and is skipped once exhausted.

    What the matching request gets:

    * ``disconnect=True``: the connection is dropped without any response (after the delay);
    * ``status != 200``: an OpenAI-style error body with that status (message ``error_message``),
      plus a ``Retry-After`` header when ``retry_after`` is set;
    * otherwise an assistant message with ``content`` and/or ``tool_calls`` (each
      ``{"name": ..., "arguments": dict | str}``; ids ``call_<n>`` are assigned by the server).
      A rule with neither content nor tool calls gives the default (echo) reply.
      ``finish_reason`` defaults to ``"tool_calls"`` when there are tool calls, else ``"stop"``.

    ``delay_s`` replaces the server latency (no jitter) for the requests this rule serves.
    """

    match: str | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    status: int = 200
    retry_after: float | None = None
    error_message: str | None = None
    delay_s: float | None = None
    times: int | None = 1
    when_last_role: str | None = None
    disconnect: bool = False
    finish_reason: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.status, int) or not 100 <= self.status <= 599:
            raise ValueError(f"status must be an HTTP status code, got {self.status!r}")
        if self.times is not None and self.times < 0:
            raise ValueError(f"times must be >= 0 or None, got {self.times!r}")
        if self.delay_s is not None and self.delay_s < 0:
            raise ValueError(f"delay_s must be >= 0, got {self.delay_s!r}")
        if self.retry_after is not None and self.retry_after < 0:
            raise ValueError(f"retry_after must be >= 0, got {self.retry_after!r}")
        if self.tool_calls is not None:
            self.tool_calls = [_normalize_tool_call(call) for call in self.tool_calls]

    def matches(self, messages: Sequence[Mapping[str, Any]]) -> bool:
        """Whether this rule applies to a request with these messages (ignoring ``times``)."""
        if self.when_last_role is not None and _last_role(messages) != self.when_last_role:
            return False
        return self.match is None or self.match in last_user_text(messages)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rule:
        """Build a rule from a dict; unknown keys raise ``ValueError`` (they are usually typos)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a rule must be a dict, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown rule field(s): {', '.join(unknown)}")
        return cls(**dict(data))


@dataclass
class RecordedRequest:
    """One chat-completions request as the simulated LLM saw and answered it.

    ``status`` is the HTTP status sent (0 when the connection was dropped on purpose).
    ``reply_tool_calls`` holds the tool calls in OpenAI shape (``id``, ``type``, ``function``).
    ``params`` holds the other top-level request fields (temperature, max_tokens, tool_choice...).
    """

    seq: int
    received_at: float
    finished_at: float
    model: str | None
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    status: int
    reply_content: str | None
    reply_tool_calls: list[dict[str, Any]] | None
    stream: bool
    params: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    usage: dict[str, int] = field(default_factory=dict)  # the token counts the reply reported

    @property
    def last_user_text(self) -> str:
        """Text of the most recent user message (``""`` if there is none)."""
        return last_user_text(self.messages)

    @property
    def last_role(self) -> str | None:
        return _last_role(self.messages)

    @property
    def duration_s(self) -> float:
        return self.finished_at - self.received_at

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RecordedRequest:
        """Inverse of `to_dict`; unknown keys are ignored (newer servers may send more)."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


@dataclass
class _Reply:
    """What the server decided to answer to one chat request."""

    delay_s: float
    status: int = 200
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None  # OpenAI shape, ids assigned
    finish_reason: str = "stop"
    error_message: str | None = None
    retry_after: float | None = None
    disconnect: bool = False


class _ActiveRule:
    __slots__ = ("remaining", "rule")

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.remaining = rule.times


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


# --------------------------------------------------------------------------------------------------
# HTTP plumbing


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # listen backlog: bursts of hundreds of connections must not stall

    def __init__(self, address: tuple[str, int], fake: FakeLLM) -> None:
        self.fake = fake
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            log.debug("%s connection from %s ended: %r", _LOG_PREFIX, client_address, exc)
        else:
            log.exception("%s error while handling %s", _LOG_PREFIX, client_address)

    def close_connections(self) -> None:
        with self.connections_lock:
            connections = list(self.connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "nanobot-simulated-llm/1.0"
    disable_nagle_algorithm = True  # small header + body writes must not wait for delayed ACKs
    timeout = 60  # idle keep-alive connections are closed after this long
    server: _Server

    # -- connection bookkeeping ----------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            with self.server.connections_lock:
                self.server.connections.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s %s", _LOG_PREFIX, self.address_string(), format % args)

    # -- routing ---------------------------------------------------------------------------------

    def _route(self) -> tuple[str, dict[str, list[str]]]:
        parts = urlsplit(self.path)
        path = parts.path.rstrip("/") or "/"
        if path.startswith("/v1/_"):
            path = path[3:]
        return path, parse_qs(parts.query)

    def do_GET(self) -> None:
        path, query = self._route()
        fake = self.server.fake
        if path in ("/v1/models", "/models"):
            self._send_json(200, {"object": "list", "data": [fake.model_card(DEFAULT_MODEL)]})
        elif path.startswith(("/v1/models/", "/models/")):
            self._send_json(200, fake.model_card(path.rsplit("/", 1)[1]))
        elif path == "/_requests":
            since = 0
            if query.get("since"):
                try:
                    since = int(query["since"][0])
                except ValueError:
                    self._send_error(400, "'since' must be an integer", "since")
                    return
            self._send_json(200, [r.to_dict() for r in fake.requests if r.seq > since])
        elif path == "/_health":
            self._send_json(200, fake.health())
        elif path == "/_config":
            self._send_json(200, fake.config())
        else:
            self._send_error(404, f"Unknown endpoint: GET {path}")

    def do_POST(self) -> None:
        path, _query = self._route()
        if path in ("/v1/chat/completions", "/chat/completions"):
            self._chat_completions()
        elif path in ("/v1/audio/transcriptions", "/audio/transcriptions"):
            self._transcription()
        elif path == "/_rules":
            self._control(self._add_rules)
        elif path == "/_reset":
            self._read_body()
            self.server.fake.reset()
            self._send_json(200, {"ok": True})
        elif path == "/_config":
            self._control(self._configure)
        else:
            self._read_body()
            self._send_error(404, f"Unknown endpoint: POST {path}")

    def do_PATCH(self) -> None:
        path, _query = self._route()
        if path == "/_config":
            self._control(self._configure)
        else:
            self._read_body()
            self._send_error(404, f"Unknown endpoint: PATCH {path}")

    # -- control endpoints -----------------------------------------------------------------------

    def _control(self, action: Any) -> None:
        try:
            payload = self._read_json_object()
            result = action(payload)
        except _BadRequest as exc:
            self._send_error(400, exc.message, exc.param)
            return
        except (ValueError, TypeError) as exc:
            self._send_error(400, str(exc))
            return
        self._send_json(200, result)

    def _add_rules(self, payload: dict[str, Any]) -> dict[str, Any]:
        raw_rules = payload.get("rules")
        if not isinstance(raw_rules, list):
            raise _BadRequest("'rules' must be a list of rule objects", "rules")
        rules = [Rule.from_dict(item) for item in raw_rules]
        fake = self.server.fake
        if payload.get("prepend"):
            fake.prepend_rules(rules)
        else:
            fake.add_rules(rules)
        return {"added": len(rules)}

    def _configure(self, payload: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(payload) - {"latency_s", "jitter", "seed"})
        if unknown:
            raise _BadRequest(f"unknown config field(s): {', '.join(unknown)}", unknown[0])
        self.server.fake.configure(**payload)
        return self.server.fake.config()

    # -- chat completions ------------------------------------------------------------------------

    def _chat_completions(self) -> None:
        fake = self.server.fake
        received_at = time.time()
        seq = fake._next_seq()
        payload: dict[str, Any] = {}
        try:
            payload = self._read_json_object()
            messages, tools, stream = _validate_chat(payload)
        except _BadRequest as exc:
            model = payload.get("model")
            fake._record(
                RecordedRequest(
                    seq=seq,
                    received_at=received_at,
                    finished_at=time.time(),
                    model=model if isinstance(model, str) else None,
                    messages=[],
                    tools=None,
                    status=400,
                    reply_content=None,
                    reply_tool_calls=None,
                    stream=bool(payload.get("stream") is True),
                    error=exc.message,
                )
            )
            self._send_error(400, exc.message, exc.param)
            return

        model = payload.get("model") if isinstance(payload.get("model"), str) else None
        params = {k: v for k, v in payload.items() if k not in ("messages", "tools", "model", "stream")}
        reply = fake._plan_reply(messages)
        if reply.delay_s > 0:
            fake._sleep(reply.delay_s)

        record = RecordedRequest(
            seq=seq,
            received_at=received_at,
            finished_at=0.0,
            model=model,
            messages=messages,
            tools=tools,
            status=reply.status,
            reply_content=None,
            reply_tool_calls=None,
            stream=stream,
            params=params,
        )
        if reply.disconnect:
            record.status = 0
            record.error = "connection dropped on purpose"
            record.finished_at = time.time()
            fake._record(record)
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if reply.status != 200:
            message = reply.error_message or f"Simulated error (HTTP {reply.status}) from the fake LLM"
            record.error = message
            record.finished_at = time.time()
            fake._record(record)
            headers = {}
            if reply.retry_after is not None:
                headers["Retry-After"] = _retry_after_header(reply.retry_after)
            self._send_error(reply.status, message, headers=headers)
            return

        record.reply_content = reply.content
        record.reply_tool_calls = reply.tool_calls
        usage = record.usage = _usage(messages, tools, reply)
        completion_id = f"chatcmpl-sim{seq:06d}"
        created = int(received_at)
        response_model = model or DEFAULT_MODEL
        if stream:
            include_usage = isinstance(payload.get("stream_options"), dict) and bool(
                payload["stream_options"].get("include_usage")
            )
            self._stream_reply(record, reply, completion_id, created, response_model, usage, include_usage)
            return

        message: dict[str, Any] = {"role": "assistant", "content": reply.content, "refusal": None}
        if reply.tool_calls:
            message["tool_calls"] = reply.tool_calls
        body = {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": response_model,
            "system_fingerprint": SIMULATED_OWNER,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": reply.finish_reason}],
            "usage": usage,
        }
        record.finished_at = time.time()
        fake._record(record)  # before sending, so a client that got its reply also sees the record
        self._send_json(200, body, headers={"x-request-id": completion_id})

    def _stream_reply(
        self,
        record: RecordedRequest,
        reply: _Reply,
        completion_id: str,
        created: int,
        model: str,
        usage: dict[str, int],
        include_usage: bool,
    ) -> None:
        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            return {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": SIMULATED_OWNER,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            }

        events: list[dict[str, Any]] = [chunk({"role": "assistant", "content": ""})]
        for piece in _split_text(reply.content or ""):
            events.append(chunk({"content": piece}))
        for index, call in enumerate(reply.tool_calls or []):
            function = call["function"]
            head = {
                "index": index,
                "id": call["id"],
                "type": "function",
                "function": {"name": function["name"], "arguments": ""},
            }
            events.append(chunk({"tool_calls": [head]}))
            for piece in _split_fixed(function["arguments"], 16):
                events.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}))
        events.append(chunk({}, reply.finish_reason))
        if include_usage:
            events.append(
                {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "system_fingerprint": SIMULATED_OWNER,
                    "choices": [],
                    "usage": usage,
                }
            )

        fake = self.server.fake
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("x-request-id", completion_id)
            self.send_header("X-Nanobot-Simulated", "true")
            self.end_headers()
            for event in events:
                self._write_chunk(f"data: {json.dumps(event)}\n\n".encode())
        except OSError as exc:
            record.error = f"client went away while streaming: {exc!r}"
            record.finished_at = time.time()
            fake._record(record)
            self.close_connection = True
            return
        record.finished_at = time.time()
        fake._record(record)  # before [DONE], so a client that read the whole stream sees the record
        try:
            self._write_chunk(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    # -- low level I/O ---------------------------------------------------------------------------

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _transcription(self) -> None:
        """OpenAI's audio transcription endpoint (multipart `file` and `model`): the SIMULATED text names the
        file's size and the model, so a test sees that the audio itself went through."""
        body = self._read_body()
        head = f"Content-Type: {self.headers.get('Content-Type', '')}\r\n\r\n".encode("latin-1")
        form = BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
        fields = {part.get_param("name", header="content-disposition"): part for part in form.iter_parts()}
        if "file" not in fields or "model" not in fields:
            self._send_error(400, "multipart fields 'file' and 'model' are required")
            return
        audio = fields["file"].get_payload(decode=True) or b""
        model = (fields["model"].get_payload(decode=True) or b"").decode()
        self._send_json(200, {"text": f"simulated transcription of {len(audio)} bytes by {model}"})

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return bytes(body)
                body += self.rfile.read(size)
                self.rfile.readline(65537)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _read_json_object(self) -> dict[str, Any]:
        raw = self._read_body()
        if not raw.strip():
            return {}
        try:
            payload = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _BadRequest(f"We could not parse the JSON body of your request ({exc}).") from exc
        if not isinstance(payload, dict):
            raise _BadRequest("The request body must be a JSON object.")
        return payload

    def _send_json(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Nanobot-Simulated", "true")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def _send_error(
        self, status: int, message: str, param: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        self._send_json(status, _error_body(status, message, param), headers=headers)


def _validate_chat(payload: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None, bool]:
    if "messages" not in payload:
        raise _BadRequest("Missing required parameter: 'messages'.", "messages")
    messages = payload["messages"]
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("'messages' must be a non-empty array.", "messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _BadRequest(f"messages[{index}] must be an object with a 'role'.", f"messages[{index}]")
    tools = payload.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise _BadRequest("'tools' must be an array.", "tools")
    stream = payload.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _BadRequest("'stream' must be a boolean.", "stream")
    return messages, tools, stream


def _usage(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, reply: _Reply) -> dict[str, int]:
    prompt = sum(4 + _estimate_tokens(content_text(m.get("content"))) for m in messages)
    if tools:
        prompt += _estimate_tokens(json.dumps(tools))
    completion = _estimate_tokens(reply.content or "")
    for call in reply.tool_calls or []:
        completion += 4 + _estimate_tokens(call["function"]["name"] + call["function"]["arguments"])
    completion = max(completion, 1)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _split_text(text: str) -> Iterator[str]:
    """Word-sized pieces that concatenate back to ``text``."""
    yield from re.findall(r"\s*\S+\s*|\s+", text)


def _split_fixed(text: str, size: int) -> Iterator[str]:
    for start in range(0, len(text), size):
        yield text[start : start + size]


# --------------------------------------------------------------------------------------------------
# The simulated LLM


class FakeLLM:
    """A SIMULATED OpenAI-compatible LLM server on loopback (see the module docstring).

    ``latency_s`` is how long each chat request "thinks"; ``jitter`` is a fraction: the actual
    latency is uniform in ``latency_s * (1 ± jitter)``. ``seed`` makes the jitter reproducible.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_s: float = 0.0,
        jitter: float = 0.0,
        seed: int | None = None,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._lock = threading.Lock()
        self._records_changed = threading.Condition(self._lock)
        self._rules: list[_ActiveRule] = []
        self._records: list[RecordedRequest] = []
        self._seq = 0
        self._call_seq = 0
        self._latency_s = 0.0
        self._jitter = 0.0
        self._rng = random.Random(seed)
        self.configure(latency_s=latency_s, jitter=jitter)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._started_at = 0.0

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> FakeLLM:
        """Bind and serve in a background daemon thread. Returns ``self``."""
        if self._server is not None:
            raise RuntimeError("the simulated LLM is already running")
        self._stopping.clear()
        server = _Server((self.host, self._requested_port), self)
        self._server = server
        self._started_at = time.time()
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"simulated-llm-{self.port}",
            daemon=True,
        )
        self._thread.start()
        log.info(
            "%s nanobot simulated LLM listening on %s (latency %.3fs ± %d%%)",
            _LOG_PREFIX,
            self.base_url,
            self._latency_s,
            round(self._jitter * 100),
        )
        return self

    def stop(self) -> None:
        """Stop serving, wake sleeping handlers and close open connections. Idempotent."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = None
        self._thread = None
        log.info("%s stopped (%d chat requests served)", _LOG_PREFIX, len(self._records))

    def __enter__(self) -> FakeLLM:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        if self._server is not None:
            return int(self._server.server_address[1])
        if self._requested_port:
            return self._requested_port
        raise RuntimeError("port 0 is only resolved once the simulated LLM has been started")

    @property
    def url(self) -> str:
        """Root URL (control endpoints live here): ``http://HOST:PORT``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenAI base URL: ``http://HOST:PORT/v1``."""
        return f"{self.url}/v1"

    # -- configuration ---------------------------------------------------------------------------

    @property
    def latency_s(self) -> float:
        return self._latency_s

    @property
    def jitter(self) -> float:
        return self._jitter

    def configure(self, latency_s: float | None = None, jitter: float | None = None, seed: int | None = None) -> None:
        """Change latency, jitter and/or re-seed the jitter RNG (``None`` leaves a value as is)."""
        if latency_s is not None and (not isinstance(latency_s, int | float) or latency_s < 0):
            raise ValueError(f"latency_s must be a number >= 0, got {latency_s!r}")
        if jitter is not None and (not isinstance(jitter, int | float) or jitter < 0):
            raise ValueError(f"jitter must be a number >= 0, got {jitter!r}")
        with self._lock:
            if latency_s is not None:
                self._latency_s = float(latency_s)
            if jitter is not None:
                self._jitter = float(jitter)
            if seed is not None:
                self._rng.seed(seed)

    def config(self) -> dict[str, Any]:
        with self._lock:
            return {"latency_s": self._latency_s, "jitter": self._jitter, "simulated": True}

    def health(self) -> dict[str, Any]:
        with self._lock:
            return {
                "status": "ok",
                "simulated": True,
                "owned_by": SIMULATED_OWNER,
                "requests": len(self._records),
                "rules": sum(1 for r in self._rules if r.remaining is None or r.remaining > 0),
                "uptime_s": round(time.time() - self._started_at, 3) if self._started_at else 0.0,
            }

    def model_card(self, model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": int(self._started_at), "owned_by": SIMULATED_OWNER}

    # -- scripting -------------------------------------------------------------------------------

    def add_rule(self, rule: Rule) -> Rule:
        """Append a rule (tried after the rules added before it). Returns it."""
        self.add_rules([rule])
        return rule

    def add_rules(self, rules: Iterable[Rule]) -> None:
        new = [_ActiveRule(_as_rule(rule)) for rule in rules]
        with self._lock:
            self._rules.extend(new)

    def prepend_rules(self, rules: Iterable[Rule]) -> None:
        """Put rules in front of all existing ones (keeping their own order)."""
        new = [_ActiveRule(_as_rule(rule)) for rule in rules]
        with self._lock:
            self._rules[:0] = new

    def script(self, *replies: str | Rule | Mapping[str, Any]) -> None:
        """Queue replies served one per request, in order: a string is a content reply, a dict is
        `Rule.from_dict`, a `Rule` is used as is. E.g. ``script(Rule(tool_calls=[...]), "done")``."""
        self.add_rules(_as_rule(reply) for reply in replies)

    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        message: str | None = None,
        retry_after: float | None = None,
    ) -> Rule:
        """Make the next ``n`` chat requests fail with ``status``. This rule goes in front of all
        existing rules, so it takes effect even when a catch-all rule is present."""
        rule = Rule(status=status, times=n, error_message=message, retry_after=retry_after)
        self.prepend_rules([rule])
        return rule

    def disconnect_next(self, n: int = 1) -> Rule:
        """Drop the connection (no response at all) for the next ``n`` chat requests."""
        rule = Rule(disconnect=True, times=n)
        self.prepend_rules([rule])
        return rule

    def unused_rules(self) -> list[Rule]:
        """Rules with a finite ``times`` that still have requests left to serve."""
        with self._lock:
            return [r.rule for r in self._rules if r.remaining is not None and r.remaining > 0]

    # -- recording -------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of the recorded chat requests, ordered by arrival (``seq``)."""
        with self._lock:
            records = list(self._records)
        return sorted(records, key=lambda r: r.seq)

    @property
    def last_request(self) -> RecordedRequest | None:
        records = self.requests
        return records[-1] if records else None

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> list[RecordedRequest]:
        """Block until at least ``n`` chat requests were answered; raises ``TimeoutError``."""
        deadline = time.monotonic() + timeout
        with self._records_changed:
            while len(self._records) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"only {len(self._records)} of {n} requests arrived in {timeout}s")
                self._records_changed.wait(left)
        return self.requests

    def reset(self) -> None:
        """Forget all rules and recorded requests (latency settings are kept)."""
        with self._lock:
            self._rules.clear()
            self._records.clear()
            self._seq = 0
            self._call_seq = 0

    # -- internals used by the handler -----------------------------------------------------------

    def _next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def _record(self, record: RecordedRequest) -> None:
        with self._records_changed:
            self._records.append(record)
            self._records_changed.notify_all()
        log.debug(
            "%s #%d status=%s last_user=%r -> %r",
            _LOG_PREFIX,
            record.seq,
            record.status,
            record.last_user_text[:60],
            (record.reply_content or "")[:60],
        )

    def _sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def _plan_reply(self, messages: list[dict[str, Any]]) -> _Reply:
        with self._lock:
            rule: Rule | None = None
            for active in self._rules:
                if active.remaining is not None and active.remaining <= 0:
                    continue
                if active.rule.matches(messages):
                    if active.remaining is not None:
                        active.remaining -= 1
                    rule = active.rule
                    break
            if rule is not None and rule.delay_s is not None:
                delay = rule.delay_s
            else:
                delay = self._latency_s
                if delay > 0 and self._jitter > 0:
                    delay *= 1 + self._rng.uniform(-self._jitter, self._jitter)
                delay = max(0.0, delay)
            tool_calls: list[dict[str, Any]] | None = None
            if rule is not None and rule.tool_calls and rule.status == 200 and not rule.disconnect:
                tool_calls = []
                for call in rule.tool_calls:
                    self._call_seq += 1
                    arguments = call["arguments"]
                    tool_calls.append(
                        {
                            "id": f"call_{self._call_seq}",
                            "type": "function",
                            "function": {
                                "name": call["name"],
                                "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
                            },
                        }
                    )

        if rule is None:
            return _Reply(delay_s=delay, content=_default_reply(messages))
        if rule.disconnect:
            return _Reply(delay_s=delay, disconnect=True)
        if rule.status != 200:
            return _Reply(
                delay_s=delay, status=rule.status, error_message=rule.error_message, retry_after=rule.retry_after
            )
        content = rule.content
        if content is None and not tool_calls:
            content = _default_reply(messages)
        finish_reason = rule.finish_reason or ("tool_calls" if tool_calls else "stop")
        return _Reply(delay_s=delay, content=content, tool_calls=tool_calls, finish_reason=finish_reason)


def _default_reply(messages: Sequence[Mapping[str, Any]]) -> str:
    last = messages[-1] if messages else {}
    if last.get("role") == "tool":
        return "tool said: " + content_text(last.get("content"))[:TOOL_OUTPUT_ECHO_CHARS]
    if last.get("role") == "user":
        return "echo: " + content_text(last.get("content"))
    return "echo: " + last_user_text(messages)


def _as_rule(item: str | Rule | Mapping[str, Any]) -> Rule:
    if isinstance(item, Rule):
        return item
    if isinstance(item, str):
        return Rule(content=item)
    if isinstance(item, Mapping):
        return Rule.from_dict(item)
    raise TypeError(f"expected a Rule, a dict or a string, got {type(item).__name__}")


# --------------------------------------------------------------------------------------------------
# Client for a simulated LLM running in another process


class RemoteFakeLLM:
    """Drive a `FakeLLM` that runs in another process, through its control endpoints.

    ``base_url`` may be the OpenAI base URL (``http://HOST:PORT/v1``) or the root URL.
    """

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        import httpx

        root = base_url.rstrip("/")
        if root.endswith("/v1"):
            root = root[: -len("/v1")]
        self.url = root
        self.base_url = f"{root}/v1"
        self._client: httpx.Client = httpx.Client(base_url=root, timeout=timeout)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RemoteFakeLLM:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _json(self, response: httpx.Response) -> Any:
        response.raise_for_status()
        return response.json()

    def health(self) -> dict[str, Any]:
        return self._json(self._client.get("/_health"))

    def requests(self, since: int | None = None) -> list[RecordedRequest]:
        params = {"since": str(since)} if since is not None else None
        return [RecordedRequest.from_dict(item) for item in self._json(self._client.get("/_requests", params=params))]

    def add_rules(self, rules: Iterable[Rule | Mapping[str, Any] | str], prepend: bool = False) -> int:
        payload = {"rules": [_as_rule(rule).to_dict() for rule in rules], "prepend": prepend}
        return int(self._json(self._client.post("/_rules", json=payload))["added"])

    def add_rule(self, rule: Rule | Mapping[str, Any]) -> None:
        self.add_rules([rule])

    def script(self, *replies: str | Rule | Mapping[str, Any]) -> None:
        self.add_rules(replies)

    def fail_next(
        self, n: int = 1, status: int = 500, message: str | None = None, retry_after: float | None = None
    ) -> None:
        rule = Rule(status=status, times=n, error_message=message, retry_after=retry_after)
        self.add_rules([rule], prepend=True)

    def reset(self) -> None:
        self._json(self._client.post("/_reset"))

    def configure(
        self, latency_s: float | None = None, jitter: float | None = None, seed: int | None = None
    ) -> dict[str, Any]:
        payload = {
            key: value
            for key, value in {"latency_s": latency_s, "jitter": jitter, "seed": seed}.items()
            if value is not None
        }
        return self._json(self._client.patch("/_config", json=payload))

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> list[RecordedRequest]:
        deadline = time.monotonic() + timeout
        while True:
            records = self.requests()
            if len(records) >= n:
                return records
            if time.monotonic() >= deadline:
                raise TimeoutError(f"only {len(records)} of {n} requests arrived in {timeout}s")
            time.sleep(0.05)


# --------------------------------------------------------------------------------------------------
# CLI


def _write_port_file(path: str, port: int) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(f"{port}\n")
    os.replace(tmp, path)  # atomic: a watcher never reads a half-written file


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nanobot.testing.llm_server",
        description="Run nanobot's SIMULATED LLM (an OpenAI-compatible fake, not a real model).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds each chat request takes")
    parser.add_argument("--jitter", type=float, default=0.0, help="fraction: latency*(1±jitter)")
    parser.add_argument("--seed", type=int, default=None, help="seed for the jitter")
    parser.add_argument("--port-file", default=None, help="write the bound port to this file")
    parser.add_argument("--rules", default=None, help='JSON file: a list of rules or {"rules": [...]}')
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    fake = FakeLLM(host=args.host, port=args.port, latency_s=args.latency, jitter=args.jitter, seed=args.seed)
    if args.rules:
        with open(args.rules, encoding="utf-8") as handle:
            loaded = json.load(handle)
        fake.add_rules(_as_rule(item) for item in (loaded["rules"] if isinstance(loaded, dict) else loaded))

    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    fake.start()
    try:
        print(f"nanobot simulated LLM listening on {fake.base_url}", flush=True)
        if args.port_file:
            _write_port_file(args.port_file, fake.port)
        while not stop.wait(0.2):
            pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
