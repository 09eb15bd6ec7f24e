"""Assemble and run a gateway: bus, provider, agent loop, channels, cron and heartbeat."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

from nanobot.agent.loop import AgentLoop
from nanobot.bus.events import OutboundMessage
from nanobot.bus.factory import create_bus
from nanobot.bus.queue import MessageBus
from nanobot.channels.manager import ChannelManager
from nanobot.config.loader import cron_store_path
from nanobot.config.schema import Config
from nanobot.cron.service import CronService
from nanobot.cron.types import CronJob
from nanobot.heartbeat.service import HeartbeatService
from nanobot.providers.factory import create_provider

log = logging.getLogger(__name__)


def cron_job_runner(agent: AgentLoop, bus: MessageBus) -> Callable[[CronJob], Awaitable[str | None]]:
    """A fired job is a turn in its own session `cron:<id>`; with `deliver` its answer goes to the chat."""

    async def run(job: CronJob) -> str | None:
        payload = job.payload
        reply = await agent.process_direct(
            payload.message,
            session_key=f"cron:{job.id}",
            channel=payload.channel or "cli",
            chat_id=payload.to or "direct",
        )
        if payload.deliver and payload.channel and payload.to and reply:
            await bus.publish_outbound(OutboundMessage(channel=payload.channel, chat_id=payload.to, content=reply))
        return reply

    return run


class Gateway:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.bus = create_bus(config)
        self.provider = create_provider(config)
        self.cron = CronService(cron_store_path())
        self.agent = AgentLoop.from_config(config, self.bus, self.provider, cron_service=self.cron)
        self.cron.on_job = cron_job_runner(self.agent, self.bus)
        self.channels = ChannelManager(config.channels, self.bus)
        hb = config.gateway.heartbeat
        self.heartbeat = HeartbeatService(
            self.agent.workspace,
            on_heartbeat=lambda prompt: self.agent.process_direct(
                prompt, session_key="heartbeat", channel="cli", chat_id="heartbeat"
            ),
            interval_s=hb.interval_s,
            enabled=hb.enabled,
        )
        self._agent_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.cron.start()
        await self.heartbeat.start()
        self._agent_task = asyncio.create_task(self.agent.run(), name="agent-loop")
        await self.channels.start_all()
        log.info(
            "gateway started: channels=%s bus=%s sessions=%s",
            ",".join(self.channels.channels) or "none", self.config.bus.backend, self.config.sessions.backend,
        )

    async def stop(self) -> None:
        log.info("gateway stopping")
        await self.channels.stop_all()
        await self.heartbeat.stop()
        await self.cron.stop()
        self.agent.stop()
        if self._agent_task is not None:
            self._agent_task.cancel()
            await asyncio.gather(self._agent_task, return_exceptions=True)
        await self.agent.close()
        await self.bus.close()
        log.info("gateway stopped")

    async def run_until_signal(self) -> None:
        """Run until SIGTERM or SIGINT, then stop cleanly."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()
