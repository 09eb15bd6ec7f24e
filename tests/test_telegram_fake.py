"""Tests of the simulated Telegram Bot API (`nanobot.testing.telegram_server`), driven by
python-telegram-bot's real `telegram.Bot` and by plain httpx. Loopback only."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest
import telegram
from aiohttp import web
from telegram.error import BadRequest, Conflict, InvalidToken, NetworkError, RetryAfter
from telegram.ext import Application, ContextTypes, MessageHandler, filters

from nanobot.testing.telegram_server import FakeTelegram, HtmlParseError, parse_html

T = TypeVar("T")
CHAT = 4242


@pytest.fixture
def tg() -> Iterator[FakeTelegram]:
    fake = FakeTelegram(webhook_retry_s=0.05)
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


def make_bot(fake: FakeTelegram, token: str | None = None) -> telegram.Bot:
    return telegram.Bot(token or fake.token, base_url=f"{fake.api_base}/bot", base_file_url=f"{fake.api_base}/file/bot")


def with_bot(fake: FakeTelegram, body: Callable[[telegram.Bot], Awaitable[T]], timeout: float = 10.0) -> T:
    """Run ``body(bot)`` with an initialized Bot in a fresh event loop, bounded in time."""

    async def main() -> T:
        async with make_bot(fake) as bot:
            return await asyncio.wait_for(body(bot), timeout)

    return asyncio.run(main())


def api(fake: FakeTelegram, method: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{fake.api_base}/bot{fake.token}/{method}", timeout=10, **kwargs)


# --------------------------------------------------------------------------------------------------
# Basics


def test_get_me(tg: FakeTelegram) -> None:
    me = with_bot(tg, lambda bot: bot.get_me())
    assert (me.id, me.username, me.is_bot) == (tg.bot_id, tg.bot_username, True)
    assert [c.method for c in tg.calls()] == ["getMe", "getMe"]  # Bot.initialize() + the explicit call
    assert tg.calls("getme")[0].status == 200


def test_http_protocol_details(tg: FakeTelegram) -> None:
    ok = httpx.get(f"{tg.api_base}/bot{tg.token}/GETME", timeout=10)
    assert ok.status_code == 200 and ok.json()["ok"] is True and ok.json()["result"]["id"] == tg.bot_id

    bad_token = httpx.get(f"{tg.api_base}/bot1:wrong/getMe", timeout=10)
    assert bad_token.status_code == 401
    assert bad_token.json() == {"ok": False, "error_code": 401, "description": "Unauthorized"}

    unknown = api(tg, "sendTelepathy")
    assert unknown.status_code == 404 and unknown.json()["description"] == "Not Found"

    sent = api(tg, "sendMessage", json={"chat_id": CHAT, "text": "json body", "reply_markup": {"inline_keyboard": []}})
    assert sent.status_code == 200 and sent.json()["result"]["text"] == "json body"
    query = httpx.get(f"{tg.api_base}/bot{tg.token}/sendmessage", params={"chat_id": CHAT, "text": "q"}, timeout=10)
    assert query.json()["result"]["chat"]["id"] == CHAT
    form = api(tg, "sendMessage", data={"chat_id": str(CHAT), "text": "f", "reply_parameters": '{"message_id": 1}'})
    assert form.json()["result"]["reply_to_message"]["text"] == "json body"
    assert tg.calls("sendMessage")[2].params["reply_parameters"] == {"message_id": 1}
    assert [m["message_id"] for m in tg.sent_messages(CHAT)] == [1, 2, 3]

    assert httpx.get(f"{tg.api_base}/file/bot{tg.token}/photos/nope.jpg", timeout=10).status_code == 404
    assert with_bot(tg, lambda bot: bot.get_me()).id == tg.bot_id

    async def wrong_token() -> None:
        async with make_bot(tg, "999:nope") as bot:
            await bot.get_me()

    with pytest.raises(InvalidToken):
        asyncio.run(asyncio.wait_for(wrong_token(), 10))


# --------------------------------------------------------------------------------------------------
# getUpdates


def test_user_message_then_get_updates_and_offset_confirmation(tg: FakeTelegram) -> None:
    sent = tg.user_message(CHAT, "/start@nanobot_test_bot hi @someone_else 😀", username="alice", first_name="Alice")
    assert tg.pending_updates() == 1

    async def body(bot: telegram.Bot) -> tuple[tuple[telegram.Update, ...], ...]:
        first = await bot.get_updates(timeout=0)
        again = await bot.get_updates(timeout=0)  # not confirmed yet: returned again
        confirmed = await bot.get_updates(offset=first[-1].update_id + 1, timeout=0)
        return first, again, confirmed

    first, again, confirmed = with_bot(tg, body)
    assert len(first) == 1 and [u.update_id for u in again] == [sent["update_id"]]
    assert confirmed == () and tg.pending_updates() == 0
    message = first[0].message
    assert message is not None and message.text == "/start@nanobot_test_bot hi @someone_else 😀"
    assert message.from_user is not None and (message.from_user.id, message.from_user.username) == (CHAT, "alice")
    assert (message.chat.id, message.chat.type) == (CHAT, "private")
    kinds = [(e.type, message.parse_entity(e)) for e in message.entities]
    assert kinds == [("bot_command", "/start@nanobot_test_bot"), ("mention", "@someone_else")]
    assert [p.update_ids for p in tg.poll_log()] == [[1], [1], []]
    assert tg.conflicts == 0


def test_group_message_and_reply_to_bot(tg: FakeTelegram) -> None:
    api(tg, "sendMessage", json={"chat_id": -100, "text": "bot says"})
    update = tg.user_message(-100, "hey", user_id=7, chat_type="supergroup", chat_title="Team", reply_to_bot=True)
    message = telegram.Update.de_json(update, None).message
    assert message is not None and message.from_user is not None
    assert (message.chat.title, message.chat.type, message.from_user.id) == ("Team", "supergroup", 7)
    assert message.reply_to_message is not None and message.reply_to_message.text == "bot says"
    assert message.message_id == 2  # message ids are per chat and shared with the bot's messages


def test_long_poll_returns_when_an_update_arrives(tg: FakeTelegram) -> None:
    async def body(bot: telegram.Bot) -> tuple[float, tuple[telegram.Update, ...]]:
        started = time.monotonic()
        poll = asyncio.create_task(bot.get_updates(timeout=5))
        await asyncio.sleep(0.3)
        tg.user_message(CHAT, "wake up")
        updates = await poll
        return time.monotonic() - started, updates

    elapsed, updates = with_bot(tg, body)
    assert 0.25 < elapsed < 3 and updates[0].message is not None and updates[0].message.text == "wake up"
    assert tg.poll_log()[-1].outcome == "ok" and tg.poll_log()[-1].timeout == 5


def test_concurrent_get_updates_conflict(tg: FakeTelegram) -> None:
    async def main() -> tuple[BaseException | tuple[telegram.Update, ...], tuple[telegram.Update, ...]]:
        async with make_bot(tg) as first, make_bot(tg) as second:
            poll = asyncio.create_task(first.get_updates(timeout=5))
            await asyncio.sleep(0.3)
            other = await second.get_updates(timeout=0)
            result = await asyncio.wait_for(asyncio.gather(poll, return_exceptions=True), 5)
            return result[0], other

    earlier, later = asyncio.run(asyncio.wait_for(main(), 15))
    assert isinstance(earlier, Conflict) and "terminated by other getUpdates request" in str(earlier)
    assert later == ()
    assert tg.conflicts == 1
    log = tg.poll_log()
    assert sorted(p.outcome for p in log) == ["conflict", "ok"]
    assert all(p.ended is not None and p.peer.startswith("127.0.0.1:") for p in log)


def test_redelivered_update_survives_offset(tg: FakeTelegram) -> None:
    update = tg.user_message(CHAT, "once")

    async def body(bot: telegram.Bot) -> list[int]:
        ids = [u.update_id for u in await bot.get_updates(timeout=0)]
        tg.push_update(update)  # Telegram delivers the same update_id again
        ids += [u.update_id for u in await bot.get_updates(offset=ids[-1] + 1, timeout=0)]
        ids += [u.update_id for u in await bot.get_updates(offset=ids[-1] + 1, timeout=0)]
        return ids

    assert with_bot(tg, body) == [update["update_id"], update["update_id"]]
    assert tg.pending_updates() == 0


# --------------------------------------------------------------------------------------------------
# Sending, HTML, errors


def test_send_message_html_validation_and_length(tg: FakeTelegram) -> None:
    async def body(bot: telegram.Bot) -> dict[str, Any]:
        out: dict[str, Any] = {}
        out["ok"] = await bot.send_message(
            CHAT, "<b>bold</b> &amp; <a href='https://x.y/?a=1&amp;b=2'>link</a>", parse_mode="HTML"
        )
        for name, text in (("div", "<div>x</div>"), ("lt", "1 < 2"), ("amp", "fish & chips"), ("nest", "<b><i>x</b>")):
            with pytest.raises(BadRequest) as err:
                await bot.send_message(CHAT, text, parse_mode="HTML")
            out[name] = err.value.message
        out["max"] = await bot.send_message(CHAT, "<b>" + "a" * 4096 + "</b>", parse_mode="HTML")
        with pytest.raises(BadRequest) as err:
            await bot.send_message(CHAT, "a" * 4097)
        out["long"] = err.value.message
        return out

    out = with_bot(tg, body)
    assert out["ok"].text == "bold & link"
    assert [(e.type, e.offset, e.length) for e in out["ok"].entities] == [("bold", 0, 4), ("text_link", 7, 4)]
    assert out["ok"].entities[1].url == "https://x.y/?a=1&b=2"
    for name in ("div", "lt", "amp", "nest"):
        assert out[name].startswith("Can't parse entities: "), out[name]
    assert 'unsupported start tag "div" at byte offset 0' in out["div"]  # PTB lower-cases after the prefix
    assert out["long"] == "Message is too long"
    assert len(out["max"].text) == 4096
    raw = api(tg, "sendMessage", json={"chat_id": CHAT, "text": "x<div>", "parse_mode": "HTML"}).json()
    expected = 'Bad Request: can\'t parse entities: Unsupported start tag "div" at byte offset 1'
    assert raw == {"ok": False, "error_code": 400, "description": expected}
    assert api(tg, "sendMessage", json={"chat_id": CHAT, "text": ""}).json()["description"] == (
        "Bad Request: message text is empty"
    )
    assert [c.status for c in tg.calls("sendMessage")] == [200, 400, 400, 400, 400, 200, 400, 400, 400]
    assert len(tg.sent_messages(CHAT)) == 2


def test_parse_html_unit() -> None:
    text, entities = parse_html(
        '😀<b>b</b><tg-spoiler>s</tg-spoiler><span class="tg-spoiler">t</span><pre><code class="language-py">x'
        "</code></pre><blockquote expandable>q</blockquote>&lt;&#62;&#x41;&quot;"
    )
    assert text == '😀bstxq<>A"'
    assert entities == [
        {"type": "bold", "offset": 2, "length": 1},
        {"type": "spoiler", "offset": 3, "length": 1},
        {"type": "spoiler", "offset": 4, "length": 1},
        {"type": "pre", "offset": 5, "length": 1, "language": "py"},
        {"type": "expandable_blockquote", "offset": 6, "length": 1},
    ]
    for bad in ("<br/>", "<b>x", "</b>", "&nbsp;", "a &", "<span>x</span>", "<b x", "<>"):
        with pytest.raises(HtmlParseError):
            parse_html(bad)


def test_caption_limit_edit_delete_actions_reactions_commands(tg: FakeTelegram) -> None:
    async def body(bot: telegram.Bot) -> dict[str, Any]:
        out: dict[str, Any] = {}
        msg = await bot.send_message(CHAT, "draft")
        out["edited"] = await bot.edit_message_text("<i>final</i>", CHAT, msg.message_id, parse_mode="HTML")
        with pytest.raises(BadRequest) as err:
            await bot.edit_message_text("<i>final</i>", CHAT, msg.message_id, parse_mode="HTML")
        out["not_modified"] = err.value.message
        with pytest.raises(BadRequest) as err:
            await bot.send_photo(CHAT, photo=b"img", caption="c" * 1025)
        out["caption"] = err.value.message
        temp = await bot.send_message(CHAT, "thinking...")
        await bot.delete_message(CHAT, temp.message_id)
        await bot.send_chat_action(CHAT, "typing")
        await bot.set_message_reaction(CHAT, msg.message_id, "👀")
        await bot.set_my_commands([("new", "Start a new conversation"), ("help", "Show help")])
        out["commands"] = [c.command for c in await bot.get_my_commands()]
        return out

    out = with_bot(tg, body)
    assert out["edited"].text == "final" and out["edited"].edit_date is not None
    assert out["not_modified"].startswith("Message is not modified")
    assert out["caption"] == "Message caption is too long"
    assert [m["text"] for m in tg.sent_messages(CHAT)] == ["final", "thinking..."]
    assert [m["text"] for m in tg.sent_messages(CHAT, include_deleted=False)] == ["final"]
    assert tg.deleted_messages(CHAT) == [2]
    assert [a for _, a in tg.chat_actions(CHAT)] == ["typing"]
    assert tg.reactions(CHAT)[0]["reaction"] == [{"type": "emoji", "emoji": "👀"}]
    assert out["commands"] == ["new", "help"]


@pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")  # RetryAfter.retry_after type
def test_fail_next_429_and_5xx(tg: FakeTelegram) -> None:
    tg.fail_next("sendMessage", status=429, retry_after=3)
    tg.fail_next("sendChatAction", status=502, count=2)

    async def body(bot: telegram.Bot) -> tuple[RetryAfter, NetworkError, telegram.Message]:
        with pytest.raises(RetryAfter) as limited:
            await bot.send_message(CHAT, "hi")
        with pytest.raises(NetworkError) as down:
            await bot.send_chat_action(CHAT, "typing")
        return limited.value, down.value, await bot.send_message(CHAT, "hi again")

    limited, _down, message = with_bot(tg, body)
    assert limited.retry_after in (3, dt.timedelta(seconds=3))
    assert message.text == "hi again"
    assert api(tg, "sendChatAction", json={"chat_id": CHAT, "action": "typing"}).status_code == 502
    assert api(tg, "sendChatAction", json={"chat_id": CHAT, "action": "typing"}).status_code == 200
    tg.fail_next("getMe", status=429, retry_after=7)
    expected = {"description": "Too Many Requests: retry after 7", "parameters": {"retry_after": 7}}
    assert api(tg, "getMe").json() == {"ok": False, "error_code": 429, **expected}
    assert [c.status for c in tg.calls("sendMessage")] == [429, 200]


# --------------------------------------------------------------------------------------------------
# Files


def test_user_photo_get_file_and_download(tg: FakeTelegram) -> None:
    picture = bytes(range(256)) * 10
    tg.user_message(CHAT, caption="look", photo=picture, document=("notes.txt", b"some notes", "text/plain"))

    async def body(bot: telegram.Bot) -> tuple[bytes, bytes, telegram.Message]:
        (update,) = await bot.get_updates(timeout=0)
        assert update.message is not None
        photo_file = await update.message.photo[-1].get_file()
        photo = io.BytesIO()
        await photo_file.download_to_memory(photo)
        assert update.message.document is not None
        doc = await (await update.message.document.get_file()).download_as_bytearray()
        return photo.getvalue(), bytes(doc), update.message

    photo, doc, message = with_bot(tg, body)
    assert photo == picture and doc == b"some notes"
    assert message.caption == "look" and message.document is not None and message.document.file_name == "notes.txt"
    assert message.photo[-1].file_size == len(picture)


def test_send_document_upload_recorded(tg: FakeTelegram) -> None:
    async def body(bot: telegram.Bot) -> tuple[telegram.Message, telegram.Message, bytes]:
        doc = await bot.send_document(
            CHAT, document=b"report body", filename="report.md", caption="<b>r</b>", parse_mode="HTML"
        )
        assert doc.document is not None
        voice = await bot.send_voice(CHAT, voice=doc.document.file_id)  # re-send by file_id
        data = await (await bot.get_file(doc.document.file_id)).download_as_bytearray()
        return doc, voice, bytes(data)

    doc, voice, data = with_bot(tg, body)
    assert doc.document is not None and doc.document.file_name == "report.md" and doc.caption == "r"
    assert data == b"report body" and voice.voice is not None
    call = tg.calls("sendDocument")[0]
    assert call.params["document"] == {"filename": "report.md", "content_type": "text/markdown", "size": 11}
    assert call.params["chat_id"] == CHAT
    assert [sorted(k for k in m if k in ("document", "voice")) for m in tg.sent_messages(CHAT)] == [
        ["document"],
        ["voice"],
    ]


# --------------------------------------------------------------------------------------------------
# Webhooks


def test_webhook_delivery_secret_retry_and_conflict(tg: FakeTelegram) -> None:
    received: list[tuple[str | None, dict[str, Any]]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((request.headers.get("X-Telegram-Bot-Api-Secret-Token"), await request.json()))
        return web.Response(status=500 if len(received) == 1 else 200)

    async def main() -> tuple[Conflict, telegram.WebhookInfo]:
        app = web.Application()
        app.router.add_post("/tg", hook)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with make_bot(tg) as bot:
                assert await bot.set_webhook(f"http://127.0.0.1:{port}/tg", secret_token="s3cret-Token_1")
                update = tg.user_message(CHAT, "via webhook")
                for _ in range(100):
                    if len(received) >= 2:
                        break
                    await asyncio.sleep(0.05)
                info = await bot.get_webhook_info()
                with pytest.raises(Conflict) as err:
                    await bot.get_updates(timeout=0)
                assert received[0][1]["update_id"] == update["update_id"]
                assert await bot.delete_webhook()
                return err.value, info
        finally:
            await runner.cleanup()

    conflict, info = asyncio.run(asyncio.wait_for(main(), 15))
    assert len(received) == 2
    assert [secret for secret, _ in received] == ["s3cret-Token_1", "s3cret-Token_1"]
    assert received[0][1] == received[1][1] and received[1][1]["message"]["text"] == "via webhook"
    deliveries = tg.webhook_deliveries()
    assert [d.status for d in deliveries] == [500, 200]
    assert deliveries[0].update_id == deliveries[1].update_id
    assert deliveries[1].time - deliveries[0].time >= 0.04  # retried after webhook_retry_s
    assert "can't use getUpdates method while webhook is active" in conflict.message
    assert info.pending_update_count == 0 and info.last_error_message is not None
    assert tg.conflicts == 1 and tg.poll_log()[-1].outcome == "webhook_conflict"
    assert tg.webhook is None and tg.pending_updates() == 0


def test_webhook_connection_error_is_retried(tg: FakeTelegram) -> None:
    port = free_port()
    api(tg, "setWebhook", json={"url": f"http://127.0.0.1:{port}/hook"})
    assert tg.webhook == {"url": f"http://127.0.0.1:{port}/hook", "secret_token": None}
    tg.user_message(CHAT, "lost?")
    deliveries = tg.wait_for_deliveries(2, timeout=5)
    assert all(d.status is None and d.error for d in deliveries[:2])
    assert deliveries[0].update_id == deliveries[1].update_id
    assert tg.pending_updates() == 1
    api(tg, "deleteWebhook", json={"drop_pending_updates": True})
    assert tg.pending_updates() == 0


def free_port() -> int:
    """A loopback port that was free a moment ago; nothing listens on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------------------------------
