"""Redis lost while running: the gateway keeps accepting, retries, and delivers when Redis is back; workers ride
out a Redis killed under load and restarted from its append-only file."""

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
    thread.join(80)
    assert worker.alive, "the worker rides out the outage (nanobot_celery/broker_fixes.py)"
    response = result["r"]
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "echo: during the outage"
    assert [m["content"] for m in cluster.history("api:out")][-2:] == ["during the outage", "echo: during the outage"]


def test_workers_ride_out_redis_killed_under_load_and_restarted(
    cluster_factory: Any, fake_llm: FakeLLM, stoppable_redis: StoppableRedis
) -> None:
    """20 people talking; Redis SIGKILLed mid-load and started again from its AOF 2 s later. Celery 5.7's consumer
    used to stop the worker ("Unrecoverable error: AttributeError ... 'hostname'", see nanobot_celery/broker_fixes):
    now every worker keeps running, and every message is answered once, with its own echo, in order."""
    cluster: Cluster = cluster_factory(redis_url=stoppable_redis.url, redisUrl=stoppable_redis.url)
    workers = [cluster.start_worker(autoscale="4,2"), cluster.start_worker(autoscale="4,2")]
    cluster.start_gateway()
    turns = 6
    replies: dict[int, list[str]] = {user: [] for user in range(20)}

    def talk(user: int) -> None:
        for turn in range(turns):
            response = cluster.chat(f"user {user} turn {turn}", f"u{user}", timeout=120)
            replies[user].append(response.json()["choices"][0]["message"]["content"]
                                 if response.status_code == 200 else f"HTTP {response.status_code}")

    threads = [threading.Thread(target=talk, args=(user,)) for user in range(20)]
    for thread in threads:
        thread.start()
    wait_for(lambda: sum(map(len, replies.values())) >= 20, 60, "the load to be under way")
    stoppable_redis.kill()
    time.sleep(2)
    stoppable_redis.start()
    for thread in threads:
        thread.join(180)
    assert [w.alive for w in workers] == [True, True], "a worker stopped when Redis restarted"
    for worker in workers:
        assert "Unrecoverable error" not in worker.log()
    for user, got in replies.items():
        assert got == [f"echo: user {user} turn {turn}" for turn in range(turns)], (user, got)
        history = [m["content"] for m in cluster.history(f"api:u{user}") if m["role"] == "user"]
        assert history == [f"user {user} turn {turn}" for turn in range(turns)], (user, history)
