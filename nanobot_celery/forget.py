"""What distributed mode keeps of a conversation in Redis, removed for `nanobot conversations forget`.

For each session key: the mailbox and in-flight list (messages still waiting), the idempotency records
(`msg:<key>:<id>`), delivery counts and last errors, the doorbell mark, the busy-set entry, the lock fence, and
the history in the Redis session store; its dead letters (entries of the shared stream); every outbound entry
still addressed to its chat (replies a gateway has not sent or acknowledged yet, in every gateway's stream);
and, for a person's own chat, the fair-limit counters kept under their sender id. A conversation whose turn is
running (its lock is held) is not forgotten: `Busy` says so, and a second try after the turn removes everything.
"""

from __future__ import annotations

import json
from typing import Any

from nanobot.config.schema import Config
from nanobot.privacy.traces import Removed
from nanobot.session.factory import redis_keys

SCAN_COUNT = 1000
STREAM_PAGE = 1000


class Busy(Exception):
    """A turn of the conversation is running now."""


def _glob_escape(text: str) -> str:
    """`text` matched literally by Redis's SCAN MATCH."""
    return "".join(f"\\{ch}" if ch in "*?[]\\" else ch for ch in text)


class RedisTraces:
    def __init__(self, config: Config, redis: Any) -> None:
        self.config = config
        self.redis = redis  # redis.asyncio, decode_responses=True
        self.keys = redis_keys(config)

    async def known_keys(self) -> set[str]:
        """Every conversation Redis knows of: each that ever held its lock (its fence counter), has a history in the
        Redis store, or a dead letter."""
        fences = self.keys.fence("")
        found = {key[len(fences):] async for key in self.redis.scan_iter(match=_glob_escape(fences) + "*",
                                                                           count=SCAN_COUNT)}
        found |= set(await self.redis.smembers(self.keys.session_index))
        found |= {fields.get("session_key", "") for _id, fields in await self._entries(self.keys.dead_letters)}
        found.discard("")
        return found

    async def forget(self, session_keys: list[str], removed: Removed, senders: list[tuple[str, str]]) -> None:
        """Remove every Redis trace of `session_keys` and the limit counters of `senders` (channel, id)."""
        for key in session_keys:
            if await self.redis.exists(self.keys.lock(key)):
                raise Busy(f"a turn of {key} is running now; try again when it has ended")
        for key in session_keys:
            await self._forget_conversation(key, removed)
        await self._forget_entries(set(session_keys), removed)
        for channel, sender in senders:
            pattern = f"{self.config.bus.key_prefix}:limits:*/{_glob_escape(channel)}/{_glob_escape(sender)}/*"
            counters = [k async for k in self.redis.scan_iter(match=pattern, count=SCAN_COUNT)]
            if counters:
                await self.redis.delete(*counters)
                removed.add(f"{len(counters)} fair-limit counter(s) of {channel}:{sender}")

    async def _forget_conversation(self, key: str, removed: Removed) -> None:
        k = self.keys
        waiting = await self.redis.llen(k.mailbox(key)) + await self.redis.llen(k.inflight(key))
        records = [r async for r in self.redis.scan_iter(match=_glob_escape(k.message(key, "")) + "*",
                                                         count=SCAN_COUNT)]
        single = [k.mailbox(key), k.inflight(key), k.deliveries(key), k.rung(key), k.fence(key), k.session(key)]
        deleted = await self.redis.delete(*single, *records) if records else await self.redis.delete(*single)
        await self.redis.srem(k.busy_sessions, key)
        await self.redis.srem(k.session_index, key)
        if waiting:
            removed.add(f"{waiting} message(s) of {key} waiting in its mailbox")
        if deleted:
            removed.add(f"{deleted} Redis key(s) of {key} (mailbox, message records, history, counters)")

    async def _forget_entries(self, keys: set[str], removed: Removed) -> None:
        """Dead letters of these conversations, and outbound entries addressed to their chats."""
        dead = [entry_id for entry_id, fields in await self._entries(self.keys.dead_letters)
                if fields.get("session_key") in keys]
        if dead:
            await self.redis.xdel(self.keys.dead_letters, *dead)
            removed.add(f"{len(dead)} dead letter(s)")
        streams = [s async for s in self.redis.scan_iter(match=_glob_escape(self.keys.outbound) + "*",
                                                         count=SCAN_COUNT, _type="stream")]
        for stream in sorted(streams):
            gone = [entry_id for entry_id, fields in await self._entries(stream) if _chat_of(fields) in keys]
            if gone:
                await self.redis.xdel(stream, *gone)
                removed.add(f"{len(gone)} reply(ies) not yet delivered, from {stream}")

    async def _entries(self, stream: str) -> list[tuple[str, dict[str, str]]]:
        """Every entry of `stream`, read a page at a time."""
        found: list[tuple[str, dict[str, str]]] = []
        start = "-"
        while True:
            page = await self.redis.xrange(stream, min=start, max="+", count=STREAM_PAGE)
            found.extend(page)
            if len(page) < STREAM_PAGE:
                return found
            start = "(" + page[-1][0]


def _chat_of(fields: dict[str, str]) -> str | None:
    """The conversation an outbound entry goes to: `<channel>:<chat id>`, as channels' session keys are made."""
    try:
        message = json.loads(fields.get("m", ""))
    except json.JSONDecodeError:
        return None
    if not isinstance(message, dict):
        return None
    return f"{message.get('channel')}:{message.get('chat_id')}"
