"""The WhatsApp channel in process: a real MessageBus, the channel, the gateway's HTTP server on port 0 with the
channel's routes, a fake agent that answers every inbound message, and the simulated Graph API or bridge."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from nanobot.bus.events import InboundMessage, OutboundMessage
from nanobot.bus.queue import MessageBus
from nanobot.channels.dedup import RecentIds
from nanobot.channels.whatsapp import WhatsAppChannel, normalize_number
from nanobot.channels.whatsapp_bridge import BridgeTransport
from nanobot.channels.whatsapp_cloud import TEXT_LIMIT, CloudTransport, WhatsAppApiError, split_text
from nanobot.config.schema import WhatsAppCloudConfig, WhatsAppConfig
from nanobot.gateway.http import GatewayHttp
from nanobot.testing.whatsapp_server import FakeBridge, FakeGraphAPI

VERIFY_TOKEN = "verify-me"
BRIDGE_TOKEN = "bridge-secret"
USER = "34600111222"
USER_JID = f"{USER}@s.whatsapp.net"

Responder = Callable[[InboundMessage], str | None]


def echo(msg: InboundMessage) -> str:
    return f"echo: {msg.content}"


@dataclass
class Harness:
    channel: WhatsAppChannel
    bus: MessageBus
    http: GatewayHttp
    inbound: list[InboundMessage] = field(default_factory=list)
    send_errors: list[Exception] = field(default_factory=list)

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.http.port}/whatsapp"


@asynccontextmanager
async def running(
    config: WhatsAppConfig,
    media_dir: Path,
    responder: Responder = echo,
    tune: Callable[[Any], None] | None = None,
) -> AsyncIterator[Harness]:
    """The channel started, with its routes on a gateway server; `tune` may adjust its transport first."""
    bus = MessageBus()
    channel = WhatsAppChannel(config, bus, media_dir=media_dir)
    if tune is not None:
        tune(channel.transport)
    http = GatewayHttp("127.0.0.1", 0)
    http.add_routes(channel.web_routes())
    await http.start()
    h = Harness(channel=channel, bus=bus, http=http)

    async def agent() -> None:
        while True:
            msg = await bus.consume_inbound()
            h.inbound.append(msg)
            reply = responder(msg)
            if reply is not None:
                out = OutboundMessage(channel="whatsapp", chat_id=msg.chat_id, content=reply, reply_to=msg.message_id)
                await bus.publish_outbound(out)

    async def dispatcher() -> None:
        while True:
            out = await bus.consume_outbound()
            try:
                await channel.send(out)
            except Exception as exc:
                h.send_errors.append(exc)

    channel_task = asyncio.create_task(channel.start())
    tasks = [asyncio.create_task(agent()), asyncio.create_task(dispatcher())]
    try:
        await wait_until(lambda: channel.is_running)
        yield h
    finally:
        try:
            await channel.stop()
            await asyncio.wait_for(channel_task, 5)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await http.stop()


def fast_retries(transport: CloudTransport) -> None:
    transport.retry_base_s = 0.05


def fast_reconnects(transport: BridgeTransport) -> None:
    transport.reconnect_base_s = 0.1


def cloud_config(graph: FakeGraphAPI, **extra: Any) -> WhatsAppConfig:
    cloud = WhatsAppCloudConfig(
        phone_number_id=graph.phone_number_id,
        access_token=graph.access_token,
        app_secret=graph.app_secret,
        verify_token=VERIFY_TOKEN,
        api_base=graph.base_url,
    )
    return WhatsAppConfig(enabled=True, cloud=cloud, **extra)


@asynccontextmanager
async def cloud(
    graph: FakeGraphAPI, tmp_path: Path, responder: Responder = echo, **extra: Any
) -> AsyncIterator[Harness]:
    async with running(cloud_config(graph, **extra), tmp_path / "media", responder, tune=fast_retries) as h:
        graph.set_webhook(h.webhook_url)
        yield h


@asynccontextmanager
async def bridged(
    bridge: FakeBridge, tmp_path: Path, token: str = BRIDGE_TOKEN, **extra: Any
) -> AsyncIterator[Harness]:
    config = WhatsAppConfig(enabled=True, bridge_url=bridge.url, bridge_token=token, **extra)
    async with running(config, tmp_path / "media", tune=fast_reconnects) as h:
        yield h


def run(coro: Coroutine[Any, Any, None], limit_s: float = 20.0) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro, limit_s)

    asyncio.run(bounded())


async def wait_until(predicate: Callable[[], bool], limit_s: float = 5.0) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def text_delivery(graph: FakeGraphAPI, number: str, text: str, wamid: str) -> bytes:
    """A minimal webhook body with one text message, for deliveries the test signs itself."""
    message = {"from": number, "id": wamid, "timestamp": "1700000000", "type": "text", "text": {"body": text}}
    value = {"messaging_product": "whatsapp", "metadata": {"phone_number_id": graph.phone_number_id}}
    change = {"field": "messages", "value": {**value, "messages": [message]}}
    return json.dumps({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [change]}]}).encode()


@pytest.fixture
def graph() -> Iterator[FakeGraphAPI]:
    with FakeGraphAPI() as fake:
        yield fake


@pytest.fixture
def bridge() -> Iterator[FakeBridge]:
    with FakeBridge(token=BRIDGE_TOKEN) as fake:
        yield fake


# ---------------------------------------------------------------- cloud: webhook
def test_verification_handshake_answers_the_challenge_only_for_the_right_token(
    graph: FakeGraphAPI, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with cloud(graph, tmp_path) as h:
            assert await asyncio.to_thread(graph.verify, h.webhook_url, VERIFY_TOKEN, "1158201444") == (
                200,
                "1158201444",
            )
            status, _ = await asyncio.to_thread(graph.verify, h.webhook_url, "wrong-token", "1158201444")
            assert status == 403
            async with httpx.AsyncClient(trust_env=False) as client:
                good = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "42"}
                r = await client.get(h.webhook_url, params=good)
                assert r.status_code == 200 and r.text == "42"
                assert r.headers["content-type"].startswith("text/plain")
                r = await client.get(h.webhook_url, params={**good, "hub.mode": "unsubscribe"})
                assert r.status_code == 403

    run(scenario())


def test_signed_text_is_published_and_answered_through_the_graph_api(graph: FakeGraphAPI, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cloud(graph, tmp_path) as h:
            status, wamid = await asyncio.to_thread(graph.deliver_text, USER, "hello / ¿qué tal? 👋", name="Ana")
            assert status == 200
            sent = await asyncio.to_thread(graph.wait_for_messages, USER, 1)
            assert sent == [
                {
                    "messaging_product": "whatsapp",
                    "to": USER,
                    "type": "text",
                    "text": {"body": "echo: hello / ¿qué tal? 👋"},
                }
            ]
            [msg] = h.inbound
            assert (msg.channel, msg.sender_id, msg.chat_id) == ("whatsapp", USER, USER)
            assert msg.session_key == f"whatsapp:{USER}"
            assert msg.message_id == f"wa-{wamid}"
            assert msg.metadata["name"] == "Ana" and msg.metadata["message_id"] == wamid
            assert not h.send_errors

    run(scenario())


def test_missing_or_wrong_signature_is_refused_and_nothing_published(graph: FakeGraphAPI, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cloud(graph, tmp_path) as h:
            body = text_delivery(graph, USER, "forged", "wamid.forged")
            assert await asyncio.to_thread(graph.deliver_raw, body, None) == 401
            for signature in (graph.sign(body, "another-secret"), "sha256=zz", graph.sign(body + b" "), "sha1=abc"):
                assert await asyncio.to_thread(graph.deliver_raw, body, signature) == 403
            # A good delivery from the same sender afterwards is handled after anything earlier would have been.
            assert (await asyncio.to_thread(graph.deliver_text, USER, "genuine"))[0] == 200
            await asyncio.to_thread(graph.wait_for_messages, USER, 1)
            assert [m.content for m in h.inbound] == ["genuine"]

    run(scenario())


def test_malformed_json_with_a_good_signature_is_answered_400(
    graph: FakeGraphAPI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with cloud(graph, tmp_path) as h:
            for body in (b"{not json", b"[1, 2]", b"\xff\xfe"):
                assert await asyncio.to_thread(graph.deliver_raw, body, graph.sign(body)) == 400
            assert not h.inbound

    with caplog.at_level(logging.WARNING, logger="nanobot.channels.whatsapp_cloud"):
        run(scenario())
    assert "not a JSON object" in caplog.text


def test_duplicate_delivery_is_published_once(graph: FakeGraphAPI, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cloud(graph, tmp_path) as h:
            for _ in range(3):
                assert (await asyncio.to_thread(graph.deliver_text, USER, "once", wamid="wamid.SAME=="))[0] == 200
            await asyncio.to_thread(graph.deliver_text, USER, "next")
            await asyncio.to_thread(graph.wait_for_messages, USER, 2)
            assert [m.content for m in h.inbound] == ["once", "next"]
            assert h.inbound[0].message_id == "wa-wamid.SAME=="
            assert [m["text"]["body"] for m in graph.sent_messages(USER)] == ["echo: once", "echo: next"]

    run(scenario())


def test_status_callbacks_are_ignored(graph: FakeGraphAPI, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cloud(graph, tmp_path) as h:
            for status in ("sent", "delivered", "read"):
                assert await asyncio.to_thread(graph.deliver_status, "wamid.out", USER, status) == 200
            await asyncio.to_thread(graph.deliver_text, USER, "real")
            await asyncio.to_thread(graph.wait_for_messages, USER, 1)
            assert [m.content for m in h.inbound] == ["real"]

    run(scenario())


def test_delivery_for_another_phone_number_is_ignored(graph: FakeGraphAPI, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cloud(graph, tmp_path) as h:
            body = text_delivery(graph, USER, "not for us", "wamid.other").replace(
                graph.phone_number_id.encode(), b"999"
            )
            assert await asyncio.to_thread(graph.deliver_raw, body, graph.sign(body)) == 200
            await asyncio.to_thread(graph.deliver_text, USER, "for us")
            await asyncio.to_thread(graph.wait_for_messages, USER, 1)
            assert [m.content for m in h.inbound] == ["for us"]

    run(scenario())


def test_image_is_downloaded_into_media_dir_and_described(graph: FakeGraphAPI, tmp_path: Path) -> None:
    image = b"\xff\xd8\xff\xe0 a tiny jpeg"

    async def scenario() -> None:
        async with cloud(graph, tmp_path) as h:
            media_id = graph.add_media(image, "image/jpeg")
            status, wamid = await asyncio.to_thread(graph.deliver_image, USER, media_id, caption="what is this?")
            assert status == 200
            await asyncio.to_thread(graph.wait_for_messages, USER, 1)
            [msg] = h.inbound
            [path] = msg.media
            assert Path(path).parent == tmp_path / "media" and Path(path).suffix == ".jpg"
            assert await asyncio.to_thread(Path(path).read_bytes) == image
            assert msg.content == f"[image: {path}]\nwhat is this?"
            assert msg.message_id == f"wa-{wamid}"
            downloads = [c for c in graph.calls() if c.method == "GET"]
            assert [(c.path, c.status) for c in downloads] == [
                (f"/v21.0/{media_id}", 200),
                (f"/_download/{media_id}", 200),
            ]

    run(scenario())


def test_voice_document_and_unsupported_messages(graph: FakeGraphAPI, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cloud(graph, tmp_path) as h:
            voice = graph.add_media(b"OggS...", "audio/ogg; codecs=opus")
            pdf = graph.add_media(b"%PDF-1.7", "application/pdf")
            await asyncio.to_thread(
                graph.deliver_message,
                USER,
                "audio",
                {"id": voice, "mime_type": "audio/ogg; codecs=opus", "voice": True},
            )
            await asyncio.to_thread(
                graph.deliver_message,
                USER,
                "document",
                {"id": pdf, "mime_type": "application/pdf", "filename": "../../report.pdf", "caption": "Q3"},
            )
            await asyncio.to_thread(graph.deliver_message, USER, "sticker", {"id": "1", "mime_type": "image/webp"})
            await asyncio.to_thread(graph.deliver_message, USER, "image", {"id": "404", "mime_type": "image/png"})
            await asyncio.to_thread(graph.wait_for_messages, USER, 4)
            voice_msg, doc_msg, sticker_msg, lost_msg = h.inbound
            assert voice_msg.content == f"[voice: {voice_msg.media[0]}]"
            assert await asyncio.to_thread(Path(voice_msg.media[0]).read_bytes) == b"OggS..."
            [doc_path] = doc_msg.media
            assert Path(doc_path).parent == tmp_path / "media" and doc_path.endswith(".pdf")
            assert doc_msg.content == f"[document: {doc_path}]\nQ3"
            assert (sticker_msg.content, sticker_msg.media) == ("[sticker message]", [])
            assert (lost_msg.content, lost_msg.media) == ("[image: could not be downloaded]", [])

    run(scenario())


# ---------------------------------------------------------------- cloud: replies
def test_long_reply_is_split_into_messages_within_the_limit(graph: FakeGraphAPI, tmp_path: Path) -> None:
    reply = " ".join(f"word{i:04d}" for i in range(560))  # 5039 characters

    async def scenario() -> None:
        async with cloud(graph, tmp_path, responder=lambda _msg: reply) as h:
            await asyncio.to_thread(graph.deliver_text, USER, "tell me a lot")
            sent = await asyncio.to_thread(graph.wait_for_messages, USER, 2)
            await asyncio.sleep(0.1)
            bodies = [m["text"]["body"] for m in graph.sent_messages(USER)]
            assert len(sent) == 2 and len(bodies) == 2
            assert all(len(body) <= TEXT_LIMIT for body in bodies)
            assert " ".join(bodies) == reply
            assert not h.send_errors

    run(scenario())


def test_rate_limited_send_is_retried_after_retry_after(graph: FakeGraphAPI, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cloud(graph, tmp_path) as h:
            graph.fail_next(429, retry_after=1)
            graph.fail_next(503)
            started = time.monotonic()
            await asyncio.to_thread(graph.deliver_text, USER, "hello")
            await asyncio.to_thread(graph.wait_for_messages, USER, 1)
            assert time.monotonic() - started >= 1.0  # Retry-After honoured
            statuses = [c.status for c in graph.calls() if c.path.endswith("/messages")]
            assert statuses == [429, 503, 200]
            assert not h.send_errors

    run(scenario())


def test_send_raises_after_the_last_try(graph: FakeGraphAPI, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cloud(graph, tmp_path) as h:
            graph.fail_next(500, count=10)
            with pytest.raises(WhatsAppApiError, match="500") as failure:
                await h.channel.send(OutboundMessage(channel="whatsapp", chat_id=USER, content="hi"))
            assert failure.value.status == 500
            assert len([c for c in graph.calls() if c.path.endswith("/messages")]) == h.channel.transport.attempts

    run(scenario())


def test_bad_access_token_fails_at_once(graph: FakeGraphAPI, tmp_path: Path) -> None:
    async def scenario() -> None:
        config = cloud_config(graph)
        config.cloud.access_token = "expired"
        async with running(config, tmp_path / "media") as h:
            with pytest.raises(WhatsAppApiError, match=r"401.*Invalid OAuth access token"):
                await h.channel.send(OutboundMessage(channel="whatsapp", chat_id=USER, content="hi"))
            assert len(graph.calls()) == 1

    run(scenario())


def test_outbound_media_is_uploaded_and_sent_by_id(graph: FakeGraphAPI, tmp_path: Path) -> None:
    chart, report = tmp_path / "chart.png", tmp_path / "report.pdf"
    chart.write_bytes(b"\x89PNG chart")
    report.write_bytes(b"%PDF report")

    async def scenario() -> None:
        async with cloud(graph, tmp_path) as h:
            media = [str(chart), str(tmp_path / "missing.png"), str(report)]
            await h.channel.send(OutboundMessage(channel="whatsapp", chat_id=USER, content="here", media=media))
            image_upload, pdf_upload = graph.uploads()
            assert (image_upload.data, image_upload.mime_type, image_upload.filename) == (
                b"\x89PNG chart",
                "image/png",
                "chart.png",
            )
            assert (pdf_upload.data, pdf_upload.mime_type) == (b"%PDF report", "application/pdf")
            text, image, document = graph.sent_messages(USER)
            assert text["text"] == {"body": "here"}
            assert (image["type"], image["image"]) == ("image", {"id": image_upload.media_id})
            assert (document["type"], document["document"]) == (
                "document",
                {"id": pdf_upload.media_id, "filename": "report.pdf"},
            )

    run(scenario())


# ---------------------------------------------------------------- allowFrom
def test_allow_from_matches_numbers_with_or_without_plus_and_jids(graph: FakeGraphAPI, tmp_path: Path) -> None:
    allowed = ["34600111222", "34600111333", "34600111444"]

    async def scenario() -> None:
        allow_from = ["+34600111222", "34600111333", "34600111444@s.whatsapp.net"]
        async with cloud(graph, tmp_path, allow_from=allow_from) as h:
            await asyncio.to_thread(graph.deliver_text, "34699999999", "let me in")
            for number in allowed:
                await asyncio.to_thread(graph.deliver_text, number, "hi")
            for number in allowed:
                await asyncio.to_thread(graph.wait_for_messages, number, 1)
            assert sorted(m.sender_id for m in h.inbound) == allowed
            assert graph.sent_messages("34699999999") == []

    run(scenario())


def test_is_allowed_normalises_phone_numbers_and_jids(tmp_path: Path) -> None:
    config = WhatsAppConfig(allow_from=["+34 600-111-222", "34600111333@c.us", "99887766@lid"])
    channel = WhatsAppChannel(config, MessageBus(), media_dir=tmp_path)
    for sender in ("34600111222", "+34600111222", "34600111222@s.whatsapp.net", "34600111222:5@s.whatsapp.net"):
        assert channel.is_allowed(sender), sender
    assert channel.is_allowed("34600111333")
    assert channel.is_allowed("34600111999|99887766")  # a LID listed in allowFrom
    assert not channel.is_allowed("34600111999")
    assert not channel.is_allowed("")
    assert WhatsAppChannel(WhatsAppConfig(), MessageBus(), media_dir=tmp_path).is_allowed("anyone")


# ---------------------------------------------------------------- bridge
def test_bridge_authenticates_publishes_and_replies(bridge: FakeBridge, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with bridged(bridge, tmp_path) as h:
            await asyncio.to_thread(bridge.wait_for_connection)
            assert bridge.auth_frames() == [{"type": "auth", "token": BRIDGE_TOKEN}]
            msg_id = bridge.user_message(USER_JID, "hola")
            sent = await asyncio.to_thread(bridge.wait_for_sent, 1)
            assert sent == [{"type": "send", "to": USER_JID, "text": "echo: hola"}]
            [msg] = h.inbound
            assert (msg.sender_id, msg.chat_id, msg.content) == (USER, USER_JID, "hola")
            assert msg.message_id == f"wa-{msg_id}"
            assert msg.session_key == f"whatsapp:{USER_JID}"

            # The same id again (the bridge re-sends after a reconnect): dropped.
            bridge.user_message(USER_JID, "hola", msg_id=msg_id)
            bridge.user_message("555123@lid", "from a LID", pn=f"{USER}@s.whatsapp.net", media=["/tmp/x.jpg"])
            sent = await asyncio.to_thread(bridge.wait_for_sent, 2)
            assert [m.content for m in h.inbound] == ["hola", "from a LID\n[image: /tmp/x.jpg]"]
            assert (h.inbound[1].sender_id, h.inbound[1].chat_id, h.inbound[1].media) == (
                f"{USER}|555123",
                "555123@lid",
                ["/tmp/x.jpg"],
            )
            assert sent[1]["to"] == "555123@lid"

    run(scenario())


def test_bridge_reconnects_after_the_connection_drops(bridge: FakeBridge, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with bridged(bridge, tmp_path) as h:
            await asyncio.to_thread(bridge.wait_for_connection)
            bridge.disconnect()
            await wait_until(lambda: not h.channel.transport.connected)
            with pytest.raises(ConnectionError):
                await h.channel.send(OutboundMessage(channel="whatsapp", chat_id=USER_JID, content="lost"))
            await asyncio.to_thread(bridge.wait_for_connection, 2)
            assert bridge.auth_frames() == [{"type": "auth", "token": BRIDGE_TOKEN}] * 2
            bridge.user_message(USER_JID, "back")
            sent = await asyncio.to_thread(bridge.wait_for_sent, 1)
            assert sent == [{"type": "send", "to": USER_JID, "text": "echo: back"}]

    run(scenario())


def test_bridge_qr_and_status_frames(bridge: FakeBridge, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with bridged(bridge, tmp_path) as h:
            await asyncio.to_thread(bridge.wait_for_connection)
            bridge.qr()
            bridge.status("disconnected")
            await wait_until(lambda: not h.channel.transport.connected)
            with pytest.raises(ConnectionError):
                await h.channel.send(OutboundMessage(channel="whatsapp", chat_id=USER_JID, content="not linked"))
            bridge.status("connected")
            await wait_until(lambda: h.channel.transport.connected)
            await h.channel.send(OutboundMessage(channel="whatsapp", chat_id=USER_JID, content="linked"))
            assert [f["text"] for f in await asyncio.to_thread(bridge.wait_for_sent, 1)] == ["linked"]

    with caplog.at_level(logging.INFO, logger="nanobot.channels.whatsapp_bridge"):
        run(scenario())
    assert "nanobot channels login whatsapp" in caplog.text
    assert "WhatsApp disconnected" in caplog.text


def test_bridge_wrong_token_is_reported_and_stop_is_prompt(
    bridge: FakeBridge, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with bridged(bridge, tmp_path, token="wrong") as h:
            await wait_until(lambda: len(bridge.auth_frames()) >= 2)
            assert h.channel.is_running and bridge.connections == 0
            started = time.monotonic()
        assert time.monotonic() - started < 1.0
        assert not h.channel.is_running

    with caplog.at_level(logging.ERROR, logger="nanobot.channels.whatsapp_bridge"):
        run(scenario())
    assert "refused the token" in caplog.text
    assert "wrong" not in caplog.text


# ---------------------------------------------------------------- helpers
def test_split_text_prefers_paragraphs_then_lines_then_words() -> None:
    assert split_text("short") == ["short"]
    assert split_text("") == []
    assert split_text("aaaaaa\n\nbbbb cccc", limit=10) == ["aaaaaa", "bbbb cccc"]
    assert split_text("aaaa bbbb\ncc dd", limit=12) == ["aaaa bbbb", "cc dd"]
    assert split_text("aaaa bbbb cccc", limit=10) == ["aaaa bbbb", "cccc"]
    assert split_text("x" * 25, limit=10) == ["x" * 10, "x" * 10, "x" * 5]
    chunks = split_text("para one.\n\n" + "w " * 3000, limit=TEXT_LIMIT)
    assert all(len(chunk) <= TEXT_LIMIT for chunk in chunks) and len(chunks) == 2


def test_normalize_number() -> None:
    for value in ("+34600111222", "34600111222", "34600111222@s.whatsapp.net", "34600111222@c.us", "+34 600 111 222"):
        assert normalize_number(value) == "34600111222", value
    assert normalize_number("34600111222:12@s.whatsapp.net") == "34600111222"
    assert normalize_number("99887766@lid") == "99887766"


def test_recent_ids_is_bounded_and_forgets_after_the_ttl() -> None:
    now = [0.0]
    recent = RecentIds(maxlen=3, ttl_s=10.0, clock=lambda: now[0])
    assert [recent.seen(key) for key in ("a", "b", "a")] == [False, False, True]
    recent.seen("c")
    recent.seen("d")  # over maxlen: the oldest ("a") is forgotten
    assert len(recent) == 3
    assert recent.seen("a") is False
    now[0] = 10.0
    assert len(recent) == 0
    assert recent.seen("b") is False
    with pytest.raises(ValueError):
        RecentIds(maxlen=0)
