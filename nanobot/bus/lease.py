"""A lease: something only one process may do at a time (poll a Telegram bot token, fire cron jobs).

`acquire()` takes the lease or renews it and says whether this process holds it now; call it again
well within the lease's lifetime to keep it. Local mode has one process, so its lease is always held;
distributed mode hands out Redis leases (nanobot_celery/lease.py) through `MessageBus.lease`.
"""

from __future__ import annotations

from typing import Protocol


class Lease(Protocol):
    name: str

    @property
    def held(self) -> bool: ...

    async def acquire(self) -> bool: ...

    async def release(self) -> None: ...


class LocalLease:
    """The lease of a single-process deployment: always this process's."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._held = False

    @property
    def held(self) -> bool:
        return self._held

    async def acquire(self) -> bool:
        self._held = True
        return True

    async def release(self) -> None:
        self._held = False
