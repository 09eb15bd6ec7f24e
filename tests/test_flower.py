"""Flower watches the workers and shows process_turn tasks with their session key: it turns the workers' task
events on itself (they are off while nobody watches)."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any

import httpx
from celery import Celery

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
    # Workers send task events only once Flower has turned them on (celeryconfig: off by default; Flower
    # broadcasts `enable_events` every few seconds): a turn run before that is not listed, the next ones are.
    def turn_task_seen() -> bool:
        assert cluster.chat("watch me", "flowery").status_code == 200
        tasks = httpx.get(f"{base}/api/tasks", auth=auth, timeout=5).json()
        turns = [t for t in tasks.values() if t.get("name") == "nanobot.process_turn"]
        return any("api:flowery" in str(t.get("args")) for t in turns)

    wait_until(turn_task_seen, 30, "flower to turn task events on and list a process_turn task", flower)
    workers = httpx.get(f"{base}/api/workers", auth=auth, params={"refresh": "true"}, timeout=20).json()
    assert any(name.startswith("flowerwatch@") for name in workers)


def test_no_task_events_while_nobody_watches(cluster_factory: Any) -> None:
    """Without Flower, a turn sends no task events (celeryconfig turns them off): neither the workers'
    received/started/succeeded nor the gateway's sent. Listened to as Flower would, with an event receiver; the
    worker's heartbeat events (always on) show that the receiver hears what is sent."""
    cluster: Cluster = cluster_factory()
    cluster.start_worker(autoscale="2,1")
    cluster.start_gateway()
    listener = Celery(broker=cluster.redis_url)
    seen: list[str] = []
    with listener.connection_for_read() as connection:
        receiver = listener.events.Receiver(connection, handlers={"*": lambda event: seen.append(event["type"])})
        with receiver.consumer_context(wakeup=False) as (conn, _channel, _consumers):  # bound from here on
            pending = cluster.chat_in_background("unwatched", "quiet")
            deadline = time.monotonic() + 5  # more than two worker heartbeats (every 2 s)
            while time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=0.5)
    pending["thread"].join(30)
    assert pending["response"].status_code == 200
    assert "worker-heartbeat" in seen
    assert not [kind for kind in seen if kind.startswith("task-")], seen
