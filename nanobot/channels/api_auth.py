"""Who is calling the API channel: keys per client, the throttle on failed authentications, and the rule that
an API without keys listens on loopback only."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from nanobot.config.schema import ApiChannelConfig

# The single `apiKey`'s client, and everyone when no key is configured; its chat ids are not namespaced.
LEGACY_CLIENT = "api"
AUTH_WINDOW_S = 60.0
AUTH_TRACKED_ADDRESSES = 10_000  # addresses whose failures are remembered (least recently failed go first)


def is_loopback_host(host: str) -> bool:
    """`localhost`, 127.0.0.0/8 or ::1: only this machine can connect."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def binding_refusal(config: ApiChannelConfig) -> str | None:
    """Why the channel must not start with this config (one line), or None: without any key it would serve
    everyone who can reach a host that is not loopback."""
    if config.api_key or config.keys or is_loopback_host(config.host):
        return None
    return (
        f"refusing to serve the API channel on channels.api.host = {config.host!r} without a key:"
        " set channels.api.apiKey or channels.api.keys, or listen on 127.0.0.1"
    )


class UnsafeBindError(RuntimeError):
    """The channel was asked to listen beyond loopback with no key configured."""


class ClientKeys:
    """The configured keys and the client each one authenticates; looking a key up takes the same time
    whichever key (if any) it is."""

    def __init__(self, config: ApiChannelConfig) -> None:
        table = dict(config.keys)
        if config.api_key:
            table[config.api_key] = LEGACY_CLIENT
        self._digests = [(self._digest(key), client) for key, client in table.items()]

    @property
    def required(self) -> bool:
        """False when no key is configured: every request is the anonymous client "api"."""
        return bool(self._digests)

    @property
    def clients(self) -> set[str]:
        return {client for _, client in self._digests}

    @staticmethod
    def _digest(key: str) -> bytes:
        return hashlib.sha256(key.encode("utf-8")).digest()

    def client_for(self, supplied: str) -> str | None:
        """The client whose key this is, or None. Every digest is compared, with no early exit."""
        digest = self._digest(supplied)
        found: str | None = None
        for known, client in self._digests:
            if hmac.compare_digest(digest, known):
                found = client
        return found


class AuthFailureThrottle:
    """Failed authentications per address in a sliding window; an address with `limit` of them in the window
    is throttled until the oldest leaves it. At most `max_addresses` are tracked (least recently failed go)."""

    def __init__(
        self,
        limit: int,
        window_s: float = AUTH_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = AUTH_TRACKED_ADDRESSES,
    ) -> None:
        if limit <= 0 or window_s <= 0 or max_addresses <= 0:
            raise ValueError("limit, window_s and max_addresses must be positive")
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._max_addresses = max_addresses
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def _recent(self, address: str, now: float) -> deque[float] | None:
        times = self._failures.get(address)
        if times is None:
            return None
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[address]
            return None
        return times

    def retry_after(self, address: str) -> float | None:
        """Seconds until `address` may try again, or None when it is not throttled."""
        now = self._clock()
        times = self._recent(address, now)
        if times is None or len(times) < self.limit:
            return None
        return times[0] + self.window_s - now

    def record_failure(self, address: str) -> bool:
        """Count one failure; True when it is the one that throttles `address`."""
        now = self._clock()
        times = self._recent(address, now)
        if times is None:
            times = self._failures[address] = deque(maxlen=self.limit)
            while len(self._failures) > self._max_addresses:
                self._failures.popitem(last=False)
        self._failures.move_to_end(address)
        times.append(now)
        return len(times) >= self.limit
