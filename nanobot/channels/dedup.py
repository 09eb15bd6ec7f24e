"""Recently seen ids, for channels whose platform may deliver the same message more than once; a `RecentIds`
given its channel's name counts each repeat in `nanobot_inbound_messages_total{outcome="duplicate"}`."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from nanobot.metrics.instruments import count_inbound


class RecentIds:
    """A bounded, time-limited set: remembers at most `maxlen` ids, each for `ttl_s` seconds after it was first seen.

    Not thread-safe; meant for one event loop.
    """

    def __init__(
        self,
        maxlen: int = 10_000,
        ttl_s: float = 86_400.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        channel: str | None = None,
    ) -> None:
        if maxlen <= 0:
            raise ValueError(f"maxlen must be positive, got {maxlen!r}")
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s!r}")
        self.maxlen = maxlen
        self.ttl_s = ttl_s
        self._clock = clock
        self.channel = channel
        self._first_seen: OrderedDict[str, float] = OrderedDict()  # oldest first

    def seen(self, key: str) -> bool:
        """Whether `key` was already seen (and not yet forgotten); records it when it was not."""
        now = self._clock()
        self._forget_expired(now)
        if key in self._first_seen:
            if self.channel is not None:
                count_inbound(self.channel, "duplicate")
            return True
        self._first_seen[key] = now
        if len(self._first_seen) > self.maxlen:
            self._first_seen.popitem(last=False)
        return False

    def __len__(self) -> int:
        self._forget_expired(self._clock())
        return len(self._first_seen)

    def _forget_expired(self, now: float) -> None:
        while self._first_seen:
            oldest = next(iter(self._first_seen.values()))
            if now - oldest < self.ttl_s:
                return
            self._first_seen.popitem(last=False)
