"""A small HTTP/1.1 server on `asyncio.start_server`, enough for the API channel.

What it does:

* keep-alive (HTTP/1.1 by default, HTTP/1.0 with `Connection: keep-alive`), requests on one connection
  are served one after another;
* request bodies by `Content-Length` or `Transfer-Encoding: chunked` (decoded here; any other transfer
  coding gets 501). A request with neither has an empty body. `Expect: 100-continue` is honoured;
* limits: request line 8 KiB (414), headers 32 KiB / 100 lines (431), body 1 MiB by default (413);
  a malformed request gets 400, an HTTP version other than 1.x gets 505. After an error in the request
  itself the connection is closed, since the rest of the stream can no longer be trusted;
* handler exceptions become a 500 with a JSON error and a log line; the server keeps running;
* `StreamResponse` sends an async iterator of byte chunks (Server-Sent Events) with chunked
  transfer-encoding (HTTP/1.1) or until close (HTTP/1.0), then closes the connection. While it streams,
  the connection is watched so that a client that goes away stops the iterator (its `finally` runs);
* `stop()` closes the listener, drops idle connections at once and gives busy ones a grace period.

A plain (non-streaming) handler is not told when its client disconnects: the answer is simply not
delivered. Header values are decoded as latin-1, the path is percent-decoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

log = logging.getLogger(__name__)

MAX_REQUEST_LINE = 8 * 1024
MAX_HEADER_BYTES = 32 * 1024
MAX_HEADER_COUNT = 100
MAX_BODY_BYTES = 1024 * 1024
_MAX_CHUNK_LINE = 1024
_STREAM_LIMIT = 64 * 1024

_TOKEN_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_VERSION_RE = re.compile(r"^HTTP/(\d)\.(\d)$")
_HEX_RE = re.compile(r"^[0-9A-Fa-f]+$")
_BAD_VALUE_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Headers the server writes itself; a handler's copies of them are ignored.
_MANAGED_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "content-type", "date"})


class Headers(Mapping[str, str]):
    """Request headers with case-insensitive lookup; repeated headers are joined with ", "."""

    def __init__(self, items: Mapping[str, str] | list[tuple[str, str]] | None = None) -> None:
        self._items: dict[str, tuple[str, str]] = {}
        pairs = list(items.items()) if isinstance(items, Mapping) else list(items or [])
        for name, value in pairs:
            self.add(name, value)

    def add(self, name: str, value: str) -> None:
        key = name.lower()
        if key in self._items:
            original, existing = self._items[key]
            self._items[key] = (original, f"{existing}, {value}")
        else:
            self._items[key] = (name, value)

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()][1]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return (original for original, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({[name for name in self]!r})"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = "HTTP/1.1"
    client: str = ""

    def json(self) -> Any:
        """The body parsed as JSON; raises ValueError with a readable message when it is not."""
        if not self.body.strip():
            raise ValueError("request body is empty")
        try:
            text = self.body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError("request body is not valid UTF-8") from exc
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"request body is not valid JSON: {exc.msg} (line {exc.lineno} column {exc.colno})"
            ) from exc


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class StreamResponse:
    """A response whose body is produced over time, e.g. Server-Sent Events.

    The iterator is closed (`aclose`) when the stream ends for any reason, including a client that
    disconnects, so it may clean up in a `finally` block.
    """

    chunks: AsyncIterator[bytes]
    status: int = 200
    content_type: str = "text/event-stream"
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Awaitable[Response | StreamResponse]]


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(data, ensure_ascii=False).encode("utf-8")
    return Response(status=status, body=body, content_type="application/json", headers=dict(headers or {}))


def text_response(text: str, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(status=status, body=text.encode("utf-8"), headers=dict(headers or {}))


def sse_event(data: str | dict[str, Any] | list[Any], event: str | None = None) -> bytes:
    """One Server-Sent Event; dicts and lists are sent as compact JSON."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    lines = [f"event: {event}"] if event else []
    lines.extend(f"data: {line}" for line in text.split("\n"))
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def _error_body(status: int, message: str) -> Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return json_response({"error": {"message": message, "type": kind, "param": None, "code": None}}, status)


