"""How a worker process hears `/stop`: one pub/sub connection per process, shared by every drain it runs.

A drain subscribes to its conversation's cancel channel while it holds the lock (so the gateway's PUBLISH
counts it as a holder) and reads requests from its own queue; one reader task takes every message off the
connection and hands it to the queue of its channel. Concurrent drains on one event loop (the threads pool)
therefore never read each other's requests, and no drain opens a connection of its own.

A broken connection is reopened with backoff and every channel still listened to is subscribed again; a
`/stop` published while it was down is lost, as it would be for any pub/sub listener (the user gets no
"Stopped" and can send it again).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from typing import Any

from nanobot.bus.events import InboundMessage

log = logging.getLogger(__name__)

RECONNECT_CAP_S = 5.0


class CancelListener:
    def __init__(self, redis: Any) -> None:
        self._redis = redis  # redis.asyncio.Redis
        self._pubsub: Any = None
        self._queues: dict[str, asyncio.Queue[InboundMessage]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one SUBSCRIBE/UNSUBSCRIBE written at a time; the first one connects

    async def listen(self, channel: str) -> asyncio.Queue[InboundMessage]:
        """Subscribe to `channel`; its /stop requests arrive on the returned queue until `unlisten`."""
        queue: asyncio.Queue[InboundMessage] = asyncio.Queue()
        self._queues[channel] = queue
        try:
            async with self._lock:
                pubsub = await self._connected()
                await pubsub.subscribe(channel)
        except BaseException:
            self._queues.pop(channel, None)
            await self._reset()
            raise
        return queue

    async def unlisten(self, channel: str) -> None:
        self._queues.pop(channel, None)
        if self._pubsub is None:
            return
        try:
            async with self._lock:
                await self._pubsub.unsubscribe(channel)
        except Exception as exc:  # a broken connection: the reader reconnects with what is still listened to
            log.debug("unsubscribing %s: %s", channel, exc)
            await self._reset()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None
        await self._reset()

    async def _connected(self) -> Any:
        if self._pubsub is None:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            await pubsub.connect()
            self._pubsub = pubsub
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read(), name="cancel-listener")
        return self._pubsub

    async def _read(self) -> None:
        delay = 0.1
        while True:
            try:
                pubsub = self._pubsub
                if pubsub is None:
                    async with self._lock:
                        pubsub = await self._connected()
                        if self._queues:
                            await pubsub.subscribe(*self._queues)
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                delay = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cancel listener connection failed (%s); reconnecting in %.1fs", exc, delay)
                await self._reset()
                await asyncio.sleep(delay / 2 + random.uniform(0, delay / 2))
                delay = min(delay * 2, RECONNECT_CAP_S)
                continue
            if message is not None:
                self._deliver(message)

    def _deliver(self, message: dict[str, Any]) -> None:
        channel = message.get("channel")
        if isinstance(channel, bytes):
            channel = channel.decode()
        queue = self._queues.get(str(channel))
        if queue is None:  # the drain it was for has ended
            return
        try:
            queue.put_nowait(InboundMessage.from_dict(_loads(message["data"])))
        except (ValueError, TypeError, KeyError) as exc:
            log.error("malformed /stop request ignored: %s", type(exc).__name__)

    async def _reset(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                await pubsub.aclose()
            except Exception as exc:
                log.debug("closing the cancel listener: %s", exc)


def _loads(data: Any) -> dict[str, Any]:
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError("not an object")
    return value
