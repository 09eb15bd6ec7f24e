"""CeleryMessageBus: MessageBus's four methods, on Redis and Celery.

publish_inbound  accept the message at once; a background flusher, in acceptance order, drops duplicates,
                 appends to the conversation's mailbox and rings `process_turn` on the conversation's
                 shard queue, retrying with backoff while Redis is down (the gateway keeps accepting).
                 `/stop` instead asks the worker holding the conversation to cancel its turn.
consume_inbound  not used: Celery workers consume (nanobot_celery/tasks.py).
publish_outbound replies from workers (final replies go through the fenced commit in mailbox.py).
consume_outbound the gateway's read of the outbound stream (or pub/sub); `ack_outbound` after sending.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import socket
import uuid
from typing import Any

from nanobot.bus.events import InboundMessage, OutboundMessage
from nanobot.bus.queue import MessageBus
from nanobot.config.schema import BusConfig, Config
from nanobot.logs import log_context
from nanobot.metrics.instruments import REDIS_RETRIES
from nanobot.session.factory import redis_keys
from nanobot_celery import outbound
from nanobot_celery.lease import RedisLease
from nanobot_celery.mailbox import ORIGIN, Mailbox
from nanobot_celery.routing import queue_for

log = logging.getLogger(__name__)

PROCESS_TURN = "nanobot.process_turn"
NOTHING_RUNNING = "Nothing is running in this conversation."


def ring(session_key: str, bus: BusConfig) -> None:
    """Send the doorbell task for a conversation (sync: Celery's producer)."""
    from nanobot_celery.app import app

    app.send_task(PROCESS_TURN, args=[session_key], queue=queue_for(session_key, bus.shards, bus.key_prefix))


class CeleryMessageBus(MessageBus):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.keys = redis_keys(config)
        self.identity = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._redis: Any = None
        self._mailbox: Mailbox | None = None
        self._reader: outbound.StreamReader | outbound.PubSubReader | None = None
        self._accepted: asyncio.Queue[InboundMessage] | None = None
        self._flusher: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, config: Config) -> CeleryMessageBus:
        from nanobot_celery.app import use_config

        use_config(config)
        return cls(config)

    # --------------------------------------------------------------- connections (per event loop)
    @property
    def redis(self) -> Any:
        if self._redis is None:
            import redis.asyncio as aioredis

            self._redis = aioredis.Redis.from_url(
                self.config.bus.redis_url, decode_responses=True, socket_connect_timeout=5, health_check_interval=30
            )
        return self._redis

    @property
    def mailbox(self) -> Mailbox:
        if self._mailbox is None:
            self._mailbox = Mailbox.for_bus(self.redis, self.keys, self.config.bus)
        return self._mailbox

    # --------------------------------------------------------------- inbound
    async def publish_inbound(self, msg: InboundMessage) -> None:
        """Accept a message; it reaches Redis in acceptance order, even if Redis is down right now."""
        if self._accepted is None:
            self._accepted = asyncio.Queue()
            self._flusher = asyncio.create_task(self._flush_forever(), name="inbound-flusher")
        msg.metadata[ORIGIN] = self.config.bus.gateway_name
        await self._accepted.put(msg)

    async def _flush_forever(self) -> None:
        assert self._accepted is not None
        while True:
            msg = await self._accepted.get()
            with log_context(session_key=msg.session_key, message_id=msg.message_id, channel=msg.channel):
                await self._flush_one(msg)
            self._accepted.task_done()

    async def _flush_one(self, msg: InboundMessage) -> None:
        """Deliver one accepted message, retrying while Redis is unreachable (doubling to 5 s, jittered)."""
        delay = 0.1
        while True:
            try:
                await self.deliver_inbound(msg)
                return
            except Exception as exc:
                if not is_connection_error(exc):
                    log.exception("session=%s message_id=%s could not be queued", msg.session_key, msg.message_id)
                    return
                wait = delay * random.uniform(0.5, 1.0)
                log.warning("session=%s message_id=%s Redis unavailable (%s); retrying in %.1fs",
                            msg.session_key, msg.message_id, type(exc).__name__, wait)
                REDIS_RETRIES.labels("gateway_inbound").inc()
            await asyncio.sleep(wait)
            delay = min(delay * 2, 5.0)

    async def deliver_inbound(self, msg: InboundMessage) -> None:
        """Mailbox + doorbell now (raises while Redis is unreachable)."""
        if msg.content.strip().lower() == "/stop":
            await self._request_stop(msg)
            return
        if not await self.mailbox.enqueue(msg):
            log.info("session=%s message_id=%s duplicate dropped", msg.session_key, msg.message_id)
            return
        log.info("session=%s message_id=%s queued", msg.session_key, msg.message_id)
        await asyncio.to_thread(ring, msg.session_key, self.config.bus)

    async def _request_stop(self, msg: InboundMessage) -> None:
        body = json.dumps(msg.to_dict(), ensure_ascii=False)
        listeners = await self.redis.publish(self.keys.cancel(msg.session_key), body)
        log.info("session=%s message_id=%s /stop sent to %d holder(s)", msg.session_key, msg.message_id, listeners)
        if not listeners:
            reply = OutboundMessage(msg.channel, msg.chat_id, NOTHING_RUNNING, reply_to=msg.message_id)
            await self.publish_outbound(outbound.addressed(reply, outbound.origin_of(msg)))

    async def consume_inbound(self) -> InboundMessage:
        raise RuntimeError("in celery mode, Celery workers consume inbound messages (nanobot_celery.tasks)")

    async def wait_accepted(self, limit_s: float) -> bool:
        """Wait until every accepted message reached Redis; False on timeout."""
        if self._accepted is None:
            return True
        try:
            await asyncio.wait_for(self._accepted.join(), limit_s)
            return True
        except TimeoutError:
            return False

    def lease(self, name: str, ttl_s: float) -> RedisLease:
        return RedisLease(self.redis, self.keys.leader(name), self.identity, int(ttl_s * 1000), name=name)

    # --------------------------------------------------------------- outbound
    async def publish_outbound(self, msg: OutboundMessage) -> None:
        """To the gateway that accepted what this answers (the turn's origin, on a worker), else to any."""
        msg = outbound.addressed(msg, outbound.turn_origin.get())
        stream = self.keys.outbound_for(msg.metadata.get(ORIGIN))
        await outbound.publish(self.redis, stream, self.config.bus.outbound, msg)

    @property
    def reader(self) -> outbound.StreamReader | outbound.PubSubReader:
        if self._reader is None:
            name = self.config.bus.gateway_name
            streams = [self.keys.outbound, self.keys.outbound_for(name)]
            if self.config.bus.outbound == "pubsub":
                self._reader = outbound.PubSubReader(self.redis, streams)
            else:
                self._reader = outbound.StreamReader(self.redis, streams, name=name)
        return self._reader

    async def consume_outbound(self) -> OutboundMessage:
        return await self.reader.read()

    async def ack_outbound(self, msg: OutboundMessage) -> None:
        await self.reader.ack(msg)

    def outbound_failure(self) -> str | None:
        """Why the outbound reader's last Redis call failed; None once one succeeded (or before any read)."""
        return self._reader.failure if self._reader is not None else None

    async def close(self) -> None:
        pending = self._accepted.qsize() if self._accepted is not None else 0
        if pending and not await self.wait_accepted(10.0):
            log.error("%d accepted message(s) could not reach Redis before shutdown", self._accepted.qsize())
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        if isinstance(self._reader, outbound.PubSubReader):
            await self._reader.close()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
            self._mailbox = None
            self._reader = None


def is_connection_error(exc: Exception) -> bool:
    """Redis (or the broker behind Celery) is unreachable: worth retrying later."""
    import redis.exceptions
    from kombu.exceptions import OperationalError

    unreachable = (ConnectionError, TimeoutError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
    return isinstance(exc, (*unreachable, OperationalError))
