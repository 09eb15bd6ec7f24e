"""Flower watches the workers and shows process_turn tasks with their session key."""

from __future__ import annotations

import sys
from typing import Any

import httpx

from nanobot.testing.processes import Process, free_port, wait_until
from tests.cluster import Cluster


def test_flower_shows_workers_and_turn_tasks(cluster_factory: Any) -> None:
    cluster: Cluster = cluster_factory()
    port = free_port()
    flower = Process(
        [sys.executable, "-m", "celery", "-A", "nanobot_celery", "flower", f"--port={port}", "--address=127.0.0.1",
         "--basic-auth=admin:secret"],
        cluster.tmp_path / "flower.log", env=cluster.env,
    )
    cluster.workers.append(flower)
    auth = ("admin", "secret")
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(f"{base}/healthcheck", timeout=1).status_code == 200, 60, "flower", flower)
    assert httpx.get(f"{base}/api/workers", timeout=5).status_code == 401  # basic auth is on
    cluster.start_worker(autoscale="2,1", name="flowerwatch@%h")
    cluster.start_gateway()
    assert cluster.chat("watch me", "flowery").status_code == 200

    def turn_task_seen() -> bool:
        tasks = httpx.get(f"{base}/api/tasks", auth=auth, timeout=5).json()
        turns = [t for t in tasks.values() if t.get("name") == "nanobot.process_turn"]
        return any("api:flowery" in str(t.get("args")) for t in turns)

    wait_until(turn_task_seen, 30, "flower to list the process_turn task", flower)
    workers = httpx.get(f"{base}/api/workers", auth=auth, params={"refresh": "true"}, timeout=20).json()
    assert any(name.startswith("flowerwatch@") for name in workers)
