"""The rollback drill: a celery deployment with its histories in Redis goes back to local mode.

    1. celery mode, sessions in Redis: every user holds T turns
    2. stop the workers and the gateway; `nanobot sessions export` (Redis -> session files)
    3. switch the config to bus.backend=local, sessions.backend=file; start the gateway alone
    4. every user sends one more turn: it must reach the LLM with the whole earlier conversation

The time reported runs from stopping the celery deployment to the local gateway answering again
(the seed asks for under 5 minutes), and to every conversation having continued.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.load import drive_users, make_users
from benchmarks.measure import Load
from benchmarks.report import machine, print_checks, progress_bar
from benchmarks.stack import Layout, SimulatedLLM, Stack
from benchmarks.verdict import judge
from nanobot.testing.processes import nanobot

LIMIT_S = 300.0  # the seed's bound for a rollback


async def run_rollback(
    load: Load, args: argparse.Namespace, llm: SimulatedLLM, workdir: Path, console: Console
) -> bool:
    layout = Layout("celery", args.workers, args.pool, args.slots, min(args.min_slots, args.slots))
    llm.reset(load.latency_s, load.jitter)
    stack = Stack(layout, llm, workdir / "rollback", args.redis_url, sessions="redis")
    users = make_users(load.users, "rollback")
    steps: list[tuple[str, float]] = []
    console.print(f"rollback drill: {layout.name} with sessions in Redis, {load.users} users × {load.turns} turns; "
                  "then back to local mode and one more turn each")
    try:
        with progress_bar(console) as progress:
            task = progress.add_task("celery mode: turns answered", total=load.users * load.turns)
            stack.start()
            await drive_users(stack.url, users, load.turns, lambda _: progress.advance(task))
            progress.remove_task(task)

            began = time.monotonic()
            stack.stop(forget=False)
            steps.append(("celery deployment stopped", time.monotonic() - began))
            export = await asyncio.to_thread(
                subprocess.run, nanobot("sessions", "export"), env=_env(stack), capture_output=True, text=True,
                timeout=120,
            )
            if export.returncode != 0:
                raise RuntimeError(f"nanobot sessions export failed: {export.stdout}{export.stderr}")
            steps.append((f"sessions exported ({export.stdout.strip()})", time.monotonic() - began))
            stack.layout = Layout()
            stack.config_data["bus"]["backend"] = "local"
            stack.config_data["sessions"]["backend"] = "file"
            stack.write_config()
            stack.start_gateway()
            steps.append(("local gateway answering /health", time.monotonic() - began))

            task = progress.add_task("local mode: one more turn each", total=load.users)
            await drive_users(stack.url, users, 1, lambda _: progress.advance(task))
            steps.append(("every conversation continued in local mode", time.monotonic() - began))
        records = llm.records()
    finally:
        stack.stop()

    checks = judge(users, records)
    total = steps[-1][1]
    table = Table(title="rollback drill: celery + Redis sessions -> local mode + session files")
    table.add_column("step")
    table.add_column("seconds since the celery deployment began to stop", justify="right")
    for name, at in steps:
        table.add_row(name, f"{at:.1f}")
    console.print(table)
    print_checks(console, "rollback drill", checks)
    console.print(f"rollback took {total:.1f}s (bound: {LIMIT_S:.0f}s)")
    out = args.out / f"rollback-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({
        "machine": machine(), "simulated_llm": True, "users": load.users, "turns_before": load.turns,
        "steps": [{"step": name, "at_s": round(at, 2)} for name, at in steps], "rollback_s": round(total, 2),
        "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in checks],
    }, indent=2))
    console.print(f"report: {out}")
    return total < LIMIT_S and all(c.passed for c in checks)


def _env(stack: Stack) -> dict[str, str]:
    return {**os.environ, **stack.env}
