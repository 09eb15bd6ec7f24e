"""What every chat channel is: it starts, stops, sends, and turns what people write into inbound messages
(counted in `nanobot_inbound_messages_total{channel,outcome}`: ok when published, refused by allowFrom,
limited by a fair limit per sender, see `nanobot.admission`)."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from nanobot.bus.events import InboundMessage, OutboundMessage, new_message_id
from nanobot.bus.queue import MessageBus
from nanobot.config.schema import ChannelBase
from nanobot.logs import log_context
from nanobot.metrics.instruments import count_inbound

if TYPE_CHECKING:
    from aiohttp import web

    from nanobot.admission.gate import Admission, Refusal

log = logging.getLogger(__name__)


class BaseChannel(ABC):
    name: str = "base"

    def __init__(self, config: ChannelBase, bus: MessageBus) -> None:
        self.config = config
        self.bus = bus
        self._running = False
        # The fair limits per sender, set by the gateway (none: every allowed message is queued).
        self.admission: Admission | None = None

    @abstractmethod
    async def start(self) -> None:
        """Connect and keep listening; returns when the channel stops."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop listening and release resources."""

    @abstractmethod
    async def send(self, msg: OutboundMessage) -> None:
        """Deliver one message to its chat; raises when it could not be delivered."""

    def web_routes(self) -> list[web.RouteDef]:
        """Routes this channel serves on the gateway's HTTP server (webhooks); none by default."""
        return []

    @property
    def is_running(self) -> bool:
        return self._running

    def is_allowed(self, sender_id: str) -> bool:
        """An empty allowFrom, or one holding "*", allows everyone; otherwise the sender (or one of its `|`
        parts) must be listed."""
        allow = self.config.allow_from
        if not allow or "*" in allow:
            return True
        sender = str(sender_id)
        return sender in allow or any(part and part in allow for part in sender.split("|"))

    async def _handle_message(
        self,
        sender_id: str,
        chat_id: str,
        content: str,
        media: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        message_id: str | None = None,
        session_key: str | None = None,
    ) -> InboundMessage | None:
        """Check the sender and publish an inbound message; returns it, or None when refused."""
        if not self.is_allowed(sender_id):
            log.warning("channel=%s refused sender=%s: not in allowFrom", self.name, sender_id)
            count_inbound(self.name, "refused")
            return None
        msg = InboundMessage(
            channel=self.name,
            sender_id=str(sender_id),
            chat_id=str(chat_id),
            content=content,
            media=media or [],
            metadata=metadata or {},
            session_key_override=session_key,
            message_id=message_id or new_message_id(),
        )
        with log_context(session_key=msg.session_key, message_id=msg.message_id, channel=self.name):
            if self.admission is not None and (refusal := await self.admission.admit(msg)) is not None:
                count_inbound(self.name, "limited")
                await self._refused(msg, refusal)
                return None
            await self.bus.publish_inbound(msg)
        count_inbound(self.name, "ok")
        return msg

    async def _refused(self, msg: InboundMessage, refusal: Refusal) -> None:
        """Tell the sender that `msg` was not queued: one short notice per window (see `Admission.should_notify`),
        sent from here, without a turn or the LLM; the rest are dropped quietly."""
        assert self.admission is not None
        if not await self.admission.should_notify(msg, refusal):
            return
        try:
            await self.send(OutboundMessage(channel=self.name, chat_id=msg.chat_id, content=refusal.text))
        except Exception as exc:
            log.warning("channel=%s session=%s could not send the limit notice: %s", self.name, msg.session_key, exc)
