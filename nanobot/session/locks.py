"""Conversation locks: one turn at a time per conversation.

Every turn (bus message, CLI, cron, heartbeat, subagent report) runs inside `locks.hold(session_key)`.
The local manager serves one process; the Redis one (distributed mode) serves many.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from nanobot.session.redis_keys import RedisKeys

log = logging.getLogger(__name__)


class LockLost(Exception):
    """The conversation lock was lost (expired, or taken by the next holder): this turn must not write."""


@dataclass
class LockLease:
    """Proof of holding a conversation's lock."""

    session_key: str
    fence: int  # increases with every acquisition of this lock; writes made under an older one are stale
    waited_s: float  # time spent waiting for the lock
    token: str = ""  # the lock's value in a shared store
    lost: bool = False  # set (by `mark_lost`) when a renewal found the lock gone
    _lost_event: asyncio.Event = field(default_factory=asyncio.Event, repr=False, compare=False)

    def mark_lost(self) -> None:
        self.lost = True
        self._lost_event.set()

    async def wait_lost(self) -> None:
        """Return once the lock is found lost."""
        await self._lost_event.wait()


class ConversationLockManager(ABC):
    @abstractmethod
    async def acquire(self, session_key: str) -> LockLease:
        """Wait until this conversation is free, then hold it."""

    @abstractmethod
    async def release(self, lease: LockLease) -> None:
        """Let the next turn of this conversation run."""

    @asynccontextmanager
    async def hold(self, session_key: str) -> AsyncIterator[LockLease]:
        lease = await self.acquire(session_key)
        try:
            yield lease
        finally:
            await self.release(lease)


@dataclass
class _Entry:
    lock: asyncio.Lock
    users: int = 0  # holders and waiters; the entry is dropped when it reaches zero


class LocalConversationLockManager(ConversationLockManager):
    """One asyncio.Lock per conversation in this process.

    asyncio.Lock hands itself to waiters first come, first served, so turns of one conversation run in
    the order they asked for the lock. Entries exist only while someone holds or waits, so the table
    does not grow with the number of conversations ever seen. `max_concurrent` optionally caps how many
    turns of all conversations run at once (taken after the conversation lock, so order is kept).
    """

    def __init__(self, max_concurrent: int | None = None) -> None:
        self._entries: dict[str, _Entry] = {}
        self._fences = itertools.count(1)
        self._cap = asyncio.Semaphore(max_concurrent) if max_concurrent else None

    async def acquire(self, session_key: str) -> LockLease:
        started = time.monotonic()
        entry = self._entries.get(session_key)
        if entry is None:
            entry = self._entries[session_key] = _Entry(asyncio.Lock())
        entry.users += 1
        try:
            await entry.lock.acquire()
        except BaseException:
            self._leave(session_key, entry)
            raise
        if self._cap is not None:
            try:
                await self._cap.acquire()
            except BaseException:
                entry.lock.release()
                self._leave(session_key, entry)
                raise
        return LockLease(session_key, next(self._fences), time.monotonic() - started)

    async def release(self, lease: LockLease) -> None:
        entry = self._entries.get(lease.session_key)
        if entry is None or not entry.lock.locked():
            return
        if self._cap is not None:
            self._cap.release()
        entry.lock.release()
        self._leave(lease.session_key, entry)

    def _leave(self, session_key: str, entry: _Entry) -> None:
        entry.users -= 1
        if entry.users <= 0 and self._entries.get(session_key) is entry:
            del self._entries[session_key]

    @property
    def active_keys(self) -> list[str]:
        """Conversations that hold or wait for their lock right now."""
        return list(self._entries)


# ---------------------------------------------------------------------------------------- Redis
# KEYS[1] lock, KEYS[2] fence counter; ARGV[1] owner, ARGV[2] ttl ms. Returns the new fence, or 0 when held.
_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local fence = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], fence .. ':' .. ARGV[1], 'PX', ARGV[2])
return fence
"""
# KEYS[1] lock; ARGV[1] token. Delete only our own lock.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS[1] lock; ARGV[1] token, ARGV[2] ttl ms. Extend only our own lock.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class RedisConversationLockManager(ConversationLockManager):
    """A conversation lock shared by every process that reaches one Redis.

    `SET lock <fence>:<owner> NX PX ttl` (atomically with `INCR fence`, in Lua); renewed every ttl/3 while
    held; released by compare-and-delete. The fence (a per-conversation counter) grows with each holder,
    so a holder that paused past the TTL can tell that someone else took over: see `LockLost`.
    """

    def __init__(
        self,
        redis: Any,
        keys: RedisKeys | None = None,
        ttl_ms: int = 120_000,
        owner: str | None = None,
        poll_s: float = 0.02,
    ) -> None:
        self.redis = redis  # a redis.asyncio.Redis
        self.keys = keys or RedisKeys()
        self.ttl_ms = ttl_ms
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.poll_s = poll_s
        self._acquire = redis.register_script(_ACQUIRE)
        self._release = redis.register_script(_RELEASE)
        self._renew = redis.register_script(_RENEW)
        # (session key, token) -> renewal task. The token alone repeats across conversations (every lock's fence
        # starts at 1, and the owner is the process's): one process may hold many conversations at once.
        self._renewers: dict[tuple[str, str], asyncio.Task[None]] = {}

    async def try_acquire(self, session_key: str, waited_s: float = 0.0) -> LockLease | None:
        """Take the lock if it is free; None when someone holds it."""
        keys = [self.keys.lock(session_key), self.keys.fence(session_key)]
        fence = int(await self._acquire(keys=keys, args=[self.owner, self.ttl_ms]))
        if not fence:
            return None
        lease = LockLease(session_key, fence, waited_s, token=f"{fence}:{self.owner}")
        self._renewers[(session_key, lease.token)] = asyncio.create_task(self._keep_alive(lease))
        return lease

    async def acquire(self, session_key: str) -> LockLease:
        started = time.monotonic()
        delay = self.poll_s
        while True:
            lease = await self.try_acquire(session_key, time.monotonic() - started)
            if lease is not None:
                return lease
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    async def release(self, lease: LockLease) -> None:
        renewer = self._renewers.pop((lease.session_key, lease.token), None)
        if renewer is not None:
            renewer.cancel()
        await self._release(keys=[self.keys.lock(lease.session_key)], args=[lease.token])

    async def is_held(self, lease: LockLease) -> bool:
        value = await self.redis.get(self.keys.lock(lease.session_key))
        return (value.decode() if isinstance(value, bytes) else value) == lease.token

    async def _keep_alive(self, lease: LockLease) -> None:
        interval = self.ttl_ms / 3000
        key = self.keys.lock(lease.session_key)
        while True:
            await asyncio.sleep(interval)
            try:
                renewed = await self._renew(keys=[key], args=[lease.token, self.ttl_ms])
            except Exception as exc:  # Redis unreachable: keep trying until the TTL runs out
                log.warning("session=%s lock renewal failed: %s", lease.session_key, exc)
                continue
            if not renewed:
                lease.mark_lost()
                log.warning("session=%s lock lost (fence %d)", lease.session_key, lease.fence)
                return
