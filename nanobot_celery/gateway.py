"""What a gateway does in distributed mode besides its channels.

- sweeper: re-rings conversations whose mailbox holds work while nobody holds their lock (a worker
  died, a doorbell was lost); forgets conversations that went idle.
- leader: only one gateway fires cron jobs and heartbeats (a Redis lease renewed while it lives), and only
  before the lease's deadline: a leader stalled past it fires nothing until it has renewed. Each job
  occurrence is also claimed once in Redis, so two gateways never fire it twice.
- cron and heartbeat turns become inbound messages, run by workers in their own sessions.
- the embedded worker: a `celery worker` child process, so one `nanobot gateway` still does everything;
  restarted (bounded, jittered backoff) when it dies while the gateway runs.
- operations: the backlog gauges refreshed on each /metrics scrape (nanobot_celery/backlog.py) and what
  /ready asks of Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nanobot.admission.gate import Admission
from nanobot.bus.events import InboundMessage
from nanobot.config.schema import Config
from nanobot.cron.types import CRON_OWNER_KEY, CronJob
from nanobot.metrics.instruments import SCHEDULE_FIRES
from nanobot_celery import metrics
from nanobot_celery.admission import admission_for
from nanobot_celery.backlog import BacklogGauges, scan_conversations
from nanobot_celery.bus import CeleryMessageBus, ring
from nanobot_celery.worker import worker_argv

log = logging.getLogger(__name__)

LEADER_TTL_MS = 15_000
WORKER_RESTART_FIRST_S = 1.0
WORKER_RESTART_MAX_S = 60.0
WORKER_RAN_LONG_S = 120.0  # a worker that ran this long before dying restarts after the first delay again
REDIS_PING_TIMEOUT_S = 1.0


def restart_delay(failures: int, first_s: float = WORKER_RESTART_FIRST_S, max_s: float = WORKER_RESTART_MAX_S) -> float:
    """Delay before the `failures`-th restart in a row (1-based): doubling from `first_s` up to `max_s`, with
    +-25 % jitter so gateways restarted together do not retry in step."""
    base = min(max_s, first_s * 2 ** max(0, failures - 1))
    return base * random.uniform(0.75, 1.25)


def cron_inbound(job: CronJob) -> InboundMessage:
    p = job.payload
    deliver = p.deliver and p.channel and p.to
    return InboundMessage(
        channel=p.channel if deliver else "cli",
        sender_id="cron",
        chat_id=p.to if deliver else "direct",
        content=p.message,
        session_key_override=f"cron:{job.id}",
        metadata={"cron_job": job.id, **({CRON_OWNER_KEY: job.owner} if job.owner else {})},
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
        self._stopping = False
        self.is_leader = False
        metrics.GATEWAY_LEADER.set(0)
        self.backlog = BacklogGauges(lambda: self.bus.redis, self.keys, config.bus.shards, config.bus.gateway_name)

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
            SCHEDULE_FIRES.labels("cron").inc()
            await self.bus.publish_inbound(cron_inbound(job))
            return None

        return run

    async def heartbeat(self, prompt: str) -> str | None:
        if await self.leads_now("heartbeat"):
            SCHEDULE_FIRES.labels("heartbeat").inc()
            await self.bus.publish_inbound(heartbeat_inbound(prompt))
        return None

    async def lead(self, on_gain: Callable[[], Awaitable[None]], on_loss: Callable[[], Awaitable[None]]) -> None:
        """Hold the leader lease while alive; run `on_gain` when taking it and `on_loss` when losing it."""
        while True:
            mine = await self.leader.acquire()
            if mine and not self.is_leader:
                self.is_leader = True
                metrics.GATEWAY_LEADER.set(1)
                log.info("this gateway leads cron and heartbeat (%s)", self.identity)
                await on_gain()
            elif not mine and self.is_leader:
                self.is_leader = False
                metrics.GATEWAY_LEADER.set(0)
                log.warning("leadership lost: cron and heartbeat stop here")
                await on_loss()
            await asyncio.sleep(self.leader.ttl_ms / 3000)

    async def resign(self) -> None:
        await self.leader.release()
        self.is_leader = False
        metrics.GATEWAY_LEADER.set(0)

    # ------------------------------------------------------------------ sweeper
    async def sweep_once(self) -> int:
        """Ring every conversation that has work but no lock holder; returns how many were rung."""
        redis = self.bus.redis
        rung = 0
        async for conv in scan_conversations(redis, self.keys):
            if conv.held:
                continue
            session_key = conv.session_key
            if not conv.has_work:
                await self.bus.mailbox.forget_if_idle(session_key)
                continue
            if await redis.set(self.keys.rung(session_key), "1", nx=True, px=self.bus.mailbox.rung_ttl_ms):
                log.info("session=%s sweeper: work waiting with no holder; ringing", session_key)
                await asyncio.to_thread(ring, session_key, self.config.bus)
                metrics.SWEEPER_RINGS.inc()
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

    async def watch_embedded_worker(self) -> None:
        """Restart the embedded worker whenever it exits while the gateway runs: 1 s doubling to 60 s, jittered,
        back to 1 s once a worker ran `WORKER_RAN_LONG_S`. A worker that cannot even be started is retried too."""
        failures = 0
        started_at = time.monotonic()
        while not self._stopping:
            proc = self._worker
            if proc is not None:
                code = await proc.wait()
                if self._stopping:
                    return
                log.error("the embedded worker (pid %d) exited with code %s; restarting it", proc.pid, code)
            if time.monotonic() - started_at >= WORKER_RAN_LONG_S:
                failures = 0
            failures += 1
            delay = restart_delay(failures)
            log.info("restarting the embedded worker in %.1fs", delay)
            await asyncio.sleep(delay)
            if self._stopping:
                return
            started_at = time.monotonic()
            try:
                await self.start_embedded_worker()
            except Exception as exc:
                log.error("the embedded worker could not be started (%s: %s)", type(exc).__name__, exc)
                self._worker = None
                continue
            metrics.EMBEDDED_WORKER_RESTARTS.inc()

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
        self._stopping = False
        if self.config.bus.run_embedded_worker:
            await self.start_embedded_worker()
            self._tasks.append(asyncio.create_task(self.watch_embedded_worker(), name="embedded-worker-watch"))
        self._tasks.append(asyncio.create_task(self.sweep_forever(), name="sweeper"))
        self._tasks.append(asyncio.create_task(self.lead(on_gain, on_loss), name="leader"))

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.resign()
        await self.stop_embedded_worker()


    # ------------------------------------------------------------------ operations
    async def refresh_metrics(self) -> None:
        """Before /metrics renders: the backlog gauges (cached about a second; Redis failures keep the last)."""
        await self.backlog.refresh()

    def admission(self) -> Admission:
        """The fair limits per sender, counted in Redis with every other gateway and worker."""
        return admission_for(self.config, self.bus)

    async def not_ready(self) -> list[str]:
        """What /ready reports for distributed mode: Redis must answer a PING within a second."""
        try:
            await asyncio.wait_for(self.bus.redis.ping(), REDIS_PING_TIMEOUT_S)
        except TimeoutError:
            return [f"redis: no answer to PING within {REDIS_PING_TIMEOUT_S:g}s"]
        except Exception as exc:
            return [f"redis: {type(exc).__name__}: {exc}"]
        return []


def for_gateway(config: Config, bus: Any) -> DistributedGateway:
    return DistributedGateway(config, bus)
