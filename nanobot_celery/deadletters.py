"""Dead letters: messages set aside after their turn failed `bus.maxDeliveries` times.

The drain (nanobot_celery/drain.py) counts each claim of a message (mailbox.py); once a message's claims
exceed the limit, it moves the message to the `keys.dead_letters` stream, with the last recorded error,
answers its user with `APOLOGY` and goes on with the conversation's next message. This module holds the
texts, the entry's shape and the operator's operations behind `nanobot deadletters` (list, show, retry, drop).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from nanobot.agent.loop import reply_target
from nanobot.bus.events import InboundMessage, OutboundMessage
from nanobot.config.schema import Config
from nanobot.session.factory import redis_keys
from nanobot_celery import outbound

APOLOGY = (
    "Sorry, I could not process your message: it failed {n} times in a row, so it was set aside for the "
    "operator to look at. Please try again later, or send something else."
)
WORKER_DIED = "the worker process died during the turn (killed, out of memory or crashed)"
ERROR_LIMIT = 300


def describe_error(exc: BaseException, content: str = "") -> str:
    """`<ExceptionType>: <message>`, at most ERROR_LIMIT characters, without the user's message `content`."""
    text = f"{type(exc).__name__}: {exc}"
    if content.strip():
        text = text.replace(content, "<message>")
    return text[:ERROR_LIMIT]


def apology(msg: InboundMessage, deliveries: int) -> OutboundMessage:
    """The reply its user gets when a message is set aside (addressed back to the gateway that accepted it)."""
    channel, chat_id = reply_target(msg)
    reply = OutboundMessage(channel, chat_id, APOLOGY.format(n=deliveries), reply_to=msg.message_id)
    return outbound.addressed(reply, outbound.origin_of(msg))


@dataclass
class DeadLetter:
    id: str  # the stream entry id
    session_key: str
    message_id: str
    channel: str
    chat_id: str
    error: str
    deliveries: int
    dead_at: int  # unix seconds
    entry: str  # the raw mailbox JSON (holds the user's message: shown only by `show`)

    @classmethod
    def from_stream(cls, entry_id: str, fields: dict[str, str]) -> DeadLetter:
        return cls(
            id=entry_id,
            session_key=fields.get("session_key", ""),
            message_id=fields.get("message_id", ""),
            channel=fields.get("channel", ""),
            chat_id=fields.get("chat_id", ""),
            error=fields.get("error", ""),
            deliveries=int(fields.get("deliveries") or 0),
            dead_at=int(fields.get("dead_at") or 0),
            entry=fields.get("entry", ""),
        )

    def message(self) -> InboundMessage:
        """The original message; raises ValueError when the entry is not one."""
        data: Any = json.loads(self.entry)
        if not isinstance(data, dict):
            raise ValueError("dead-letter entry is not a JSON object")
        return InboundMessage.from_dict(data)


class UnknownDeadLetter(LookupError):
    """No dead letter has this id."""


class DeadLetters:
    """The operator's view of the dead-letter stream, on a redis.asyncio client (decode_responses=True)."""

    def __init__(self, config: Config, redis: Any | None = None) -> None:
        self.config = config
        self.keys = redis_keys(config)
        if redis is None:
            import redis.asyncio as aioredis

            redis = aioredis.Redis.from_url(config.bus.redis_url, decode_responses=True, socket_connect_timeout=5)
        self.redis = redis

    async def count(self) -> int:
        return int(await self.redis.xlen(self.keys.dead_letters))

    async def list(self, limit: int = 100) -> list[DeadLetter]:
        """The newest `limit` dead letters, oldest first."""
        entries = await self.redis.xrevrange(self.keys.dead_letters, count=limit)
        return [DeadLetter.from_stream(entry_id, fields) for entry_id, fields in reversed(entries)]

    async def get(self, entry_id: str) -> DeadLetter:
        try:
            entries = await self.redis.xrange(self.keys.dead_letters, min=entry_id, max=entry_id)
        except Exception as exc:  # a malformed id: Redis answers "Invalid stream ID"
            if "Invalid stream ID" in str(exc):
                raise UnknownDeadLetter(entry_id) from exc
            raise
        if not entries:
            raise UnknownDeadLetter(entry_id)
        return DeadLetter.from_stream(*entries[0])

    async def drop(self, entry_id: str) -> None:
        await self.get(entry_id)
        await self.redis.xdel(self.keys.dead_letters, entry_id)

    async def drop_all(self) -> int:
        dropped = await self.count()
        await self.redis.delete(self.keys.dead_letters)
        return dropped

    async def retry(self, entry_id: str) -> DeadLetter:
        """Put the message back at the end of its conversation's mailbox with a fresh delivery count, ring its
        doorbell, then remove the dead letter."""
        from nanobot_celery.app import use_config
        from nanobot_celery.bus import ring
        from nanobot_celery.mailbox import Mailbox

        letter = await self.get(entry_id)
        msg = letter.message()
        sk = msg.session_key
        bus = self.config.bus
        await self.redis.delete(self.keys.message(sk, msg.message_id))
        await self.redis.hdel(self.keys.deliveries(sk), msg.message_id, f"error:{msg.message_id}")
        await Mailbox.for_bus(self.redis, self.keys, bus).enqueue(msg)
        use_config(self.config)
        ring(sk, bus)
        await self.redis.xdel(self.keys.dead_letters, entry_id)
        return letter

    async def close(self) -> None:
        await self.redis.aclose()
