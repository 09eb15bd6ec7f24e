"""A SIMULATED Telegram Bot API: a real HTTP server on loopback that speaks the Bot API protocol.

Nothing here talks to Telegram. `FakeTelegram` stands in for ``api.telegram.org`` in nanobot's tests;
python-telegram-bot (or any HTTP client) pointed at it with ``base_url=f"{api_base}/bot"`` and
``base_file_url=f"{api_base}/file/bot"`` works unchanged::

    with FakeTelegram() as tg:
        tg.user_message(42, "hello")      # an Update from user 42, queued for getUpdates (or the webhook)
        bot = telegram.Bot(tg.token, base_url=f"{tg.api_base}/bot", base_file_url=f"{tg.api_base}/file/bot")
        ...
        tg.wait_for_messages(42, 1)       # what the bot sent to chat 42

Methods live at ``/bot{token}/{method}`` (GET or POST; query string, form, multipart or JSON
parameters; method names case-insensitive), files at ``/file/bot{token}/{file_path}``. Answers are
``{"ok": true, "result": ...}`` or ``{"ok": false, "error_code": N, "description": ...}`` with HTTP
status N. Modelled: getUpdates (offset confirmation, long polling, the two 409 conflicts, every poll
logged as a `PollRecord`); webhooks (updates POSTed one at a time in order with the secret-token
header, retried with the same update_id after a non-2xx answer or a connection error, each attempt a
`DeliveryRecord`); strict ``parse_mode=HTML`` validation and length limits; messages, edits,
deletions, uploads/downloads, chat actions, reactions, commands; failure injection (`fail_next`).

Simplifications: bots may write to any chat (unknown chats are created on the fly); lengths are
counted in code points; Markdown parse modes are not validated; URL "uploads" are not downloaded (the
file is empty). An update pushed again with an update_id already issued (`push_update`) is exempt from
offset confirmation until it has been returned once, so re-delivery can be tested with polling too.

aiohttp serves in a daemon thread with its own event loop; every public method may be called from
any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import Any

import aiohttp
from aiohttp import web

__all__ = ["DeliveryRecord", "FakeTelegram", "HtmlParseError", "PollRecord", "RecordedCall", "parse_html"]

METHODS = (
    "getMe getUpdates setWebhook deleteWebhook getWebhookInfo sendMessage editMessageText deleteMessage "
    "sendChatAction setMessageReaction getFile sendPhoto sendDocument sendVoice sendAudio setMyCommands "
    "deleteMyCommands getMyCommands close logOut"
).split()
_CANONICAL = {name.lower(): name for name in METHODS}
_INT_FIELDS = set(
    "chat_id message_id offset limit reply_to_message_id message_thread_id max_connections duration".split()
)
_BOOL_FIELDS = set(
    "disable_notification protect_content drop_pending_updates is_big allow_sending_without_reply has_spoiler "
    "disable_web_page_preview disable_content_type_detection show_caption_above_media".split()
)
_JSON_FIELDS = set(
    "reply_markup reply_parameters reaction link_preview_options entities caption_entities allowed_updates "
    "commands scope media".split()
)
_CHAT_ACTIONS = set(
    "typing upload_photo record_video upload_video record_voice upload_voice upload_document choose_sticker "
    "find_location record_video_note upload_video_note".split()
)
_DEFAULT_EXCLUDED_UPDATES = {"chat_member", "message_reaction", "message_reaction_count"}
_MAX_TEXT, _MAX_CAPTION = 4096, 1024
_COMMAND_RE = re.compile(r"(?<![\w/])/[A-Za-z0-9_]{1,32}(?:@[A-Za-z0-9_]{3,32})?")
_MENTION_RE = re.compile(r"(?<![\w@])@[A-Za-z0-9_]{5,32}")
_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{1,256}")
_COMMAND_NAME_RE = re.compile(r"[a-z0-9_]{1,32}")
_CONFLICT_POLL = "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running"
_CONFLICT_WEBHOOK = (
    "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first"
)


# --------------------------------------------------------------------------------------------------
# Records


@dataclass
class RecordedCall:
    """One Bot API call: canonical ``method`` name, decoded ``params`` (an uploaded file appears as
    ``{"filename", "content_type", "size"}``), HTTP ``status`` (``None`` while in flight, e.g. a long
    poll; 499 if the client went away), arrival ``time``, error ``description`` and client ``peer``."""

    method: str
    params: dict[str, Any]
    status: int | None
    time: float
    description: str | None = None
    peer: str = ""


@dataclass
class PollRecord:
    """One getUpdates call. ``outcome``: ``"ok"``, ``"conflict"`` (terminated by a later poll),
    ``"webhook_conflict"``, ``"disconnected"``, ``"reset"``, ``"stopped"`` or ``"error <status>"``
    (injected failure). ``ended`` is ``None`` while the poll is in flight."""

    started: float
    ended: float | None
    peer: str
    outcome: str
    update_ids: list[int] = field(default_factory=list)
    offset: int | None = None
    timeout: float = 0.0


@dataclass
class DeliveryRecord:
    """One webhook delivery attempt; ``status`` is ``None`` when the connection failed (see ``error``)."""

    update_id: int
    url: str
    status: int | None
    time: float
    error: str | None = None
    duration_s: float = 0.0


class _ApiError(Exception):
    def __init__(self, status: int, description: str, parameters: dict[str, Any] | None = None) -> None:
        super().__init__(description)
        self.status, self.description, self.parameters = status, description, parameters


def _bad(description: str) -> _ApiError:
    return _ApiError(400, f"Bad Request: {description}")


# --------------------------------------------------------------------------------------------------
# HTML (parse_mode=HTML) as Telegram understands it


class HtmlParseError(ValueError):
    """Not valid Telegram HTML; ``str(err)`` is what follows "Bad Request: can't parse entities: "."""


_SIMPLE_TAGS = {
    **dict.fromkeys(("b", "strong"), "bold"),
    **dict.fromkeys(("i", "em"), "italic"),
    **dict.fromkeys(("u", "ins"), "underline"),
    **dict.fromkeys(("s", "strike", "del"), "strikethrough"),
    "tg-spoiler": "spoiler",
    "span": "spoiler",
}
_ALL_TAGS = {*_SIMPLE_TAGS, "a", "code", "pre", "blockquote", "tg-emoji"}
_NAMED_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
_ENTITY_RE = re.compile(r"&(#[0-9]{1,8}|#[xX][0-9a-fA-F]{1,7}|[A-Za-z][A-Za-z0-9]{0,31});")
_TAG_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9-]*")
_ATTR_RE = re.compile(r"""\s+([A-Za-z_:][-\w:.]*)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+)))?""")
_TAG_END_RE = re.compile(r"\s*>")


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _unescape(text: str, base: int) -> str:
    """Decode character entities strictly (``base``: byte offset of ``text`` in the message)."""
    parts: list[str] = []
    i = 0
    while (k := text.find("&", i)) >= 0:
        parts.append(text[i:k])
        offset = base + len(text[:k].encode())
        m = _ENTITY_RE.match(text, k)
        if m is None:
            raise HtmlParseError(f'Character "&" at byte offset {offset} does not start an entity; use "&amp;"')
        body = m.group(1)
        if body[0] != "#":
            if body.lower() not in _NAMED_ENTITIES:
                raise HtmlParseError(f'Unsupported HTML entity "&{body};" at byte offset {offset}')
            parts.append(_NAMED_ENTITIES[body.lower()])
        else:
            code = int(body[2:], 16) if body[1] in "xX" else int(body[1:])
            if not 0 < code <= 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise HtmlParseError(f"Invalid numeric entity at byte offset {offset}")
            parts.append(chr(code))
        i = m.end()
    parts.append(text[i:])
    return "".join(parts)


def parse_html(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Parse Telegram HTML into (visible text, MessageEntity dicts with UTF-16 offsets).
    Raises `HtmlParseError` wherever Telegram answers "can't parse entities"."""
    out: list[str] = []
    pos16 = 0
    stack: list[dict[str, Any]] = []  # open tags: {"name", "attrs", "start"}
    entities: list[dict[str, Any]] = []
    i = 0
    while i < len(text):
        j = text.find("<", i)
        j = len(text) if j < 0 else j
        chunk = _unescape(text[i:j], len(text[:i].encode()))
        out.append(chunk)
        pos16 += _utf16_len(chunk)
        if j >= len(text):
            break
        offset = len(text[:j].encode())
        if text.startswith("</", j):
            end = text.find(">", j)
            if end < 0:
                raise HtmlParseError(f"Unclosed end tag at byte offset {offset}")
            name = text[j + 2 : end].strip().lower()
            if not stack:
                raise HtmlParseError(f'Unexpected end tag "</{name}>" at byte offset {offset}')
            top = stack.pop()
            if name != top["name"]:
                raise HtmlParseError(
                    f'Unmatched end tag at byte offset {offset}, expected "</{top["name"]}>", found "</{name}>"'
                )
            _close_tag(top, stack, pos16, entities)
            i = end + 1
            continue
        m = _TAG_NAME_RE.match(text, j + 1)
        if m is None:
            raise HtmlParseError(f'Unsupported start tag "" at byte offset {offset}')
        name = m.group(0).lower()
        if name not in _ALL_TAGS:
            raise HtmlParseError(f'Unsupported start tag "{name}" at byte offset {offset}')
        attrs: dict[str, str] = {}
        k = m.end()
        while am := _ATTR_RE.match(text, k):
            raw = next((g for g in am.groups()[1:] if g is not None), "")
            attrs[am.group(1).lower()] = _unescape(raw, offset)
            k = am.end()
        if not (em := _TAG_END_RE.match(text, k)):
            raise HtmlParseError(f'Unclosed start tag "{name}" at byte offset {offset}')
        if name == "span" and attrs.get("class") != "tg-spoiler":
            raise HtmlParseError(f'Tag "span" must have class "tg-spoiler" at byte offset {offset}')
        if name == "tg-emoji" and not attrs.get("emoji-id"):
            raise HtmlParseError(f'Tag "tg-emoji" must have attribute "emoji-id" at byte offset {offset}')
        stack.append({"name": name, "attrs": attrs, "start": pos16})
        i = em.end()
    if stack:
        raise HtmlParseError(f'Can\'t find end tag corresponding to start tag "{stack[-1]["name"]}"')
    entities.sort(key=lambda e: (e["offset"], -e["length"]))
    return "".join(out), entities


