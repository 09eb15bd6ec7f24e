"""The OpenAI-compatible API channel and its HTTP server, in process: bus + channel on port 0 + a fake agent."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from nanobot.bus.events import InboundMessage, OutboundMessage
from nanobot.bus.queue import MessageBus
from nanobot.channels.api import ApiChannel
from nanobot.channels.api_auth import AuthFailureThrottle, ClientKeys, UnsafeBindError, binding_refusal
from nanobot.config.loader import ConfigError, load_config
from nanobot.config.schema import ApiChannelConfig
from nanobot.testing.llm_server import FakeLLM
from nanobot.testing.processes import nanobot
from tests.conftest import write_config

KEY = "sk-test-secret"


@dataclass
class Harness:
    channel: ApiChannel
    bus: MessageBus
    client: httpx.AsyncClient
    inbound: list[InboundMessage] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.channel.port}"


Responder = Callable[[Harness, InboundMessage], Awaitable[None]]


async def reply(h: Harness, msg: InboundMessage) -> None:
    await h.bus.publish_outbound(
        OutboundMessage(channel="api", chat_id=msg.chat_id, content=f"reply to {msg.content}", reply_to=msg.message_id)
    )


async def progress_then_reply(h: Harness, msg: InboundMessage) -> None:
    await h.bus.publish_outbound(
        OutboundMessage(
            channel="api",
            chat_id=msg.chat_id,
            content="thinking...",
            reply_to=msg.message_id,
            metadata={"_progress": True},
        )
    )
    await reply(h, msg)


async def slow_random_reply(h: Harness, msg: InboundMessage) -> None:
    await asyncio.sleep(random.uniform(0, 0.05))
    await reply(h, msg)


@asynccontextmanager
async def running(
    responder: Responder | None = reply, clock: Callable[[], float] | None = None, **config: Any
) -> AsyncIterator[Harness]:
    bus = MessageBus()
    options: dict[str, Any] = {"clock": clock} if clock is not None else {}
    channel = ApiChannel(ApiChannelConfig(enabled=True, port=0, **config), bus, **options)
    channel_task = asyncio.create_task(channel.start())
    await asyncio.wait_for(channel.started.wait(), 5)
    client = httpx.AsyncClient(trust_env=False, timeout=10)
    h = Harness(channel=channel, bus=bus, client=client)
    background: set[asyncio.Task[None]] = set()

    async def agent() -> None:
        while True:
            msg = await bus.consume_inbound()
            h.inbound.append(msg)
            if responder is not None:
                task = asyncio.create_task(responder(h, msg))
                background.add(task)
                task.add_done_callback(background.discard)

    async def dispatcher() -> None:
        while True:
            out = await bus.consume_outbound()
            if out.channel == "api":
                await channel.send(out)

    tasks = [asyncio.create_task(agent()), asyncio.create_task(dispatcher())]
    try:
        yield h
    finally:
        await client.aclose()
        await channel.stop()
        await asyncio.wait_for(channel_task, 5)
        for task in [*tasks, *background]:
            task.cancel()
        await asyncio.gather(*tasks, *background, return_exceptions=True)


def run(coro: Awaitable[None]) -> None:
    async def main() -> None:
        await asyncio.wait_for(coro, 30)

    asyncio.run(main())


async def wait_until(predicate: Callable[[], bool], limit_s: float = 5.0) -> None:
    for _ in range(int(limit_s / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in time")


def chat(content: Any = "hello", **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], **extra}


def assert_openai_error(response: httpx.Response, status: int, kind: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if kind is not None:
        assert error["type"] == kind
    return error


# ---------------------------------------------------------------- completions
def test_completion_with_session_id() -> None:
    async def scenario() -> None:
        async with running() as h:
            body = {
                "model": "my-model",
                "session_id": "abc",
                "messages": [
                    {"role": "system", "content": "be nice"},
                    {"role": "user", "content": "first"},
                    {"role": "assistant", "content": "earlier answer"},
                    {"role": "user", "content": "hello"},
                ],
            }
            r = await h.client.post(f"{h.base}/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            data = r.json()
            assert len(h.inbound) == 1
            inbound = h.inbound[0]
            assert inbound.channel == "api"
            assert inbound.session_key == "api:abc"
            assert inbound.chat_id == "abc"
            assert inbound.sender_id == "api"
            assert inbound.content == "hello"
            assert data == {
                "id": f"chatcmpl-{inbound.message_id}",
                "object": "chat.completion",
                "created": data["created"],
                "model": "my-model",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "reply to hello"}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            }
            assert isinstance(data["created"], int)
            assert h.channel.pending_count == 0

    run(scenario())


def test_default_session_model_and_user() -> None:
    async def scenario() -> None:
        async with running() as h:
            r = await h.client.post(f"{h.base}/v1/chat/completions", json=chat("hi", user="alice"))
            assert r.status_code == 200
            assert r.json()["model"] == "nanobot"
            assert r.json()["choices"][0]["message"]["content"] == "reply to hi"
            inbound = h.inbound[0]
            assert inbound.session_key == "api:default"
            assert inbound.sender_id == "api"  # the client, never what `user` says
            assert inbound.metadata["api_user"] == "alice"

    run(scenario())


def test_content_as_list_of_parts() -> None:
    async def scenario() -> None:
        async with running() as h:
            parts = [
                {"type": "text", "text": "line one"},
                {"type": "image_url", "image_url": {"url": "http://example.invalid/x.png"}},
                {"type": "text", "text": "line two"},
            ]
            r = await h.client.post(f"{h.base}/v1/chat/completions", json=chat(parts))
            assert r.status_code == 200
            assert h.inbound[0].content == "line one\nline two"
            assert r.json()["choices"][0]["message"]["content"] == "reply to line one\nline two"

    run(scenario())


def test_progress_is_ignored_without_streaming() -> None:
    async def scenario() -> None:
        async with running(progress_then_reply) as h:
            r = await h.client.post(f"{h.base}/v1/chat/completions", json=chat("hey"))
            assert r.status_code == 200
            assert r.json()["choices"][0]["message"]["content"] == "reply to hey"

    run(scenario())


async def read_sse(response: httpx.Response) -> list[str]:
    """The `data:` payloads of an SSE stream (comments and blank lines dropped)."""
    payloads = []
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            payloads.append(line.removeprefix("data: "))
    return payloads


def test_streaming_sse() -> None:
    async def scenario() -> None:
        async with running(progress_then_reply) as h:
            async with h.client.stream(
                "POST", f"{h.base}/v1/chat/completions", json=chat("stream me", stream=True, session_id="s1")
            ) as r:
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/event-stream")
                payloads = await read_sse(r)
            assert payloads[-1] == "[DONE]"
            chunks = [json.loads(p) for p in payloads[:-1]]
            message_id = h.inbound[0].message_id
            assert h.inbound[0].session_key == "api:s1"
            for c in chunks:
                assert c["object"] == "chat.completion.chunk"
                assert c["id"] == f"chatcmpl-{message_id}"
                assert c["model"] == "nanobot"
                assert len(c["choices"]) == 1 and c["choices"][0]["index"] == 0
            assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
            assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
            assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
            contents = [c["choices"][0]["delta"].get("content", "") for c in chunks]
            assert contents[1].startswith("thinking...")
            assert contents[2] == "reply to stream me"
            assert "".join(contents).endswith("reply to stream me")
            assert h.channel.pending_count == 0

    run(scenario())


# ---------------------------------------------------------------- other endpoints
def test_models_and_health() -> None:
    async def scenario() -> None:
        async with running() as h:
            r = await h.client.get(f"{h.base}/v1/models")
            assert r.status_code == 200
            data = r.json()
            assert data["object"] == "list"
            assert len(data["data"]) == 1
            model = data["data"][0]
            assert model["id"] == "nanobot" and model["object"] == "model" and model["owned_by"] == "nanobot"
            assert isinstance(model["created"], int)
            r = await h.client.get(f"{h.base}/v1/models/nanobot")
            assert r.status_code == 200 and r.json()["id"] == "nanobot"
            assert_openai_error(await h.client.get(f"{h.base}/v1/models/gpt-4"), 404)
            r = await h.client.get(f"{h.base}/health")
            assert r.status_code == 200
            assert r.json() == {"status": "ok", "pending": 0}

    run(scenario())


def test_health_counts_pending_requests() -> None:
    async def scenario() -> None:
        async with running(None) as h:
            request = asyncio.create_task(h.client.post(f"{h.base}/v1/chat/completions", json=chat("wait")))
            await wait_until(lambda: bool(h.inbound))
            r = await h.client.get(f"{h.base}/health")
            assert r.json() == {"status": "ok", "pending": 1}
            await reply(h, h.inbound[0])
            assert (await request).status_code == 200
            assert (await h.client.get(f"{h.base}/health")).json()["pending"] == 0

    run(scenario())


# ---------------------------------------------------------------- auth
def test_auth() -> None:
    async def scenario() -> None:
        async with running(api_key=KEY) as h:
            url = f"{h.base}/v1/chat/completions"
            error = assert_openai_error(await h.client.post(url, json=chat()), 401, "authentication_error")
            assert KEY not in error["message"]
            wrong = {"Authorization": "Bearer sk-wrong"}
            assert_openai_error(await h.client.post(url, json=chat(), headers=wrong), 401, "authentication_error")
            basic = {"Authorization": f"Basic {KEY}"}
            assert_openai_error(await h.client.post(url, json=chat(), headers=basic), 401, "authentication_error")
            assert_openai_error(await h.client.get(f"{h.base}/v1/models"), 401, "authentication_error")
            assert_openai_error(await h.client.get(f"{h.base}/nowhere"), 401, "authentication_error")
            assert h.inbound == []

            right = {"Authorization": f"Bearer {KEY}"}
            r = await h.client.post(url, json=chat("authed"), headers=right)
            assert r.status_code == 200
            assert r.json()["choices"][0]["message"]["content"] == "reply to authed"
            assert (await h.client.get(f"{h.base}/v1/models", headers=right)).status_code == 200

            r = await h.client.get(f"{h.base}/health")
            assert r.status_code == 200 and r.json()["status"] == "ok"

    run(scenario())


def test_api_key_is_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def scenario() -> None:
        async with running(api_key=KEY) as h:
            await h.client.post(f"{h.base}/v1/chat/completions", json=chat(), headers={"Authorization": "Bearer x"})
            await h.client.post(
                f"{h.base}/v1/chat/completions", json=chat(), headers={"Authorization": f"Bearer {KEY}"}
            )

    run(scenario())
    assert KEY not in caplog.text


# ---------------------------------------------------------------- bad requests
BAD_REQUESTS: list[tuple[str, bytes | Any]] = [
    ("invalid json", b"{not json"),
    ("empty body", b""),
    ("invalid utf-8", b"\xff\xfe{}"),
    ("body is a list", [chat()]),
    ("body is a string", "hello"),
    ("messages missing", {"model": "nanobot"}),
    ("messages not a list", {"messages": "hello"}),
    ("messages empty", {"messages": []}),
    ("message not an object", {"messages": ["hello"]}),
    ("no user message", {"messages": [{"role": "system", "content": "x"}, {"role": "assistant", "content": "y"}]}),
    ("empty content", chat("")),
    ("blank content", chat("   \n")),
    ("null content", chat(None)),
    ("content is a number", chat(42)),
    ("content parts without text", chat([{"type": "image_url", "image_url": {"url": "x"}}])),
    ("content part not an object", chat(["hello"])),
    ("content part text not a string", chat([{"type": "text", "text": 5}])),
    ("stream not bool", chat(stream="yes")),
    ("stream is a number", chat(stream=1)),
    ("session_id not a string", chat(session_id=12)),
    ("session_id empty", chat(session_id="")),
    ("session_id too long", chat(session_id="x" * 1000)),
    ("session_id with a slash", chat(session_id="a/b")),
    ("user not a string", chat(user=["bob"])),
    ("model not a string", chat(model=3)),
]


@pytest.mark.parametrize(("case", "body"), BAD_REQUESTS, ids=[case for case, _ in BAD_REQUESTS])
def test_bad_requests(case: str, body: bytes | Any) -> None:
    async def scenario() -> None:
        async with running() as h:
            url = f"{h.base}/v1/chat/completions"
            if isinstance(body, bytes):
                r = await h.client.post(url, content=body, headers={"Content-Type": "application/json"})
            else:
                r = await h.client.post(url, json=body)
            assert_openai_error(r, 400, "invalid_request_error")
            assert h.inbound == []
            assert h.channel.pending_count == 0

    run(scenario())


def test_unknown_path_and_wrong_method() -> None:
    async def scenario() -> None:
        async with running() as h:
            assert_openai_error(await h.client.get(f"{h.base}/v2/whatever"), 404)
            assert_openai_error(await h.client.post(f"{h.base}/", json={}), 404)
            r = await h.client.get(f"{h.base}/v1/chat/completions")
            assert_openai_error(r, 405)
            assert r.headers["allow"] == "POST"
            assert_openai_error(await h.client.post(f"{h.base}/v1/models", json={}), 405)
            assert_openai_error(await h.client.delete(f"{h.base}/health"), 405)

    run(scenario())


# ---------------------------------------------------------------- timeouts, refusals, concurrency
def test_timeout_then_late_reply_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="nanobot.channels.api")

    async def scenario() -> None:
        async with running(None, timeout_s=0.2) as h:
            r = await h.client.post(f"{h.base}/v1/chat/completions", json=chat("slow"))
            assert_openai_error(r, 504, "timeout_error")
            assert h.channel.pending_count == 0
            late = h.inbound[0]
            await h.channel.send(
                OutboundMessage(channel="api", chat_id=late.chat_id, content="too late", reply_to=late.message_id)
            )
            await h.channel.send(OutboundMessage(channel="api", chat_id="default", content="cron says hi"))
            assert h.channel.pending_count == 0

    run(scenario())
    assert "dropping outbound" in caplog.text
    assert "timed out" in caplog.text


def test_streaming_timeout_sends_error_event() -> None:
    async def scenario() -> None:
        async with running(None, timeout_s=0.2) as h:
            async with h.client.stream("POST", f"{h.base}/v1/chat/completions", json=chat(stream=True)) as r:
                assert r.status_code == 200
                payloads = await read_sse(r)
            assert payloads[-1] == "[DONE]"
            assert json.loads(payloads[-2])["error"]["type"] == "timeout_error"
            assert h.channel.pending_count == 0

    run(scenario())


def test_allow_from_refusal() -> None:
    async def scenario() -> None:
        async with running(allow_from=["alice"]) as h:
            url = f"{h.base}/v1/chat/completions"
            error = assert_openai_error(await h.client.post(url, json=chat(user="bob")), 403, "permission_error")
            assert "'api'" in error["message"]
            assert_openai_error(await h.client.post(url, json=chat()), 403)
            # Naming an allowed user does not help: allowFrom lists clients.
            assert_openai_error(await h.client.post(url, json=chat("let me in", user="alice")), 403)
            assert h.inbound == []
            assert h.channel.pending_count == 0

        async with running(allow_from=["api"]) as h:
            r = await h.client.post(f"{h.base}/v1/chat/completions", json=chat("let me in"))
            assert r.status_code == 200
            assert r.json()["choices"][0]["message"]["content"] == "reply to let me in"

    run(scenario())


def test_concurrent_requests_get_their_own_replies() -> None:
    async def scenario() -> None:
        async with running(slow_random_reply) as h:
            url = f"{h.base}/v1/chat/completions"

            async def ask(i: int) -> tuple[int, httpx.Response]:
                return i, await h.client.post(url, json=chat(f"question {i}", session_id=f"session-{i}"))

            results = await asyncio.gather(*(ask(i) for i in range(12)))
            for i, r in results:
                assert r.status_code == 200
                assert r.json()["choices"][0]["message"]["content"] == f"reply to question {i}"
            assert sorted(m.session_key for m in h.inbound) == sorted(f"api:session-{i}" for i in range(12))
            assert h.channel.pending_count == 0

    run(scenario())


def test_stop_fails_pending_requests_with_503() -> None:
    async def scenario() -> None:
        async with running(None) as h:
            url = f"{h.base}/v1/chat/completions"
            request = asyncio.create_task(h.client.post(url, json=chat("never answered")))
            await wait_until(lambda: bool(h.inbound))
            await h.channel.stop()
            assert_openai_error(await request, 503)
            assert not h.channel.is_running

    run(scenario())


def test_stream_client_disconnect_releases_waiter() -> None:
    async def scenario() -> None:
        async with running(None) as h:
            reader, writer = await asyncio.open_connection("127.0.0.1", h.channel.port)
            body = json.dumps(chat(stream=True)).encode()
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
            )
            await writer.drain()
            assert (await reader.readline()).startswith(b"HTTP/1.1 200")
            await wait_until(lambda: h.channel.pending_count == 1)
            writer.close()
            await wait_until(lambda: h.channel.pending_count == 0)

    run(scenario())


# ---------------------------------------------------------------- the HTTP layer (aiohttp)
async def exchange(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        with suppress(Exception):
            await writer.wait_closed()


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def test_body_limit_is_an_openai_error() -> None:
    async def scenario() -> None:
        async with running(max_body_bytes=2048) as h:
            url = f"{h.base}/v1/chat/completions"
            r = await h.client.post(url, json=chat("x" * 4096))
            error = assert_openai_error(r, 413)
            assert error["code"] == "request_too_large"
            assert h.inbound == [] and h.channel.pending_count == 0
            assert (await h.client.post(url, json=chat("small"))).status_code == 200

    run(scenario())


def test_connection_cap_refuses_with_503_and_recovers() -> None:
    async def scenario() -> None:
        async with running(None, max_connections=2) as h:
            url = f"{h.base}/v1/chat/completions"
            waiting = [asyncio.create_task(h.client.post(url, json=chat(f"q{i}", session_id=f"s{i}"))) for i in (1, 2)]
            await wait_until(lambda: len(h.inbound) == 2)
            r = await h.client.post(url, json=chat("one too many"))
            error = assert_openai_error(r, 503, "server_error")
            assert error["code"] == "server_busy" and r.headers["retry-after"] == "1"
            for msg in list(h.inbound):
                await reply(h, msg)
            assert [(await t).status_code for t in waiting] == [200, 200]
            assert len(h.inbound) == 2  # the refused request never reached the agent
            third = asyncio.create_task(h.client.post(url, json=chat("room again")))
            await wait_until(lambda: len(h.inbound) == 3)
            await reply(h, h.inbound[2])
            assert (await third).status_code == 200

    run(scenario())


def test_keep_alive_pipelining_and_chunked_bodies() -> None:
    async def scenario() -> None:
        async with running() as h:
            body = json.dumps(chat("chunked")).encode()
            half = len(body) // 2
            raw = await exchange(
                h.channel.port,
                b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                b"Content-Type: application/json\r\nConnection: close\r\n\r\n"
                + b"%x\r\n%b\r\n%x\r\n%b\r\n0\r\n\r\n" % (half, body[:half], len(body) - half, body[half:]),
            )
            assert raw.count(b"HTTP/1.1 200 OK") == 2
            assert b"reply to chunked" in raw

    run(scenario())


@pytest.mark.parametrize(
    "data",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n",
    ],
    ids=["garbage", "bad-header", "bad-length", "long-line"],
)
def test_malformed_http_is_refused_and_the_server_keeps_serving(data: bytes) -> None:
    async def scenario() -> None:
        async with running() as h:
            raw = await exchange(h.channel.port, data)
            assert 400 <= status_of(raw) < 500, raw[:200]
            assert h.inbound == []
            assert (await h.client.post(f"{h.base}/v1/chat/completions", json=chat("still here"))).status_code == 200

    run(scenario())


def test_stop_with_open_connections() -> None:
    async def scenario() -> None:
        async with running() as h:
            port = h.channel.port
            assert (await h.client.get(f"{h.base}/health")).status_code == 200  # an idle keep-alive connection
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /health HTTP/1.1\r\n")  # and a half-sent request
            await writer.drain()
            await asyncio.sleep(0.05)
            await asyncio.wait_for(h.channel.stop(), 10)
            writer.close()
            with pytest.raises(httpx.ConnectError):
                await h.client.get(f"http://127.0.0.1:{port}/health")

    run(scenario())


# ---------------------------------------------------------------- clients, namespaces, throttling, binding
KEY_A = "sk-client-a-secret"
KEY_B = "sk-client-b-secret"
TWO_CLIENTS = {KEY_A: "A", KEY_B: "B"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def remembering() -> Responder:
    """A fake agent with one history per session key: each reply lists what that session has heard."""
    histories: dict[str, list[str]] = {}

    async def respond(h: Harness, msg: InboundMessage) -> None:
        history = histories.setdefault(msg.session_key, [])
        history.append(msg.content)
        content = f"{msg.session_key} heard {' | '.join(history)}"
        await h.bus.publish_outbound(
            OutboundMessage(channel="api", chat_id=msg.chat_id, content=content, reply_to=msg.message_id)
        )

    return respond


def content_of(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["message"]["content"])


def test_each_client_has_its_own_sessions() -> None:
    async def scenario() -> None:
        async with running(remembering(), keys=TWO_CLIENTS) as h:
            url = f"{h.base}/v1/chat/completions"
            a, b = bearer(KEY_A), bearer(KEY_B)
            assert content_of(await h.client.post(url, json=chat("A secret", session_id="s1"), headers=a)) == (
                "api:A/s1 heard A secret"
            )
            # B names the same session_id and gets a fresh conversation of its own.
            assert content_of(await h.client.post(url, json=chat("B here", session_id="s1"), headers=b)) == (
                "api:B/s1 heard B here"
            )
            assert content_of(await h.client.post(url, json=chat("again", session_id="s1"), headers=a)) == (
                "api:A/s1 heard A secret | again"
            )
            assert [(m.sender_id, m.chat_id, m.session_key) for m in h.inbound] == [
                ("A", "A/s1", "api:A/s1"),
                ("B", "B/s1", "api:B/s1"),
                ("A", "A/s1", "api:A/s1"),
            ]
            # Nor can B name A's namespace.
            for forged in ("A/s1", "a/s1", "/s1", "A/"):
                error = assert_openai_error(
                    await h.client.post(url, json=chat("let me read", session_id=forged), headers=b), 400
                )
                assert error["param"] == "session_id" and "/" in error["message"]
            assert len(h.inbound) == 3

    run(scenario())


def test_idempotency_key_replies_stay_with_their_client() -> None:
    async def scenario() -> None:
        async with running(remembering(), keys=TWO_CLIENTS) as h:
            url = f"{h.base}/v1/chat/completions"
            retry = {"Idempotency-Key": "same-key"}
            first = await h.client.post(url, json=chat("A asks", session_id="s1"), headers=bearer(KEY_A) | retry)
            assert content_of(first) == "api:A/s1 heard A asks"
            again = await h.client.post(url, json=chat("A asks", session_id="s1"), headers=bearer(KEY_A) | retry)
            assert again.json()["id"] == first.json()["id"] and len(h.inbound) == 1  # a retry: answered as before
            other = await h.client.post(url, json=chat("B asks", session_id="s1"), headers=bearer(KEY_B) | retry)
            assert content_of(other) == "api:B/s1 heard B asks"  # never A's remembered reply
            assert other.json()["id"] != first.json()["id"]
            assert [m.session_key for m in h.inbound] == ["api:A/s1", "api:B/s1"]

    run(scenario())


def test_allow_from_lists_client_names_not_the_user_field() -> None:
    async def scenario() -> None:
        async with running(keys=TWO_CLIENTS, allow_from=["B", "alice"]) as h:
            url = f"{h.base}/v1/chat/completions"
            r = await h.client.post(url, json=chat("hi", user="alice"), headers=bearer(KEY_A))
            error = assert_openai_error(r, 403, "permission_error")
            assert error["code"] == "sender_not_allowed" and "'A'" in error["message"]
            assert_openai_error(await h.client.post(url, json=chat("hi", user="B"), headers=bearer(KEY_A)), 403)
            assert h.inbound == [] and h.channel.pending_count == 0

            r = await h.client.post(url, json=chat("hi", user="mallory"), headers=bearer(KEY_B))
            assert content_of(r) == "reply to hi"
            (inbound,) = h.inbound
            assert inbound.sender_id == "B" and inbound.chat_id == "B/default"
            assert inbound.metadata["api_user"] == "mallory"

    run(scenario())


def test_legacy_api_key_keeps_session_id_as_chat_id() -> None:
    async def scenario() -> None:
        async with running(api_key=KEY, keys={KEY_B: "B"}) as h:
            url = f"{h.base}/v1/chat/completions"
            assert content_of(await h.client.post(url, json=chat("old", session_id="s1"), headers=bearer(KEY))) == (
                "reply to old"
            )
            assert content_of(await h.client.post(url, json=chat("new", session_id="s1"), headers=bearer(KEY_B))) == (
                "reply to new"
            )
            assert [(m.sender_id, m.chat_id, m.session_key) for m in h.inbound] == [
                ("api", "s1", "api:s1"),
                ("B", "B/s1", "api:B/s1"),
            ]

    run(scenario())


def test_client_keys_match_exactly() -> None:
    keys = ClientKeys(ApiChannelConfig(api_key=KEY, keys=TWO_CLIENTS))
    assert keys.required and keys.clients == {"api", "A", "B"}
    assert [keys.client_for(k) for k in (KEY, KEY_A, KEY_B)] == ["api", "A", "B"]
    for wrong in (KEY_A[:-1], KEY_A + "x", KEY_A.upper(), "x", " " + KEY_A):
        assert keys.client_for(wrong) is None
    assert not ClientKeys(ApiChannelConfig()).required


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failed_authentications_are_throttled_per_address(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="nanobot.channels.api")
    clock = FakeClock()

    async def scenario() -> None:
        async with running(keys=TWO_CLIENTS, clock=clock) as h:
            url = f"{h.base}/v1/chat/completions"
            for _ in range(10):
                clock.now += 1
                r = await h.client.post(url, json=chat(), headers=bearer("sk-guess"))
                assert_openai_error(r, 401, "authentication_error")
            r = await h.client.post(url, json=chat(), headers=bearer("sk-guess"))
            error = assert_openai_error(r, 429, "rate_limit_error")
            assert error["code"] == "too_many_auth_failures"
            assert r.headers["retry-after"] == "51"  # the first failure (10 s ago) leaves the 60 s window then
            # The right key waits too, or guessing would go on; /health stays open.
            r = await h.client.post(url, json=chat(), headers=bearer(KEY_A))
            assert_openai_error(r, 429)
            assert (await h.client.get(f"{h.base}/health")).status_code == 200
            assert h.inbound == []

            # Another address is not affected.
            transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
            async with httpx.AsyncClient(transport=transport, trust_env=False, timeout=10) as other:
                assert content_of(await other.post(url, json=chat("from .2"), headers=bearer(KEY_A))) == (
                    "reply to from .2"
                )

            clock.now += 50
            assert (await h.client.post(url, json=chat(), headers=bearer(KEY_A))).headers["retry-after"] == "1"
            clock.now += 1  # the oldest failure leaves the window: one more try is allowed
            assert content_of(await h.client.post(url, json=chat("at last"), headers=bearer(KEY_A))) == (
                "reply to at last"
            )
            assert_openai_error(await h.client.post(url, json=chat(), headers=bearer("sk-guess")), 401)
            assert_openai_error(await h.client.post(url, json=chat(), headers=bearer(KEY_A)), 429)

    run(scenario())
    throttled = [r for r in caplog.records if r.levelno == logging.WARNING and "throttled" in r.getMessage()]
    assert len(throttled) == 2 and "127.0.0.1" in throttled[0].getMessage()
    assert all(secret not in caplog.text for secret in ("sk-guess", KEY_A, KEY_B))


def test_throttle_tracks_a_bounded_number_of_addresses() -> None:
    clock = FakeClock()
    throttle = AuthFailureThrottle(limit=2, window_s=60, clock=clock, max_addresses=3)
    assert throttle.record_failure("10.0.0.1") is False
    assert throttle.record_failure("10.0.0.1") is True
    assert throttle.retry_after("10.0.0.1") == 60
    for i in range(2, 6):
        throttle.record_failure(f"10.0.0.{i}")
    assert len(throttle) == 3
    assert throttle.retry_after("10.0.0.1") is None  # the least recently failed address was let go
    clock.now += 60
    assert throttle.retry_after("10.0.0.5") is None and len(throttle) == 2
    with pytest.raises(ValueError):
        AuthFailureThrottle(limit=0)


def test_requests_are_logged_by_client_and_session_never_by_key(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def scenario() -> None:
        async with running(keys=TWO_CLIENTS, api_key=KEY) as h:
            url = f"{h.base}/v1/chat/completions"
            await h.client.post(url, json=chat(), headers=bearer(KEY_A + "x"))
            for key in (KEY, KEY_A, KEY_B):
                assert (await h.client.post(url, json=chat(session_id="s9"), headers=bearer(key))).status_code == 200

    run(scenario())
    assert "client=A session=api:A/s9 message_id=" in caplog.text
    assert "client=B session=api:B/s9" in caplog.text and "client=api session=api:s9" in caplog.text
    assert "authentication failed from 127.0.0.1" in caplog.text
    assert all(secret not in caplog.text for secret in (KEY, KEY_A, KEY_B))


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "localhost", "LOCALHOST"])
def test_loopback_hosts_need_no_key(host: str) -> None:
    assert binding_refusal(ApiChannelConfig(host=host)) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.168.1.20", "example.com", "localhost.example.com"])
def test_other_hosts_need_a_key(host: str) -> None:
    refusal = binding_refusal(ApiChannelConfig(host=host))
    assert refusal is not None and "channels.api.apiKey" in refusal and "channels.api.keys" in refusal
    assert "\n" not in refusal
    assert binding_refusal(ApiChannelConfig(host=host, api_key=KEY)) is None
    assert binding_refusal(ApiChannelConfig(host=host, keys={KEY_A: "A"})) is None


def test_channel_refuses_to_start_on_all_interfaces_without_a_key() -> None:
    async def scenario() -> None:
        channel = ApiChannel(ApiChannelConfig(enabled=True, host="0.0.0.0", port=0), MessageBus())
        with pytest.raises(UnsafeBindError, match=r"channels\.api\.apiKey .*channels\.api\.keys"):
            await asyncio.wait_for(channel.start(), 5)
        assert not channel.is_running and not channel.started.is_set()

        async with running(host="0.0.0.0", keys={KEY_A: "A"}) as h:
            assert h.channel.is_running
            url = f"{h.base}/v1/chat/completions"
            assert_openai_error(await h.client.post(url, json=chat()), 401)
            assert content_of(await h.client.post(url, json=chat("hi"), headers=bearer(KEY_A))) == "reply to hi"

    run(scenario())


def test_gateway_without_a_key_beyond_loopback_stops_in_one_line(tmp_path: Path, fake_llm: FakeLLM) -> None:
    api = {"enabled": True, "host": "0.0.0.0", "port": 0}
    config = write_config(tmp_path, fake_llm.base_url, channels={"api": api})
    env = {**os.environ, "NANOBOT_CONFIG": str(config), "COLUMNS": "200", "NO_COLOR": "1"}
    result = subprocess.run(nanobot("gateway"), env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "refusing" in line]
    assert "channels.api.apiKey" in line and "channels.api.keys" in line and "0.0.0.0" in line
    assert "Traceback" not in result.stderr


BAD_KEYS: list[tuple[dict[str, Any], str, str]] = [
    ({"keys": {KEY_A: "has space"}}, "channels.api.keys", "client name 'has space'"),
    ({"keys": {KEY_A: "-dash-first"}}, "channels.api.keys", "must match"),
    ({"keys": {KEY_A: "x" * 65}}, "channels.api.keys", "must match"),
    ({"keys": {KEY_A: "a/b"}}, "channels.api.keys", "must match"),
    ({"keys": {KEY_A: ""}}, "channels.api.keys", "must match"),
    ({"keys": {"": "A"}}, "channels.api.keys", "the key is empty"),
    ({"keys": {"  ": "A"}}, "channels.api.keys", "the key is empty"),
    ({"keys": {KEY_A + " x": "A"}}, "channels.api.keys", "whitespace"),
    ({"apiKey": KEY_A, "keys": {KEY_A: "A"}}, "channels.api", "also the key of client 'A'"),
]


@pytest.mark.parametrize(("api", "where", "says"), BAD_KEYS, ids=[says for _, _, says in BAD_KEYS])
def test_bad_keys_config_is_refused_without_showing_keys(tmp_path: Path, api: dict[str, Any], where: str,
                                                         says: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"channels": {"api": api}}))
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    message = str(caught.value)
    assert f"{where}: Value error" in message and says in message
    assert KEY_A not in message
    with pytest.raises(ValueError, match=says):
        ApiChannelConfig.model_validate(api)


def test_good_keys_config() -> None:
    config = ApiChannelConfig.model_validate({"apiKey": KEY, "keys": {KEY_A: "A.app_1-x", KEY_B: "9", "k3": "api"}})
    assert config.keys[KEY_A] == "A.app_1-x"
    assert ClientKeys(config).clients == {"api", "A.app_1-x", "9"}
