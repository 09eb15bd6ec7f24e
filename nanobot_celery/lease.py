"""Redis leases: one holder at a time, renewed and released only by their holder (compare-and-set in Lua).

A holder that stops renewing (it died, or stalled past the lifetime) loses the lease when the key
expires, and the next `acquire()` of another process takes it.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

# KEYS: lease. ARGV: holder, ttl ms. 1 when the caller holds the lease afterwards.
_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not holder then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"""
# KEYS: lease. ARGV: holder.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisLease:
    def __init__(self, redis: Any, key: str, holder: str, ttl_ms: int, name: str | None = None) -> None:
        self.redis = redis
        self.key = key
        self.holder = holder
        self.ttl_ms = ttl_ms
        self.name = name or key
        self._held = False
        self._acquire = redis.register_script(_ACQUIRE)
        self._release = redis.register_script(_RELEASE)

    @property
    def held(self) -> bool:
        return self._held

    async def acquire(self) -> bool:
        """Take or renew; False (not raised) when Redis cannot be reached, since then we cannot know."""
        try:
            self._held = bool(await self._acquire(keys=[self.key], args=[self.holder, self.ttl_ms]))
        except Exception as exc:
            log.warning("lease %s: Redis unavailable (%s: %s)", self.name, type(exc).__name__, exc)
            self._held = False
        return self._held

    async def release(self) -> None:
        if not self._held:
            return
        self._held = False
        try:
            await self._release(keys=[self.key], args=[self.holder])
        except Exception as exc:
            log.warning("lease %s: release failed (%s); it expires on its own", self.name, exc)
