"""Redis lost while running: the gateway keeps accepting, retries, and delivers when Redis is back."""

from __future__ import annotations

import threading
import time
from typing import Any

from nanobot.testing.llm_server import FakeLLM
from tests.cluster import Cluster, wait_for
from tests.pools import cluster_factory_each_pool  # noqa: F401  (every test here runs under both pools)
from tests.private_redis import StoppableRedis


def test_gateway_keeps_accepting_while_redis_is_down(
    cluster_factory: Any, fake_llm: FakeLLM, stoppable_redis: StoppableRedis
) -> None:
    cluster: Cluster = cluster_factory(redis_url=stoppable_redis.url, redisUrl=stoppable_redis.url)
    worker = cluster.start_worker(autoscale="2,1")
    gateway = cluster.start_gateway()
    first = cluster.chat("before the outage", "out")
    assert first.status_code == 200

    stoppable_redis.stop()
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(r=cluster.chat("during the outage", "out", timeout=90)))
    thread.start()
    wait_for(lambda: "Redis unavailable" in gateway.log(), 20, "the gateway to notice the outage")
    time.sleep(2)
    assert thread.is_alive(), "the request should wait, not fail, while Redis is down"
    stoppable_redis.start()
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
