"""The benchmark's report: a table on the terminal, a JSON file and a PNG (latency CDF; throughput
against workers)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from benchmarks.measure import Result
from benchmarks.verdict import Check


def progress_bar(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "system": platform.platform()}


def _ms(values: dict[str, float], key: str) -> str:
    return f"{values[key]:.0f}" if key in values else "-"


def print_checks(console: Console, title: str, checks: list[Check]) -> None:
    table = Table(title=f"{title}: checks (judged from the simulated LLM's records and the users' replies)")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail")
    for check in checks:
        table.add_row(check.name, "[green]pass[/green]" if check.passed else "[red]FAIL[/red]", check.detail)
    console.print(table)


def print_summary(console: Console, results: list[Result], title: str) -> None:
    speed = Table(title=f"{title}: speed")
    for column in ("layout", "checks", "turns/s", "whole run", "ideal", "efficiency", "perfect turns/s, p95 ms",
                   "p50 ms", "p95 ms", "p95 turn 1", "p95 later", "overhead p50 ms", "overhead p95 ms"):
        speed.add_column(column, justify="left" if column in ("layout", "checks") else "right")
    cost = Table(title=f"{title}: cost")
    for column in ("layout", "lock wait p50/p95 ms", "CPU ms/turn", "gateway", "workers", "Redis", "driver",
                   "gateway RSS MB", "worker RSS MB", "child RSS MB", "total RSS MB", "turns in flight/GB"):
        cost.add_column(column, justify="left" if column == "layout" else "right")
    for r in results:
        name = f"{r.layout} {r.worker_flag}".strip()
        speed.add_row(
            name,
            "[green]pass[/green]" if r.passed else "[red]FAIL[/red]",
            f"{r.throughput:.1f}",
            f"{r.throughput_whole_run:.1f}",
            f"{r.ideal:.0f}" if r.ideal else "-",
            f"{r.efficiency:.0%}" if r.efficiency is not None else "-",
            f"{r.perfect['throughput']:.1f}, {r.perfect['p95_ms']:.0f}" if r.perfect else "-",
            _ms(r.latency_ms, "p50"), _ms(r.latency_ms, "p95"),
            _ms(r.latency_first_turn_ms, "p95"), _ms(r.latency_later_turns_ms, "p95"),
            f"{r.overhead_ms.get('p50', 0):.1f}", f"{r.overhead_ms.get('p95', 0):.1f}",
        )
        cost.add_row(
            name,
            f"{r.lock_wait_ms.get('p50', 0):.1f} / {r.lock_wait_ms.get('p95', 0):.1f}",
            f"{r.cpu_ms_per_turn:.1f}",
            f"{r.cpu_ms_by_role.get('gateway', 0):.1f}",
            f"{r.cpu_ms_by_role.get('worker', 0):.1f}" if r.bus == "celery" else "-",
            f"{r.redis_cpu_ms_per_turn:.1f}",
            f"{r.driver_cpu_ms_per_turn:.1f}",
            f"{r.peak_rss_mb.get('gateway', 0):.0f}",
            f"{r.peak_rss_mb.get('worker', 0):.0f}" if r.bus == "celery" else "-",
            f"{r.peak_rss_mb.get('worker child', 0):.0f}" if r.pool == "prefork" and r.bus == "celery" else "-",
            f"{r.peak_rss_mb.get('total', 0):.0f}",
            f"{r.turns_per_gb:.0f}" if r.turns_per_gb else "-",
        )
    console.print(speed)
    console.print(cost)
    counted = [r for r in results if r.redis_round_trips_per_turn is not None]
    if counted:
        trips = Table(title=f"{title}: Redis per turn, all processes (benchmarks/roundtrips.py)")
        for column in ("layout", "round trips", "commands", "by command"):
            trips.add_column(column, justify="left" if column in ("layout", "by command") else "right")
        for r in counted:
            by_name = ", ".join(f"{name} {n:g}" for name, n in r.redis_commands_per_turn.items())
            trips.add_row(f"{r.layout} {r.worker_flag}".strip(), f"{r.redis_round_trips_per_turn:.1f}",
                          f"{sum(r.redis_commands_per_turn.values()):.1f}", by_name)
        console.print(trips)
    distributed = [r for r in results if r.bus == "celery" and r.backlog]
    if distributed:
        ops = Table(title=f"{title}: the operator's view (gateway and worker /metrics)")
        for column in ("layout", "peak waiting", "peak in flight", "peak oldest age s", "left at end",
                       "dead letters", "turns counted", "redeliveries"):
            ops.add_column(column, justify="left" if column == "layout" else "right")
        for r in distributed:
            b = r.backlog
            ops.add_row(f"{r.layout} {r.worker_flag}".strip(), f"{b['peak_waiting']:.0f}", f"{b['peak_in_flight']:.0f}",
                        f"{b['peak_oldest_age_s']:.1f}", f"{b['end_waiting'] + b['end_in_flight']:.0f}",
                        f"{b['dead_letters']:.0f}", f"{b['turns_counted']:.0f}", f"{b['redeliveries']:.0f}")
        console.print(ops)


def write_json(path: Path, results: list[Result], probes: list[Result], extra: dict[str, Any]) -> None:
    payload = {"machine": machine(), "simulated_llm": True, **extra, "results": [r.to_dict() for r in results],
               "overhead_probe": [r.to_dict() for r in probes]}
    path.write_text(json.dumps(payload, indent=2))


def write_png(path: Path, results: list[Result]) -> bool:
    """Latency CDF of every layout, and throughput against workers; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    loaded = [r for r in results if r.ideal]
    fig, (cdf, scale) = plt.subplots(1, 2, figsize=(13, 5))
    for r in loaded:
        xs = sorted(r.latencies_ms)
        cdf.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], label=r.layout)
    if loaded:
        cdf.axvline(loaded[0].llm_latency_s * 1000, color="grey", linestyle=":", label="simulated LLM latency")
    cdf.set_xlabel("end-to-end latency per turn (ms)")
    cdf.set_ylabel("fraction of turns")
    cdf.set_title("latency CDF (SIMULATED LLM)")
    cdf.grid(alpha=0.3)
    cdf.legend(fontsize=8)

    for pool, marker in (("prefork", "o"), ("threads", "s")):
        series = sorted((r.workers, r.throughput, r.ideal or 0) for r in loaded if r.bus == "celery" and r.pool == pool)
        if series:
            scale.plot([s[0] for s in series], [s[1] for s in series], marker=marker, label=f"celery {pool}")
    ideal = sorted({(r.workers, r.ideal or 0) for r in loaded if r.bus == "celery" and r.pool == "prefork"})
    if ideal:
        scale.plot([i[0] for i in ideal], [i[1] for i in ideal], linestyle="--", color="grey", label="ideal")
    for r in loaded:
        if r.bus == "local":
            scale.axhline(r.throughput, color="green", linestyle=":", label="local mode (one process)")
    scale.set_xlabel("celery workers")
    scale.set_ylabel("turns per second")
    scale.set_title("throughput against workers")
    scale.set_ylim(bottom=0)
    scale.grid(alpha=0.3)
    scale.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
