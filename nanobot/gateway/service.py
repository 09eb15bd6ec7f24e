"""Assemble and run a gateway: bus, channels, cron and heartbeat, and where turns run.

Local mode: the agent loop runs here. Distributed mode (`bus.backend: celery`): turns run on Celery
workers; this process keeps the channels and the outbound dispatcher, and adds the sweeper, the
cron/heartbeat leader lock and (by default) an embedded worker (nanobot_celery/gateway.py).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from limits.aio.storage import MemoryStorage

from nanobot.admission.gate import Admission
from nanobot.agent.loop import AgentLoop
from nanobot.bus.events import OutboundMessage
from nanobot.bus.factory import check_distributed_ready, create_bus, distributed
from nanobot.bus.queue import MessageBus
from nanobot.channels.manager import ChannelManager, build_channels
from nanobot.config.loader import cron_store_path
from nanobot.config.schema import Config
from nanobot.cron.service import CronService
from nanobot.cron.types import CRON_OWNER_KEY, CronJob
from nanobot.gateway.http import GatewayHttp
from nanobot.heartbeat.service import HeartbeatService
from nanobot.metrics.instruments import SCHEDULE_FIRES
from nanobot.providers.factory import create_provider

log = logging.getLogger(__name__)


def cron_job_runner(agent: AgentLoop, bus: MessageBus) -> Callable[[CronJob], Awaitable[str | None]]:
    """A fired job is a turn in its own session `cron:<id>`; with `deliver` its answer goes to the chat."""

    async def run(job: CronJob) -> str | None:
        payload = job.payload
        SCHEDULE_FIRES.labels("cron").inc()
        reply = await agent.process_direct(
            payload.message,
            session_key=f"cron:{job.id}",
            channel=payload.channel or "cli",
            chat_id=payload.to or "direct",
            metadata={CRON_OWNER_KEY: job.owner} if job.owner else None,
        )
        if payload.deliver and payload.channel and payload.to and reply:
            await bus.publish_outbound(OutboundMessage(channel=payload.channel, chat_id=payload.to, content=reply))
        return reply

    return run


async def _step(name: str, work: Awaitable[None], limit_s: float = 10.0) -> None:
    """One shutdown step, bounded: a step that hangs is logged and left, so the gateway still exits."""
    log.debug("stopping %s", name)
    try:
        await asyncio.wait_for(work, limit_s)
    except TimeoutError:
        log.error("stopping %s took longer than %.0fs; going on without it", name, limit_s)
    except Exception:
        log.exception("stopping %s failed; going on", name)


class GatewayStartError(Exception):
    """The gateway cannot start (its HTTP port is taken, an API channel without a key beyond loopback); the
    message says what to change."""


class Gateway:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.distributed: Any = None
        self.agent: AgentLoop | None = None
        if config.bus.backend == "celery":
            check_distributed_ready(config)
        self.bus = create_bus(config)
        self.cron = CronService(cron_store_path())
        on_heartbeat: Callable[[str], Awaitable[str | None]]
        if config.bus.backend == "celery":
            self.distributed = distributed("gateway").for_gateway(config, self.bus)
            self.cron.on_job = self.distributed.cron_job_runner()
            on_heartbeat = self.distributed.heartbeat
        else:
            agent = AgentLoop.from_config(config, self.bus, create_provider(config), cron_service=self.cron)
            self.agent = agent
            self.cron.on_job = cron_job_runner(agent, self.bus)

            def on_heartbeat(prompt: str) -> Awaitable[str | None]:
                SCHEDULE_FIRES.labels("heartbeat").inc()
                return agent.process_direct(prompt, session_key="heartbeat", channel="cli", chat_id="heartbeat")

        self.channels = ChannelManager(config.channels, self.bus, build_channels(config, self.bus))
        admission = self.distributed.admission() if self.distributed is not None else self._local_admission()
        for channel in self.channels.channels.values():
            channel.admission = admission
        self.http = GatewayHttp(
            config.gateway.host, config.gateway.port, health=self._health, ready=self._not_ready,
            before_metrics=self.distributed.refresh_metrics if self.distributed is not None else None,
        )
        for channel in self.channels.channels.values():
            self.http.add_routes(channel.web_routes())
        hb = config.gateway.heartbeat
        self.heartbeat = HeartbeatService(
            config.workspace_path, on_heartbeat=on_heartbeat, interval_s=hb.interval_s, enabled=hb.enabled
        )
        self._agent_task: asyncio.Task[None] | None = None

    def _local_admission(self) -> Admission:
        """Fair limits counted in this process; the agent counts its turns' tokens in the same place."""
        assert self.agent is not None
        admission = Admission(self.config, MemoryStorage(), waiting=self.agent.waiting)
        self.agent.admission = admission
        return admission

    def _health(self) -> dict[str, Any]:
        return {"channels": self.channels.status(), "bus": self.config.bus.backend}

    async def _not_ready(self) -> list[str]:
        """Why the gateway should not get traffic now (empty: ready): the channels, the outbound dispatcher, and
        the agent loop (local) or Redis (distributed)."""
        reasons = self.channels.not_ready()
        if self.distributed is not None:
            reasons.extend(await self.distributed.not_ready())
        elif self._agent_task is None or self._agent_task.done():
            reasons.append("agent loop not running")
        return reasons

    async def _start_schedules(self) -> None:
        await self.cron.start()
        await self.heartbeat.start()

    async def _stop_schedules(self) -> None:
        await self.heartbeat.stop()
        await self.cron.stop()

    async def start(self) -> None:
        if self.config.channels.api.enabled:
            from nanobot.channels.api_auth import binding_refusal

            refusal = binding_refusal(self.config.channels.api)
            if refusal is not None:
                raise GatewayStartError(refusal)
        try:
            await self.http.start()
        except OSError as exc:
            raise GatewayStartError(
                f"cannot listen on gateway.host:gateway.port = {self.http.host}:{self.http.port}: {exc.strerror or exc}"
                " (another gateway on this host? give each its own gateway.port)"
            ) from exc
        if self.agent is not None:
            await self._start_schedules()
            self._agent_task = asyncio.create_task(self.agent.run(), name="agent-loop")
        await self.channels.start_all()
        if self.distributed is not None:
            await self.distributed.start(on_gain=self._start_schedules, on_loss=self._stop_schedules)
        log.info(
            "gateway started: channels=%s bus=%s sessions=%s http=%s:%d",
            ",".join(self.channels.channels) or "none", self.config.bus.backend, self.config.sessions.backend,
            self.http.host, self.http.port,
        )

    async def stop(self) -> None:
        log.info("gateway stopping")
        await _step("channels", self.channels.stop_all())
        await _step("http", self.http.stop())
        await _step("cron and heartbeat", self._stop_schedules())
        if self.distributed is not None:
            await _step("distributed mode", self.distributed.stop(), limit_s=60)
        if self.agent is not None:
            self.agent.stop()
            if self._agent_task is not None:
                self._agent_task.cancel()
                await asyncio.gather(self._agent_task, return_exceptions=True)
            await _step("agent", self.agent.close())
        await _step("bus", self.bus.close(), limit_s=15)
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
