"""nanobot-celery's acceptance benchmark, and the project's demo.

Starts everything on loopback: Redis (if none answers, scripts/demo starts one), a SIMULATED
OpenAI-compatible LLM (no real model: it echoes, after a configurable latency), the gateway with its
API channel, and Celery workers (`celery -A nanobot_celery worker ...`). U simulated users then hold
T-turn conversations at once, and the report shows, for each layout (local mode; the card's prefork
command `--autoscale=10,2` on 1, 3 and 5 workers; the threads pool, many turns on one event loop per
process), whether every guarantee held (judged from what the simulated LLM received and what each user
got back), throughput against the ideal and against a perfect system (benchmarks/ideal.py), latency,
lock wait, CPU per turn, memory and turns at once per GB. `--scale` runs a thousand conversations,
`--round-trips` counts Redis round trips per turn, `--chaos` kills workers and restarts the gateway
during the load, `--rollback` moves a celery deployment back to local mode. Exit status 1 when a check
fails.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks.load import Turn
from benchmarks.measure import Load, Result, measure
from benchmarks.report import print_checks, print_summary, progress_bar, write_json, write_png
from benchmarks.stack import Layout, SimulatedLLM
from nanobot_celery.redis_url import redact

console = Console(width=None if sys.stdout.isatty() else 150)
PROBE = Load(users=1, turns=40, latency_s=0.0, jitter=0.0)
TRIPS = Load(users=1, turns=40, latency_s=0.0, jitter=0.0)  # the probe's load, measured under MONITOR


def parse_layout(spec: str, slots: int, min_slots: int) -> Layout:
    """`local`, or `celery:N[:POOL[:SLOTS]]`: N workers of the prefork (default) or threads pool; SLOTS per worker
    is `MAX,MIN` for prefork (`--autoscale=MAX,MIN`) or the thread count, else --slots and --min-slots."""
    parts = spec.split(":")
    if parts == ["local"]:
        return Layout()
    if parts[0] != "celery" or len(parts) not in (2, 3, 4) or not parts[1].isdigit() or int(parts[1]) < 1:
        raise argparse.ArgumentTypeError(f"layout {spec!r}: expected local or celery:N[:prefork|threads[:SLOTS]]")
    pool = parts[2] if len(parts) >= 3 else "prefork"
    if pool not in ("prefork", "threads"):
        raise argparse.ArgumentTypeError(f"layout {spec!r}: pool must be prefork or threads")
    if len(parts) == 4:
        numbers = parts[3].split(",")
        if not all(n.isdigit() and int(n) > 0 for n in numbers) or len(numbers) > (2 if pool == "prefork" else 1):
            raise argparse.ArgumentTypeError(f"layout {spec!r}: slots are MAX,MIN (prefork) or N (threads)")
        slots = int(numbers[0])
        min_slots = int(numbers[1]) if len(numbers) == 2 else min_slots
    return Layout("celery", int(parts[1]), pool, slots, min(min_slots, slots))


@dataclass
class Group:
    """Layouts measured under one load, reported in one table."""

    title: str
    layouts: list[Layout]
    load: Load
    results: list[Result] = field(default_factory=list)


async def run_groups(groups: list[Group], llm: SimulatedLLM, workdir: Path, redis_url: str) -> None:
    with progress_bar(console) as progress:
        for number, group in enumerate(groups):
            spec = group.load
            for index, layout in enumerate(group.layouts):
                label = f"{layout.name}: {spec.users} users × {spec.turns} turns"
                label += " (overhead probe)" if spec is PROBE else ""
                task = progress.add_task(label, total=spec.users * spec.turns)

                def advance(_: Turn, task: Any = task) -> None:
                    progress.advance(task)

                where = workdir / f"group{number}-{index}-{layout.name.replace(' ', '-')}"
                result = await measure(layout, spec, llm, where, redis_url, advance, round_trips=spec is TRIPS)
                progress.remove_task(task)
                verdict = "[green]checks pass[/green]" if result.passed else "[red]checks FAIL[/red]"
                console.print(f"  {label}: {result.throughput:.1f} turns/s, "
                              f"p95 {result.latency_ms.get('p95', 0):.0f} ms, {verdict}")
                group.results.append(result)


DEFAULT_LAYOUTS = "local,celery:1,celery:3,celery:5,celery:3:threads:10,celery:1:threads:100"
SCALE_LAYOUTS = "celery:2:threads:500,celery:3:prefork:10,2"
SCALE_USERS = 1000


def plan(args: argparse.Namespace, load: Load, scale: bool) -> list[Group]:
    """What to measure: the layouts under the load, then the overhead probe (local, one threads worker, one prefork
    worker). With --scale, a prefork layout gets one turn per user: its few slots would take an hour over more.
    --round-trips measures only its own two layouts."""
    if args.round_trips:
        return [Group("Redis round trips per turn (MONITOR: other figures of this run are not comparable)",
                      [Layout("celery", 1, "prefork", 1, 1), Layout("celery", 1, "threads", 1, 1)], TRIPS)]
    # Layouts are comma-separated, and so are a prefork layout's slots (celery:3:prefork:10,2): a layout starts
    # with a letter.
    specs = list(dict.fromkeys(re.split(r",(?=[a-z])", args.layouts or (SCALE_LAYOUTS if scale else DEFAULT_LAYOUTS))))
    layouts = [parse_layout(s.strip(), args.slots, args.min_slots) for s in specs]
    if not scale:
        groups = [Group(load_title(load), layouts, load)]
    else:
        slim = Load(load.users, 1, load.latency_s, load.jitter)
        groups = [Group(f"a thousand conversations: {load_title(load)}", [x for x in layouts if x.pool != "prefork"],
                        load),
                  Group(f"a thousand conversations, prefork: {load_title(slim)}",
                        [x for x in layouts if x.pool == "prefork"], slim)]
    if not (args.no_probe or scale):
        groups.append(Group("overhead probe: 1 user, zero-latency SIMULATED LLM",
                            [Layout(), Layout("celery", 1, "threads", 1, 1), Layout("celery", 1, "prefork", 1, 1)],
                            PROBE))
    return [g for g in groups if g.layouts]


def load_title(load: Load) -> str:
    return f"{load.users} users × {load.turns} turns, SIMULATED LLM {load.latency_s:.2f}s ± {load.jitter:.0%}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=None,
                        help="simulated users, all at once (default 50; --scale 1000)")
    parser.add_argument("--turns", type=int, default=None, help="turns per user (default 4; --scale 3)")
    parser.add_argument("--latency", type=float, default=None,
                        help="simulated LLM latency in seconds (default 1; --scale 10)")
    parser.add_argument("--jitter", type=float, default=0.2, help="latency jitter as a fraction (default 0.2)")
    parser.add_argument("--workers", type=int, default=3,
                        help="celery workers of the chaos and rollback drills (default 3)")
    parser.add_argument("--pool", choices=("threads", "prefork"), default="threads",
                        help="the workers' pool in the chaos and rollback drills (default threads)")
    parser.add_argument("--slots", type=int, default=10,
                        help="per worker: --autoscale maximum (prefork) or --concurrency (threads); default 10")
    parser.add_argument("--min-slots", type=int, default=2, help="per worker: --autoscale minimum (default 2)")
    parser.add_argument("--layouts", default=None,
                        help="comma-separated: local, celery:N[:prefork|threads[:SLOTS]] (SLOTS: MAX,MIN for "
                             f"prefork, N threads). Default: {DEFAULT_LAYOUTS}; with --scale: {SCALE_LAYOUTS}")
    parser.add_argument("--scale", action="store_true",
                        help="a thousand conversations: 1000 users × 3 turns with a 10 s LLM on the threads pool, "
                             "and the card's prefork command beside it (1000 users × 1 turn: it has 30 slots)")
    parser.add_argument("--round-trips", action="store_true",
                        help="only count Redis round trips per turn (MONITOR; 1 user × 40 turns, zero latency) for "
                             "the prefork and threads pools")
    parser.add_argument("--no-probe", action="store_true",
                        help="skip the overhead probe (1 user, 40 turns, zero-latency simulated LLM)")
    parser.add_argument("--chaos", action="store_true", help="run the chaos drill instead of the comparison")
    parser.add_argument("--rollback", action="store_true", help="run the rollback drill instead of the comparison")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12", help="Redis for celery mode")
    parser.add_argument("--out", type=Path, default=Path("benchmark-results"), help="where the JSON and PNG go")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, sessions)")
    args = parser.parse_args(argv)
    scale = args.scale and not (args.chaos or args.rollback)
    args.users = args.users or (SCALE_USERS if scale else 50)
    args.turns = args.turns or (3 if scale else 4)
    args.latency = args.latency if args.latency is not None else (10.0 if scale else 1.0)
    load = Load(args.users, args.turns, args.latency, args.jitter)
    try:
        groups = plan(args, load, scale)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))

    def on_sigterm(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    workdir = Path(tempfile.mkdtemp(prefix="nanobot-bench-"))
    args.out.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]nanobot benchmark[/bold]: SIMULATED LLM {args.latency:.2f}s ± {args.jitter:.0%}, "
                  f"{args.users} users × {args.turns} turns; Redis {redact(args.redis_url)}; work dir {workdir}")
    llm = SimulatedLLM(workdir, args.latency, args.jitter)
    ok = False
    try:
        if args.chaos:
            from benchmarks.chaos import run_chaos

            ok = asyncio.run(run_chaos(load, args, llm, workdir, console))
        elif args.rollback:
            from benchmarks.rollback import run_rollback

            ok = asyncio.run(run_rollback(load, args, llm, workdir, console))
        else:
            ok = compare(groups, args, llm, workdir)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: every process started was stopped[/yellow]")
        return 130
    finally:
        llm.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    console.print("[bold green]all checks passed[/bold green]" if ok else "[bold red]a check FAILED[/bold red]")
    return 0 if ok else 1


def compare(groups: list[Group], args: argparse.Namespace, llm: SimulatedLLM, workdir: Path) -> bool:
    started = time.monotonic()
    asyncio.run(run_groups(groups, llm, workdir, args.redis_url))
    results = [r for g in groups for r in g.results]
    for result in results:
        if not result.passed:
            print_checks(console, result.layout, result.checks)
    for group in groups:
        print_summary(console, group.results, group.title)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    json_path = args.out / f"benchmark-{stamp}.json"
    probes = [r for g in groups if g.load is PROBE for r in g.results]
    write_json(json_path, [r for r in results if r not in probes], probes,
               {"duration_s": round(time.monotonic() - started, 1), "argv": sys.argv[1:]})
    png_path = args.out / f"benchmark-{stamp}.png"
    drawn = write_png(png_path, [r for r in results if r not in probes])
    console.print(f"report: {json_path}" + (f", {png_path}" if drawn else " (no PNG: matplotlib is not installed)"))
    return all(r.passed for r in results)


if __name__ == "__main__":
    sys.exit(main())
