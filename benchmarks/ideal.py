"""The best any deployment could do with a layout's slots under a load: a simulated perfect system.

Each user sends their next turn the instant the previous one is answered; a free slot takes the turn that has
waited longest (first come, first served) with no delay at all; a turn holds its slot for exactly the simulated
LLM's latency, drawn as the simulated LLM draws it (uniform in latency × (1 ± jitter)). Throughput and latency
are counted the way `measure.py` counts the real run, averaged over a few seeds.

With fewer slots than users, this is below min(users, slots) / latency: the jitter leaves slots idle at the end
of the run, and a turn that waits behind several long ones waits longer than users / slots × latency.
"""

from __future__ import annotations

import heapq
import random
import statistics
from dataclasses import dataclass

SEEDS = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class Perfect:
    throughput: float  # turns/s, counted as the real run is
    p50_ms: float
    p95_ms: float


def _run(users: int, slots: int, turns: int, latency_s: float, jitter: float, seed: int) -> tuple[float, list[float]]:
    """(throughput, latencies in ms) of one simulated run."""
    rng = random.Random(seed)
    free_at = [0.0] * slots
    waiting = [(0.0, user, 0) for user in range(users)]  # (sent at, user, turn index), oldest first
    heapq.heapify(waiting)
    first_sent: dict[int, float] = {}
    last_answer: dict[int, float] = {}
    latencies: list[float] = []
    while waiting:
        sent, user, index = heapq.heappop(waiting)
        start = max(heapq.heappop(free_at), sent)
        answered = start + latency_s * rng.uniform(1 - jitter, 1 + jitter)
        heapq.heappush(free_at, answered)
        latencies.append((answered - sent) * 1000)
        first_sent.setdefault(user, sent)
        last_answer[user] = answered
        if index + 1 < turns:
            heapq.heappush(waiting, (answered, user, index + 1))
    if slots >= users:  # as measure.steady_throughput: each user's turns over their own busy time
        throughput = sum(turns / (last_answer[u] - first_sent[u]) for u in range(users))
    else:
        throughput = users * turns / max(last_answer.values())
    return throughput, latencies


def perfect(users: int, slots: int, turns: int, latency_s: float, jitter: float) -> Perfect | None:
    """None for a zero-latency load (there is nothing to wait for)."""
    if latency_s <= 0 or users <= 0 or slots <= 0:
        return None
    runs = [_run(users, slots, turns, latency_s, jitter, seed) for seed in SEEDS]

    def at(values: list[float], p: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

    return Perfect(
        throughput=round(statistics.fmean(t for t, _ in runs), 2),
        p50_ms=round(statistics.fmean(at(lat, 50) for _, lat in runs)),
        p95_ms=round(statistics.fmean(at(lat, 95) for _, lat in runs)),
    )
