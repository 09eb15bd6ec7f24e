"""The benchmark itself: its checks catch what they claim to, and small runs of the comparison, the
chaos drill and the rollback drill pass end to end (real processes, real Redis, simulated LLM)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.load import Turn, User, turn_text
from benchmarks.verdict import judge
from nanobot.testing.llm_server import RecordedRequest
from tests.cluster import REDIS_DB, REDIS_HOST, REDIS_PORT

REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"


def _record(
    seq: int, user: int, turn: int, start: float, history: list[tuple[str, str]] | None = None
) -> RecordedRequest:
    messages = [{"role": "system", "content": "sys"}]
    for t in range(turn):
        messages += [{"role": "user", "content": turn_text(user, t)},
                     {"role": "assistant", "content": f"echo: {turn_text(user, t)}"}]
    if history is not None:
        messages = [{"role": "system", "content": "sys"}] + [{"role": r, "content": c} for r, c in history]
    messages.append({"role": "user", "content": turn_text(user, turn)})
    return RecordedRequest(seq=seq, received_at=start, finished_at=start + 1.0, model="m", messages=messages,
                           tools=None, status=200, reply_content=f"echo: {turn_text(user, turn)}",
                           reply_tool_calls=None, stream=False)


def _users(n: int, turns: int) -> list[User]:
    users = []
    for u in range(n):
        user = User(u, f"s-{u}")
        for t in range(turns):
            text = turn_text(u, t)
            user.turns.append(Turn(u, t, text, sent_at=t * 2.0, answered_at=t * 2.0 + 1.5, reply=f"echo: {text}"))
        users.append(user)
    return users


def _failed(checks: list) -> set[str]:  # type: ignore[type-arg]
    return {c.name.split(",")[0] for c in checks if not c.passed}


def test_judge_passes_a_clean_run() -> None:
    records = [_record(u * 10 + t, u, t, t * 2.0 + 0.1) for u in range(2) for t in range(3)]
    assert _failed(judge(_users(2, 3), records)) == set()


def test_judge_catches_each_violation() -> None:
    users = _users(2, 3)
    clean = [_record(u * 10 + t, u, t, t * 2.0 + 0.1) for u in range(2) for t in range(3)]

    wrong_reply = _users(2, 3)
    wrong_reply[0].turns[1].reply = "echo: user 1 turn 1"
    assert "every user got the reply to their own message" in _failed(judge(wrong_reply, clean))

    mixed = [*clean[:-1], _record(99, 1, 2, 4.1, history=[("user", turn_text(0, 0)), ("assistant", "x")])]
    assert "no conversation saw another's messages" in _failed(judge(users, mixed))

    overlapping = [*clean[:1], _record(1, 0, 1, 0.5), *clean[2:]]  # turn 1 reached the LLM before turn 0 ended
    assert "one turn at a time per conversation" in _failed(judge(users, overlapping))

    twice = [*clean, _record(50, 0, 2, 5.0)]
    assert "turns in order" in _failed(judge(users, twice))
    assert "turns in order" not in _failed(judge(users, twice, rerun_allowed=True))

    duplicated_history = [*clean[:2], _record(2, 0, 2, 4.1, history=[
        ("user", turn_text(0, 0)), ("assistant", f"echo: {turn_text(0, 0)}"),
        ("user", turn_text(0, 0)), ("assistant", f"echo: {turn_text(0, 0)}"),
        ("user", turn_text(0, 1)), ("assistant", f"echo: {turn_text(0, 1)}")]), *clean[3:]]
    assert "each turn carried its conversation's full history" in _failed(judge(users, duplicated_history))

    lost = [r for r in clean if r.seq != 11]
    assert "turns in order" in _failed(judge(users, lost))


def _demo(tmp_path: Path, *args: str, timeout: float) -> tuple[subprocess.CompletedProcess[str], list[dict]]:  # type: ignore[type-arg]
    out = tmp_path / "out"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.demo", "--redis-url", REDIS_URL, "--out", str(out), *args],
        capture_output=True, text=True, timeout=timeout, cwd=Path(__file__).parent.parent,
    )
    print(done.stdout[-6000:], done.stderr[-3000:], f"({time.monotonic() - started:.0f}s)")
    return done, [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]


@pytest.mark.timeout(240)
def test_benchmark_smoke_run(tmp_path: Path) -> None:
    """The CI-sized benchmark: 1 worker, 5 users, short latency, plus the overhead probe."""
    done, reports = _demo(tmp_path, "--layouts", "celery:1", "--users", "5", "--turns", "3", "--latency", "0.05",
                          "--slots", "4", "--min-slots", "2", timeout=220)
    assert done.returncode == 0
    assert "all checks passed" in done.stdout
    [report] = reports
    assert report["simulated_llm"] is True
    [main] = report["results"]
    assert main["layout"] == "celery 1w prefork" and main["worker_flag"] == "--autoscale=4,2"
    assert main["passed"] and main["turns_answered"] == 15
    assert main["throughput"] > 0 and main["cpu_ms_per_turn"] > 0
    assert main["peak_rss_mb"]["gateway"] > 0 and main["peak_rss_mb"]["worker child"] > 0
    assert len(main["latencies_ms"]) == 15
    # the operator's view from /metrics: every turn counted once, the backlog sampled and drained, no dead letters
    backlog = main["backlog"]
    assert backlog["turns_counted"] == 15 and backlog["samples"] >= 2
    assert backlog["end_waiting"] == 0 and backlog["end_in_flight"] == 0 and backlog["dead_letters"] == 0
    assert {c["name"] for c in main["checks"]} >= {"metrics agree", "backlog drained", "no dead letters"}
    assert main["perfect"]["throughput"] > 0 and main["driver_cpu_ms_per_turn"] > 0
    assert main["peak_rss_mb"]["total"] >= main["peak_rss_mb"]["gateway"] + main["peak_rss_mb"]["worker"]
    assert [r["layout"] for r in report["overhead_probe"]] == ["local", "celery 1w threads", "celery 1w prefork"]
    assert all(r["passed"] and r["turns_answered"] == 40 for r in report["overhead_probe"])
    assert list((tmp_path / "out").glob("*.png"))


def _drill(tmp_path: Path, *args: str, timeout: float) -> dict:  # type: ignore[type-arg]
    """Run a drill; it must exit 0 with every check passed. Returns its report."""
    done, reports = _demo(tmp_path, *args, "--slots", "4", "--min-slots", "2", timeout=timeout)
    assert done.returncode == 0, done.stdout
    [report] = reports
    assert all(c["passed"] for c in report["checks"])
    return report


@pytest.mark.timeout(240)
def test_rollback_drill_smoke(tmp_path: Path) -> None:
    report = _drill(tmp_path, "--rollback", "--workers", "1", "--users", "4", "--turns", "2", "--latency", "0.05",
                    timeout=220)
    assert report["rollback_s"] < 300


@pytest.mark.timeout(300)
@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_chaos_drill_smoke(tmp_path: Path, pool: str) -> None:
    report = _drill(tmp_path, "--chaos", "--pool", pool, "--workers", "2", "--users", "6", "--turns", "14",
                    "--latency", "0.5", timeout=280)
    assert report["layout"].endswith(pool), report["layout"]
    kinds = [i["kind"] for i in report["incidents"]]
    assert "worker killed" in kinds and "gateway restarted" in kinds


def test_perfect_system_reference() -> None:
    """benchmarks/ideal.py: first come, first served with no overhead, counted as a real run is."""
    from benchmarks.ideal import perfect

    # Four users, two slots, one turn each, exactly 1 s: two answered after 1 s, two after 2 s.
    queued = perfect(users=4, slots=2, turns=1, latency_s=1.0, jitter=0.0)
    assert queued is not None and (queued.throughput, queued.p95_ms) == (2.0, 2000)
    # A slot for every user: each user's own rate, 1 turn/s each.
    free = perfect(users=3, slots=3, turns=2, latency_s=1.0, jitter=0.0)
    assert free is not None and (free.throughput, free.p95_ms) == (3.0, 1000)
    # Jitter leaves slots idle at the end and lengthens waits: below the naive ideal, above users/slots × latency.
    jittered = perfect(users=50, slots=30, turns=4, latency_s=1.0, jitter=0.2)
    assert jittered is not None and jittered.throughput < 30 and jittered.p95_ms > 50 / 30 * 1000
    assert perfect(users=1, slots=1, turns=40, latency_s=0.0, jitter=0.0) is None


def test_scale_scenario_smoke_run(tmp_path: Path) -> None:
    """`--scale`, CI-sized: the threads pool under the whole load, prefork (the card's command) under one turn per
    user, side by side, each with total RSS, turns in flight per GB and the perfect system's figures."""
    done, reports = _demo(tmp_path, "--scale", "--users", "40", "--turns", "2", "--latency", "0.3", timeout=240)
    assert done.returncode == 0, done.stdout
    [report] = reports
    by_layout = {r["layout"]: r for r in report["results"]}
    assert set(by_layout) == {"celery 2w threads", "celery 3w prefork"}
    threads, prefork = by_layout["celery 2w threads"], by_layout["celery 3w prefork"]
    assert threads["worker_flag"] == "--pool=threads --concurrency=500" and threads["turns_answered"] == 80
    assert prefork["worker_flag"] == "--autoscale=10,2" and prefork["turns_answered"] == 40
    for result in (threads, prefork):
        assert result["passed"] and result["turns_per_gb"] > 0 and result["perfect"]["throughput"] > 0
    assert report["overhead_probe"] == []


def test_round_trips_are_counted_per_client_and_pipeline() -> None:
    """benchmarks/roundtrips.py: commands of one connection close together are one round trip; scripts' own calls
    and other databases are not counted; the idle rate is taken out."""
    from benchmarks.roundtrips import RoundTripWatch

    watch = RoundTripWatch(REDIS_URL)
    watch._db = 5
    watch.idle.started, watch.idle.ended = 100.0, 102.0
    watch.loaded.started, watch.loaded.ended = 102.0, 104.0

    def seen(at: float, command: str, port: int = 1, db: int = 5, kind: str = "tcp") -> None:
        watch._count({"time": at, "db": db, "client_address": "127.0.0.1", "client_port": port,
                      "client_type": kind, "command": command})

    seen(100.5, "BRPOP q 1")  # idle: one poll
    watch._current = watch.loaded
    seen(102.1, "BRPOP q 1")
    seen(102.2, "MULTI")
    seen(102.20005, "ZADD unacked_index 1 x")
    seen(102.2001, "EXEC")  # one pipeline: one round trip
    seen(102.20011, "SET k v", kind="lua")  # inside a script
    seen(102.3, "EVALSHA abc 1 k", port=2)
    seen(102.4, "GET k", db=6)  # another database
    watch._client.close()
    trips, commands, by_name = watch.per_turn(turns=1)
    assert trips == 2.0  # BRPOP + pipeline + EVALSHA, less the idle window's one BRPOP
    assert by_name == {"MULTI": 1, "ZADD": 1, "EXEC": 1, "EVALSHA": 1} and commands == 4
