"""Run one layout under load and measure it: checks, throughput, latency, lock wait, CPU and memory."""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.ideal import perfect
from benchmarks.load import Turn, User, drive_users, make_users
from benchmarks.resources import TOTAL, MemoryWatch, cpu_seconds
from benchmarks.roundtrips import RoundTripWatch
from benchmarks.scrape import Backlog, BacklogWatch
from benchmarks.stack import Layout, SimulatedLLM, Stack, redis_cpu_seconds
from benchmarks.verdict import Check, calls_by_turn, judge
from nanobot.testing.llm_server import peak_concurrency

_LOCK_WAIT = re.compile(r"lock_wait_ms=([0-9.]+)")


@dataclass
class Load:
    users: int
    turns: int
    latency_s: float
    jitter: float


@dataclass
class Result:
    layout: str
    bus: str
    workers: int
    pool: str
    worker_flag: str
    users: int
    turns: int
    llm_latency_s: float
    checks: list[Check]
    elapsed_s: float
    turns_answered: int
    throughput: float  # turns/s while every user was still busy (see steady_throughput)
    throughput_whole_run: float  # turns answered / whole run, tail included
    ideal: float | None  # min(users, slots) / LLM latency
    latency_ms: dict[str, float]
    # the first turn of every conversation arrives at once (a cold pool grows then); later turns are spread
    latency_first_turn_ms: dict[str, float]
    latency_later_turns_ms: dict[str, float]
    overhead_ms: dict[str, float]  # end-to-end minus the simulated LLM's own time for the answered call
    lock_wait_ms: dict[str, float]
    cpu_ms_per_turn: float  # gateway + workers (every pool child included)
    cpu_ms_by_role: dict[str, float]
    redis_cpu_ms_per_turn: float
    # the benchmark's own process: the load driver (and the metrics and memory sampling beside it)
    driver_cpu_ms_per_turn: float
    peak_rss_mb: dict[str, float]
    # the operator's view, from the gateway's and workers' /metrics (benchmarks/scrape.py)
    backlog: dict[str, float] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    # the most LLM calls in flight at once, from the simulated LLM's records: turns running at the same time
    peak_concurrent_turns: int = 0
    # the best any deployment could do with these slots under this load (benchmarks/ideal.py)
    perfect: dict[str, float] = field(default_factory=dict)
    # --round-trips: Redis requests waited on, and commands by name, per turn (benchmarks/roundtrips.py)
    redis_round_trips_per_turn: float | None = None
    redis_commands_per_turn: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def efficiency(self) -> float | None:
        return self.throughput / self.ideal if self.ideal else None

    @property
    def turns_per_gb(self) -> float | None:
        """Peak turns running at once (LLM calls in flight) per GiB of all project processes' RSS together."""
        total_mb = self.peak_rss_mb.get(TOTAL)
        return self.peak_concurrent_turns / (total_mb / 1024) if self.peak_concurrent_turns and total_mb else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        data["efficiency"] = self.efficiency
        data["turns_per_gb"] = self.turns_per_gb
        return data


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))], 2)

    return {"p50": at(50), "p95": at(95), "p99": at(99), "max": round(ordered[-1], 2),
            "mean": round(statistics.fmean(ordered), 2)}


def steady_throughput(users: list[User]) -> float:
    """The sum of the users' own rates: each user's turns / (their last reply - their first send).

    Used when every user has a slot. The ideal, min(users, slots) / latency, is a rate for while
    every user has turns left to send, but turns answered / whole run falls short of it even for a
    perfect system: the run lasts until the user whose turns drew the longest simulated latencies is
    done (4 turns at 1 s ± 20 % end between 3.2 and 4.8 s), so its last second has fewer busy
    conversations than slots. Each user's rate over their own busy time leaves that tail out. With
    fewer slots than users the slots stay busy until the queue drains, and the whole run is the rate.
    """
    rate = 0.0
    for user in users:
        answered = [t for t in user.turns if t.reply is not None]
        if answered:
            busy = max(t.answered_at for t in answered) - min(t.sent_at for t in user.turns)
            rate += len(answered) / busy if busy > 0 else 0.0
    return rate


def lock_waits_ms(logs: list[Path]) -> list[float]:
    """The lock wait each turn logged (`turn start ... lock_wait_ms=`)."""
    return [float(m) for path in logs for m in _LOCK_WAIT.findall(path.read_text(errors="replace"))]


def _cpu_by_role(stack: Stack) -> dict[str, float]:
    totals: dict[str, float] = {}
    for role, pid in stack.roots():
        totals[role] = totals.get(role, 0.0) + cpu_seconds(pid)
    return totals


