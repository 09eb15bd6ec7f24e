"""The outbound path of distributed mode: workers publish replies, the gateway reads and acks them.

Default: a Redis Stream read by a consumer group, so replies published while the gateway is down wait
for it, and an entry is acknowledged only after its channel sent it (a gateway that dies mid-send gets
it again on restart). Option `bus.outbound: "pubsub"`: plain Redis pub/sub, which drops whatever is
published while no gateway listens. Final replies are published by the fenced commit in mailbox.py;
this module publishes the rest (progress, the message tool) and reads everything.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Set as AbstractSet
from contextvars import ContextVar
from typing import Any

from nanobot.bus.events import InboundMessage, OutboundMessage
from nanobot_celery.mailbox import ORIGIN, OUTBOUND_MAXLEN

log = logging.getLogger(__name__)

GROUP = "gateways"  # the consumer group every gateway reads the outbound streams in
STREAM_ID = "_stream_id"  # metadata key carrying the entry id to ack
STREAM_KEY = "_stream"  # ... and the stream it came from

# The gateway that accepted the message whose turn runs now (worker side): what the turn publishes
# (progress, the message tool) goes back to it.
turn_origin: ContextVar[str | None] = ContextVar("nanobot_turn_origin", default=None)


def origin_of(msg: InboundMessage) -> str | None:
    value = msg.metadata.get(ORIGIN)
    return value if isinstance(value, str) and value else None


def addressed(reply: OutboundMessage, origin: str | None) -> OutboundMessage:
    """The reply, marked for the gateway that accepted what it answers."""
    if origin and not reply.metadata.get(ORIGIN):
        reply.metadata[ORIGIN] = origin
    return reply


async def publish(redis: Any, channel_key: str, mode: str, msg: OutboundMessage) -> None:
    body = json.dumps(msg.to_dict(), ensure_ascii=False)
    if mode == "pubsub":
        await redis.publish(channel_key, body)
    else:
        await redis.xadd(channel_key, {"m": body}, maxlen=OUTBOUND_MAXLEN, approximate=True)


def _decode(body: str, where: str) -> OutboundMessage | None:
    try:
        data = json.loads(body)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return OutboundMessage.from_dict(data)
    except (ValueError, TypeError) as exc:
        log.error("malformed outbound entry %s dropped: %s", where, exc)
        return None


class StreamReader:
    """Reads outbound streams as consumer `name` of group `group`: the shared stream (replies any gateway
    may send) and this gateway's own (replies to what it accepted).

    On start it first re-reads its own unacknowledged entries (what a previous run of this gateway
    read but did not finish sending), and claims entries of the shared stream left idle by other
    consumers."""

    def __init__(self, redis: Any, streams: list[str], group: str = GROUP, name: str = "gateway",
                 claim_idle_ms: int = 60_000) -> None:
        self.redis = redis
        self.streams = streams
        self.group = group
        self.name = name
        self.claim_idle_ms = claim_idle_ms
        self._backlog: list[tuple[str, str, dict[str, str]]] = []  # (stream, entry id, fields)
        self._started = False
        self.failure: str | None = None  # why the last read from Redis failed; None after one succeeded
        # After Redis failed under us, our own pending entries are read again before new ones: a read the outage cut
        # may have been served (the entries are ours in Redis) without the answer ever reaching us.
        self._recover = False
        self._handed: set[str] = set()  # entries `read` returned and `ack` has not yet seen
        self._sent_unacked: set[tuple[str, str]] = set()  # sent to their chat, but XACK failed: acked, never resent

    async def _start(self) -> None:
        for stream in self.streams:
            try:
                await self.redis.xgroup_create(stream, self.group, id="0", mkstream=True)
            except Exception as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        await self._take_back_own()
        shared = self.streams[0]
        claimed = await self.redis.xautoclaim(shared, self.group, self.name, self.claim_idle_ms, "0-0", count=1000)
        self._backlog.extend((shared, entry_id, fields) for entry_id, fields in claimed[1] if fields)
        if self._backlog:
            log.info("outbound: %d reply(ies) left unsent by an earlier run; sending them now", len(self._backlog))
        self._started = True

    def _keep(self, got: Any, skip: AbstractSet[str] = frozenset()) -> None:
        for stream, entries in got or []:
            self._backlog.extend((stream, entry_id, fields) for entry_id, fields in entries
                                 if fields and entry_id not in skip)

    async def _take_back_own(self) -> int:
        """Queue our own pending entries (delivered to this consumer, never acknowledged) that we neither hold nor
        handed out; returns how many."""
        own = await self.redis.xreadgroup(self.group, self.name, dict.fromkeys(self.streams, "0"), count=10_000)
        before = len(self._backlog)
        self._keep(own, skip=self._handed | {entry_id for _stream, entry_id, _fields in self._backlog})
        return len(self._backlog) - before

    async def _recover_pending(self) -> None:
        """After a failure: acknowledge what was sent while XACK failed, then take back our own pending entries that
        we neither hold nor handed out (served to a read whose answer the outage lost)."""
        for stream, entry_id in sorted(self._sent_unacked):
            await self.redis.xack(stream, self.group, entry_id)
            self._sent_unacked.discard((stream, entry_id))
        if taken := await self._take_back_own():
            log.info("outbound: %d reply(ies) served by Redis during the outage but never received; sending them now",
                     taken)
        self._recover = False

    async def read(self) -> OutboundMessage:
        try:
            if not self._started:
                await self._start()
            elif self._recover:
                await self._recover_pending()
        except Exception as exc:
            self.failure = type(exc).__name__
            raise
        while True:
            if not self._backlog:
                try:
                    got = await self.redis.xreadgroup(
                        self.group, self.name, dict.fromkeys(self.streams, ">"), count=100, block=1000
                    )
                except Exception as exc:
                    self.failure = type(exc).__name__
                    self._recover = True
                    if "NOGROUP" in str(exc):  # Redis came back without our group (no persistence): recreate it
                        self._started = False
                    raise
                self.failure = None
                self._keep(got)
                continue
            stream, entry_id, fields = self._backlog.pop(0)
            msg = _decode(fields.get("m", ""), entry_id)
            if msg is None:
                await self.redis.xack(stream, self.group, entry_id)
                continue
            msg.metadata[STREAM_ID] = entry_id
            msg.metadata[STREAM_KEY] = stream
            self._handed.add(entry_id)
            return msg

    async def ack(self, msg: OutboundMessage) -> None:
        entry_id = msg.metadata.pop(STREAM_ID, None)
        stream = msg.metadata.pop(STREAM_KEY, None)
        if entry_id and stream:
            self._handed.discard(entry_id)
            try:
                await self.redis.xack(stream, self.group, entry_id)
            except Exception:
                self._sent_unacked.add((stream, entry_id))
                self._recover = True
                raise


class PubSubReader:
    """Reads plain pub/sub: nothing to ack, and nothing kept while not subscribed."""

    def __init__(self, redis: Any, channels: list[str]) -> None:
        self.redis = redis
        self.channels = channels
        self._pubsub: Any = None
        self.failure: str | None = None  # why the last read from Redis failed; None after one succeeded

    async def read(self) -> OutboundMessage:
        while True:
            try:
                if self._pubsub is None:
                    self._pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                    await self._pubsub.subscribe(*self.channels)
                message = await self._pubsub.get_message(timeout=1.0)
            except Exception as exc:
                self.failure = type(exc).__name__
                raise
            self.failure = None
            if message is None:
                await asyncio.sleep(0)
                continue
            msg = _decode(message["data"], message["channel"])
            if msg is not None:
                return msg

    async def ack(self, msg: OutboundMessage) -> None:
        return None

    async def close(self) -> None:
        if self._pubsub is not None:
            await self._pubsub.aclose()
