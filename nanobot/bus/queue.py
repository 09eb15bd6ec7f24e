"""The local message bus: two asyncio queues in one process."""

from __future__ import annotations

import asyncio

from nanobot.bus.events import InboundMessage, OutboundMessage
from nanobot.bus.lease import Lease, LocalLease


class MessageBus:
    """Inbound (channels -> agent) and outbound (agent -> channels) queues.

    Every bus backend offers these four coroutines; channels and the agent use nothing else.
    """

    def __init__(self) -> None:
        self.inbound: asyncio.Queue[InboundMessage] = asyncio.Queue()
        self.outbound: asyncio.Queue[OutboundMessage] = asyncio.Queue()

    async def publish_inbound(self, msg: InboundMessage) -> None:
        await self.inbound.put(msg)

    async def consume_inbound(self) -> InboundMessage:
        return await self.inbound.get()

    async def publish_outbound(self, msg: OutboundMessage) -> None:
        await self.outbound.put(msg)

    async def consume_outbound(self) -> OutboundMessage:
        return await self.outbound.get()

    async def ack_outbound(self, msg: OutboundMessage) -> None:
        """Called once `msg` was sent to its channel (durable backends forget it then; nothing to do here)."""

    async def wait_accepted(self, limit_s: float) -> bool:
        """Wait until every published inbound message is durable (locally: at once); False on timeout."""
        return True

    def outbound_failure(self) -> str | None:
        """Why reading outbound messages fails now (a durable backend's store is unreachable); None when it works."""
        return None

    def lease(self, name: str, ttl_s: float) -> Lease:
        """A lease only one process of the deployment holds at a time (locally there is only this one)."""
        return LocalLease(name)

    async def close(self) -> None:
        """Release backend resources (nothing to do locally)."""

    @property
    def inbound_size(self) -> int:
        return self.inbound.qsize()

    @property
    def outbound_size(self) -> int:
        return self.outbound.qsize()
