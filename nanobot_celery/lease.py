"""Redis leases: one holder at a time, renewed and released only by their holder (compare-and-set in Lua).

A holder that stops renewing (it died, or stalled past the lifetime) loses the lease when the key
expires, and the next `acquire()` of another process takes it. The holder's own view ends first: `held` is
true only until `valid_until`, the lifetime counted from just before its last successful `acquire()` was
sent, which is no later than the key's expiry in Redis; a holder that stalls past it knows it may no longer act.
"""

from __future__ import annotations

import logging
import time
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
        self._valid_until = 0.0  # time.monotonic(); 0: never held, given up, or taken by another
        self._acquire = redis.register_script(_ACQUIRE)
        self._release = redis.register_script(_RELEASE)

    @property
    def valid_until(self) -> float:
        """The `time.monotonic()` until which this holder may act: when its last successful acquire was
        started plus the lifetime (0.0 once refused or released)."""
        return self._valid_until

    @property
    def held(self) -> bool:
        return time.monotonic() < self._valid_until

    async def acquire(self) -> bool:
        """Take or renew; whether the lease is held now. When Redis cannot be reached (not raised), an earlier
        lease stays valid until its deadline, since no other holder can take it before it expires."""
        started = time.monotonic()
        try:
            mine = bool(await self._acquire(keys=[self.key], args=[self.holder, self.ttl_ms]))
        except Exception as exc:
            log.warning("lease %s: Redis unavailable (%s: %s)", self.name, type(exc).__name__, exc)
            return self.held
        self._valid_until = started + self.ttl_ms / 1000 if mine else 0.0
        return self.held

    async def release(self) -> None:
        """Give the lease up now; a no-op in Redis when another holder has it meanwhile (compare-and-delete)."""
        if not self._valid_until:
            return
        self._valid_until = 0.0
        try:
            await self._release(keys=[self.key], args=[self.holder])
        except Exception as exc:
            log.warning("lease %s: release failed (%s); it expires on its own", self.name, exc)
