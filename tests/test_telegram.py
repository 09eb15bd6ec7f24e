"""The Telegram channel in process: a real MessageBus, the channel on python-telegram-bot, the outbound
dispatcher, and a loopback fake of the Bot API (nanobot/testing/telegram_server.py) that speaks its
protocol. The agent is a small echo task, so each test sees exactly what the channel did."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from nanobot.bus.events import InboundMessage, OutboundMessage
from nanobot.bus.queue import MessageBus
from nanobot.channels.manager import ChannelManager
from nanobot.channels.telegram import TelegramChannel
from nanobot.channels.telegram_format import split_markdown, to_telegram_html
from nanobot.config.schema import ChannelsConfig, TelegramConfig
from nanobot.testing.llm_server import FakeLLM
from nanobot.testing.telegram_server import FakeTelegram, parse_html

Responder = Callable[["Harness", InboundMessage], Awaitable[None]]


@dataclass
class Harness:
    fake: FakeTelegram
    channel: TelegramChannel
    bus: MessageBus
    inbound: list[InboundMessage] = field(default_factory=list)

    async def reply(self, msg: InboundMessage, text: str, **metadata: Any) -> None:
        await self.bus.publish_outbound(
            OutboundMessage("telegram", msg.chat_id, text, reply_to=msg.message_id, metadata=metadata)
        )

    async def wait_inbound(self, n: int, limit_s: float = 10.0) -> list[InboundMessage]:
        await until(lambda: len(self.inbound) >= n, limit_s)
        return self.inbound

    async def wait_sent(self, chat_id: int, n: int, limit_s: float = 10.0) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.fake.wait_for_messages, chat_id, n, limit_s)


async def echo(h: Harness, msg: InboundMessage) -> None:
    await h.reply(msg, f"echo: {msg.content}")


async def until(check: Callable[[], bool], limit_s: float = 10.0) -> None:
    for _ in range(int(limit_s / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


@asynccontextmanager
async def running(
    tmp_path: Path, responder: Responder | None = echo, channels: ChannelsConfig | None = None, **config: Any
) -> AsyncIterator[Harness]:
    fake = FakeTelegram(webhook_retry_s=0.1).start()
    bus = MessageBus()
    settings = {"enabled": True, "token": fake.token, "api_base": fake.api_base, "poll_lease_s": 3.0, **config}
    channel = TelegramChannel(TelegramConfig(**settings), bus, media_dir=tmp_path / "media")
    manager = ChannelManager(channels or ChannelsConfig(), bus, {"telegram": channel})
    h = Harness(fake=fake, channel=channel, bus=bus)
    background: set[asyncio.Task[None]] = set()

    async def agent() -> None:
        while True:
            msg = await bus.consume_inbound()
            h.inbound.append(msg)
            if responder is not None:
                task = asyncio.create_task(responder(h, msg))
                background.add(task)
                task.add_done_callback(background.discard)

    agent_task = asyncio.create_task(agent())
    await manager.start_all()
    try:
        await until(lambda: channel.is_running)
        yield h
    finally:
        await asyncio.wait_for(manager.stop_all(), 10)
        agent_task.cancel()
        for task in background:
            task.cancel()
        await asyncio.gather(agent_task, *background, return_exceptions=True)
        fake.stop()


def run(coro: Awaitable[None]) -> None:
    async def main() -> None:
        await asyncio.wait_for(coro, 45)

    asyncio.run(main())


def texts(messages: list[dict[str, Any]]) -> list[str]:
    return [m.get("text") or m.get("caption") or "" for m in messages]


# ---------------------------------------------------------------- receiving and answering
def test_private_chat_round_trip(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as h:
            h.fake.user_message(501, "hello there", username="alice", first_name="Alice")
            [msg] = await h.wait_inbound(1)
            assert (msg.session_key, msg.sender_id, msg.chat_id) == ("telegram:501", "501|alice", "501")
            assert msg.content == "hello there"
            assert re.fullmatch(r"tg-501-\d+", msg.message_id)
            [sent] = await h.wait_sent(501, 1)
            assert sent["text"] == "echo: hello there"
            assert h.fake.chat_actions(501), "a typing indicator from acceptance until the reply"
            await until(lambda: len(h.fake.reactions(501)) >= 2)
            first, last = h.fake.reactions(501)[0], h.fake.reactions(501)[-1]
            assert first["reaction"] == [{"type": "emoji", "emoji": "👀"}] and last["reaction"] == []

    run(scenario())


def test_burst_in_one_chat_keeps_order_and_chats_stay_apart(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as h:
            for i in range(8):
                h.fake.user_message(601, f"m{i}")
                h.fake.user_message(602, f"other {i}")
            await h.wait_inbound(16)
            assert [m.content for m in h.inbound if m.chat_id == "601"] == [f"m{i}" for i in range(8)]
            assert texts(await h.wait_sent(602, 8)) == [f"echo: other {i}" for i in range(8)]
            assert sorted(texts(await h.wait_sent(601, 8))) == sorted(f"echo: m{i}" for i in range(8))

    run(scenario())


def test_markdown_is_sent_as_telegram_html(tmp_path: Path) -> None:
    async def answer(h: Harness, msg: InboundMessage) -> None:
        text = "**Bold** and `x < y` & [a link](https://example.com)\n\n```python\nif a < b:\n    pass\n```"
        await h.reply(msg, text)

    async def scenario() -> None:
        async with running(tmp_path, answer) as h:
            h.fake.user_message(700, "format please")
            [sent] = await h.wait_sent(700, 1)
            [call] = [c for c in h.fake.calls("sendMessage") if c.status == 200]
            assert call.params["parse_mode"] == "HTML"
            assert "<b>Bold</b>" in call.params["text"] and "<code>x &lt; y</code>" in call.params["text"]
            assert '<pre><code class="language-python">if a &lt; b:\n    pass</code></pre>' in call.params["text"]
            assert sent["text"].startswith("Bold and x < y & a link")
            kinds = {e["type"] for e in sent["entities"]}
            assert {"bold", "code", "text_link", "pre"} <= kinds

    run(scenario())


def test_long_reply_is_split_and_code_blocks_stay_whole(tmp_path: Path) -> None:
    code = "\n".join(f"    value_{i} = {i} * 2  # a line of code" for i in range(150))
    long_reply = "Intro paragraph.\n\n" + ("words " * 700) + f"\n\n```python\n{code}\n```\n\nThe end."

    async def answer(h: Harness, msg: InboundMessage) -> None:
        await h.reply(msg, long_reply)

    async def scenario() -> None:
        async with running(tmp_path, answer) as h:
            h.fake.user_message(701, "tell me a lot")
            await h.wait_inbound(1)
            await until(lambda: any("The end." in t for t in texts(h.fake.sent_messages(701))))
            sent = h.fake.sent_messages(701)
            assert len(sent) >= 3
            assert all(len(m["text"]) <= 4096 for m in sent)
            code_lines = [line for m in sent for line in m["text"].splitlines() if "value_" in line]
            assert code_lines == [f"    value_{i} = {i} * 2  # a line of code" for i in range(150)]
            for m in sent:  # every part that holds code shows it as one pre block
                if any("value_" in line for line in m["text"].splitlines()):
                    assert [e["type"] for e in m["entities"]].count("pre") == 1

    run(scenario())


def test_html_refused_falls_back_to_plain_text(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as h:
            h.fake.fail_next("sendMessage", status=400, description="Bad Request: can't parse entities: test")
            h.fake.user_message(702, "plain *please*")
            [sent] = await h.wait_sent(702, 1)
            assert sent["text"] == "echo: plain *please*"
            attempts = [c for c in h.fake.calls("sendMessage")]
            assert attempts[0].status == 400 and attempts[0].params["parse_mode"] == "HTML"
            assert attempts[-1].status == 200 and "parse_mode" not in attempts[-1].params

    run(scenario())


def test_flood_control_retry_after_is_honoured(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as h:
            h.fake.fail_next("sendMessage", status=429, retry_after=1)
            h.fake.user_message(703, "hi")
            [sent] = await h.wait_sent(703, 1)
            assert sent["text"] == "echo: hi"
            refused, accepted = [c for c in h.fake.calls("sendMessage")][:2]
            assert refused.status == 429 and accepted.status == 200
            assert accepted.time - refused.time >= 0.95

    run(scenario())


def test_reply_to_message_quotes_the_question(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path, reply_to_message=True) as h:
            update = h.fake.user_message(704, "quote me")
            [sent] = await h.wait_sent(704, 1)
            assert sent["reply_to_message"]["message_id"] == update["message"]["message_id"]

    run(scenario())


def test_progress_and_tool_hints_follow_the_config(tmp_path: Path) -> None:
    async def answer(h: Harness, msg: InboundMessage) -> None:
        await h.reply(msg, "thinking...", _progress=True)
        await h.reply(msg, 'read_file("a")', _progress=True, _tool_hint=True)
        await h.reply(msg, "done")

    async def scenario() -> None:
        async with running(tmp_path, answer, channels=ChannelsConfig(send_progress=True, send_tool_hints=False)) as h:
            h.fake.user_message(705, "work")
            await until(lambda: "done" in texts(h.fake.sent_messages(705)))
            assert texts(h.fake.sent_messages(705)) == ["thinking...", "done"]

    run(scenario())


# ---------------------------------------------------------------- who may talk, and where
def test_allow_from_by_id_by_username_and_star(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path, allow_from=["801", "@Bob"]) as h:
            h.fake.user_message(801, "by id")
            h.fake.user_message(802, "by username", username="bob")
            h.fake.user_message(803, "stranger", username="mallory")
            await h.wait_inbound(2)
            await asyncio.sleep(0.5)
            assert sorted(m.content for m in h.inbound) == ["by id", "by username"]
            assert h.fake.sent_messages(803) == [] and h.fake.chat_actions(803) == []
        channel = TelegramChannel(TelegramConfig(allow_from=["*"]), MessageBus(), media_dir=tmp_path)
        assert channel.is_allowed("99|anyone")
        upstream_form = TelegramChannel(TelegramConfig(allow_from=["42|carol"]), MessageBus(), media_dir=tmp_path)
        assert upstream_form.is_allowed("42|carol") and upstream_form.is_allowed("42")
        assert not upstream_form.is_allowed("43|dave")

    run(scenario())


def test_group_mention_policy(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as h:
            bot = f"@{h.fake.bot_username}"
            h.fake.user_message(-900, "chatter among humans", chat_type="group", user_id=11)
            h.fake.user_message(-900, f"{bot} what time is it?", chat_type="group", user_id=11)
            h.fake.user_message(-900, f"/new@{h.fake.bot_username}", chat_type="group", user_id=12)
            h.fake.user_message(-900, "/new@some_other_bot", chat_type="group", user_id=12)
            await h.wait_sent(-900, 2)
            h.fake.user_message(-900, "and a reply to you", chat_type="group", user_id=13, reply_to_bot=True)
            await h.wait_inbound(3)
            await asyncio.sleep(0.3)
            assert [m.content for m in h.inbound] == ["what time is it?", "/new", "and a reply to you"]
            assert {m.session_key for m in h.inbound} == {"telegram:-900"}
        async with running(tmp_path, group_policy="open") as h:
            h.fake.user_message(-901, "anyone here?", chat_type="supergroup", user_id=14)
            [msg] = await h.wait_inbound(1)
            assert msg.content == "anyone here?"

    run(scenario())


def test_start_is_answered_here_and_commands_reach_the_agent(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as h:
            h.fake.user_message(950, "/start", first_name="Zoe")
            [greeting] = await h.wait_sent(950, 1)
            assert greeting["text"].startswith("👋 Hi Zoe!")
            for command in ("/help", f"/new@{h.fake.bot_username}", "/stop"):
                h.fake.user_message(950, command)
            await h.wait_inbound(3)
            assert [m.content for m in h.inbound] == ["/help", "/new", "/stop"]

    run(scenario())


# ---------------------------------------------------------------- media
def test_photo_document_and_voice_arrive_as_files(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as h:
            h.fake.user_message(960, caption="look at this", photo=b"\xff\xd8jpeg-bytes")
            h.fake.user_message(960, document=("report.pdf", b"%PDF-1.4 data", "application/pdf"))
            h.fake.user_message(960, voice=b"OggS voice")
            photo, document, voice = await h.wait_inbound(3)
            read = await asyncio.to_thread(lambda: [Path(m.media[0]).read_bytes() for m in (photo, document, voice)])
            assert read == [b"\xff\xd8jpeg-bytes", b"%PDF-1.4 data", b"OggS voice"]
            assert photo.content.startswith("look at this\n[image: ")
            assert Path(photo.media[0]).is_relative_to(tmp_path / "media" / "telegram")
            assert document.content.startswith("[file: ") and document.media[0].endswith(".pdf")
            assert "not transcribed: no transcription provider is configured" in voice.content

    run(scenario())


def test_voice_is_transcribed_when_a_provider_is_configured(tmp_path: Path, fake_llm: FakeLLM) -> None:
    from nanobot.config.loader import load_config
    from nanobot.providers.transcription import transcriber_from_config

    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps({"providers": {"groq": {"apiKey": "gsk-test", "apiBase": fake_llm.base_url}}}))
    transcriber = transcriber_from_config(load_config(config_path, env={}))
    assert transcriber is not None and transcriber.model == "whisper-large-v3"

    async def scenario() -> None:
        async with running(tmp_path) as h:
            h.channel.transcriber = transcriber
            h.fake.user_message(962, voice=b"OggS twelve b")
            [msg] = await h.wait_inbound(1)
            assert "[transcription: simulated transcription of 13 bytes by whisper-large-v3]" in msg.content
            await transcriber.close()

    run(scenario())


def test_message_tool_media_is_uploaded(tmp_path: Path) -> None:
    picture = tmp_path / "chart.png"
    picture.write_bytes(b"\x89PNG fake")
    notes = tmp_path / "notes.txt"
    notes.write_text("some notes")

    async def answer(h: Harness, msg: InboundMessage) -> None:
        await h.bus.publish_outbound(OutboundMessage("telegram", msg.chat_id, "here you go",
                                                     reply_to=msg.message_id, media=[str(picture), str(notes)]))

    async def scenario() -> None:
        async with running(tmp_path, answer) as h:
            h.fake.user_message(961, "send files")
            await h.wait_sent(961, 3)
            assert [c.method for c in h.fake.calls() if c.method.startswith("send") and c.method != "sendChatAction"
                    and c.status == 200][-3:] == [
                "sendMessage", "sendPhoto", "sendDocument"]
            assert h.fake.calls("sendDocument")[-1].params["document"]["filename"] == "notes.txt"

    run(scenario())


# ---------------------------------------------------------------- webhook mode
def test_webhook_mode_checks_the_secret_and_drops_redeliveries(tmp_path: Path) -> None:
    from nanobot.testing.processes import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}/telegram"

    async def scenario() -> None:
        async with running(tmp_path, mode="webhook", webhook_url=url, webhook_listen_port=port,
                           webhook_secret_token="s3cret-token") as h:
            await until(lambda: h.fake.webhook is not None)
            assert h.fake.webhook is not None and h.fake.webhook["secret_token"] == "s3cret-token"
            update = h.fake.user_message(970, "via webhook")
            [msg] = await h.wait_inbound(1)
            assert msg.content == "via webhook"
            await h.wait_sent(970, 1)
            h.fake.push_update(update)  # Telegram delivers the same update again
            await asyncio.to_thread(h.fake.wait_for_deliveries, 2)
            async with httpx.AsyncClient(trust_env=False) as client:
                forged = {**update, "update_id": update["update_id"] + 1000}
                for headers in ({}, {"X-Telegram-Bot-Api-Secret-Token": "guess"}):
                    r = await client.post(url, json=forged, headers=headers)
                    assert r.status_code == 403
                r = await client.post(url, content=b"{not json", headers={"X-Telegram-Bot-Api-Secret-Token":
                                                                          "s3cret-token"})
                assert r.status_code == 400
            await asyncio.sleep(0.3)
            assert [m.content for m in h.inbound] == ["via webhook"]
            assert len(h.fake.sent_messages(970)) == 1
            assert not [p for p in h.fake.poll_log()], "webhook mode never polls"

    run(scenario())


# ---------------------------------------------------------------- formatting, directly
def test_formatting_is_accepted_by_telegrams_parser() -> None:
    samples = [
        "a < b && c > d",
        "**bold _nested italic_** ~~gone~~ `code & <tags>`",
        "# Heading\n\n> quote\n> more\n\n1. one\n2. two\n   - nested",
        "| a | b |\n|---|---|\n| <1> | &2 |",
        "[ok](https://x.org/?a=1&b=<2>) [bad](javascript:alert(1)) ![img](https://x.org/i.png)",
        "```\nunclosed fence <b>",
        "<div>raw html</div> <script>x</script> &amp; &#x27;",
    ]
    for sample in samples:
        text, _entities = parse_html(to_telegram_html(sample))
        assert text.strip()


def test_split_keeps_fences_balanced_and_parts_small() -> None:
    body = "\n".join(f"line {i} " + "x" * 60 for i in range(300))
    source = f"Start\n\n```js\n{body}\n```\n\n" + "tail " * 2000
    parts = split_markdown(source)
    assert all(len(p) <= 4000 for p in parts)
    for part in parts:
        assert part.count("```") % 2 == 0, part[:80]
        parse_html(to_telegram_html(part))
    assert "".join(parts).count("line 299 ") == 1
    with pytest.raises(AssertionError):
        assert split_markdown("x" * 5000) == ["x" * 5000]
