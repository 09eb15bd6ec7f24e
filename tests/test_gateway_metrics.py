"""The gateway's /metrics in distributed mode: inbound and outbound counts, the backlog gauges, and the embedded
worker's restart; scraped from real gateway processes (tests/cluster.py) and parsed with prometheus-client's
parser. Plus in-process checks of the backlog reader on the real Redis and of the small pure helpers."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from nanobot.bus.events import InboundMessage
from nanobot.channels.api import inbound_outcome
from nanobot.session.redis_keys import RedisKeys
from nanobot.testing.processes import free_port
from nanobot_celery.backlog import BacklogGauges, message_age_s, read_backlog
from nanobot_celery.gateway import WORKER_RESTART_MAX_S, restart_delay
from nanobot_celery.mailbox import Mailbox
from tests.cluster import REDIS_DB, REDIS_HOST, REDIS_PORT, Cluster, wait_for
from tests.private_redis import StoppableRedis

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10, trust_env=False)
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def gateway_cluster(cluster_factory: Any, redis_url: str | None = None, **bus: Any) -> tuple[Cluster, int]:
    """A cluster whose gateway serves its HTTP (health, ready, metrics) on a known port."""
    port = free_port()
    if redis_url is not None:
        bus = {"redis_url": redis_url, "redisUrl": redis_url, **bus}
    cluster = cluster_factory(sections={"gateway": {"heartbeat": {"enabled": False}, "port": port}}, **bus)
    return cluster, port


def test_turns_count_inbound_and_outbound_for_the_api_channel(cluster_factory: Any) -> None:
    cluster, port = gateway_cluster(cluster_factory)
    cluster.start_worker()
    cluster.start_gateway()
    before = scrape(port)
    n = 3
    for i in range(n):
        assert cluster.chat(f"hello {i}", f"counted-{i}").status_code == 200

    def risen() -> bool:
        now = scrape(port)
        return value(now, "nanobot_outbound_messages_total", channel="api", outcome="ok") >= n + value(
            before, "nanobot_outbound_messages_total", channel="api", outcome="ok")

    wait_for(risen, 10, "the outbound counter")
    after = scrape(port)
    for name in ("nanobot_inbound_messages_total", "nanobot_outbound_messages_total"):
        assert value(after, name, channel="api", outcome="ok") - value(before, name, channel="api", outcome="ok") == n
    # A request with a wrong key is counted as unauthorized, not as a message.
    wrong = httpx.post(f"{cluster.base}/v1/chat/completions", headers={"Authorization": "Bearer nope"},
                       json={"messages": [{"role": "user", "content": "x"}]}, timeout=10, trust_env=False)
    assert wrong.status_code == 401
    last = scrape(port)
    assert value(last, "nanobot_inbound_messages_total", channel="api", outcome="unauthorized") == 1 + value(
        after, "nanobot_inbound_messages_total", channel="api", outcome="unauthorized")
    assert value(last, "nanobot_inbound_messages_total", channel="api", outcome="ok") == value(
        after, "nanobot_inbound_messages_total", channel="api", outcome="ok")


def test_a_held_backlog_shows_in_the_gauges_and_falls_to_zero(
    cluster_factory: Any, stoppable_redis: StoppableRedis
) -> None:
    cluster, port = gateway_cluster(cluster_factory, stoppable_redis.url)
    cluster.start_gateway()
    m = 4
    answers: list[int] = []
    threads = [
        threading.Thread(target=lambda i=i: answers.append(cluster.chat(f"wait {i}", f"held-{i}").status_code))
        for i in range(m)
    ]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: value(scrape(port), "nanobot_backlog_messages", state="waiting") == m, 20, "m waiting")
        held = scrape(port)
        assert value(held, "nanobot_backlog_messages", state="in_flight") == 0
        assert value(held, "nanobot_backlog_conversations", state="unheld") == m
        assert value(held, "nanobot_backlog_conversations", state="held") == 0
        assert value(held, "nanobot_backlog_oldest_age_seconds") > 0
        queued = sum(v for (name, _labels), v in held.items() if name == "celery_queue_length")
        assert queued > 0
        # The queue label is bounded: the shard queues and the subagent queue, nothing per conversation.
        queue_labels = {dict(labels)["queue_name"] for (name, labels) in held if name == "celery_queue_length"}
        # ...named with the installation's key prefix, so another installation on this Redis keeps its doorbells.
        assert queue_labels == {f"{cluster.prefix}.turns.{i}" for i in range(4)} | {f"{cluster.prefix}.subagents"}

        cluster.start_worker()

        def drained() -> bool:
            now = scrape(port)
            gauges = [
                value(now, "nanobot_backlog_messages", state="waiting"),
                value(now, "nanobot_backlog_messages", state="in_flight"),
                value(now, "nanobot_backlog_conversations", state="unheld"),
                value(now, "nanobot_backlog_conversations", state="held"),
                value(now, "nanobot_backlog_oldest_age_seconds"),
                sum(v for (name, _labels), v in now.items() if name == "celery_queue_length"),
            ]
            return not any(gauges)

        wait_for(drained, 60, "the backlog to drain")
    finally:
        for thread in threads:
            thread.join(90)
    assert answers == [200] * m


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.append(int(entry))
    return found


def _embedded_worker(gateway_pid: int) -> int | None:
    for child in _children(gateway_pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"celery" in cmdline and b"embedded-" in cmdline:
            return child
    return None


def test_the_embedded_worker_is_restarted_after_it_is_killed(cluster_factory: Any) -> None:
    cluster, port = gateway_cluster(cluster_factory, runEmbeddedWorker=True)
    gateway = cluster.start_gateway()
    assert cluster.chat("first", "embedded").status_code == 200
    first = _embedded_worker(gateway.proc.pid)
    assert first is not None
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: re.search(rf"embedded worker \(pid {first}\) exited with code -9", gateway.log()) is not None,
             20, "the gateway to log the death")
    wait_for(lambda: _embedded_worker(gateway.proc.pid) not in (None, first), 30, "a new embedded worker")
    assert cluster.chat("after the restart", "embedded", timeout=90).status_code == 200
    assert value(scrape(port), "nanobot_embedded_worker_restarts_total") == 1
    assert gateway.alive


# ------------------------------------------------------------------ in process
def test_read_backlog_on_real_redis() -> None:
    async def scenario() -> None:
        client = aioredis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB, decode_responses=True)
        keys = RedisKeys(prefix=f"nbbacklog{uuid.uuid4().hex[:8]}")
        try:
            mailbox = Mailbox(client, keys, 60, "stream", rung_ttl_ms=1000)
            for i in range(3):
                await mailbox.enqueue(InboundMessage("api", "u", f"c{i}", "hi", message_id=f"m{i}"))
            await mailbox.enqueue(InboundMessage("api", "u", "c0", "again", message_id="m9"))
            await client.set(keys.lock("api:c1"), "someone")
            await client.lpush(keys.inflight("api:c1"), "x")
            await client.sadd(keys.busy_sessions, "api:idle")
            backlog = await read_backlog(client, keys, shards=2, gateway_name="gw")
            assert (backlog.waiting, backlog.in_flight, backlog.held, backlog.unheld) == (4, 1, 1, 2)
            assert backlog.oldest_age_s >= 0
            assert backlog.outbound_pending == {"shared": 0, "own": 0}
            p = keys.prefix
            assert set(backlog.queues) == {f"{p}.turns.0", f"{p}.turns.1", f"{p}.subagents"}

            # A second read within the cache's age is not made; a failing Redis keeps the last values.
            gauges = BacklogGauges(lambda: client, keys, 2, "gw", max_age_s=60)
            await gauges.refresh()
            assert gauges.last is not None and gauges.last.waiting == 4
            broken = BacklogGauges(lambda: aioredis.Redis(port=1, socket_connect_timeout=0.2), keys, 2, "gw")
            await broken.refresh()
            assert broken.last is None
        finally:
            names = [k async for k in client.scan_iter(f"{keys.prefix}:*")]
            if names:
                await client.delete(*names)
            await client.aclose()

    asyncio.run(scenario())


def test_message_age_reads_the_naive_local_timestamp() -> None:
    msg = InboundMessage("api", "u", "c", "hi")
    raw = f'{{"timestamp": "{msg.timestamp.isoformat()}"}}'
    assert 0 <= message_age_s(raw) < 60
    assert message_age_s(None) == 0
    assert message_age_s("not json") == 0


def test_restart_delay_doubles_and_is_bounded() -> None:
    assert 0.75 <= restart_delay(1) <= 1.25
    assert 1.5 <= restart_delay(2) <= 2.5
    assert all(restart_delay(n) <= WORKER_RESTART_MAX_S * 1.25 for n in range(1, 30))


@pytest.mark.parametrize(("status", "code", "outcome"), [
    (401, "invalid_api_key", "unauthorized"), (429, None, "throttled"), (503, "server_busy", "throttled"),
    (403, "sender_not_allowed", "refused"), (400, None, "invalid"), (413, None, "invalid"),
    (409, "request_in_progress", "duplicate"), (503, "bus_unavailable", None), (500, None, None),
])
def test_api_error_outcomes(status: int, code: str | None, outcome: str | None) -> None:
    assert inbound_outcome(status, code) == outcome


def _registry_value(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_recent_ids_count_duplicates_for_their_channel() -> None:
    from nanobot.channels.dedup import RecentIds

    before = _registry_value("nanobot_inbound_messages_total", channel="telegram", outcome="duplicate")
    seen = RecentIds(channel="telegram")
    assert not seen.seen("1") and seen.seen("1") and seen.seen("1")
    RecentIds().seen("x")  # no channel: nothing counted
    after = _registry_value("nanobot_inbound_messages_total", channel="telegram", outcome="duplicate")
    assert after - before == 2


def test_deliver_counts_ok_failed_and_dropped() -> None:
    from nanobot.bus.events import OutboundMessage
    from nanobot.bus.queue import MessageBus
    from nanobot.channels.base import BaseChannel
    from nanobot.channels.manager import ChannelManager
    from nanobot.config.schema import ChannelBase, ChannelsConfig

    class Flaky(BaseChannel):
        name = "telegram"

        async def start(self) -> None: ...

        async def stop(self) -> None: ...

        async def send(self, msg: OutboundMessage) -> None:
            if msg.content == "fail":
                raise OSError("network down")

    async def scenario() -> None:
        bus = MessageBus()
        manager = ChannelManager(ChannelsConfig(), bus, {"telegram": Flaky(ChannelBase(), bus)})
        assert await manager.deliver(OutboundMessage("telegram", "c", "fine"))
        assert not await manager.deliver(OutboundMessage("telegram", "c", "fail"))
        assert not await manager.deliver(OutboundMessage("whatsapp", "c", "nowhere"))
        assert not await manager.deliver(OutboundMessage("made-up-by-a-tool", "c", "nowhere"))
        assert not await manager.deliver(OutboundMessage("cli", "c", "internal"))

    names = [("telegram", "ok"), ("telegram", "failed"), ("whatsapp", "dropped"), ("other", "dropped"),
             ("cli", "dropped")]
    before = {k: _registry_value("nanobot_outbound_messages_total", channel=k[0], outcome=k[1]) for k in names}
    asyncio.run(scenario())
    after = {k: _registry_value("nanobot_outbound_messages_total", channel=k[0], outcome=k[1]) for k in names}
    assert {k: after[k] - before[k] for k in names} == {
        ("telegram", "ok"): 1, ("telegram", "failed"): 1, ("whatsapp", "dropped"): 1, ("other", "dropped"): 1,
        ("cli", "dropped"): 0,
    }