async def measure(
    layout: Layout,
    load: Load,
    llm: SimulatedLLM,
    workdir: Path,
    redis_url: str,
    on_turn: Callable[[Turn], None],
    round_trips: bool = False,
) -> Result:
    llm.reset(load.latency_s, load.jitter)
    stack = Stack(layout, llm, workdir, redis_url)
    try:
        stack.start()
        memory = MemoryWatch(stack.roots).start()
        cpu_before = _cpu_by_role(stack)
        redis_before = redis_cpu_seconds(redis_url)
        watch = BacklogWatch(stack.gateway_metrics_url, stack.turn_metrics_urls(), layout.bus == "celery").start()
        monitor = RoundTripWatch(redis_url).start() if round_trips else None
        if monitor is not None:
            await asyncio.to_thread(monitor.idle_then_load)
        started, driver_before = time.perf_counter(), time.process_time()
        users = await drive_users(stack.url, make_users(load.users, workdir.name), load.turns, on_turn)
        elapsed, driver_s = time.perf_counter() - started, time.process_time() - driver_before
        if monitor is not None:
            await asyncio.to_thread(monitor.stop)
        cpu_after = _cpu_by_role(stack)
        redis_after = redis_cpu_seconds(redis_url)
        backlog = await watch.stop()
        peaks = memory.stop()
        records = llm.records()
    finally:
        stack.stop()
    result = summarize(layout, load, users, records, elapsed, stack.logs(),
                       {role: cpu_after.get(role, 0.0) - cpu_before.get(role, 0.0) for role in cpu_after},
                       redis_after - redis_before, peaks, backlog, driver_s)
    if monitor is not None:
        result.redis_round_trips_per_turn, _, result.redis_commands_per_turn = monitor.per_turn(
            max(1, result.turns_answered))
    return result


def operator_checks(layout: Layout, backlog: Backlog | None, answered: int) -> list[Check]:
    """What the metrics say agrees with what the users saw: every answered turn counted once, nothing left in
    the backlog, no dead letters."""
    if backlog is None:
        return []
    checks = [Check("metrics agree", backlog.turns_counted == answered,
                    f"nanobot_turns_total {backlog.turns_counted:.0f}, turns answered {answered}")]
    if layout.bus == "celery":
        left = backlog.end_waiting + backlog.end_in_flight
        checks.append(Check("backlog drained", left == 0, f"{left:.0f} message(s) left waiting or in flight"))
        checks.append(Check("no dead letters", backlog.dead_letters == 0, f"{backlog.dead_letters:.0f} dead letter(s)"))
    return checks


def summarize(
    layout: Layout,
    load: Load,
    users: list[User],
    records: list[Any],
    elapsed: float,
    logs: list[Path],
    cpu_s: dict[str, float],
    redis_cpu_s: float,
    peaks: dict[str, float],
    backlog: Backlog | None = None,
    driver_cpu_s: float = 0.0,
) -> Result:
    turns = [t for u in users for t in u.turns]
    answered = [t for t in turns if t.reply is not None]
    calls = calls_by_turn(users, records)
    overhead = [
        t.latency_s * 1000 - calls[(t.user, t.index)][-1].duration_s * 1000
        for t in answered
        if (t.user, t.index) in calls
    ]
    n = max(1, len(answered))
    whole = len(answered) / elapsed if elapsed else 0.0
    steady = steady_throughput(users) if layout.capacity(load.users) >= load.users else whole
    ideal = layout.capacity(load.users) / load.latency_s if load.latency_s > 0 else None
    best = perfect(load.users, layout.capacity(load.users), load.turns, load.latency_s, load.jitter)
    return Result(
        layout=layout.name, bus=layout.bus, workers=layout.workers, pool=layout.pool,
        worker_flag=layout.worker_flag if layout.bus == "celery" else "", users=load.users, turns=load.turns,
        llm_latency_s=load.latency_s, checks=judge(users, records) + operator_checks(layout, backlog, len(answered)),
        elapsed_s=round(elapsed, 3),
        turns_answered=len(answered), throughput=round(steady, 2),
        throughput_whole_run=round(whole, 2), ideal=ideal,
        latency_ms=percentiles([t.latency_s * 1000 for t in answered]),
        latency_first_turn_ms=percentiles([t.latency_s * 1000 for t in answered if t.index == 0]),
        latency_later_turns_ms=percentiles([t.latency_s * 1000 for t in answered if t.index > 0]),
        overhead_ms=percentiles(overhead),
        lock_wait_ms=percentiles(lock_waits_ms(logs)),
        cpu_ms_per_turn=round(sum(cpu_s.values()) * 1000 / n, 2),
        cpu_ms_by_role={role: round(s * 1000 / n, 2) for role, s in cpu_s.items()},
        redis_cpu_ms_per_turn=round(redis_cpu_s * 1000 / n, 2),
        driver_cpu_ms_per_turn=round(driver_cpu_s * 1000 / n, 2),
        peak_rss_mb={role: round(mb, 1) for role, mb in peaks.items()},
        backlog=backlog.to_dict() if backlog is not None else {},
        latencies_ms=[round(t.latency_s * 1000, 2) for t in answered],
        perfect=asdict(best) if best is not None else {},
        peak_concurrent_turns=peak_concurrency(records),
    )