# Test-side helpers


def test_wait_for_messages_from_another_thread_and_reset(tg: FakeTelegram) -> None:
    def later() -> None:
        time.sleep(0.2)
        api(tg, "sendMessage", json={"chat_id": CHAT, "text": "late"})

    thread = threading.Thread(target=later, daemon=True)
    thread.start()
    messages = tg.wait_for_messages(CHAT, 1, timeout=5)
    thread.join(5)
    assert messages[0]["text"] == "late" and messages[0]["from"]["id"] == tg.bot_id
    with pytest.raises(TimeoutError):
        tg.wait_for_messages(CHAT, 2, timeout=0.2)
    tg.user_message(CHAT, "pending")
    tg.reset()
    assert tg.calls() == [] and tg.sent_messages() == [] and tg.pending_updates() == 0


def test_disconnected_long_poll_is_not_a_conflict(tg: FakeTelegram) -> None:
    url = f"{tg.api_base}/bot{tg.token}/getUpdates"
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url, json={"timeout": 5}, timeout=0.3)  # the client gives up and closes the connection
    deadline = time.monotonic() + 5
    while not tg.poll_log() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert tg.poll_log()[0].outcome == "disconnected"
    assert httpx.post(url, json={"timeout": 0}, timeout=5).json() == {"ok": True, "result": []}
    assert tg.conflicts == 0 and [c.status for c in tg.calls("getUpdates")] == [499, 200]


