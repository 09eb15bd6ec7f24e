"""The conversation lock managers (local, and Redis where a test says so)."""

from __future__ import annotations

import asyncio
import uuid

from nanobot.session.locks import LocalConversationLockManager


def test_same_key_is_exclusive_and_fifo_other_keys_concurrent() -> None:
    async def scenario() -> tuple[list[str], int]:
        locks = LocalConversationLockManager()
        order: list[str] = []
        inside: dict[str, int] = {"a": 0, "b": 0}
        peak = 0

        async def turn(key: str, n: int) -> None:
            nonlocal peak
            async with locks.hold(key):
                inside[key] += 1
                assert inside[key] == 1, "two holders of one key"
                peak = max(peak, sum(inside.values()))
                order.append(f"{key}{n}")
                await asyncio.sleep(0.01)
                inside[key] -= 1

        await asyncio.gather(*(turn(k, n) for n in range(5) for k in "ab"))
        return order, peak

    order, peak = asyncio.run(scenario())
    assert [x for x in order if x[0] == "a"] == [f"a{n}" for n in range(5)]
    assert peak == 2


def test_idle_locks_are_dropped_even_after_cancellation() -> None:
    async def scenario() -> LocalConversationLockManager:
        locks = LocalConversationLockManager()
        for i in range(100):
            async with locks.hold(f"k{i}"):
                pass
        holder_in = asyncio.Event()
        release = asyncio.Event()

        async def holder() -> None:
            async with locks.hold("x"):
                holder_in.set()
                await release.wait()

        h = asyncio.create_task(holder())
        await holder_in.wait()
        waiter = asyncio.create_task(locks.acquire("x"))
        await asyncio.sleep(0.01)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        release.set()
        await h
        return locks

    assert asyncio.run(scenario()).active_keys == []


def test_fences_increase_and_wait_is_measured() -> None:
    async def scenario() -> list[tuple[int, float]]:
        locks = LocalConversationLockManager()
        seen: list[tuple[int, float]] = []

        async def turn() -> None:
            async with locks.hold("s") as lease:
                seen.append((lease.fence, lease.waited_s))
                await asyncio.sleep(0.05)

        await asyncio.gather(turn(), turn())
        return seen

    (f1, w1), (f2, w2) = asyncio.run(scenario())
    assert f2 > f1 and w1 < 0.05 <= w2 + 0.01


def test_redis_lease_is_held_by_one_holder_at_a_time() -> None:
    """Many contenders hammer one lease (take/renew, release); never two holders at once, and a holder that
    stops renewing loses it to the next one when it expires."""
    import redis.asyncio as aioredis

    from nanobot_celery.lease import RedisLease
    from tests.cluster import REDIS_DB, REDIS_HOST, REDIS_PORT, redis_available

    if not redis_available():
        raise AssertionError("Redis is needed (scripts/test starts one)")

    async def scenario() -> None:
        client = aioredis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB, decode_responses=True)
        key = f"nbtest-lease-{uuid.uuid4().hex}"
        leases = [RedisLease(client, key, f"holder-{i}", ttl_ms=300) for i in range(8)]
        holders: set[str] = set()
        overlaps = 0

        async def contend(lease: RedisLease) -> None:
            nonlocal overlaps
            for _ in range(40):
                if await lease.acquire():
                    holders.add(lease.holder)
                    overlaps += len(holders) > 1
                    await asyncio.sleep(0.003)
                    holders.discard(lease.holder)
                    await lease.release()
                await asyncio.sleep(0.001)

        try:
            await asyncio.gather(*(contend(lease) for lease in leases))
            assert overlaps == 0
            first, second = leases[0], leases[1]
            assert await first.acquire() and not await second.acquire()
            await asyncio.sleep(0.4)  # the first stops renewing: its lease expires
            assert await second.acquire() and not await first.acquire()
            await first.release()  # not its lease any more: releasing changes nothing
            assert await client.get(key) == "holder-1"
        finally:
            await client.delete(key)
            await client.aclose()

    asyncio.run(scenario())


def test_redis_locks_of_many_conversations_in_one_process_renew_independently() -> None:
    """One worker process (the threads pool's shared loop) holds several conversations at once. Every lock's
    fence starts at 1 and the owner is the process's, so their tokens are equal: releasing one must neither stop
    another's renewal (it would expire mid-turn) nor leave its own renewal running (it would report a lost lock)."""
    import redis.asyncio as aioredis

    from nanobot.session.locks import RedisConversationLockManager
    from nanobot.session.redis_keys import RedisKeys
    from tests.cluster import REDIS_DB, REDIS_HOST, REDIS_PORT, redis_available

    if not redis_available():
        raise AssertionError("Redis is needed (scripts/test starts one)")

    async def scenario() -> None:
        client = aioredis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB, decode_responses=True)
        prefix = f"nbtest-locks-{uuid.uuid4().hex[:8]}"
        locks = RedisConversationLockManager(client, RedisKeys(prefix), ttl_ms=300)
        try:
            first = await locks.try_acquire("api:a")
            second = await locks.try_acquire("api:b")
            assert first is not None and second is not None and first.token == second.token
            await locks.release(first)
            await asyncio.sleep(0.8)  # past two TTLs: only renewals keep the second lock
            assert await locks.is_held(second) and not second.lost, "the other conversation's lock expired"
            assert not first.lost, "the released lock's renewal kept running"
            await locks.release(second)
            assert not await client.exists(f"{prefix}:lock:api:b")
        finally:
            for key in await client.keys(f"{prefix}:*"):
                await client.delete(key)
            await client.aclose()

    asyncio.run(scenario())
