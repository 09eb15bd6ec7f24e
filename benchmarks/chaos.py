"""The chaos drill: while the users talk, SIGKILL a random worker (main process and pool at once)
every few seconds and start a replacement, and restart the gateway once. The report shows that
nothing was lost, duplicated or run in parallel, and how long each recovery took."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.load import User, drive_users, make_users
from benchmarks.measure import Load, percentiles
from benchmarks.report import machine, print_checks, progress_bar
from benchmarks.stack import Layout, SimulatedLLM, Stack
from benchmarks.verdict import Check, calls_by_turn, judge
from nanobot.testing.llm_server import RecordedRequest

# A killed worker's conversation is taken over once its lock expires: the lock TTL bounds recovery.
# The drill uses 10 s (renewed every 3.3 s while a turn runs) instead of the seed's 120 s default.
LOCK_TTL_MS = 10_000
KILL_EVERY_S = 5.0
RETRY_FOR_S = 300.0  # how long a user keeps re-sending a turn (same Idempotency-Key) before giving up


@dataclass
class Incident:
    kind: str  # "worker killed" or "gateway restarted"
    at: float  # wall clock
    detail: str
    # worker killed: turns it was running, and the longest time from the kill until one was taken up again;
    # gateway restarted: turns waiting on it, and the longest time from the restart until one was answered
    turns_hit: int = 0
    recovered_after_s: float = 0.0


async def _chaos(stack: Stack, incidents: list[Incident], done: asyncio.Event, rng: random.Random) -> None:
    restart_at = time.monotonic() + 2 * KILL_EVERY_S + 1.0
    restarted = False
    while not done.is_set():
        try:
            await asyncio.wait_for(done.wait(), KILL_EVERY_S * rng.uniform(0.7, 1.3))
            return
        except TimeoutError:
            pass
        if not restarted and time.monotonic() >= restart_at:
            restarted = True
            at = time.time()
            took = await asyncio.to_thread(stack.restart_gateway)
            incidents.append(Incident("gateway restarted", at, f"SIGTERM, back and healthy after {took:.1f}s"))
            continue
        at = time.time()
        victim = await asyncio.to_thread(stack.kill_random_worker, rng)
        await asyncio.to_thread(stack.start_worker, True)
        incidents.append(Incident("worker killed", at, f"SIGKILL pid {victim.proc.pid} and its pool; replaced"))


def _recovery(incidents: list[Incident], users: list[User], records: list[RecordedRequest]) -> None:
    kills = sorted((i for i in incidents if i.kind == "worker killed"), key=lambda i: i.at)
    for calls in calls_by_turn(users, records).values():
        for killed, again in itertools.pairwise(calls):
            # The LLM was called again for this turn: its worker died after `killed` reached the LLM.
            incident = next((k for k in reversed(kills) if killed.received_at <= k.at <= again.received_at), None)
            if incident is not None:
                incident.turns_hit += 1
                incident.recovered_after_s = max(incident.recovered_after_s, round(again.received_at - incident.at, 2))
    turns = [t for u in users for t in u.turns if t.reply is not None]
    for incident in incidents:
        if incident.kind == "gateway restarted":
            waiting = [t.answered_at - incident.at for t in turns if t.sent_at <= incident.at < t.answered_at]
            incident.turns_hit = len(waiting)
            incident.recovered_after_s = round(max(waiting, default=0.0), 2)


async def run_chaos(load: Load, args: argparse.Namespace, llm: SimulatedLLM, workdir: Path, console: Console) -> bool:
    layout = Layout("celery", args.workers, args.pool, args.slots, min(args.min_slots, args.slots))
    llm.reset(load.latency_s, load.jitter)
    stack = Stack(layout, llm, workdir / "chaos", args.redis_url, lock_ttl_ms=LOCK_TTL_MS)
    rng = random.Random(7)
    incidents: list[Incident] = []
    console.print(f"chaos drill: {layout.name} {layout.worker_flag}, {load.users} users × {load.turns} turns; "
                  f"a worker SIGKILLed every ~{KILL_EVERY_S:.0f}s, the gateway restarted once; lock TTL "
                  f"{LOCK_TTL_MS / 1000:.0f}s")

    try:
        stack.start()
        done = asyncio.Event()
        chaos = asyncio.create_task(_chaos(stack, incidents, done, rng))
        started, began = time.monotonic(), time.time()
        with progress_bar(console) as progress:
            task = progress.add_task("chaos drill: turns answered", total=load.users * load.turns)
            users = await drive_users(stack.url, make_users(load.users, "chaos"), load.turns,
                                      lambda _: progress.advance(task), RETRY_FOR_S)
        elapsed = time.monotonic() - started
        done.set()
        await chaos
        records = llm.records()
        dead_letters = stack.dead_letters()
    finally:
        stack.stop()
    _recovery(incidents, users, records)
    checks = judge(users, records, rerun_allowed=True)
    table = Table(title="chaos drill: what happened")
    for column in ("t (s)", "incident", "detail", "turns hit", "recovered after"):
        table.add_column(column)
    for incident in sorted(incidents, key=lambda i: i.at):
        table.add_row(f"{incident.at - began:.1f}", incident.kind, incident.detail, str(incident.turns_hit),
                      f"{incident.recovered_after_s:.1f}s" if incident.turns_hit else "-")
    console.print(table)
    console.print("recovered after: for a killed worker, the longest time from the kill until one of its turns "
                  "reached the LLM again (lock TTL + sweep interval at most, unless that worker died too); for the "
                  "gateway, until the last request waiting on it was answered.")
    latencies = [t.latency_s * 1000 for u in users for t in u.turns if t.reply is not None]
    resends = sum(t.attempts - 1 for u in users for t in u.turns)
    spread = percentiles(latencies)
    console.print(f"{len(latencies)} turns answered in {elapsed:.1f}s; {resends} re-sends with the same "
                  f"Idempotency-Key; latency p50 {spread.get('p50', 0):.0f} ms, p99 {spread.get('p99', 0):.0f} ms, "
                  f"max {spread.get('max', 0):.0f} ms")
    checks.append(Check("no dead letters", dead_letters == 0,
                        f"{dead_letters} message(s) set aside after bus.maxDeliveries failed attempts"))
    print_checks(console, "chaos drill", checks)
    out = args.out / f"chaos-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({
        "machine": machine(), "simulated_llm": True, "layout": layout.name, "worker_flag": layout.worker_flag,
        "users": load.users, "turns": load.turns, "llm_latency_s": load.latency_s, "lock_ttl_ms": LOCK_TTL_MS,
        "elapsed_s": round(elapsed, 2), "resends": resends, "dead_letters": dead_letters, "latency_ms": spread,
        "incidents": [asdict(i) for i in incidents], "checks": [asdict(c) for c in checks],
    }, indent=2))
    console.print(f"report: {out}")
    killed = any(i.kind == "worker killed" for i in incidents)
    if not killed:
        console.print("[red]the load ended before any worker was killed: run more turns[/red]")
    return killed and all(c.passed for c in checks)
