"""Redis lost while running: the gateway keeps accepting, retries, and delivers when Redis is back."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from nanobot.testing.llm_server import FakeLLM
from nanobot.testing.processes import free_port
from tests.cluster import Cluster, wait_for


class PrivateRedis:
    """A second Redis with an append-only file, so it can be stopped and started again with its data."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--maxmemory-policy", "noeviction"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(self._answers, 10, "private redis")

    def _answers(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.2).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # redis-server flushes its append-only file on SIGTERM
            self.proc.wait(10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is needed for this test (scripts/redis installs it)")
    server = PrivateRedis(tmp_path / "redis-data")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_gateway_keeps_accepting_while_redis_is_down(
    cluster_factory: Any, fake_llm: FakeLLM, private_redis: PrivateRedis
) -> None:
    cluster: Cluster = cluster_factory(redis_url=private_redis.url, redisUrl=private_redis.url)
    worker = cluster.start_worker(autoscale="2,1")
    gateway = cluster.start_gateway()
    first = cluster.chat("before the outage", "out")
    assert first.status_code == 200

    private_redis.stop()
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(r=cluster.chat("during the outage", "out", timeout=90)))
    thread.start()
    wait_for(lambda: "Redis unavailable" in gateway.log(), 20, "the gateway to notice the outage")
    time.sleep(2)
    assert thread.is_alive(), "the request should wait, not fail, while Redis is down"
    private_redis.start()
    # A Celery worker may die on a broker outage (a known kombu weakness when it closes the lost connection);
    # in production its supervisor restarts it (docker-compose: restart: unless-stopped). Do the same here.
    time.sleep(3)
    if not worker.alive:
        print("the worker died during the outage; starting a replacement as a supervisor would")
        cluster.start_worker(autoscale="2,1")
    thread.join(80)
    response = result["r"]
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "echo: during the outage"
    assert [m["content"] for m in cluster.history("api:out")][-2:] == ["during the outage", "echo: during the outage"]
