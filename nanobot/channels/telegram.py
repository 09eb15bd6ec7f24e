"""Telegram, through python-telegram-bot's `Bot` (Bot API over HTTPS; `apiBase` for a self-hosted server).

Receiving, by long polling (default) or by webhook:
- private chats always; groups per `groupPolicy`: "mention" takes a message that @mentions the bot, replies
  to it, or is a `/command@bot`; "open" takes every message.
- text, captions, photos, documents, voice, audio and video; files go to `<workspace>/media/telegram/` and
  the message says what arrived and where (voice and audio transcribed when a provider is configured).
- `/start` is answered here; `/new`, `/stop`, `/help` (also as `/cmd@bot`) go to the agent like any text.
- every accepted message gets `reactEmoji` and a typing indicator until its reply is sent.
- the inbound message id is `tg-<chat>-<message>`, so a redelivered update is dropped by the bus (celery
  mode) as well as by this channel's memory of recent update ids.

Polling with several gateways: a lease from the bus (Redis in celery mode) lets one gateway poll at a time;
it renews the lease before every `getUpdates` (whose timeout is a third of the lease), and confirms an
update (the next call's offset) only after the bus holds it durably. So a gateway that dies leaves its
unconfirmed updates to the next poller, which takes over when the lease expires, and the duplicates it
sees are dropped by message id.

Sending: Markdown becomes Telegram HTML (telegram_format.py), long replies go in parts that keep code
blocks whole, plain text when Telegram refuses the HTML, retries that honour RetryAfter.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from telegram import Bot, Message, ReactionTypeEmoji, ReplyParameters, Update
from telegram.constants import ChatAction, MessageEntityType, ParseMode
from telegram.error import BadRequest, Conflict, Forbidden, InvalidToken, NetworkError, RetryAfter, TelegramError
from telegram.request import HTTPXRequest
from telegram.warnings import PTBDeprecationWarning

from nanobot.bus.events import OutboundMessage
from nanobot.bus.queue import MessageBus
from nanobot.channels.base import BaseChannel
from nanobot.channels.dedup import RecentIds
from nanobot.channels.telegram_format import split_markdown, to_telegram_html
from nanobot.config.schema import TelegramConfig
from nanobot.gateway.http import WebServer
from nanobot.providers.transcription import Transcriber

log = logging.getLogger(__name__)

ALLOWED_UPDATES = ["message"]
SEND_ATTEMPTS = 5
MAX_RETRY_WAIT_S = 60.0
TYPING_EVERY_S = 4.0
TYPING_MAX_S = 600.0
START_TEXT = (
    "👋 Hi {name}! I'm nanobot.\n\nSend me a message and I'll answer.\n"
    "/new starts a new conversation, /stop stops what I am doing, /help lists the commands."
)
_COMMAND = re.compile(r"^/([A-Za-z0-9_]+)(?:@([A-Za-z0-9_]+))?(?=\s|$)")
_MEDIA_SUFFIXES = {
    "photo": (".jpg", ".jpeg", ".png", ".gif", ".webp"),
    "voice": (".ogg", ".oga", ".opus"),
    "audio": (".mp3", ".m4a", ".wav", ".flac", ".aac"),
}


@dataclass
class _Waiting:
    """A chat with messages accepted and not yet answered: the typing indicator runs until it is empty."""

    messages: dict[str, int] = field(default_factory=dict)  # our message id -> Telegram message id
    typing: asyncio.Task[None] | None = None


def message_id_for(chat_id: int, telegram_message_id: int) -> str:
    return f"tg-{chat_id}-{telegram_message_id}"


def telegram_message_id(message_id: str | None) -> int | None:
    """The Telegram message an inbound id of ours stands for (None for other ids)."""
    if not message_id or not message_id.startswith("tg-"):
        return None
    tail = message_id.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


def _retry_after_s(exc: RetryAfter) -> float:
    with warnings.catch_warnings():  # PTB 22 warns that the attribute becomes a timedelta; both are handled
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value = exc.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class TelegramChannel(BaseChannel):
    name = "telegram"

    def __init__(
        self, config: TelegramConfig, bus: MessageBus, *, media_dir: Path, transcriber: Transcriber | None = None
    ) -> None:
        super().__init__(config, bus)
        self.config: TelegramConfig = config
        self.media_dir = media_dir / "telegram"
        self.transcriber = transcriber
        self._bot: Bot | None = None
        self._stop = asyncio.Event()
        self._seen = RecentIds(maxlen=10_000, ttl_s=24 * 3600, channel=self.name)
        self._waiting: dict[int, _Waiting] = {}
        self._updates: asyncio.Queue[Update] = asyncio.Queue()
        self._webhook_server: WebServer | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def bot(self) -> Bot:
        if self._bot is None:
            raise RuntimeError("the telegram channel is not started")
        return self._bot

    def _make_bot(self) -> Bot:
        proxy = self.config.proxy or None
        poll_timeout = self._poll_timeout_s()
        base = self.config.api_base.rstrip("/")
        return Bot(
            self.config.token,
            base_url=f"{base}/bot",
            base_file_url=f"{base}/file/bot",
            request=HTTPXRequest(
                connection_pool_size=self.config.connection_pool_size, pool_timeout=self.config.pool_timeout,
                proxy=proxy, read_timeout=30.0,
            ),
            get_updates_request=HTTPXRequest(proxy=proxy, read_timeout=poll_timeout + 10.0),
        )

    async def start(self) -> None:
        if not self.config.token:
            raise ValueError("channels.telegram.token is empty: get one from @BotFather")
        self._stop.clear()
        self._bot = self._make_bot()
        await self._bot.initialize()  # getMe: a bad token stops here with InvalidToken
        self._running = True
        log.info("telegram: bot @%s (%s mode)", self._bot.username, self.config.mode)
        tasks = [asyncio.create_task(self._consume_updates(), name="telegram-updates")]
        if self.config.mode == "webhook":
            await self._start_webhook()
        else:
            tasks.append(asyncio.create_task(self._poll(), name="telegram-poll"))
        try:
            stop = asyncio.create_task(self._stop.wait())
            done, _ = await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stop and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            for task in [*tasks, stop]:
                task.cancel()
            await asyncio.gather(*tasks, stop, return_exceptions=True)
            await self._shutdown()

    async def stop(self) -> None:
        self._stop.set()
        await self._shutdown()

    async def _shutdown(self) -> None:
        self._running = False
        server, self._webhook_server = self._webhook_server, None
        if server is not None:
            await server.stop()
        for waiting in self._waiting.values():
            if waiting.typing is not None:
                waiting.typing.cancel()
        self._waiting.clear()
        bot, self._bot = self._bot, None
        if bot is not None:
            try:
                await bot.shutdown()
            except Exception as exc:
                log.debug("telegram: closing the bot client: %s", exc)
            if self.transcriber is not None:
                await self.transcriber.close()

    # ------------------------------------------------------------------ polling
    def _poll_timeout_s(self) -> int:
        return max(1, int(self.config.poll_lease_s / 3))

    async def _poll(self) -> None:
        lease = self.bus.lease(f"telegram-poll:{self.config.token.split(':', 1)[0]}", self.config.poll_lease_s)
        offset: int | None = None
        delay = 1.0
        try:
            while True:
                had = lease.held
                if not await lease.acquire():
                    if had:
                        log.info("telegram: another gateway polls @%s now", self.bot.username)
                    offset = None
                    await asyncio.sleep(self.config.poll_lease_s / 3)
                    continue
                if not had:
                    log.info("telegram: this gateway polls @%s", self.bot.username)
                    await self._call(self.bot.delete_webhook, drop_pending_updates=False)
                try:
                    updates = await self.bot.get_updates(
                        offset=offset, timeout=self._poll_timeout_s(), allowed_updates=ALLOWED_UPDATES
                    )
                except Conflict as exc:
                    log.warning("telegram: getUpdates conflict (%s): another program polls this token, or a "
                                "webhook is set", exc.message)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
                    continue
                except (InvalidToken, Forbidden):
                    raise
                except (NetworkError, RetryAfter) as exc:
                    wait = _retry_after_s(exc) if isinstance(exc, RetryAfter) else delay
                    log.warning("telegram: getUpdates failed (%s); retrying in %.1fs", exc, wait)
                    await asyncio.sleep(wait)
                    delay = min(delay * 2, 30.0)
                    continue
                delay = 1.0
                for update in updates:
                    await self._updates.put(update)
                if updates:
                    await self._updates.join()
                    # Confirm (by the next offset) only what the bus holds durably.
                    if await self.bus.wait_accepted(30.0):
                        offset = updates[-1].update_id + 1
                    else:
                        log.warning("telegram: the bus has not stored %d update(s) yet; fetching them again later",
                                    len(updates))
        finally:
            await lease.release()

    # ------------------------------------------------------------------ webhook
    def webhook_secret(self) -> str:
        """The configured secret, else one derived from the token (the same on every gateway, unguessable)."""
        if self.config.webhook_secret_token:
            return self.config.webhook_secret_token
        return hmac.new(self.config.token.encode(), b"nanobot-telegram-webhook", hashlib.sha256).hexdigest()

    async def _start_webhook(self) -> None:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_post(self.config.webhook_path, self._on_webhook)
        server = WebServer(app, self.config.webhook_listen_host, self.config.webhook_listen_port)
        await server.start()
        self._webhook_server = server
        log.info("telegram: webhook listening on http://%s:%d%s", server.host, server.port, self.config.webhook_path)
        if not self.config.webhook_url:
            log.warning("telegram: channels.telegram.webhookUrl is empty; Telegram will not call this webhook")
            return
        if not self.config.webhook_url.startswith("https://"):
            log.warning("telegram: webhookUrl is not https; the real Bot API accepts only https webhooks")
        await self._call(
            self.bot.set_webhook, url=self.config.webhook_url, secret_token=self.webhook_secret(),
            allowed_updates=ALLOWED_UPDATES, max_connections=self.config.webhook_max_connections,
        )

    @property
    def webhook_port(self) -> int | None:
        return self._webhook_server.port if self._webhook_server is not None else None

    async def _on_webhook(self, request: web.Request) -> web.Response:
        supplied = request.headers.get("X-Telegram-Bot-Api-Secret-Token", "")
        if not hmac.compare_digest(supplied.encode(), self.webhook_secret().encode()):
            log.warning("telegram: webhook call from %s refused: bad secret token", request.remote)
            return web.Response(status=403, text="forbidden")
        try:
            data = json.loads(await request.read())
            update = Update.de_json(data, self.bot) if isinstance(data, dict) else None
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("telegram: malformed webhook update refused: %s", exc)
            return web.Response(status=400, text="malformed update")
        if update is None:
            return web.Response(status=400, text="malformed update")
        await self._updates.put(update)  # answered at once; handled in order by _consume_updates
        return web.Response(status=200)

    # ------------------------------------------------------------------ receiving
    async def _consume_updates(self) -> None:
        while True:
            update = await self._updates.get()
            try:
                await self.handle_update(update)
            except Exception:
                log.exception("telegram: update %s could not be handled", update.update_id)
            finally:
                self._updates.task_done()

    async def handle_update(self, update: Update) -> None:
        if self._seen.seen(str(update.update_id)):
            log.info("telegram: update %s seen before; dropped", update.update_id)
            return
        message = update.message
        if message is None or message.from_user is None or message.from_user.is_bot:
            return
        chat_id = message.chat.id
        user = message.from_user
        sender_id = f"{user.id}|{user.username}" if user.username else str(user.id)
        session = f"telegram:{chat_id}"
        message_id = message_id_for(chat_id, message.message_id)
        group = message.chat.type in ("group", "supergroup")
        if group and self.config.group_policy == "mention" and not self._addressed(message):
            return
        text = self._clean_text(message.text or message.caption or "")
        if text is None:  # a command for another bot
            return
        if not self.is_allowed(sender_id):
            log.warning("telegram: session=%s message_id=%s refused: sender %s not in allowFrom",
                        session, message_id, sender_id)
            return
        if text.split(maxsplit=1)[:1] == ["/start"]:
            await self._call(self.bot.send_message, chat_id=chat_id, text=START_TEXT.format(name=user.first_name))
            return
        media, notes = await self._download_media(message)
        content = "\n".join(part for part in (text, *notes) if part)
        if not content:
            return
        self._track(chat_id, message_id, message.message_id)
        metadata = {"telegram": {"message_id": message.message_id, "chat_type": message.chat.type,
                                 "user_id": user.id, "username": user.username}}
        log.info("telegram: session=%s message_id=%s accepted", session, message_id)
        try:
            published = await self._handle_message(sender_id, str(chat_id), content, media=media,
                                                   metadata=metadata, message_id=message_id)
        except Exception:
            self._untrack(chat_id, message_id)
            raise
        if published is None:
            self._untrack(chat_id, message_id)
            return
        if self.config.react_emoji:
            await self._quietly(self.bot.set_message_reaction, chat_id=chat_id, message_id=message.message_id,
                                reaction=[ReactionTypeEmoji(self.config.react_emoji)])

    def is_allowed(self, sender_id: str) -> bool:
        """By numeric id, by username (with or without @, any case), or upstream's `id|username`; `*` allows all."""
        allow = self.config.allow_from
        if not allow or "*" in allow:
            return True
        wanted = {part.strip().lstrip("@").lower() for entry in allow for part in entry.split("|") if part.strip()}
        parts = {part.lower() for part in str(sender_id).split("|") if part}
        return str(sender_id).lower() in wanted or bool(parts & wanted)

    def _addressed(self, message: Message) -> bool:
        """In a group under the "mention" policy: the bot is @mentioned, replied to, or its /command@bot used."""
        bot = self.bot
        replied = message.reply_to_message
        if replied is not None and replied.from_user is not None and replied.from_user.id == bot.id:
            return True
        handle = f"@{bot.username}".lower()
        parsed = message.parse_entities() if message.text else message.parse_caption_entities()
        for entity, value in parsed.items():
            if entity.type == MessageEntityType.MENTION and value.lower() == handle:
                return True
            if entity.type == MessageEntityType.TEXT_MENTION and entity.user and entity.user.id == bot.id:
                return True
            if entity.type == MessageEntityType.BOT_COMMAND and value.lower().endswith(handle):
                return True
        return False

    def _clean_text(self, text: str) -> str | None:
        """The text without the bot's @handle; `/cmd@bot` becomes `/cmd`; None for another bot's command."""
        username = self.bot.username or ""
        match = _COMMAND.match(text)
        if match and match.group(2):
            if match.group(2).lower() != username.lower():
                return None
            text = f"/{match.group(1)}{text[match.end():]}"
        if username:
            text = re.sub(rf"@{re.escape(username)}\b", "", text, flags=re.IGNORECASE)
        return text.strip()

    async def _download_media(self, message: Message) -> tuple[list[str], list[str]]:
        """Saved file paths, and one line per file saying what arrived and where."""
        found: list[tuple[str, Any, str]] = []
        if message.photo:
            found.append(("image", message.photo[-1], ".jpg"))
        if message.document:
            found.append(("file", message.document, Path(message.document.file_name or "").suffix or ".bin"))
        if message.voice:
            found.append(("voice", message.voice, ".ogg"))
        if message.audio:
            found.append(("audio", message.audio, Path(message.audio.file_name or "").suffix or ".mp3"))
        if message.video:
            found.append(("video", message.video, ".mp4"))
        paths: list[str] = []
        notes: list[str] = []
        for kind, item, suffix in found:
            path = self.media_dir / f"{item.file_unique_id}{suffix.lower()}"
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                file = await self._call(self.bot.get_file, file_id=item.file_id)
                await file.download_to_drive(path)
            except (TelegramError, OSError) as exc:
                log.warning("telegram: chat=%s %s download failed: %s", message.chat.id, kind, exc)
                notes.append(f"[{kind}: download failed]")
                continue
            paths.append(str(path))
            notes.append(await self._describe(kind, path))
        return paths, notes

    async def _describe(self, kind: str, path: Path) -> str:
        if kind not in ("voice", "audio"):
            return f"[{kind}: {path}]"
        if self.transcriber is None:
            return f"[{kind}: {path} (not transcribed: no transcription provider is configured)]"
        try:
            return f"[{kind}: {path}]\n[transcription: {await self.transcriber.transcribe(path)}]"
        except Exception as exc:
            log.warning("telegram: transcription of %s failed: %s", path.name, exc)
            return f"[{kind}: {path} (transcription failed)]"

    # ------------------------------------------------------------------ typing and reactions
    def _track(self, chat_id: int, message_id: str, telegram_id: int) -> None:
        waiting = self._waiting.setdefault(chat_id, _Waiting())
        waiting.messages[message_id] = telegram_id
        if waiting.typing is None or waiting.typing.done():
            waiting.typing = asyncio.create_task(self._keep_typing(chat_id), name=f"telegram-typing-{chat_id}")

    def _untrack(self, chat_id: int, message_id: str) -> int | None:
        waiting = self._waiting.get(chat_id)
        if waiting is None:
            return None
        telegram_id = waiting.messages.pop(message_id, None)
        if not waiting.messages:
            if waiting.typing is not None:
                waiting.typing.cancel()
            del self._waiting[chat_id]
        return telegram_id

    async def _keep_typing(self, chat_id: int) -> None:
        loop = asyncio.get_running_loop()
        until = loop.time() + TYPING_MAX_S
        while loop.time() < until:
            await self._quietly(self.bot.send_chat_action, chat_id=chat_id, action=ChatAction.TYPING)
            await asyncio.sleep(TYPING_EVERY_S)

    # ------------------------------------------------------------------ sending
    async def send(self, msg: OutboundMessage) -> None:
        try:
            chat_id = int(msg.chat_id)
        except ValueError as exc:
            raise ValueError(f"telegram chat id must be a number, got {msg.chat_id!r}") from exc
        final = not msg.is_progress
        reply = self._reply_parameters(msg) if final else None
        for part in split_markdown(msg.content) if msg.content.strip() else []:
            await self._send_part(chat_id, part, reply)
            reply = None
        for path in msg.media:
            await self._send_file(chat_id, Path(path))
        if final and msg.reply_to:
            answered = self._untrack(chat_id, msg.reply_to)
            if answered is not None and self.config.react_emoji:
                await self._quietly(self.bot.set_message_reaction, chat_id=chat_id, message_id=answered, reaction=[])

    def _reply_parameters(self, msg: OutboundMessage) -> ReplyParameters | None:
        if not self.config.reply_to_message:
            return None
        original = telegram_message_id(msg.reply_to)
        return ReplyParameters(message_id=original, allow_sending_without_reply=True) if original else None

    async def _send_part(self, chat_id: int, part: str, reply: ReplyParameters | None) -> None:
        try:
            await self._call(self.bot.send_message, chat_id=chat_id, text=to_telegram_html(part),
                             parse_mode=ParseMode.HTML, reply_parameters=reply)
        except BadRequest as exc:
            if "parse" not in exc.message.lower() and "too long" not in exc.message.lower():
                raise
            log.warning("telegram: chat=%s HTML refused (%s); sending plain text", chat_id, exc.message)
            await self._call(self.bot.send_message, chat_id=chat_id, text=part, reply_parameters=reply)

    async def _send_file(self, chat_id: int, path: Path) -> None:
        if not await asyncio.to_thread(path.is_file):
            raise FileNotFoundError(f"media file {path} does not exist")
        suffix = path.suffix.lower()
        if suffix in _MEDIA_SUFFIXES["photo"]:
            await self._call(self.bot.send_photo, chat_id=chat_id, photo=path)
        elif suffix in _MEDIA_SUFFIXES["voice"]:
            await self._call(self.bot.send_voice, chat_id=chat_id, voice=path)
        elif suffix in _MEDIA_SUFFIXES["audio"]:
            await self._call(self.bot.send_audio, chat_id=chat_id, audio=path)
        else:
            await self._call(self.bot.send_document, chat_id=chat_id, document=path)

    async def _call(self, method: Any, **kwargs: Any) -> Any:
        """A Bot API call, retried on RetryAfter (as long as Telegram asks) and on network errors (backoff)."""
        delay = 0.5
        for attempt in range(1, SEND_ATTEMPTS + 1):
            try:
                return await method(**kwargs)
            except RetryAfter as exc:
                if attempt == SEND_ATTEMPTS:
                    raise
                wait = min(_retry_after_s(exc), MAX_RETRY_WAIT_S)
                log.warning("telegram: flood control on %s; retrying in %.1fs", method.__name__, wait)
                await asyncio.sleep(wait)
            except (BadRequest, Forbidden, InvalidToken):
                raise
            except NetworkError as exc:
                if attempt == SEND_ATTEMPTS:
                    raise
                log.warning("telegram: %s failed (%s); retrying in %.1fs", method.__name__, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        raise AssertionError("unreachable")

    async def _quietly(self, method: Any, **kwargs: Any) -> None:
        """A call whose failure changes nothing for the person (typing, reactions): logged, never raised."""
        try:
            await method(**kwargs)
        except TelegramError as exc:
            log.debug("telegram: %s failed: %s", method.__name__, exc)
