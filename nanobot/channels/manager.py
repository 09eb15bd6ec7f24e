"""Channels of one gateway: start the enabled ones, deliver outbound messages to them (counted in
`nanobot_outbound_messages_total`), and say what of it is not ready (`not_ready`, for /ready)."""

from __future__ import annotations

import asyncio
import logging
import random

from nanobot.bus.events import OutboundMessage
from nanobot.bus.queue import MessageBus
from nanobot.channels.base import BaseChannel
from nanobot.config.schema import ChannelsConfig, Config
from nanobot.logs import log_context
from nanobot.metrics.instruments import REDIS_RETRIES, count_outbound

# Channel label values: the channels nanobot has, plus the internal ones; anything else (a name a tool made
# up) is counted as "other", so the label stays bounded.
KNOWN_CHANNELS = frozenset({*ChannelsConfig.model_fields, "cli", "system"})
INTERNAL_CHANNELS = ("cli", "system")


def channel_label(name: str) -> str:
    return name if name in KNOWN_CHANNELS else "other"

log = logging.getLogger(__name__)


def build_channels(config: Config, bus: MessageBus) -> dict[str, BaseChannel]:
    """The enabled channels; each is imported only when enabled. Received files go to <workspace>/media."""
    channels: dict[str, BaseChannel] = {}
    settings = config.channels
    media_dir = config.workspace_path / "media"
    if settings.api.enabled:
        from nanobot.channels.api import ApiChannel

        channels["api"] = ApiChannel(settings.api, bus)
    if settings.telegram.enabled:
        from nanobot.channels.telegram import TelegramChannel
        from nanobot.providers.transcription import transcriber_from_config

        channels["telegram"] = TelegramChannel(
            settings.telegram, bus, media_dir=media_dir, transcriber=transcriber_from_config(config)
        )
    if settings.whatsapp.enabled:
        from nanobot.channels.whatsapp import WhatsAppChannel

        channels["whatsapp"] = WhatsAppChannel(settings.whatsapp, bus, media_dir=media_dir)
    return channels


class ChannelManager:
    """Runs the channels and the one outbound dispatcher: outbound messages go to the channel they name."""

    def __init__(self, config: ChannelsConfig, bus: MessageBus, channels: dict[str, BaseChannel]) -> None:
        self.config = config
        self.bus = bus
        self.channels = channels
        self._tasks: list[asyncio.Task[None]] = []
        self._dispatcher: asyncio.Task[None] | None = None

    def wants(self, msg: OutboundMessage) -> bool:
        """Progress and tool hints are sent only when the config asks for them."""
        if not msg.is_progress:
            return True
        if msg.metadata.get("_tool_hint"):
            return self.config.send_tool_hints
        return self.config.send_progress

    async def start_all(self) -> None:
        for name, channel in self.channels.items():
            log.info("starting channel %s", name)
            self._tasks.append(asyncio.create_task(self._run_channel(name, channel), name=f"channel-{name}"))
        self._dispatcher = asyncio.create_task(self._dispatch_outbound(), name="outbound-dispatcher")
        self._tasks.append(self._dispatcher)

    async def _run_channel(self, name: str, channel: BaseChannel) -> None:
        try:
            await channel.start()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("channel %s stopped with an error", name)

    async def deliver(self, msg: OutboundMessage) -> bool:
        """Send one message to its channel; False (logged) when it could not be delivered."""
        channel = self.channels.get(msg.channel)
        if channel is None:
            if msg.channel not in INTERNAL_CHANNELS:
                log.warning("outbound to unknown channel %s chat=%s dropped", channel_label(msg.channel), msg.chat_id)
                count_outbound(channel_label(msg.channel), "dropped")
            return False
        if not self.wants(msg):
            return True
        try:
            await channel.send(msg)
        except Exception:
            log.exception("send failed channel=%s chat=%s reply_to=%s", msg.channel, msg.chat_id, msg.reply_to)
            count_outbound(msg.channel, "failed")
            return False
        count_outbound(msg.channel, "ok")
        return True

    async def _dispatch_outbound(self) -> None:
        """Deliver, then acknowledge; a bus that fails (Redis restarting) is retried with a jittered backoff."""
        delay = 0.1
        while True:
            try:
                msg = await self.bus.consume_outbound()
                with log_context(channel=msg.channel, message_id=msg.reply_to):
                    if await self.deliver(msg) or msg.channel not in self.channels:
                        await self.bus.ack_outbound(msg)
                delay = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                wait = delay * random.uniform(0.5, 1.0)
                log.warning("outbound: bus unavailable (%s: %s); retrying in %.1fs", type(exc).__name__, exc, wait)
                REDIS_RETRIES.labels("outbound").inc()
                await asyncio.sleep(wait)
                delay = min(delay * 2, 5.0)

    async def stop_all(self) -> None:
        for name, channel in self.channels.items():
            try:
                await channel.stop()
            except Exception:
                log.exception("channel %s failed to stop cleanly", name)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def not_ready(self) -> list[str]:
        """Reasons this side of the gateway cannot serve: a channel not running, the outbound dispatcher
        stopped, or the bus's outbound reads failing."""
        reasons = [f"channel {name} not running" for name, ch in self.channels.items() if not ch.is_running]
        if self._dispatcher is None or self._dispatcher.done():
            reasons.append("outbound dispatcher not running")
        else:
            error = self.bus.outbound_failure()
            if error:
                reasons.append(f"outbound reader failing ({error})")
        return reasons

    def status(self) -> dict[str, dict[str, bool]]:
        return {name: {"enabled": True, "running": ch.is_running} for name, ch in self.channels.items()}
