"""What a gateway does in distributed mode besides its channels.

- sweeper: re-rings conversations whose mailbox holds work while nobody holds their lock (a worker
  died, a doorbell was lost); forgets conversations that went idle.
- leader: only one gateway fires cron jobs and heartbeats (a Redis lease renewed while it lives), and only
  before the lease's deadline: a leader stalled past it fires nothing until it has renewed. Each job
  occurrence is also claimed once in Redis, so two gateways never fire it twice.
- cron and heartbeat turns become inbound messages, run by workers in their own sessions.
- the embedded worker: a `celery worker` child process, so one `nanobot gateway` still does everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from nanobot.bus.events import InboundMessage
from nanobot.config.schema import Config
from nanobot.cron.types import CronJob
from nanobot_celery.bus import CeleryMessageBus, ring
from nanobot_celery.worker import worker_argv

log = logging.getLogger(__name__)

LEADER_TTL_MS = 15_000


def cron_inbound(job: CronJob) -> InboundMessage:
    p = job.payload
    deliver = p.deliver and p.channel and p.to
    return InboundMessage(
        channel=p.channel if deliver else "cli",
        sender_id="cron",
        chat_id=p.to if deliver else "direct",
        content=p.message,
        session_key_override=f"cron:{job.id}",
        metadata={"cron_job": job.id},
    )


def heartbeat_inbound(prompt: str) -> InboundMessage:
    return InboundMessage(channel="cli", sender_id="heartbeat", chat_id="heartbeat", content=prompt,
                          session_key_override="heartbeat")


class DistributedGateway:
    def __init__(self, config: Config, bus: CeleryMessageBus, leader_ttl_ms: int = LEADER_TTL_MS) -> None:
        self.config = config
        self.bus = bus
        self.keys = bus.keys
        self.identity = bus.identity
        self.leader = bus.lease("gateway", leader_ttl_ms / 1000)
        self._tasks: list[asyncio.Task[None]] = []
        self._worker: asyncio.subprocess.Process | None = None
        self.is_leader = False

    # ------------------------------------------------------------------ cron and heartbeat
    async def leads_now(self, what: str) -> bool:
        """Whether this gateway may fire `what` now: it holds the leader lease before its deadline, or, having
        stalled past the deadline, takes the lease again at once (nobody else took it meanwhile)."""
        if self.leader.held or await self.leader.acquire():
            return True
        log.warning("%s not fired: this gateway no longer holds the leader lease", what)
        return False

    def cron_job_runner(self) -> Callable[[CronJob], Awaitable[str | None]]:
        async def run(job: CronJob) -> str | None:
            if not await self.leads_now(f"cron job={job.id}"):
                return None
            due = job.state.next_run_at_ms or 0
            first = await self.bus.redis.set(self.keys.cron_fired(job.id, due), self.identity, nx=True, ex=86_400)
            if not first:
                log.info("cron job=%s due=%s already fired by another gateway", job.id, due)
                return None
            await self.bus.publish_inbound(cron_inbound(job))
            return None

        return run

    async def heartbeat(self, prompt: str) -> str | None:
        if await self.leads_now("heartbeat"):
            await self.bus.publish_inbound(heartbeat_inbound(prompt))
        return None

    async def lead(self, on_gain: Callable[[], Awaitable[None]], on_loss: Callable[[], Awaitable[None]]) -> None:
        """Hold the leader lease while alive; run `on_gain` when taking it and `on_loss` when losing it."""
        while True:
            mine = await self.leader.acquire()
            if mine and not self.is_leader:
                self.is_leader = True
                log.info("this gateway leads cron and heartbeat (%s)", self.identity)
                await on_gain()
            elif not mine and self.is_leader:
                self.is_leader = False
                log.warning("leadership lost: cron and heartbeat stop here")
                await on_loss()
            await asyncio.sleep(self.leader.ttl_ms / 3000)

    async def resign(self) -> None:
        await self.leader.release()
        self.is_leader = False

    # ------------------------------------------------------------------ sweeper
    async def sweep_once(self) -> int:
        """Ring every conversation that has work but no lock holder; returns how many were rung."""
        redis = self.bus.redis
        rung = 0
        async for session_key in redis.sscan_iter(self.keys.busy_sessions, count=500):
            if await redis.exists(self.keys.lock(session_key)):
                continue
            if not await self.bus.mailbox.pending(session_key):
                await self.bus.mailbox.forget_if_idle(session_key)
                continue
            if await redis.set(self.keys.rung(session_key), "1", nx=True, px=self.bus.mailbox.rung_ttl_ms):
                log.info("session=%s sweeper: work waiting with no holder; ringing", session_key)
                await asyncio.to_thread(ring, session_key, self.config.bus.shards)
                rung += 1
        return rung

    async def sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.bus.sweep_interval_s)
            try:
                await self.sweep_once()
            except Exception as exc:
                log.warning("sweeper: %s", exc)

    # ------------------------------------------------------------------ embedded worker
    async def start_embedded_worker(self) -> None:
        argv = worker_argv(self.config, name=f"embedded-{os.getpid()}@%h")
        log.info("starting the embedded worker: %s", " ".join(argv[2:]))
        # Same process group as the gateway: whatever stops the gateway's group stops its worker too.
        self._worker = await asyncio.create_subprocess_exec(*argv)

    async def stop_embedded_worker(self, grace_s: float = 40.0) -> None:
        proc = self._worker
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
        except TimeoutError:
            log.warning("embedded worker did not stop in %.0fs; killing it", grace_s)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    # ------------------------------------------------------------------ lifecycle
    async def start(self, on_gain: Callable[[], Awaitable[None]], on_loss: Callable[[], Awaitable[None]]) -> None:
        if self.config.bus.run_embedded_worker:
            await self.start_embedded_worker()
        self._tasks.append(asyncio.create_task(self.sweep_forever(), name="sweeper"))
        self._tasks.append(asyncio.create_task(self.lead(on_gain, on_loss), name="leader"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.resign()
        await self.stop_embedded_worker()


def for_gateway(config: Config, bus: Any) -> DistributedGateway:
    return DistributedGateway(config, bus)
