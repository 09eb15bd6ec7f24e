"""The Redis leader lease under stress, and the gateway's leader acting only before the lease's deadline.

Real Redis (127.0.0.1:6379, the tests' database, keys of this test's own prefix, deleted afterwards), real OS
processes contending. All timestamps are CLOCK_MONOTONIC (`time.monotonic()`), which Linux shares between
processes.

What a holder may rely on: from the moment the reply of a successful `acquire()` arrives (not when the call
was sent: another holder's lease may expire while the call is on its way) until the lifetime counted from just
before the call was sent (`valid_until`), or until it starts releasing the lease. Two holders' such intervals
must never overlap.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import random
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from nanobot.config import Config
from nanobot.cron.types import CronJob, CronPayload, CronSchedule
from nanobot_celery.bus import CeleryMessageBus
from nanobot_celery.gateway import DistributedGateway
from nanobot_celery.lease import RedisLease
from tests.cluster import REDIS_DB, REDIS_HOST, REDIS_PORT, redis_available

TTL_MS = 300
PROCESSES = 3
CONTENDERS_PER_PROCESS = 4  # 12 contenders, each on its own connection
CONTEND_S = 5.0


@dataclass(frozen=True)
class Holding:
    holder: str
    sent: float  # just before the acquire call was sent
    start: float  # its reply received
    valid_until: float  # what the lease says
    end: float  # valid_until, or when the holder started releasing


@pytest.fixture
def lease_key() -> Iterator[str]:
    if not redis_available():
        pytest.fail(f"Redis does not answer at {REDIS_HOST}:{REDIS_PORT} (scripts/test starts one)")
    key = f"nbtest{uuid.uuid4().hex[:8]}:leader:stress"
    yield key
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    client.delete(key)
    client.close()


# ---------------------------------------------------------------------------- the stress test
async def contender(key: str, name: str, seed: int, start_at: float, end_at: float) -> dict[str, Any]:
    """Acquire, renew, stall (sometimes past the lifetime) and release at random until `end_at`."""
    rng = random.Random(seed)
    ttl = TTL_MS / 1000
    client = aioredis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB, socket_timeout=5)
    lease = RedisLease(client, key, name, TTL_MS)
    holdings: list[Holding] = []
    acts: list[float] = []
    stalls = lapsed = 0
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    try:
        while time.monotonic() < end_at:
            sent = time.monotonic()
            mine = await lease.acquire()
            start = time.monotonic()
            if not mine:
                await asyncio.sleep(rng.uniform(0, ttl / 6))
                continue
            holdings.append(Holding(name, sent, start, lease.valid_until, lease.valid_until))
            # Work while the lease says so: every act is recorded, to be checked against the others' holdings.
            for _ in range(rng.randint(0, 3)):
                if lease.held:
                    acts.append(time.monotonic())
                await asyncio.sleep(rng.uniform(0, ttl / 8))
            roll = rng.random()
            if roll < 0.35:  # stalled: often past the lifetime, then tries to act and to renew
                stalls += 1
                await asyncio.sleep(rng.uniform(0.5 * ttl, 2.0 * ttl))
                if lease.held:
                    acts.append(time.monotonic())
                else:
                    lapsed += 1  # woke past the deadline: knows it may no longer act
            elif roll < 0.7:
                releasing = time.monotonic()  # from now on, none of its holdings may be relied on
                holdings = [h if h.end <= releasing else replace(h, end=releasing) for h in holdings]
                await lease.release()
                assert not lease.held
                await asyncio.sleep(rng.uniform(0, ttl / 4))
    finally:
        await client.aclose()
    return {"holdings": holdings, "acts": [(name, t) for t in acts], "stalls": stalls, "lapsed": lapsed}


def contend_in_process(key: str, index: int, start_at: float, end_at: float) -> list[dict[str, Any]]:
    """One OS process: a few contenders on their own connections, in one event loop."""

    async def run() -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(
            contender(key, f"p{index}c{i}", index * 100 + i, start_at, end_at) for i in range(CONTENDERS_PER_PROCESS)
        )))

    return asyncio.run(run())


def test_no_two_holders_ever_overlap(lease_key: str) -> None:
    start_at = time.monotonic() + 3.0  # the processes start, then all contend at once
    end_at = start_at + CONTEND_S
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(PROCESSES, mp_context=spawn) as pool:
        futures = [pool.submit(contend_in_process, lease_key, i, start_at, end_at) for i in range(PROCESSES)]
        results = [r for f in futures for r in f.result(timeout=CONTEND_S + 30)]
    holdings = sorted((h for r in results for h in r["holdings"]), key=lambda h: h.start)
    acts = [a for r in results for a in r["acts"]]
    ttl = TTL_MS / 1000

    # The deadline is taken inside the call: at or after the moment it was sent, at or before its reply.
    for h in holdings:
        assert h.sent + ttl <= h.valid_until <= h.start + ttl, h

    # No overlap: sweep by start, with the latest end of each holder so far.
    latest_end: dict[str, float] = {}
    for h in holdings:
        for other, end in latest_end.items():
            assert other == h.holder or end <= h.start, (
                f"{h.holder} took the lease at {h.start:.6f} while {other} could act until {end:.6f}"
            )
        latest_end[h.holder] = max(latest_end.get(h.holder, 0.0), h.end)

    # Every act happened while its holder held the lease, by the lease's own account (`held`).
    by_holder: dict[str, list[Holding]] = {}
    for h in holdings:
        by_holder.setdefault(h.holder, []).append(h)
    for name, t in acts:
        assert any(h.start <= t < h.end for h in by_holder[name]), f"{name} acted at {t:.6f} without the lease"

    # It was a real contest: many holders, handovers after stalls past the lifetime, and releases.
    handovers = [(a, b) for a, b in itertools.pairwise(holdings) if a.holder != b.holder]
    after_expiry = [b for a, b in handovers if a.end == a.valid_until]
    assert len(by_holder) >= 5, sorted(by_holder)
    assert sum(r["stalls"] for r in results) >= 5 and sum(r["lapsed"] for r in results) >= 2
    assert len(handovers) >= 8 and len(after_expiry) >= 2, (len(handovers), len(after_expiry))
    assert len(acts) >= 20


# ---------------------------------------------------------------------------- the stalled gateway
def test_held_turns_false_at_the_deadline(lease_key: str) -> None:
    async def go() -> None:
        client = aioredis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
        lease = RedisLease(client, lease_key, "stalling", TTL_MS)
        try:
            sent = time.monotonic()
            assert await lease.acquire()
            assert sent + TTL_MS / 1000 <= lease.valid_until <= time.monotonic() + TTL_MS / 1000
            while time.monotonic() < lease.valid_until - 0.02:
                assert lease.held
                await asyncio.sleep(0.01)
            await asyncio.sleep(max(0.0, lease.valid_until - time.monotonic()))
            assert not lease.held, "held past the deadline"
        finally:
            await client.aclose()

    asyncio.run(go())


def gateway_config() -> Config:
    return Config.model_validate({"bus": {
        "backend": "celery", "redisUrl": f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}",
        "keyPrefix": f"nbtest{uuid.uuid4().hex[:8]}", "shards": 2,
    }})


@pytest.fixture
def gateway() -> Iterator[DistributedGateway]:
    if not redis_available():
        pytest.fail(f"Redis does not answer at {REDIS_HOST}:{REDIS_PORT} (scripts/test starts one)")
    config = gateway_config()
    bus = CeleryMessageBus.from_config(config)
    yield DistributedGateway(config, bus, leader_ttl_ms=TTL_MS)
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    for key in client.scan_iter(f"{config.bus.key_prefix}:*"):
        client.delete(key)
    client.close()


def stall(seconds: float) -> None:
    """Block the calling thread, event loop included: a gateway stuck in a long synchronous call."""
    time.sleep(seconds)


def steal(key: str, holder: str = "rival") -> bool:
    """Another gateway takes the lease the moment it is free (a plain client, so it works while the loop is
    blocked)."""
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    try:
        return bool(client.set(key, holder, nx=True, px=TTL_MS * 10))
    finally:
        client.close()


def test_a_leader_stalled_past_its_deadline_fires_nothing(gateway: DistributedGateway) -> None:
    job = CronJob(id="j1", name="j1", schedule=CronSchedule(kind="every", every_ms=1000),
                  payload=CronPayload(message="tick"))
    runner = gateway.cron_job_runner()
    leader_key = gateway.leader.key

    async def go() -> None:
        gained, lost = asyncio.Event(), asyncio.Event()

        async def on_gain() -> None:
            gained.set()

        async def on_loss() -> None:
            lost.set()

        lead = asyncio.create_task(gateway.lead(on_gain, on_loss))
        try:
            await asyncio.wait_for(gained.wait(), 5)
            assert gateway.leader.held and await gateway.leads_now("test")
            # The event loop stalls past the lease's lifetime: no renewal runs; another gateway takes the lease.
            stall(TTL_MS / 1000 * 1.3)
            assert steal(leader_key), "the lease should have expired in Redis"
            assert not gateway.leader.held, "still believes it leads past the deadline"
            assert gateway.is_leader  # the lead loop has not run yet: only the deadline stops it
            await gateway.heartbeat("beat")
            assert await runner(job) is None
            await asyncio.sleep(0.3)
            assert await gateway.bus.mailbox.pending("heartbeat") == 0, "heartbeat fired without the lease"
            assert await gateway.bus.mailbox.pending("cron:j1") == 0, "cron fired without the lease"
            assert not await gateway.bus.redis.exists(gateway.keys.cron_fired(job.id, 0))
            # The lead loop notices at its next renewal.
            await asyncio.wait_for(lost.wait(), TTL_MS / 1000)
            assert not gateway.is_leader
        finally:
            lead.cancel()
            await asyncio.gather(lead, return_exceptions=True)
            await gateway.bus.close()

    asyncio.run(go())


def test_a_lone_leader_that_stalled_takes_the_lease_back_before_firing(gateway: DistributedGateway) -> None:
    """Nobody took the lease meanwhile: the stalled leader renews it at once instead of losing a beat."""

    async def go() -> None:
        try:
            assert await gateway.leader.acquire()
            stall(TTL_MS / 1000 * 1.3)
            assert not gateway.leader.held
            before = time.monotonic()
            assert await gateway.leads_now("test")
            assert gateway.leader.held and gateway.leader.valid_until >= before + TTL_MS / 1000
            assert steal(gateway.leader.key) is False
        finally:
            await gateway.resign()
            await gateway.bus.close()

    asyncio.run(go())
