"""WhatsApp as a chat channel, over one of two transports chosen by the config.

* `cloud` configured (phoneNumberId + accessToken): Meta's WhatsApp Cloud API. Messages arrive as signed webhooks on
  the gateway's HTTP server (`GET/POST /whatsapp`, see `web_routes`); replies go out through the Graph API.
  Transport: `nanobot/channels/whatsapp_cloud.py`.
* otherwise: upstream nanobot's Node.js bridge (WhatsApp Web through Baileys), a JSON websocket at `bridgeUrl`
  authenticated with `bridgeToken`. Transport: `nanobot/channels/whatsapp_bridge.py`.

Both turn a WhatsApp message into an `Incoming` and hand it to the channel, which publishes it with the deterministic
id `wa-<WhatsApp message id>`, so a distributed bus drops a message that reaches two gateways.

allowFrom entries are compared as phone numbers: `+34600111222`, `34600111222`, `34600111222@s.whatsapp.net`,
`34600111222@c.us` and `34600111222@lid` are all the same entry.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from nanobot.bus.events import OutboundMessage
from nanobot.bus.queue import MessageBus
from nanobot.channels.base import BaseChannel
from nanobot.config.schema import WhatsAppConfig

if TYPE_CHECKING:
    from nanobot.channels.whatsapp_bridge import BridgeTransport
    from nanobot.channels.whatsapp_cloud import CloudTransport

log = logging.getLogger(__name__)

_NUMBER_PUNCTUATION = re.compile(r"[\s+().-]")


def normalize_number(value: str) -> str:
    """The bare number of a phone number or JID: `+34 600-111-222` and `34600111222:7@s.whatsapp.net` give
    `34600111222`."""
    user = value.strip().split("@", 1)[0].split(":", 1)[0]
    return _NUMBER_PUNCTUATION.sub("", user)


@dataclass
class Incoming:
    """One WhatsApp message as a transport understood it, ready to publish."""

    wa_id: str  # WhatsApp's id of the message ("" when the transport gave none)
    sender_id: str
    chat_id: str
    content: str
    media: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def message_id(self) -> str | None:
        return f"wa-{self.wa_id}" if self.wa_id else None


class WhatsAppChannel(BaseChannel):
    name = "whatsapp"

    def __init__(self, config: WhatsAppConfig, bus: MessageBus, *, media_dir: Path) -> None:
        super().__init__(config, bus)
        self.config: WhatsAppConfig = config
        self.media_dir = media_dir
        self.transport: CloudTransport | BridgeTransport = self._make_transport()

    def _make_transport(self) -> CloudTransport | BridgeTransport:
        # Imported here: the transport modules import `Incoming` from this one.
        if self.config.cloud.configured:
            from nanobot.channels.whatsapp_cloud import CloudTransport

            return CloudTransport(self.config.cloud, self.media_dir, self._publish)
        from nanobot.channels.whatsapp_bridge import BridgeTransport

        return BridgeTransport(self.config.bridge_url, self.config.bridge_token, self._publish)

    def web_routes(self) -> list[web.RouteDef]:
        return self.transport.routes()

    async def start(self) -> None:
        """Run the transport; returns when `stop()` is called."""
        self._running = True
        log.info("whatsapp channel starting (transport %s)", self.transport.kind)
        try:
            await self.transport.run()
        finally:
            self._running = False
            log.info("whatsapp channel stopped")

    async def stop(self) -> None:
        await self.transport.close()

    async def send(self, msg: OutboundMessage) -> None:
        """Send text (split when long) and then each file of `msg.media`; raises when WhatsApp did not take it."""
        if not msg.content and not msg.media:
            return
        await self.transport.send(msg)
        log.info(
            "whatsapp sent session=%s:%s reply_to=%s media=%d progress=%s",
            self.name,
            msg.chat_id,
            msg.reply_to,
            len(msg.media),
            msg.is_progress,
        )

    def is_allowed(self, sender_id: str) -> bool:
        """The base rule, then the same with every entry and every `|` part of the sender read as a number."""
        if super().is_allowed(sender_id):
            return True
        allowed = {normalize_number(entry) for entry in self.config.allow_from} - {""}
        return any(normalize_number(part) in allowed for part in str(sender_id).split("|") if part)

    async def _publish(self, incoming: Incoming) -> None:
        session = f"{self.name}:{incoming.chat_id}"
        published = await self._handle_message(
            incoming.sender_id,
            incoming.chat_id,
            incoming.content,
            media=incoming.media,
            metadata=incoming.metadata,
            message_id=incoming.message_id,
        )
        if published is None:
            log.info("whatsapp refused session=%s message_id=%s", session, incoming.message_id)
        else:
            log.info("whatsapp inbound session=%s message_id=%s", session, published.message_id)
