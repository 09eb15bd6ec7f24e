"""Redis round trips per turn, read from Redis's MONITOR while a layout runs (`--round-trips`).

MONITOR prints every command a client sends, scripts' own calls marked `lua`. A round trip is one request a
client waits on: commands of one connection less than `PIPELINE_GAP_S` apart are one pipeline (a MULTI/EXEC
block, or redis-py's pipeline), and calls made inside a script belong to the script's one round trip. What the
system does while idle (Celery's BRPOP polls, the gateways' blocking stream reads, the sweeper, the benchmark's
own /metrics scrapes) is measured for a few seconds before the load and subtracted at the same rate.

MONITOR slows Redis down: the other figures of a run measured with it are not comparable, so this is a run
of its own.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import redis

PIPELINE_GAP_S = 150e-6
IDLE_S = 4.0
SETTLE_S = 3.0


@dataclass
class Window:
    started: float = 0.0
    ended: float = 0.0
    trips: int = 0
    commands: Counter[str] = field(default_factory=Counter)

    @property
    def seconds(self) -> float:
        return max(self.ended - self.started, 1e-9)


class RoundTripWatch:
    """Counts one Redis database's round trips in two windows: idle (before the load) and loaded."""

    def __init__(self, redis_url: str) -> None:
        self._client = redis.Redis.from_url(redis_url)
        self._db = int(self._client.connection_pool.connection_kwargs.get("db", 0))
        self.idle = Window()
        self.loaded = Window()
        self._current = self.idle
        self._last_seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> RoundTripWatch:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(ready,), name="redis-monitor", daemon=True)
        self._thread.start()
        ready.wait(10)
        self.idle.started = time.time()
        return self

    def idle_then_load(self) -> None:
        """Let the stack settle (a fresh gateway's first sweep, a worker's first polls), count an idle window, then
        count what follows as the load's."""
        time.sleep(SETTLE_S)
        self.idle.commands.clear()
        self.idle.trips = 0
        self.idle.started = time.time()
        time.sleep(IDLE_S)
        now = time.time()
        self.idle.ended = self.loaded.started = now
        self._current = self.loaded

    def stop(self) -> None:
        self.loaded.ended = time.time()
        self._stop.set()
        try:
            self._client.ping()  # wakes the monitor so it sees the stop
        except redis.RedisError:
            pass
        if self._thread is not None:
            self._thread.join(10)
        self._client.close()

    def per_turn(self, turns: int) -> tuple[float, float, dict[str, float]]:
        """(round trips, commands, commands by name) per turn, the idle rate taken out."""
        scale = self.loaded.seconds / self.idle.seconds
        trips = self.loaded.trips - self.idle.trips * scale
        by_name = {name: (n - self.idle.commands.get(name, 0) * scale) / turns
                   for name, n in self.loaded.commands.items()}
        by_name = {name: round(v, 2) for name, v in sorted(by_name.items(), key=lambda kv: -kv[1]) if v >= 0.05}
        return round(trips / turns, 1), round(sum(by_name.values()), 1), by_name

    def _watch(self, ready: threading.Event) -> None:
        with self._client.monitor() as monitor:
            ready.set()
            while not self._stop.is_set():
                try:
                    entry = monitor.next_command()
                except (redis.RedisError, ValueError):
                    return
                self._count(entry)

    def _count(self, entry: dict[str, object]) -> None:
        if entry.get("db") != self._db or entry.get("client_type") == "lua":
            return
        at = float(entry.get("time") or 0.0)  # type: ignore[arg-type]
        client = f"{entry.get('client_address')}:{entry.get('client_port')}"
        name = str(entry.get("command", "")).split(" ", 1)[0].upper()
        window = self._current
        if not window.started <= at:
            return
        window.commands[name] += 1
        previous = self._last_seen.get(client)
        self._last_seen[client] = at
        if previous is None or at - previous > PIPELINE_GAP_S:
            window.trips += 1