def test_ptb_application_polling_end_to_end(tg: FakeTelegram) -> None:
    async def reply(update: telegram.Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_message is not None
        await update.effective_message.reply_html(f"<b>echo</b>: {update.effective_message.text}", do_quote=True)

    async def main() -> None:
        builder = Application.builder().token(tg.token).base_url(f"{tg.api_base}/bot")
        app = builder.base_file_url(f"{tg.api_base}/file/bot").build()
        app.add_handler(MessageHandler(filters.TEXT, reply))
        async with app:
            await app.start()
            assert app.updater is not None
            await app.updater.start_polling(poll_interval=0, timeout=5)
            tg.user_message(CHAT, "one")
            tg.user_message(CHAT, "/two")
            await asyncio.to_thread(tg.wait_for_messages, CHAT, 2, 5)
            await app.updater.stop()
            await app.stop()

    asyncio.run(asyncio.wait_for(main(), 15))
    sent = tg.sent_messages(CHAT)
    assert [m["text"] for m in sent] == ["echo: one", "echo: /two"]
    assert [m["reply_to_message"]["text"] for m in sent] == ["one", "/two"]
    assert tg.conflicts == 0 and tg.pending_updates() == 0
    assert all(p.outcome in ("ok", "disconnected") for p in tg.poll_log())