class _HttpError(Exception):
    """A request that cannot be served; answered with `status` and the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _ClientGone(Exception):
    """The client closed the connection before a whole request arrived."""


@dataclass(eq=False)
class _Connection:
    task: asyncio.Task[None]
    writer: asyncio.StreamWriter
    busy: bool = False


class HttpServer:
    def __init__(
        self,
        handler: Handler,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_body_bytes: int = MAX_BODY_BYTES,
        keepalive_timeout: float = 75.0,
        request_timeout: float = 30.0,
        write_timeout: float = 30.0,
    ) -> None:
        self._handler = handler
        self.host = host
        self._requested_port = port
        self.max_body_bytes = max_body_bytes
        self.keepalive_timeout = keepalive_timeout
        self.request_timeout = request_timeout
        self.write_timeout = write_timeout
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._closing = False

    # ------------------------------------------------------------------ lifecycle
    @property
    def port(self) -> int:
        """The bound port (useful with port 0); the configured port before `start()`."""
        if self._server is not None and self._server.sockets:
            return int(self._server.sockets[0].getsockname()[1])
        return self._requested_port

    @property
    def is_serving(self) -> bool:
        return self._server is not None and self._server.is_serving()

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("server already started")
        self._closing = False
        self._server = await asyncio.start_server(
            self._serve_connection, self.host, self._requested_port, limit=_STREAM_LIMIT
        )
        log.info("http server listening on %s:%d", self.host, self.port)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop listening, close idle connections, give busy ones `grace` seconds, then cut them."""
        server = self._server
        if server is None:
            return
        self._closing = True
        server.close()
        for conn in list(self._connections):
            if not conn.busy:
                conn.task.cancel()
        tasks = [conn.task for conn in self._connections]
        busy = [task for task in tasks if not task.done()]
        if busy:
            _, still_running = await asyncio.wait(busy, timeout=grace)
            for task in still_running:
                task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await server.wait_closed()
        self._server = None
        log.info("http server on %s stopped", self.host)

    # ------------------------------------------------------------------ connections
    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        conn = _Connection(task=task, writer=writer)
        self._connections.add(conn)
        peer = writer.get_extra_info("peername")
        client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else ""
        clean = True
        try:
            first = True
            while not self._closing:
                conn.busy = False
                try:
                    request = await self._read_request(reader, writer, client, first)
                except _HttpError as exc:
                    conn.busy = True
                    log.info("http %s: bad request (%d): %s", client, exc.status, exc.message)
                    await self._write_response(writer, _error_body(exc.status, exc.message), "GET", False)
                    break
                if request is None:
                    break
                first = False
                conn.busy = True
                keep_alive = self._wants_keep_alive(request) and not self._closing
                response = await self._call_handler(request)
                if isinstance(response, StreamResponse):
                    await self._write_stream(reader, writer, request, response)
                    break
                if not await self._write_response(writer, response, request.method, keep_alive):
                    clean = False
                    break
                if not keep_alive:
                    break
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError, _ClientGone):
            clean = False
        except asyncio.CancelledError:
            # Only stop() (or loop shutdown) cancels a connection task. The task ends normally so that
            # asyncio's stream callback (which on 3.11 calls task.exception()) does not log an error.
            clean = False
        except Exception:
            clean = False
            log.exception("http %s: unexpected error on connection", client)
        finally:
            self._connections.discard(conn)
            await self._close_writer(writer, clean)

    async def _close_writer(self, writer: asyncio.StreamWriter, clean: bool) -> None:
        if not clean:
            writer.transport.abort()
            return
        try:
            writer.close()
            async with asyncio.timeout(2.0):
                await writer.wait_closed()
        except (Exception, asyncio.CancelledError):
            writer.transport.abort()

    @staticmethod
    def _wants_keep_alive(request: Request) -> bool:
        tokens = {token.strip().lower() for token in request.headers.get("connection", "").split(",")}
        if request.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens

    async def _call_handler(self, request: Request) -> Response | StreamResponse:
        try:
            response = await self._handler(request)
        except Exception:
            log.exception("http handler failed for %s %s", request.method, request.path)
            return _error_body(500, "internal server error")
        if not isinstance(response, Response | StreamResponse):
            log.error("http handler returned %r for %s %s", type(response), request.method, request.path)
            return _error_body(500, "internal server error")
        return response

    # ------------------------------------------------------------------ reading
    async def _read_line(self, reader: asyncio.StreamReader, limit: int, status: int, what: str) -> bytes:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as exc:
            raise _HttpError(status, f"{what} too long") from exc
        except asyncio.IncompleteReadError as exc:
            raise _ClientGone() from exc
        if len(line) > limit:
            raise _HttpError(status, f"{what} too long")
        return line

    async def _read_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: str, first: bool
    ) -> Request | None:
        """The next request, or None when the client closed the connection (or idled out) between requests."""
        idle_timeout = self.request_timeout if first else self.keepalive_timeout
        try:
            async with asyncio.timeout(idle_timeout):
                line = b""
                for _ in range(4):  # tolerate a few stray empty lines between requests
                    line = await self._read_line(reader, MAX_REQUEST_LINE, 414, "request line")
                    if line.strip():
                        break
        except (_ClientGone, TimeoutError):
            return None
        if not line.strip():
            raise _HttpError(400, "malformed request line")

        async with asyncio.timeout(self.request_timeout):
            method, target, version = self._parse_request_line(line)
            headers = await self._read_headers(reader)
            path, query = self._parse_target(target)
            body = await self._read_body(reader, writer, headers, version)
        return Request(
            method=method, path=path, query=query, headers=headers, body=body, version=version, client=client
        )

    @staticmethod
    def _parse_request_line(line: bytes) -> tuple[str, str, str]:
        text = line.decode("latin-1").rstrip("\r\n")
        parts = text.split(" ")
        if len(parts) != 3:
            raise _HttpError(400, "malformed request line")
        method, target, version = parts
        if not _TOKEN_RE.match(method) or not target or any(ord(ch) <= 0x20 or ord(ch) >= 0x7F for ch in target):
            raise _HttpError(400, "malformed request line")
        match = _VERSION_RE.match(version)
        if not match:
            raise _HttpError(400, "malformed request line")
        if match.group(1) != "1":
            raise _HttpError(505, "HTTP version not supported")
        return method.upper(), target, "HTTP/1.0" if match.group(2) == "0" else "HTTP/1.1"

    @staticmethod
    def _parse_target(target: str) -> tuple[str, dict[str, str]]:
        if target == "*":
            return "*", {}
        if target.startswith("/"):
            raw_path, _, raw_query = target.partition("?")
            raw_path = raw_path.partition("#")[0]
            raw_query = raw_query.partition("#")[0]
        elif target.lower().startswith(("http://", "https://")):
            split = urlsplit(target)
            raw_path, raw_query = split.path or "/", split.query
        else:
            raise _HttpError(400, "malformed request target")
        query = dict(parse_qsl(raw_query, keep_blank_values=True))
        return unquote(raw_path), query

    async def _read_headers(self, reader: asyncio.StreamReader) -> Headers:
        headers = Headers()
        total = 0
        count = 0
        while True:
            line = await self._read_line(reader, MAX_HEADER_BYTES, 431, "header section")
            total += len(line)
            if total > MAX_HEADER_BYTES:
                raise _HttpError(431, "header section too large")
            text = line.decode("latin-1").rstrip("\r\n")
            if not text:
                return headers
            count += 1
            if count > MAX_HEADER_COUNT:
                raise _HttpError(431, "too many headers")
            if text[0] in " \t":
                raise _HttpError(400, "folded header lines are not supported")
            name, sep, value = text.partition(":")
            if not sep or not _TOKEN_RE.match(name):
                raise _HttpError(400, "malformed header line")
            value = value.strip(" \t")
            if _BAD_VALUE_RE.search(value):
                raise _HttpError(400, "invalid character in header value")
            headers.add(name, value)

    async def _read_body(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, headers: Headers, version: str
    ) -> bytes:
        transfer_encoding = headers.get("transfer-encoding")
        content_length = headers.get("content-length")
        if transfer_encoding is not None:
            if content_length is not None:
                raise _HttpError(400, "both Content-Length and Transfer-Encoding given")
            codings = [coding.strip().lower() for coding in transfer_encoding.split(",") if coding.strip()]
            if codings != ["chunked"]:
                raise _HttpError(501, "only the chunked transfer coding is supported")
            await self._send_continue(writer, headers, version)
            return await self._read_chunked(reader)
        if content_length is None:
            return b""
        values = {value.strip() for value in content_length.split(",")}
        if len(values) != 1:
            raise _HttpError(400, "conflicting Content-Length values")
        value = values.pop()
        if not value.isdigit() or not value.isascii():
            raise _HttpError(400, "invalid Content-Length")
        length = int(value)
        if length > self.max_body_bytes:
            raise _HttpError(413, f"request body larger than {self.max_body_bytes} bytes")
        if length == 0:
            return b""
        await self._send_continue(writer, headers, version)
        try:
            return await reader.readexactly(length)
        except asyncio.IncompleteReadError as exc:
            raise _ClientGone() from exc

    async def _send_continue(self, writer: asyncio.StreamWriter, headers: Headers, version: str) -> None:
        if version == "HTTP/1.1" and headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await self._drain(writer)

    async def _read_chunked(self, reader: asyncio.StreamReader) -> bytes:
        body = bytearray()
        try:
            while True:
                line = await self._read_line(reader, _MAX_CHUNK_LINE, 400, "chunk size line")
                size_text = line.decode("latin-1").split(";", 1)[0].strip()
                if not _HEX_RE.match(size_text):
                    raise _HttpError(400, "invalid chunk size")
                size = int(size_text, 16)
                if size == 0:
                    break
                if len(body) + size > self.max_body_bytes:
                    raise _HttpError(413, f"request body larger than {self.max_body_bytes} bytes")
                body += await reader.readexactly(size)
                if await reader.readexactly(2) != b"\r\n":
                    raise _HttpError(400, "malformed chunk")
            trailer_bytes = 0
            while True:  # trailers are read and ignored
                line = await self._read_line(reader, MAX_HEADER_BYTES, 431, "trailer section")
                trailer_bytes += len(line)
                if trailer_bytes > MAX_HEADER_BYTES:
                    raise _HttpError(431, "trailer section too large")
                if not line.strip():
                    break
        except asyncio.IncompleteReadError as exc:
            raise _ClientGone() from exc
        return bytes(body)

    # ------------------------------------------------------------------ writing
    async def _drain(self, writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(self.write_timeout):
            await writer.drain()

    @staticmethod
    def _head(status: int, content_type: str | None, extra: Mapping[str, str], fixed: list[tuple[str, str]]) -> bytes:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        lines = [f"HTTP/1.1 {status} {reason}", f"Date: {formatdate(usegmt=True)}"]
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        lines.extend(f"{name}: {value}" for name, value in fixed)
        for name, value in extra.items():
            if name.lower() in _MANAGED_HEADERS:
                continue
            if not _TOKEN_RE.match(name) or _BAD_VALUE_RE.search(value):
                raise ValueError(f"invalid response header {name!r}")
            lines.append(f"{name}: {value}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _write_response(
        self, writer: asyncio.StreamWriter, response: Response, method: str, keep_alive: bool
    ) -> bool:
        """Send a whole response; False when the client is gone."""
        status = response.status
        no_body = status in (204, 304) or 100 <= status < 200
        fixed: list[tuple[str, str]] = []
        if not no_body:
            fixed.append(("Content-Length", str(len(response.body))))
        fixed.append(("Connection", "keep-alive" if keep_alive else "close"))
        try:
            head = self._head(status, None if no_body else response.content_type, response.headers, fixed)
        except (ValueError, UnicodeEncodeError):
            log.exception("http handler produced an invalid response head")
            return await self._write_response(writer, _error_body(500, "internal server error"), method, False)
        try:
            writer.write(head)
            if not no_body and method != "HEAD" and response.body:
                writer.write(response.body)
            await self._drain(writer)
        except (ConnectionError, TimeoutError):
            return False
        return True

    async def _write_stream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: Request, response: StreamResponse
    ) -> None:
        chunked = request.version == "HTTP/1.1"
        fixed = [("Transfer-Encoding", "chunked")] if chunked else []
        fixed.append(("Connection", "close"))
        chunks = response.chunks
        try:
            try:
                head = self._head(response.status, response.content_type, response.headers, fixed)
            except (ValueError, UnicodeEncodeError):
                log.exception("http handler produced an invalid response head")
                await self._write_response(writer, _error_body(500, "internal server error"), request.method, False)
                return
            writer.write(head)
            await self._drain(writer)
            if request.method == "HEAD":
                return

            async def pump() -> None:
                async for chunk in chunks:
                    if not chunk:
                        continue
                    writer.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                    await self._drain(writer)
                if chunked:
                    writer.write(b"0\r\n\r\n")
                    await self._drain(writer)

            async def watch() -> None:
                # Anything the client sends now is discarded (the connection closes after the stream);
                # end of file means the client went away.
                while await reader.read(_STREAM_LIMIT):
                    pass

            pump_task = asyncio.create_task(pump())
            watch_task = asyncio.create_task(watch())
            try:
                done, _ = await asyncio.wait({pump_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (pump_task, watch_task):
                    task.cancel()
                results = await asyncio.gather(pump_task, watch_task, return_exceptions=True)
            if pump_task not in done:
                log.info("http %s: client disconnected during stream %s", request.client, request.path)
                return
            error = results[0]
            if isinstance(error, ConnectionError | TimeoutError):
                log.info("http %s: stream %s ended early: %r", request.client, request.path, error)
            elif isinstance(error, BaseException) and not isinstance(error, asyncio.CancelledError):
                log.error("http stream %s failed", request.path, exc_info=error)
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
