"""The backlog of distributed mode, read from Redis: what waits, what runs, what nobody holds.

`scan_conversations` walks `keys.busy_sessions` (SSCAN in batches, one pipeline per batch) and yields each
conversation's `ConversationState`; the sweeper (nanobot_celery/gateway.py) acts on it and `read_backlog`
adds it up, with the shard queues, the dead letters and the outbound streams' pending entries, into a
`Backlog` that `publish_backlog` writes to the gauges of nanobot_celery/metrics.py. `BacklogGauges` refreshes
them when /metrics is scraped, at most once per `max_age_s`, and keeps the last values while Redis fails.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from nanobot.session.redis_keys import RedisKeys
from nanobot_celery import metrics, outbound
from nanobot_celery.routing import all_queues

log = logging.getLogger(__name__)

SCAN_BATCH = 500


@dataclass(frozen=True)
class ConversationState:
    """One conversation with (possibly) work: messages waiting in its mailbox, in flight, whether it is held."""

    session_key: str
    waiting: int
    in_flight: int
    held: bool
    oldest_waiting: str | None  # the mailbox head, raw JSON (None when nothing waits)

    @property
    def has_work(self) -> bool:
        return self.waiting + self.in_flight > 0


@dataclass
class Backlog:
    waiting: int = 0
    in_flight: int = 0
    held: int = 0  # conversations with work whose lock is held
    unheld: int = 0  # conversations with work and no lock holder
    oldest_age_s: float = 0.0  # age of the oldest message waiting in any mailbox
    queues: dict[str, int] = field(default_factory=dict)  # shard queue -> doorbells waiting
    dead_letters: int = 0
    outbound_pending: dict[str, int] = field(default_factory=dict)  # "shared" / "own" -> unacknowledged


def message_age_s(raw: str | None, now: datetime | None = None) -> float:
    """Age of a mailbox entry from its `timestamp` (a naive local isoformat); 0 when unreadable."""
    if not raw:
        return 0.0
    try:
        stamp = datetime.fromisoformat(json.loads(raw)["timestamp"])
    except (ValueError, TypeError, KeyError):
        return 0.0
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone().replace(tzinfo=None)
    return max(0.0, ((now or datetime.now()) - stamp).total_seconds())


async def scan_conversations(redis: Any, keys: RedisKeys, batch: int = SCAN_BATCH) -> AsyncIterator[ConversationState]:
    """Every conversation in the busy set, read one pipelined batch at a time."""
    cursor: int | str = 0
    while True:
        cursor, members = await redis.sscan(keys.busy_sessions, cursor=cursor, count=batch)
        if members:
            async with redis.pipeline(transaction=False) as pipe:
                for sk in members:
                    pipe.llen(keys.mailbox(sk))
                    pipe.llen(keys.inflight(sk))
                    pipe.exists(keys.lock(sk))
                    pipe.lindex(keys.mailbox(sk), 0)
                replies = await pipe.execute()
            for i, sk in enumerate(members):
                waiting, flying, locked, head = replies[4 * i: 4 * i + 4]
                yield ConversationState(sk, int(waiting), int(flying), bool(locked), head)
        if int(cursor) == 0:
            return


async def _outbound_pending(redis: Any, stream: str) -> int:
    try:
        summary = await redis.xpending(stream, outbound.GROUP)
    except Exception as exc:
        if "NOGROUP" in str(exc) or "no such key" in str(exc).lower():
            return 0
        raise
    return int(summary.get("pending", 0) if isinstance(summary, dict) else summary[0])


async def read_backlog(redis: Any, keys: RedisKeys, shards: int, gateway_name: str) -> Backlog:
    """One pass over Redis: the conversations, the shard queues, the dead letters, the outbound streams."""
    backlog = Backlog()
    now = datetime.now()
    async for conv in scan_conversations(redis, keys):
        backlog.waiting += conv.waiting
        backlog.in_flight += conv.in_flight
        if conv.has_work:
            if conv.held:
                backlog.held += 1
            else:
                backlog.unheld += 1
        backlog.oldest_age_s = max(backlog.oldest_age_s, message_age_s(conv.oldest_waiting, now))
    queues = all_queues(shards, keys.prefix)
    async with redis.pipeline(transaction=False) as pipe:
        for queue in queues:
            pipe.llen(queue)
        pipe.xlen(keys.dead_letters)
        *lengths, dead = await pipe.execute()
    backlog.queues = {queue: int(n) for queue, n in zip(queues, lengths, strict=True)}
    backlog.dead_letters = int(dead)
    backlog.outbound_pending = {
        "shared": await _outbound_pending(redis, keys.outbound),
        "own": await _outbound_pending(redis, keys.outbound_for(gateway_name)),
    }
    return backlog


def publish_backlog(backlog: Backlog) -> None:
    """Write a backlog to the gauges."""
    metrics.BACKLOG.labels("waiting").set(backlog.waiting)
    metrics.BACKLOG.labels("in_flight").set(backlog.in_flight)
    metrics.CONVERSATIONS.labels("held").set(backlog.held)
    metrics.CONVERSATIONS.labels("unheld").set(backlog.unheld)
    metrics.BACKLOG_OLDEST_AGE.set(backlog.oldest_age_s)
    for queue, length in backlog.queues.items():
        metrics.QUEUE_LENGTH.labels(queue).set(length)
    metrics.DEAD_LETTERS.set(backlog.dead_letters)
    for stream, pending in backlog.outbound_pending.items():
        metrics.OUTBOUND_PENDING.labels(stream).set(pending)


class BacklogGauges:
    """Refreshes the backlog gauges on demand (each /metrics scrape), at most once per `max_age_s`; concurrent
    scrapes share one read. A Redis failure is logged at WARNING and leaves the last values in place."""

    def __init__(self, redis: Callable[[], Any], keys: RedisKeys, shards: int, gateway_name: str,
                 max_age_s: float = 1.0, timeout_s: float = 5.0) -> None:
        """`redis` returns the client to use (the bus's, created lazily on its event loop)."""
        self.redis = redis
        self.keys = keys
        self.shards = shards
        self.gateway_name = gateway_name
        self.max_age_s = max_age_s
        self.timeout_s = timeout_s
        self.last: Backlog | None = None
        self._read_at = float("-inf")
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        async with self._lock:
            if time.monotonic() - self._read_at < self.max_age_s:
                return
            try:
                backlog = await asyncio.wait_for(
                    read_backlog(self.redis(), self.keys, self.shards, self.gateway_name), self.timeout_s
                )
            except Exception as exc:
                log.warning("backlog metrics not refreshed (%s: %s); keeping the last values", type(exc).__name__, exc)
            else:
                publish_backlog(backlog)
                self.last = backlog
            self._read_at = time.monotonic()