def _close_tag(tag: dict[str, Any], stack: list[dict[str, Any]], pos16: int, entities: list[dict[str, Any]]) -> None:
    name, attrs = tag["name"], tag["attrs"]
    entity: dict[str, Any] = {"type": _SIMPLE_TAGS.get(name, name), "offset": tag["start"]}
    entity["length"] = pos16 - tag["start"]
    if name == "a":
        if not attrs.get("href"):
            return
        entity.update(type="text_link", url=attrs["href"])
    elif name == "code" and stack and stack[-1]["name"] == "pre":  # <pre><code class="language-x">
        if attrs.get("class", "").startswith("language-"):
            stack[-1]["language"] = attrs["class"].removeprefix("language-")
        return
    elif name == "pre" and tag.get("language"):
        entity["language"] = tag["language"]
    elif name == "blockquote" and "expandable" in attrs:
        entity["type"] = "expandable_blockquote"
    elif name == "tg-emoji":
        entity.update(type="custom_emoji", custom_emoji_id=attrs["emoji-id"])
    if entity["length"] > 0:
        entities.append(entity)


def _auto_entities(text: str) -> list[dict[str, Any]]:
    """bot_command and mention entities, as Telegram detects them, with UTF-16 offsets."""
    found = [
        {"type": kind, "offset": _utf16_len(text[: m.start()]), "length": _utf16_len(m.group(0))}
        for kind, regex in (("bot_command", _COMMAND_RE), ("mention", _MENTION_RE))
        for m in regex.finditer(text)
    ]
    return sorted(found, key=lambda e: e["offset"])


