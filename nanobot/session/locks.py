"""Conversation locks: one turn at a time per conversation.

Every turn (bus message, CLI, cron, heartbeat, subagent report) runs inside `locks.hold(session_key)`.
The local manager serves one process; the Redis one (distributed mode) serves many.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass


@dataclass
class LockLease:
    """Proof of holding a conversation's lock."""

    session_key: str
    fence: int  # increases with every acquisition of this lock; writes made under an older one are stale
    waited_s: float  # time spent waiting for the lock


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
