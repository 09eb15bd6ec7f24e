"""A worker's /metrics and /health, scraped from real workers: pool children's turns added up (multiprocess
mode), Celery's task metrics, liveness following Redis, `python -m nanobot_celery.probe`, and which processes
switch to multiprocess mode."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from nanobot.testing.llm_server import FakeLLM, Rule
from nanobot.testing.processes import free_port
from nanobot_celery.metrics_dir import celery_subcommand
from tests.cluster import Cluster, wait_for
from tests.private_redis import StoppableRedis

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
ROOT = Path(__file__).resolve().parent.parent


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape(port: int) -> Samples:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10, trust_env=False)
    assert response.status_code == 200, response.text
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def health(port: int) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}/health", timeout=10, trust_env=False)


def probe(cluster: Cluster, port: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **cluster.env, "NANOBOT_BUS__WORKER__METRICS_PORT": str(port)}
    return subprocess.run([sys.executable, "-m", "nanobot_celery.probe", "--timeout", "10"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def turns_by_process(directory: Path) -> dict[int, float]:
    """nanobot_turns_total{outcome="ok"} of each process that wrote counters into `directory`."""
    counts: dict[int, float] = {}
    for path in directory.glob("counter_*.db"):
        alone = directory.parent / f"alone-{path.stem}"
        alone.mkdir()
        shutil.copy(path, alone / path.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, str(alone))
        counts[int(path.stem.split("_")[1])] = value(
            parse(generate_latest(registry).decode()), "nanobot_turns_total", outcome="ok")
        shutil.rmtree(alone)
    return counts


def test_worker_metrics_add_up_its_pool_children(cluster_factory: Any, fake_llm: FakeLLM, tmp_path: Path) -> None:
    fake_llm.configure(latency_s=0.3)  # turns overlap, so several pool children run them
    cluster: Cluster = cluster_factory()
    port = free_port()
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    worker = cluster.start_worker(metrics_port=port, autoscale="4,2", env={"TMPDIR": str(private_tmp)})
    cluster.start_gateway()
    created = list(private_tmp.glob("nanobot-metrics-*"))
    assert len(created) == 1, "the worker makes one private multiprocess directory"

    before = scrape(port)
    n = 8
    replies: dict[int, httpx.Response] = {}

    def ask(i: int) -> None:
        replies[i] = cluster.chat(f"hello {i}", f"conv{i}")

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert sorted(replies) == list(range(n))
    assert all(r.status_code == 200 for r in replies.values()), [r.text for r in replies.values()]

    def ok_turns() -> float:
        return value(scrape(port), "nanobot_turns_total", outcome="ok")

    wait_for(lambda: ok_turns() >= value(before, "nanobot_turns_total", outcome="ok") + n, 30, "the turns counted")
    after = scrape(port)
    assert value(after, "nanobot_turns_total", outcome="ok") - value(before, "nanobot_turns_total", outcome="ok") == n
    assert (value(after, "nanobot_turn_duration_seconds_count")
            - value(before, "nanobot_turn_duration_seconds_count")) == n
    assert total(after, "celery_task_succeeded_total") - total(before, "celery_task_succeeded_total") >= n
    assert total(after, "celery_task_received_total") >= n  # counted by the main process
    assert total(after, "celery_task_started_total") >= n  # counted by the pool children
    assert total(after, "celery_task_runtime_count") >= n
    hostnames = {dict(labels)["hostname"] for name, labels in after if name == "celery_worker_up"}
    assert len(hostnames) == 1 and all(h.startswith("w0-") for h in hostnames), hostnames
    assert value(after, "celery_worker_up", hostname=hostnames.pop()) == 1
    queues = {dict(labels)["queue_name"] for name, labels in after if name == "celery_task_succeeded_total"}
    assert queues and all(q.startswith(f"{cluster.prefix}.turns.") for q in queues), queues
    wait_for(lambda: total(scrape(port), "celery_worker_tasks_active") == 0, 30, "no task running")

    # Each pool child wrote its own files; the main process (which runs no turn) counted none of them.
    per_process = turns_by_process(created[0])
    assert sum(per_process.values()) == value(after, "nanobot_turns_total", outcome="ok")
    assert per_process.get(worker.proc.pid, 0) == 0
    assert len([pid for pid, count in per_process.items() if count > 0]) >= 2, per_process

    response = health(port)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ok"
    result = probe(cluster, port)
    assert result.returncode == 0, result.stderr

    worker.stop(timeout=30)
    assert not created[0].exists(), "the private directory is removed at shutdown"
    result = probe(cluster, port)
    assert result.returncode == 1 and "unhealthy" in result.stderr


@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_task_metrics_in_thread_and_solo_pools(cluster_factory: Any, pool: str) -> None:
    cluster: Cluster = cluster_factory()
    port = free_port()
    cluster.start_worker(metrics_port=port, pool=pool, concurrency=2)
    cluster.start_gateway()
    for i in range(3):
        assert cluster.chat(f"hi {i}", f"{pool}{i}").status_code == 200
    wait_for(lambda: value(scrape(port), "nanobot_turns_total", outcome="ok") >= 3, 30, "the turns counted")
    samples = scrape(port)
    assert value(samples, "nanobot_turns_total", outcome="ok") == 3
    assert total(samples, "celery_task_succeeded_total") >= 3
    assert total(samples, "celery_task_runtime_count") >= 3
    assert total(samples, "celery_worker_up") == 1
    assert health(port).status_code == 200


def test_killed_child_is_counted_rejected_and_leaves_no_live_gauge(cluster_factory: Any, fake_llm: FakeLLM) -> None:
    fake_llm.add_rule(Rule(match="slow", delay_s=60, times=1))
    cluster: Cluster = cluster_factory()
    port = free_port()
    cluster.start_worker(metrics_port=port, autoscale="2,2")
    cluster.start_gateway()
    result: dict[str, httpx.Response] = {}
    thread = threading.Thread(target=lambda: result.update(r=cluster.chat("slow one", "victim", timeout=90)))
    thread.start()
    wait_for(lambda: cluster.lock_owner_pid("api:victim") is not None, 30, "a child to hold the conversation")
    wait_for(lambda: total(scrape(port), "celery_worker_tasks_active") == 1, 30, "the task counted as active")
    child = cluster.lock_owner_pid("api:victim")
    assert child is not None
    os.kill(child, signal.SIGKILL)
    thread.join(90)
    assert result["r"].status_code == 200, result["r"].text
    # Celery requeues the task of a child that died (task_reject_on_worker_lost) once its pool notices.
    wait_for(lambda: total(scrape(port), "celery_task_rejected_total") >= 1, 30, "the lost task counted rejected")
    wait_for(lambda: total(scrape(port), "celery_worker_tasks_active") == 0, 30, "the dead child's gauge dropped")
    assert value(scrape(port), "nanobot_turns_running") == 0


def test_worker_health_follows_redis(cluster_factory: Any, stoppable_redis: StoppableRedis, tmp_path: Path) -> None:
    cluster: Cluster = cluster_factory(redis_url=stoppable_redis.url, redisUrl=stoppable_redis.url)
    operator_dir = tmp_path / "prom"
    operator_dir.mkdir()
    (operator_dir / "counter_999999.db").write_bytes(b"stale")
    port = free_port()
    worker = cluster.start_worker(metrics_port=port, autoscale="2,1",
                                  env={"PROMETHEUS_MULTIPROC_DIR": str(operator_dir)})
    assert not (operator_dir / "counter_999999.db").exists(), "stale files of an earlier run are cleared"
    assert total(scrape(port), "celery_worker_up") == 1
    assert list(operator_dir.glob(f"gauge_max_{worker.proc.pid}.db")), "the operator's directory is used"
    assert health(port).status_code == 200
    assert probe(cluster, port).returncode == 0

    stoppable_redis.stop()
    wait_for(lambda: health(port).status_code == 503, 30, "/health to report the outage")
    body = health(port).json()
    assert body["status"] == "unavailable" and body["reason"], body
    result = probe(cluster, port)
    assert result.returncode == 1, result.stderr
    assert "503" in result.stderr and len(result.stderr.strip().splitlines()) == 1

    stoppable_redis.start()
    wait_for(lambda: health(port).status_code == 200, 60, "/health to recover with Redis")
    assert probe(cluster, port).returncode == 0
    assert worker.alive
    worker.stop(timeout=30)
    assert operator_dir.is_dir(), "the operator's directory is kept"


def test_taken_port_is_logged_and_the_worker_runs(cluster_factory: Any) -> None:
    cluster: Cluster = cluster_factory()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        worker = cluster.start_worker(metrics_port=port, autoscale="1,1")
        assert f"cannot listen on 127.0.0.1:{port}" in worker.log()
        assert worker.alive


def _python(code: str, env: dict[str, str]) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env={**os.environ, **env}, cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.parametrize(("argv", "expected"), [
    (["/venv/bin/celery", "-A", "nanobot_celery", "worker", "--pool=prefork"], "worker"),
    (["/lib/celery/__main__.py", "--app", "nanobot_celery", "-b", "redis://x", "worker"], "worker"),
    (["/lib/celery/__main__.py", "-A", "nanobot_celery", "flower"], "flower"),
    (["/venv/bin/celery", "-A", "nanobot_celery", "inspect", "ping"], "inspect"),
    (["/venv/bin/nanobot", "gateway"], None),
    (["/venv/bin/python", "-m", "pytest"], None),
])
def test_celery_subcommand(argv: list[str], expected: str | None) -> None:
    assert celery_subcommand(argv) == expected


def test_only_a_worker_switches_to_multiprocess_mode(tmp_path: Path) -> None:
    code = """
        import sys
        import celery.bin.celery  # loads Flower's plugin, which imports prometheus_client first
        sys.argv = [celery.bin.celery.__file__.replace("bin/celery.py", "__main__.py"), "-A", "nanobot_celery", {cmd!r}]
        import os
        import nanobot_celery
        from nanobot.metrics import instruments
        print(os.environ.get("PROMETHEUS_MULTIPROC_DIR"), type(instruments.TURN_DURATION._sum).__name__)
    """
    env = {"TMPDIR": str(tmp_path), "NANOBOT_CONFIG": str(tmp_path / "none.json")}
    env_without = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    for cmd in ("flower", "inspect"):
        out = _python(code.format(cmd=cmd), {**env_without, **env})
        assert out == "None MutexValue", (cmd, out)
    orphan = tmp_path / "nanobot-metrics-999999999-dead"  # a worker killed before its cleanup
    orphan.mkdir()
    live = tmp_path / f"nanobot-metrics-{os.getpid()}-live"
    live.mkdir()
    out = _python(code.format(cmd="worker"), {**env_without, **env})
    directory, kind = out.split()
    assert directory.startswith(str(tmp_path)) and kind == "MmapedValue", out
    assert not orphan.exists() and live.exists()
    assert not Path(directory).exists(), "removed when the process exits"
    out = _python("import os, nanobot_celery; print(os.environ.get('PROMETHEUS_MULTIPROC_DIR'))",
                  {**env_without, **env})
    assert out == "None"


def test_forked_child_writes_its_own_files(tmp_path: Path) -> None:
    """What prefork relies on: values the parent made before the fork stay the parent's; the child's go to
    files of its own pid, and the sum counts each once."""
    directory = tmp_path / "prom"
    directory.mkdir()
    code = """
        import os
        from nanobot.metrics import instruments
        from nanobot.metrics.exposition import render
        from nanobot_celery.runtime import prepare_pool_parent
        prepare_pool_parent()
        instruments.count_turn("ok"); instruments.count_turn("ok")
        pid = os.fork()
        if pid == 0:
            instruments.count_turn("ok")
            os._exit(0)
        os.waitpid(pid, 0)
        print(pid, os.getpid())
        print(render().decode())
    """
    out = _python(code, {"PROMETHEUS_MULTIPROC_DIR": str(directory), "NANOBOT_CONFIG": str(tmp_path / "none.json")})
    first, _, text = out.partition("\n")
    child, parent = (int(p) for p in first.split())
    assert value(parse(text), "nanobot_turns_total", outcome="ok") == 3
    assert turns_by_process(directory) == {parent: 2, child: 1}