# --------------------------------------------------------------------------------------------------
# The server


@dataclass
class _StoredFile:
    file_id: str
    file_unique_id: str
    file_path: str
    content: bytes


@dataclass
class _Queued:
    update: dict[str, Any]
    redelivery: bool = False


@dataclass
class _Poll:
    record: PollRecord
    wake: asyncio.Event
    end: str | None = None  # "conflict" (a later poll came) or "reset"


@dataclass
class _Upload:
    filename: str
    content_type: str
    content: bytes


@dataclass
class _Req:
    params: dict[str, Any]
    uploads: dict[str, _Upload]
    peer: str


ChatId = int | str


class FakeTelegram:
    """A SIMULATED Telegram Bot API server on loopback (see the module docstring)."""

    def __init__(
        self,
        token: str = "123456:TEST-TOKEN",
        bot_username: str = "nanobot_test_bot",
        bot_id: int = 123456,
        webhook_retry_s: float = 0.2,
    ) -> None:
        self.token, self.bot_username, self.bot_id = token, bot_username, bot_id
        self.webhook_retry_s = webhook_retry_s
        self.webhook_timeout_s = 10.0
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._webhook_task: asyncio.Task[None] | None = None
        self._webhook_wake: asyncio.Event | None = None
        self._port = 0
        self._stopping = False
        self._next_update_id = 1  # update and file ids are never reused, not even after reset()
        self._file_seq = 0
        media = {f"send{kind.title()}": kind for kind in ("photo", "document", "voice", "audio")}
        self._handlers: dict[str, Callable[[_Req], Any]] = {  # getMe -> self._m_get_me, ...
            name: getattr(self, "_m_" + re.sub(r"([A-Z])", r"_\1", name).lower())
            for name in METHODS
            if name not in media and name not in ("close", "logOut")
        }
        self._handlers.update({name: lambda r, kind=kind: self._send_media(kind, r) for name, kind in media.items()})
        self._handlers.update(close=lambda r: True, logOut=lambda r: True)
        self._init_state()

    def _init_state(self) -> None:
        self._queue: list[_Queued] = []
        self._allowed_updates: list[str] = []
        self._calls: list[RecordedCall] = []
        self._polls: list[PollRecord] = []
        self._active_poll: _Poll | None = None
        self._conflicts = 0
        self._webhook: dict[str, Any] | None = None
        self._webhook_error: tuple[int, str] | None = None
        self._deliveries: list[DeliveryRecord] = []
        self._chats: dict[ChatId, dict[str, Any]] = {}
        self._messages: dict[ChatId, dict[int, dict[str, Any]]] = {}
        self._next_message_id: dict[ChatId, int] = {}
        self._sent: list[tuple[ChatId, int]] = []
        self._deleted: dict[tuple[ChatId, int], None] = {}  # ordered set
        self._actions: dict[ChatId, list[tuple[float, str]]] = {}
        self._reactions: dict[ChatId, list[dict[str, Any]]] = {}
        self._files: dict[str, _StoredFile] = {}
        self._commands: dict[str, list[dict[str, Any]]] = {}
        self._failures: dict[str, list[_ApiError]] = {}

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> FakeTelegram:
        """Bind 127.0.0.1 on a free port and serve in a daemon thread. Returns ``self``."""
        if self._loop is not None:
            raise RuntimeError("the fake Telegram server is already running")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        self._stopping = False
        self._loop = loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name=f"fake-telegram-{self._port}", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._startup(sock), loop).result(timeout=10)
        except BaseException:
            self.stop()
            raise
        return self

    async def _startup(self, sock: socket.socket) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        self._session = aiohttp.ClientSession()
        self._webhook_wake = asyncio.Event()
        self._webhook_task = asyncio.create_task(self._webhook_worker())

    def stop(self) -> None:
        """Stop serving: a pending long poll returns, the webhook worker ends. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=5)
        if not loop.is_running():
            loop.close()
        self._loop = self._thread = None

    async def _shutdown(self) -> None:
        self._stopping = True
        if self._active_poll is not None:
            self._active_poll.wake.set()
        if self._webhook_task is not None:
            self._webhook_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._webhook_task
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def __enter__(self) -> FakeTelegram:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the fake Telegram server has not been started")
        return self._port

    @property
    def api_base(self) -> str:
        """``http://127.0.0.1:PORT`` (nanobot's ``apiBase``); PTB's ``base_url`` is ``api_base + "/bot"``."""
        return f"http://127.0.0.1:{self.port}"

    def _notify(self) -> None:
        """Wake the long poll and the webhook worker (callable from any thread)."""

        def wake() -> None:
            if self._active_poll is not None:
                self._active_poll.wake.set()
            if self._webhook_wake is not None:
                self._webhook_wake.set()

        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # loop closed meanwhile
                self._loop.call_soon_threadsafe(wake)

    # -- test-side API ---------------------------------------------------------------------------

    @property
    def bot_user(self) -> dict[str, Any]:
        return {"id": self.bot_id, "is_bot": True, "first_name": "Nanobot Test", "username": self.bot_username}

    def user_message(
        self,
        chat_id: int,
        text: str | None = None,
        *,
        user_id: int | None = None,
        username: str | None = None,
        first_name: str = "User",
        chat_type: str = "private",
        chat_title: str | None = None,
        caption: str | None = None,
        photo: bytes | None = None,
        document: tuple[str, bytes, str] | None = None,
        voice: bytes | None = None,
        audio: tuple[str, bytes, str] | None = None,
        reply_to_bot: bool = False,
    ) -> dict[str, Any]:
        """Build a realistic Update for a user's message, queue it (a set webhook gets it POSTed) and
        return it. ``document``/``audio`` are ``(filename, content, mime_type)``; files can be fetched
        with getFile. ``user_id`` defaults to ``chat_id`` in private chats."""
        if user_id is None:
            user_id = chat_id if chat_type == "private" else 100000 + abs(chat_id) % 1000000
        sender: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": first_name, "language_code": "en"}
        chat: dict[str, Any] = {"id": chat_id, "type": chat_type}
        if chat_type == "private":
            chat["first_name"] = first_name
        else:
            chat["title"] = chat_title or "Test Group"
        if username:
            sender["username"] = username
            if chat_type == "private":
                chat["username"] = username
        with self._lock:
            self._chats[chat_id] = chat
            message = self._new_message(chat_id, sender)
            for key, value in (("text", text), ("caption", caption)):
                if value is not None:
                    message[key] = value
                    if entities := _auto_entities(value):
                        message["entities" if key == "text" else "caption_entities"] = entities
            if photo is not None:
                message["photo"] = self._photo_sizes(photo)
            if document is not None:
                message["document"] = self._media_obj("document", *document)
            if voice is not None:
                message["voice"] = self._media_obj("voice", "voice.ogg", voice, "audio/ogg")
            if audio is not None:
                message["audio"] = self._media_obj("audio", *audio)
            if reply_to_bot:
                message["reply_to_message"] = self._last_bot_message(chat_id)
            update = {"update_id": self._next_update_id, "message": message}
            self._next_update_id += 1
            self._queue.append(_Queued(copy.deepcopy(update)))
        self._notify()
        return update

    def push_update(self, update: dict[str, Any]) -> None:
        """Queue a raw update (an ``update_id`` is assigned if missing). Pushing an update_id that
        was already issued re-delivers it (exempt from offset confirmation until returned once)."""
        update = copy.deepcopy(update)
        with self._lock:
            uid = update.setdefault("update_id", self._next_update_id)
            self._queue.append(_Queued(update, redelivery=uid < self._next_update_id))
            self._next_update_id = max(self._next_update_id, uid + 1)
        self._notify()

    def calls(self, method: str | None = None) -> list[RecordedCall]:
        """Every API call so far, in order of arrival (optionally of one method, name in any case)."""
        wanted = _CANONICAL.get(method.lower(), method) if method else None
        with self._lock:
            return [replace(c, params=copy.deepcopy(c.params)) for c in self._calls if wanted in (None, c.method)]

    def sent_messages(self, chat_id: int | None = None, include_deleted: bool = True) -> list[dict[str, Any]]:
        """Messages the bot sent successfully, in order, edits applied; deleted ones too unless
        ``include_deleted=False`` (see `deleted_messages`)."""
        with self._lock:
            return [
                copy.deepcopy(self._messages[c][m])
                for c, m in self._sent
                if chat_id in (None, c) and (include_deleted or (c, m) not in self._deleted)
            ]

    def deleted_messages(self, chat_id: int) -> list[int]:
        """Ids of the messages deleted in a chat (deleteMessage), in order."""
        with self._lock:
            return [m for c, m in self._deleted if c == chat_id]

    def wait_for_messages(self, chat_id: int, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Block until the bot has sent ``n`` messages to ``chat_id``; returns `sent_messages` (``TimeoutError``)."""
        return self._wait(lambda: self.sent_messages(chat_id), n, timeout, f"messages to chat {chat_id}")

    def wait_for_calls(self, method: str, n: int = 1, timeout: float = 10.0) -> list[RecordedCall]:
        """Block until ``n`` calls of ``method`` have been answered; raises ``TimeoutError``."""
        return self._wait(lambda: [c for c in self.calls(method) if c.status is not None], n, timeout, method)

    def wait_for_deliveries(self, n: int, timeout: float = 10.0) -> list[DeliveryRecord]:
        """Block until ``n`` webhook delivery attempts were made; raises ``TimeoutError``."""
        return self._wait(self.webhook_deliveries, n, timeout, "webhook deliveries")

    def _wait(self, get: Callable[[], list[Any]], n: int, timeout: float, what: str) -> list[Any]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(items := get()) < n:
                if (left := deadline - time.monotonic()) <= 0:
                    raise TimeoutError(f"only {len(items)} of {n} {what} within {timeout}s")
                self._changed.wait(left)
        return items

    def chat_actions(self, chat_id: int) -> list[tuple[float, str]]:
        with self._lock:
            return list(self._actions.get(chat_id, []))

    def reactions(self, chat_id: int) -> list[dict[str, Any]]:
        """setMessageReaction calls for a chat: ``{"message_id", "reaction", "is_big", "time"}``."""
        with self._lock:
            return copy.deepcopy(self._reactions.get(chat_id, []))

    def poll_log(self) -> list[PollRecord]:
        with self._lock:
            return [replace(p, update_ids=list(p.update_ids)) for p in self._polls]

    @property
    def conflicts(self) -> int:
        """How many getUpdates calls were answered 409 (terminated by a later poll, or webhook set)."""
        with self._lock:
            return self._conflicts

    def webhook_deliveries(self) -> list[DeliveryRecord]:
        with self._lock:
            return [replace(d) for d in self._deliveries]

    @property
    def webhook(self) -> dict[str, Any] | None:
        """``{"url", "secret_token"}`` while a webhook is set, else ``None``."""
        with self._lock:
            return None if self._webhook is None else {k: self._webhook[k] for k in ("url", "secret_token")}

    def commands(self, scope: dict[str, Any] | None = None, language_code: str = "") -> list[dict[str, Any]]:
        """The commands set with setMyCommands for a scope and language."""
        with self._lock:
            key = self._commands_key({"scope": scope, "language_code": language_code})
            return copy.deepcopy(self._commands.get(key, []))

    def fail_next(
        self, method: str, status: int = 429, retry_after: int = 1, count: int = 1, description: str | None = None
    ) -> None:
        """Make the next ``count`` calls of ``method`` fail with ``status``: 429 gives "Too Many
        Requests: retry after N" and ``parameters.retry_after``; any other 4xx/5xx is allowed too."""
        if not 400 <= status <= 599:
            raise ValueError(f"status must be a 4xx or 5xx code, got {status}")
        parameters = None
        if status == 429:
            description = description or f"Too Many Requests: retry after {retry_after}"
            parameters = {"retry_after": retry_after}
        elif description is None:
            description = "Bad Request: injected failure" if status == 400 else HTTPStatus(status).phrase
        with self._lock:
            failures = self._failures.setdefault(method.lower(), [])
            failures.extend(_ApiError(status, description, parameters) for _ in range(count))

    def pending_updates(self) -> int:
        """Updates queued and not yet confirmed (getUpdates offset) or delivered (webhook)."""
        with self._lock:
            return len(self._queue)

    def reset(self) -> None:
        """Forget everything (updates, messages, files, records, webhook, failures); keep serving.
        Update ids keep counting up, so a client's getUpdates offset stays valid."""
        with self._lock:
            poll = self._active_poll
            self._init_state()
            self._active_poll = poll
            if poll is not None:
                poll.end = "reset"
        self._notify()

    # -- helpers (call with the lock held) --------------------------------------------------------

    def _new_message(self, chat_id: ChatId, sender: dict[str, Any]) -> dict[str, Any]:
        if (chat := self._chats.get(chat_id)) is None:
            if isinstance(chat_id, str):
                chat = {"id": -1001000000000 - len(self._chats), "type": "channel", "title": chat_id}
            elif chat_id > 0:
                chat = {"id": chat_id, "type": "private", "first_name": "User"}
            else:
                chat = {"id": chat_id, "type": "supergroup", "title": "Test Group"}
            self._chats[chat_id] = chat
        message_id = self._next_message_id.get(chat_id, 1)
        self._next_message_id[chat_id] = message_id + 1
        message = {"message_id": message_id, "from": dict(sender), "chat": dict(chat), "date": int(time.time())}
        self._messages.setdefault(chat_id, {})[message_id] = message
        return message

    def _last_bot_message(self, chat_id: int) -> dict[str, Any]:
        for c, m in reversed(self._sent):
            if c == chat_id and (c, m) not in self._deleted:
                return self._short(self._messages[c][m])
        placeholder = self._new_message(chat_id, self.bot_user)
        placeholder["text"] = "(an earlier message from the bot)"
        return self._short(placeholder)

    @staticmethod
    def _short(message: dict[str, Any]) -> dict[str, Any]:
        return {k: copy.deepcopy(v) for k, v in message.items() if k != "reply_to_message"}

    def _store_file(self, kind: str, content: bytes, ext: str) -> _StoredFile:
        self._file_seq = n = self._file_seq + 1
        folder = {"photo": "photos", "audio": "music"}.get(kind, kind + "s" if kind == "document" else kind)
        stored = _StoredFile(f"FAKE-{kind}-{n:06d}", f"uniq{n:06d}", f"{folder}/file_{n}{ext}", content)
        self._files[stored.file_id] = stored
        return stored

    def _photo_sizes(self, content: bytes) -> list[dict[str, Any]]:
        sizes = []
        for width, height in ((90, 67), (800, 600)):
            f = self._store_file("photo", content, ".jpg")
            sizes.append({"file_id": f.file_id, "file_unique_id": f.file_unique_id, "file_size": len(content)})
            sizes[-1].update(width=width, height=height)
        return sizes

    def _media_obj(
        self, kind: str, filename: str, content: bytes, mime: str, existing: _StoredFile | None = None
    ) -> dict[str, Any]:
        f = existing or self._store_file(kind, content, "." + filename.rsplit(".", 1)[1] if "." in filename else "")
        obj: dict[str, Any] = {"file_id": f.file_id, "file_unique_id": f.file_unique_id, "file_size": len(f.content)}
        if kind in ("voice", "audio"):
            obj["duration"] = max(1, len(f.content) // 16000)
        if kind != "voice":
            obj["file_name"] = filename
        obj["mime_type"] = mime
        return obj

    def _find_message(self, chat_id: ChatId, message_id: int) -> dict[str, Any] | None:
        if (chat_id, message_id) in self._deleted:
            return None
        return self._messages.get(chat_id, {}).get(message_id)

    @staticmethod
    def _commands_key(params: dict[str, Any]) -> str:
        return json.dumps([params.get("scope") or {"type": "default"}, params.get("language_code") or ""])

    def _drop_unwanted(self) -> None:
        def allowed(update: dict[str, Any]) -> bool:
            kind = next((k for k in update if k != "update_id"), "")
            wanted = self._allowed_updates
            return kind in wanted if wanted else kind not in _DEFAULT_EXCLUDED_UPDATES

        self._queue = [q for q in self._queue if allowed(q.update)]

    # -- HTTP ------------------------------------------------------------------------------------

    @staticmethod
    def _error(status: int, description: str, parameters: dict[str, Any] | None = None) -> web.Response:
        body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
        if parameters:
            body["parameters"] = parameters
        return web.json_response(body, status=status)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path.startswith("/file/bot"):
            token, _, file_path = path.removeprefix("/file/bot").partition("/")
            if token != self.token:
                return self._error(401, "Unauthorized")
            with self._lock:
                stored = next((f for f in self._files.values() if f.file_path == file_path), None)
            if stored is None:
                return self._error(404, "Not Found")
            return web.Response(body=stored.content, content_type="application/octet-stream")
        if not path.startswith("/bot"):
            return self._error(404, "Not Found")
        token, _, method_name = path.removeprefix("/bot").partition("/")
        if token != self.token:
            return self._error(401, "Unauthorized")
        method = _CANONICAL.get(method_name.lower())
        peername = request.transport.get_extra_info("peername") if request.transport else None
        req = _Req({}, {}, f"{peername[0]}:{peername[1]}" if peername else "")
        early: _ApiError | None = None
        try:
            req.params, req.uploads = await self._read_params(request)
        except _ApiError as err:
            early = err
        record = RecordedCall(method or method_name, req.params, None, time.time(), peer=req.peer)
        with self._lock:
            self._calls.append(record)
            injected = self._failures.get(method_name.lower())
            failure = injected.pop(0) if injected else None
        try:
            if method is None:
                raise _ApiError(404, "Not Found")
            if early is not None or failure is not None:
                if failure is not None and method == "getUpdates":
                    self._log_poll(PollRecord(time.time(), time.time(), req.peer, f"error {failure.status}"))
                raise early or failure
            result = self._handlers[method](req)
            if inspect.isawaitable(result):
                result = await result
            status, response = 200, web.json_response({"ok": True, "result": result})
        except _ApiError as err:
            status, response = err.status, self._error(err.status, err.description, err.parameters)
            record.description = err.description
        except asyncio.CancelledError:  # the client went away
            with self._changed:
                record.status, record.description = 499, "client disconnected"
                self._changed.notify_all()
            raise
        except Exception as err:  # a bug in the fake: answer like a server error, keep serving
            status, response = 500, self._error(500, f"Internal Server Error: {err!r}")
            record.description = repr(err)
        with self._changed:
            record.status = status
            self._changed.notify_all()
        return response

    async def _read_params(self, request: web.Request) -> tuple[dict[str, Any], dict[str, _Upload]]:
        raw: dict[str, Any] = dict(request.query)
        uploads: dict[str, _Upload] = {}
        if request.method == "POST" and request.can_read_body:
            if request.content_type == "application/json":
                try:
                    body = await request.json()
                except ValueError:
                    raise _bad("can't parse JSON object") from None
                if not isinstance(body, dict):
                    raise _bad("parameters must be a JSON object")
                raw.update(body)
            else:
                for key, value in (await request.post()).items():
                    if isinstance(value, web.FileField):
                        upload = _Upload(value.filename, value.content_type, value.file.read())
                        uploads[key] = upload
                        value = {"filename": upload.filename, "content_type": upload.content_type}
                        value["size"] = len(upload.content)
                    raw[key] = value
        return {key: self._coerce(key, value) for key, value in raw.items()}, uploads

    @staticmethod
    def _coerce(key: str, value: Any) -> Any:
        """Decode a form/query value (strings are sent raw, everything else JSON-encoded)."""
        if not isinstance(value, str):
            return value
        try:
            if key in _JSON_FIELDS:
                return json.loads(value)
            if key in _INT_FIELDS and not (key == "chat_id" and value.startswith("@")):
                return int(value)
            if key == "timeout":
                return float(value)
        except ValueError:
            raise _bad(f"can't parse {key}" if key in _JSON_FIELDS else f"invalid {key} specified") from None
        if key in _BOOL_FIELDS:
            return value.strip().lower() in ("true", "1")
        return value

    def _log_poll(self, record: PollRecord) -> None:
        with self._changed:
            self._polls.append(record)
            self._conflicts += record.outcome.endswith("conflict")
            self._changed.notify_all()

    # -- methods: updates and webhooks ------------------------------------------------------------

    def _m_get_me(self, r: _Req) -> Any:
        flags = ("can_join_groups", "can_read_all_group_messages", "supports_inline_queries")
        return {**self.bot_user, **{flag: flag == "can_join_groups" for flag in flags}}

    async def _m_get_updates(self, r: _Req) -> Any:
        offset = r.params.get("offset")
        limit = min(max(int(r.params.get("limit") or 100), 1), 100)
        timeout = max(float(r.params.get("timeout") or 0), 0.0)
        record = PollRecord(time.time(), None, r.peer, "ok", offset=offset, timeout=timeout)
        with self._lock:
            if self._webhook is not None:
                record.ended, record.outcome = time.time(), "webhook_conflict"
                self._log_poll(record)
                raise _ApiError(409, _CONFLICT_WEBHOOK)
            if self._active_poll is not None:
                self._active_poll.end = "conflict"
                self._active_poll.wake.set()
            self._active_poll = poll = _Poll(record, asyncio.Event())
            if isinstance(r.params.get("allowed_updates"), list):
                self._allowed_updates = list(r.params["allowed_updates"])
            if isinstance(offset, int) and offset < 0:
                self._queue = self._queue[offset:]
            elif isinstance(offset, int):
                self._queue = [q for q in self._queue if q.update["update_id"] >= offset or q.redelivery]
        deadline = time.monotonic() + timeout
        try:
            while True:
                poll.wake.clear()
                with self._lock:
                    if poll.end or self._stopping or self._webhook is not None:
                        break
                    self._drop_unwanted()
                    if batch := self._queue[:limit]:
                        for q in batch:
                            q.redelivery = False
                        record.update_ids = [q.update["update_id"] for q in batch]
                        return [copy.deepcopy(q.update) for q in batch]
                if (left := deadline - time.monotonic()) <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(poll.wake.wait(), left)
            if poll.end == "conflict":
                record.outcome = "conflict"
                raise _ApiError(409, _CONFLICT_POLL)
            if self._stopping or poll.end:
                record.outcome = "stopped" if self._stopping else str(poll.end)
            return []
        except asyncio.CancelledError:
            record.outcome = "disconnected"
            raise
        finally:
            record.ended = time.time()
            with self._lock:
                if self._active_poll is poll:
                    self._active_poll = None
            self._log_poll(record)

    def _m_set_webhook(self, r: _Req) -> Any:
        url = str(r.params.get("url") or "")
        if not url:
            return self._m_delete_webhook(r)
        if not re.match(r"https?://[^/\s]+", url):
            raise _bad("invalid webhook URL specified")
        secret = r.params.get("secret_token")
        if secret is not None and not _SECRET_RE.fullmatch(str(secret)):
            raise _bad("secret token contains unallowed characters")
        with self._lock:
            if r.params.get("drop_pending_updates"):
                self._queue.clear()
            if isinstance(r.params.get("allowed_updates"), list):
                self._allowed_updates = list(r.params["allowed_updates"])
            self._webhook = {"url": url, "secret_token": secret, "max_connections": r.params.get("max_connections", 40)}
            self._webhook_error = None
        self._notify()
        return True

    def _m_delete_webhook(self, r: _Req) -> Any:
        with self._lock:
            if r.params.get("drop_pending_updates"):
                self._queue.clear()
            self._webhook = None
        self._notify()
        return True

    def _m_get_webhook_info(self, r: _Req) -> Any:
        with self._lock:
            info: dict[str, Any] = {"url": "", "has_custom_certificate": False, "pending_update_count": 0}
            info["pending_update_count"] = len(self._queue)
            if self._webhook is not None:
                info.update(url=self._webhook["url"], max_connections=self._webhook["max_connections"])
                if self._allowed_updates:
                    info["allowed_updates"] = list(self._allowed_updates)
                if self._webhook_error is not None:
                    info.update(last_error_date=self._webhook_error[0], last_error_message=self._webhook_error[1])
            return info

    async def _webhook_worker(self) -> None:
        assert self._webhook_wake is not None and self._session is not None
        while not self._stopping:
            self._webhook_wake.clear()
            with self._lock:
                if hook := self._webhook:
                    self._drop_unwanted()
                item = self._queue[0] if hook and self._queue else None
            if hook is None or item is None:
                await self._webhook_wake.wait()
                continue
            headers = {"X-Telegram-Bot-Api-Secret-Token": hook["secret_token"]} if hook["secret_token"] else {}
            started = time.time()
            status: int | None = None
            error: str | None = None
            try:
                timeout = aiohttp.ClientTimeout(total=self.webhook_timeout_s)
                async with self._session.post(hook["url"], json=item.update, headers=headers, timeout=timeout) as resp:
                    status = resp.status
                    await resp.read()
                    if not 200 <= status <= 299:
                        error = f"Wrong response from the webhook: {status} {resp.reason}"
            except (aiohttp.ClientError, TimeoutError, OSError) as err:
                error = f"Connection failed: {err!r}"
            record = DeliveryRecord(item.update["update_id"], hook["url"], status, started, error)
            record.duration_s = round(time.time() - started, 4)
            with self._changed:
                self._deliveries.append(record)
                if error is None:
                    self._queue = [q for q in self._queue if q is not item]
                elif self._webhook is hook:
                    self._webhook_error = (int(time.time()), error)
                self._changed.notify_all()
            if error is not None:
                await asyncio.sleep(self.webhook_retry_s)

    # -- methods: messages -----------------------------------------------------------------------

    @staticmethod
    def _chat_id(r: _Req) -> ChatId:
        chat_id = r.params.get("chat_id")
        if chat_id is None or chat_id == "":
            raise _bad("chat_id is empty")
        return chat_id

    @staticmethod
    def _formatted(r: _Req, key: str, limit: int) -> tuple[str, list[dict[str, Any]]]:
        """Validate the text/caption in ``params[key]``; returns (visible text, entities)."""
        text = str(r.params.get(key) or "")
        entities = r.params.get("entities" if key == "text" else "caption_entities") or []
        if str(r.params.get("parse_mode") or "").lower() == "html":
            try:
                text, entities = parse_html(text)
            except HtmlParseError as err:
                raise _bad(f"can't parse entities: {err}") from None
        if key == "text" and not text.strip():
            raise _bad("message text is empty")
        if len(text) > limit:
            raise _bad("message is too long" if key == "text" else "message caption is too long")
        return text, entities

    def _reply_to(self, chat_id: ChatId, params: dict[str, Any]) -> dict[str, Any] | None:
        reply = params.get("reply_parameters")
        if isinstance(reply, dict):
            message_id, lenient = reply.get("message_id"), bool(reply.get("allow_sending_without_reply"))
            chat_id = reply.get("chat_id", chat_id)
        else:
            message_id, lenient = params.get("reply_to_message_id"), bool(params.get("allow_sending_without_reply"))
        if message_id is None:
            return None
        if (target := self._find_message(chat_id, int(message_id))) is None:
            if lenient:
                return None
            raise _bad("message to be replied not found")
        return self._short(target)

    def _send(self, r: _Req, fill: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        chat_id = self._chat_id(r)
        with self._changed:
            reply_to = self._reply_to(chat_id, r.params)
            message = self._new_message(chat_id, self.bot_user)
            fill(message)
            if reply_to is not None:
                message["reply_to_message"] = reply_to
            if isinstance(markup := r.params.get("reply_markup"), dict) and "inline_keyboard" in markup:
                message["reply_markup"] = markup
            self._sent.append((chat_id, message["message_id"]))
            self._changed.notify_all()
            return copy.deepcopy(message)

    def _m_send_message(self, r: _Req) -> Any:
        text, entities = self._formatted(r, "text", _MAX_TEXT)
        return self._send(r, lambda m: m.update(text=text, **({"entities": entities} if entities else {})))

    def _m_edit_message_text(self, r: _Req) -> Any:
        text, entities = self._formatted(r, "text", _MAX_TEXT)
        if r.params.get("inline_message_id"):
            return True
        chat_id = self._chat_id(r)
        markup = r.params.get("reply_markup")
        with self._changed:
            if (message := self._find_message(chat_id, int(r.params.get("message_id") or 0))) is None:
                raise _bad("message to edit not found")
            if message["from"].get("id") != self.bot_id:
                raise _bad("message can't be edited")
            same_markup = markup is None or markup == message.get("reply_markup")
            if message.get("text") == text and message.get("entities", []) == entities and same_markup:
                raise _bad(
                    "message is not modified: specified new message content and reply markup are exactly "
                    "the same as a current content and reply markup of the message"
                )
            message.pop("entities", None)
            message.update(text=text, edit_date=int(time.time()), **({"entities": entities} if entities else {}))
            if isinstance(markup, dict) and "inline_keyboard" in markup:
                message["reply_markup"] = markup
            self._changed.notify_all()
            return copy.deepcopy(message)

    def _m_delete_message(self, r: _Req) -> Any:
        chat_id, message_id = self._chat_id(r), int(r.params.get("message_id") or 0)
        with self._changed:
            if self._find_message(chat_id, message_id) is None:
                raise _bad("message to delete not found")
            self._deleted[(chat_id, message_id)] = None
            self._changed.notify_all()
        return True

    def _m_send_chat_action(self, r: _Req) -> Any:
        chat_id, action = self._chat_id(r), str(r.params.get("action") or "")
        if action not in _CHAT_ACTIONS:
            raise _bad("wrong parameter action in request")
        with self._changed:
            self._actions.setdefault(chat_id, []).append((time.time(), action))
            self._changed.notify_all()
        return True

    def _m_set_message_reaction(self, r: _Req) -> Any:
        chat_id, message_id = self._chat_id(r), int(r.params.get("message_id") or 0)
        if not isinstance(reaction := r.params.get("reaction") or [], list):
            raise _bad("can't parse reaction types JSON object")
        with self._changed:
            if self._find_message(chat_id, message_id) is None:
                raise _bad("message to react not found")
            entry = {"message_id": message_id, "reaction": reaction, "is_big": bool(r.params.get("is_big"))}
            self._reactions.setdefault(chat_id, []).append({**entry, "time": time.time()})
            self._changed.notify_all()
        return True

    # -- methods: files and commands --------------------------------------------------------------

    def _m_get_file(self, r: _Req) -> Any:
        with self._lock:
            stored = self._files.get(str(r.params.get("file_id") or ""))
        if stored is None:
            raise _bad("invalid file_id")
        result = {"file_id": stored.file_id, "file_unique_id": stored.file_unique_id, "file_size": len(stored.content)}
        return {**result, "file_path": stored.file_path}

    def _input_file(self, kind: str, r: _Req) -> tuple[_Upload, _StoredFile | None]:
        """The file of a send* call: an upload (field ``kind`` or ``attach://name``), a known file_id or a URL."""
        value = r.params.get(kind)
        name = value[len("attach://") :] if isinstance(value, str) and value.startswith("attach://") else kind
        if name in r.uploads:
            return r.uploads[name], None
        if not isinstance(value, str) or not value:
            raise _bad(f"there is no {kind} in the request")
        with self._lock:
            stored = self._files.get(value)
        if stored is not None:
            return _Upload(stored.file_path.rsplit("/", 1)[-1], "", stored.content), stored
        if re.match(r"https?://", value):
            return _Upload(value.rsplit("/", 1)[-1] or kind, "", b""), None
        raise _bad("wrong file identifier/HTTP URL specified")

    def _send_media(self, kind: str, r: _Req) -> Any:
        upload, stored = self._input_file(kind, r)
        caption, entities = self._formatted(r, "caption", _MAX_CAPTION)
        mime = upload.content_type if upload.content_type not in ("", "application/octet-stream") else None
        mime = mime or {"voice": "audio/ogg", "audio": "audio/mpeg"}.get(kind, "application/octet-stream")

        def fill(message: dict[str, Any]) -> None:
            if kind == "photo":
                message["photo"] = self._photo_sizes(upload.content)
            else:
                message[kind] = self._media_obj(kind, upload.filename or kind, upload.content, mime, stored)
            if caption:
                message["caption"] = caption
                if entities:
                    message["caption_entities"] = entities

        return self._send(r, fill)

    def _m_set_my_commands(self, r: _Req) -> Any:
        commands = r.params.get("commands")
        if not isinstance(commands, list) or len(commands) > 100:
            raise _bad("can't parse commands JSON object")
        for command in commands:
            if not isinstance(command, dict) or not _COMMAND_NAME_RE.fullmatch(str(command.get("command", ""))):
                raise _bad("BOT_COMMAND_INVALID")
            if not 1 <= len(str(command.get("description") or "")) <= 256:
                raise _bad("command description is empty" if not command.get("description") else "BOT_COMMAND_INVALID")
        with self._lock:
            self._commands[self._commands_key(r.params)] = [
                {"command": c["command"], "description": c["description"]} for c in commands
            ]
        return True

    def _m_delete_my_commands(self, r: _Req) -> Any:
        with self._lock:
            self._commands.pop(self._commands_key(r.params), None)
        return True

    def _m_get_my_commands(self, r: _Req) -> Any:
        return self.commands(r.params.get("scope"), str(r.params.get("language_code") or ""))
