"""The demo: a real `nanobot gateway` (local mode) answering simulated users over the API channel.

Everything runs on loopback: a SIMULATED OpenAI-compatible LLM (no real model, no network), the
gateway as its own process, and U users who each hold a T-turn conversation concurrently. The demo
checks, from what the simulated LLM received and what each user got back, that every reply is the
right one, that each conversation kept its own history, and that turns of one conversation never
overlapped. It exits non-zero when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from nanobot.testing.llm_server import FakeLLM, RecordedRequest
from nanobot.testing.processes import Process, free_port, nanobot, wait_http_ok, wait_until

console = Console()


@dataclass
class UserRun:
    user: int
    sent: list[str] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def drive_user(
    client: httpx.AsyncClient, url: str, user: int, turns: int, progress: Progress, task: int
) -> UserRun:
    run = UserRun(user)
    for turn in range(turns):
        text = f"user {user} turn {turn}"
        run.sent.append(text)
        body = {"model": "nanobot", "session_id": f"demo-{user}", "messages": [{"role": "user", "content": text}]}
        started = time.perf_counter()
        try:
            response = await client.post(url, json=body)
            if response.status_code != 200:
                run.errors.append(f"turn {turn}: HTTP {response.status_code} {response.text[:200]}")
                continue
            run.replies.append(response.json()["choices"][0]["message"]["content"])
        except httpx.HTTPError as exc:
            run.errors.append(f"turn {turn}: {type(exc).__name__}: {exc}")
        finally:
            run.latencies.append(time.perf_counter() - started)
            progress.advance(task)
    return run


def check(runs: list[UserRun], requests: list[RecordedRequest], turns: int) -> list[tuple[str, bool, str]]:
    """Each check: (name, passed, detail), judged from the LLM's records and the users' replies."""
    by_user: dict[int, list[RecordedRequest]] = {}
    for r in requests:
        parts = r.last_user_text.split()
        if len(parts) == 4 and parts[0] == "user":
            by_user.setdefault(int(parts[1]), []).append(r)
    results = []
    wrong = [
        (u.user, i) for u in runs for i, (s, a) in enumerate(zip(u.sent, u.replies, strict=False)) if a != f"echo: {s}"
    ]
    lost = sum(turns - len(u.replies) for u in runs)
    results.append(
        ("every user got the reply to their own message", not wrong and not lost, f"{len(wrong)} wrong, {lost} missing")
    )
    mixed = 0
    for user, reqs in by_user.items():
        for r in reqs:
            prefix = f"user {user} "
            if any(not str(m.get("content", "")).removeprefix("echo: ").startswith(prefix) for m in r.messages[1:]):
                mixed += 1
    results.append(("no conversation saw another's messages", mixed == 0, f"{mixed} mixed requests"))
    history_ok = all(
        len(r.messages) - 1 == 2 * int(r.last_user_text.split()[3]) + 1 for reqs in by_user.values() for r in reqs
    )
    results.append(("each turn carried its full history", history_ok, "history length = 2 × turn + 1"))
    overlaps = sum(
        1
        for reqs in by_user.values()
        for a, b in itertools.pairwise(sorted(reqs, key=lambda r: r.received_at))
        if b.received_at < a.finished_at
    )
    order_ok = all(
        [r.last_user_text for r in sorted(reqs, key=lambda r: r.received_at)]
        == [f"user {u} turn {t}" for t in range(turns)]
        for u, reqs in by_user.items()
    )
    results.append(("one turn at a time per conversation", overlaps == 0, f"{overlaps} overlapping turns"))
    results.append(("turns in order, none twice", order_ok, f"{len(requests)} LLM calls for {len(runs) * turns} turns"))
    return results


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] if ordered else 0.0


@dataclass
class Setup:
    users: int
    turns: int
    latency: float
    jitter: float
    workdir: Path
    bus: str = "local"
    workers: int = 3
    autoscale: str = "10,2"
    redis_url: str = "redis://127.0.0.1:6379/12"


def start_workers(setup: Setup, env: dict[str, str]) -> list[Process]:
    argv = [sys.executable, "-m", "celery", "-A", "nanobot_celery", "worker", f"--autoscale={setup.autoscale}",
            "--loglevel=INFO", "--without-gossip", "--without-mingle"]
    workers = [
        Process([*argv, f"--hostname=demo{i}@%h"], setup.workdir / f"worker{i}.log", env=env)
        for i in range(setup.workers)
    ]
    for w in workers:
        wait_until(lambda w=w: " ready." in w.log(), 60, "worker ready", w)  # type: ignore[misc]
    return workers


def forget_keys(redis_url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{prefix}:*", count=1000):
        client.delete(key)
    client.close()


async def run_demo(setup: Setup) -> bool:
    users, turns, latency, jitter, workdir = setup.users, setup.turns, setup.latency, setup.jitter, setup.workdir
    llm = FakeLLM(latency_s=latency, jitter=jitter, seed=1).start()
    port = free_port()
    prefix = f"nbdemo{uuid.uuid4().hex[:8]}"
    config: dict[str, object] = {
        "agents": {
            "defaults": {"workspace": str(workdir / "workspace"), "model": "simulated-model", "provider": "custom"}
        },
        "providers": {"custom": {"apiKey": "demo", "apiBase": llm.base_url}},
        "channels": {"api": {"enabled": True, "port": port, "timeoutS": 120}},
        "gateway": {"heartbeat": {"enabled": False}},
        "bus": {"backend": setup.bus, "redisUrl": setup.redis_url, "keyPrefix": prefix, "runEmbeddedWorker": False},
    }
    config_path = workdir / "config.json"
    config_path.write_text(json.dumps(config, indent=2))
    env = {"NANOBOT_CONFIG": str(config_path)}
    workers = start_workers(setup, env) if setup.bus == "celery" else []
    gateway = Process(nanobot("gateway"), workdir / "gateway.log", env=env)
    try:
        where = f"celery mode, {setup.workers} workers --autoscale={setup.autoscale}" if workers else "local mode"
        console.print(
            f"[bold]nanobot demo[/bold]: {where}, {users} users × {turns} turns, "
            f"SIMULATED LLM latency {latency:.2f}s ± {jitter:.0%} (workdir {workdir})"
        )
        wait_http_ok(f"http://127.0.0.1:{port}/health", 30, gateway)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        limits = httpx.Limits(max_connections=users, max_keepalive_connections=users)
        started = time.perf_counter()
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            with Progress(console=console, transient=True) as progress:
                task = progress.add_task("turns", total=users * turns)
                runs = await asyncio.gather(*(drive_user(client, url, u, turns, progress, task) for u in range(users)))
        elapsed = time.perf_counter() - started
        checks = check(list(runs), llm.requests, turns)
    finally:
        gateway.stop()
        for w in workers:
            w.stop(timeout=40)
        llm.stop()
        if setup.bus == "celery":
            forget_keys(setup.redis_url, prefix)

    table = Table(title="checks (judged from the simulated LLM's records and the users' replies)")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail")
    for name, ok, detail in checks:
        table.add_row(name, "[green]pass[/green]" if ok else "[red]FAIL[/red]", detail)
    console.print(table)
    latencies = [x for r in runs for x in r.latencies]
    done = sum(len(r.replies) for r in runs)
    console.print(
        f"{done} turns in {elapsed:.2f}s = {done / elapsed:.1f} turns/s; "
        f"latency p50 {percentile(latencies, 50) * 1000:.0f} ms, p95 {percentile(latencies, 95) * 1000:.0f} ms "
        f"(simulated LLM {latency * 1000:.0f} ms)"
    )
    for r in runs:
        for e in r.errors[:3]:
            console.print(f"[red]user {r.user}: {e}[/red]")
    return all(ok for _, ok, _ in checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.5, help="simulated LLM latency in seconds")
    parser.add_argument("--jitter", type=float, default=0.2, help="latency jitter as a fraction")
    parser.add_argument("--bus", choices=["local", "celery"], default="local")
    parser.add_argument("--workers", type=int, default=3, help="celery mode: worker processes")
    parser.add_argument("--autoscale", default="10,2", help="celery mode: --autoscale of each worker")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12", help="celery mode: Redis to use")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, sessions)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="nanobot-demo-"))
    setup = Setup(args.users, args.turns, args.latency, args.jitter, workdir, args.bus, args.workers, args.autoscale,
                  args.redis_url)
    ok = asyncio.run(run_demo(setup))
    if not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    console.print("[bold green]demo passed[/bold green]" if ok else "[bold red]demo FAILED[/bold red]")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
