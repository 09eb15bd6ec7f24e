"""DESIGN §4's invariants, each on real Redis, real Celery worker processes and (where it matters) the real
gateway process. Judged from what the simulated LLM received and what was published back."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from typing import Any

from nanobot.bus.events import InboundMessage
from nanobot.testing.llm_server import FakeLLM, RecordedRequest, Rule, peak_concurrency
from nanobot_celery.bus import CeleryMessageBus, ring
from tests.cluster import Cluster, wait_for
from tests.pools import cluster_factory_each_pool  # noqa: F401  (every test here runs under both pools)


def publish(cluster: Cluster, messages: list[InboundMessage], extra_rings: list[str] = ()) -> None:  # type: ignore[assignment]
    """Accept messages in this order through the real bus, as a gateway would."""

    async def go() -> None:
        bus = CeleryMessageBus.from_config(cluster.config)
        for msg in messages:
            await bus.publish_inbound(msg)
        assert await bus.wait_accepted(30)
        for session_key in extra_rings:
            ring(session_key, cluster.config.bus)
        await bus.close()

    asyncio.run(go())


def by_text(requests: list[RecordedRequest], prefix: str) -> list[RecordedRequest]:
    return sorted((r for r in requests if r.last_user_text.startswith(prefix)), key=lambda r: r.received_at)


def final_replies(cluster: Cluster) -> list[dict[str, Any]]:
    return [m for m in cluster.outbound() if not m["metadata"].get("_progress")]


def test_one_at_a_time_in_order_no_mixing_across_children_and_workers(cluster_factory: Any, fake_llm: FakeLLM) -> None:
    """Invariants 1, 2 and 5: a burst of 20 to one conversation, beside 8 others, on two autoscaling workers."""
    fake_llm.configure(latency_s=0.15, jitter=0.5)
    cluster: Cluster = cluster_factory()
    cluster.start_worker(autoscale="4,2")
    cluster.start_worker(autoscale="4,2")
    burst = [InboundMessage("api", "u", "burst", f"burst-{i:02d}") for i in range(20)]
    others = [InboundMessage("api", "u", f"o{n}", f"o{n}-{t}") for t in range(3) for n in range(8)]
    messages = list(itertools.chain.from_iterable(itertools.zip_longest(burst, others)))
    publish(cluster, [m for m in messages if m is not None])
    wait_for(lambda: len(final_replies(cluster)) >= 44, 90, "44 replies")

    seen = by_text(fake_llm.requests, "burst-")
    assert [r.last_user_text for r in seen] == [f"burst-{i:02d}" for i in range(20)], "burst turns out of order"
    for a, b in itertools.pairwise(seen):
        assert b.received_at >= a.finished_at, f"{a.last_user_text} and {b.last_user_text} ran at the same time"
    for n in range(8):
        turns = by_text(fake_llm.requests, f"o{n}-")
        assert [r.last_user_text for r in turns] == [f"o{n}-{t}" for t in range(3)]
        assert all(b.received_at >= a.finished_at for a, b in itertools.pairwise(turns))
    assert peak_concurrency(fake_llm.requests) >= 3, "different conversations did not run in parallel"
    # No mixing: every request carries one conversation only, and every reply went to its own chat.
    for r in fake_llm.requests:
        own = r.last_user_text.split("-")[0]
        assert all(str(m["content"]).removeprefix("echo: ").startswith(own) for m in r.messages[1:])
    replies = final_replies(cluster)
    assert len(replies) == 44
    for reply in replies:
        assert reply["content"].removeprefix("echo: ").startswith(reply["chat_id"])
    # (worker, pool process): prefork spreads turns over children, the threads pool over workers' shared loops
    workers_used = {(n, line.split()[2]) for n, w in enumerate(cluster.workers) for line in w.log().splitlines()
                    if "turn start" in line}
    assert len(workers_used) >= 2, "turns did not spread over several pool processes"


def test_duplicates_make_no_second_turn_or_reply(cluster_factory: Any, fake_llm: FakeLLM) -> None:
    """Invariant 4: a channel redelivery (same message id) and extra doorbells do nothing more."""
    cluster: Cluster = cluster_factory()
    cluster.start_worker(autoscale="3,2")
    msg = InboundMessage("telegram", "u", "42", "only once", message_id="tg-1001")
    again = InboundMessage("telegram", "u", "42", "only once", message_id="tg-1001")
    publish(cluster, [msg, again], extra_rings=["telegram:42", "telegram:42"])
    wait_for(lambda: len(final_replies(cluster)) >= 1, 30, "the reply")
    time.sleep(1.5)
    assert [r.last_user_text for r in fake_llm.requests] == ["only once"]
    assert len(final_replies(cluster)) == 1
    assert [m["content"] for m in cluster.history("telegram:42")] == ["only once", "echo: only once"]


def test_worker_killed_mid_turn_is_redone_and_answered_once(cluster_factory: Any, fake_llm: FakeLLM) -> None:
    """Invariant 3: SIGKILL the worker running a turn; another worker redoes it; one reply."""
    fake_llm.add_rule(Rule(match="long job", content="first try (never delivered)", delay_s=5.0, times=1))
    cluster: Cluster = cluster_factory()
    cluster.start_worker(autoscale="2,1")
    cluster.start_worker(autoscale="2,1")
    cluster.start_gateway()
    pending = cluster.chat_in_background("long job", "k")
    wait_for(lambda: cluster.lock_owner_pid("api:k") is not None, 30, "a worker to take the turn")
    time.sleep(0.5)
    killed = cluster.kill_holder("api:k")
    pending["thread"].join(60)
    response = pending["response"]
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "echo: long job"
    assert len([r for r in fake_llm.requests if r.last_user_text == "long job"]) == 1  # the killed one never finished
    assert [m["content"] for m in final_replies(cluster)] == ["echo: long job"]
    assert [m["content"] for m in cluster.history("api:k")] == ["long job", "echo: long job"]
    assert not killed.alive


def test_paused_worker_cannot_write_after_the_next_holder_took_over(cluster_factory: Any, fake_llm: FakeLLM) -> None:
    """Invariant 6: SIGSTOP the holder past the lock TTL; the next holder's history stands."""
    fake_llm.add_rule(Rule(match="fenced", content="FROM-A", delay_s=1.0, times=1))
    fake_llm.add_rule(Rule(match="fenced", content="FROM-B", times=1))
    cluster: Cluster = cluster_factory()
    first = cluster.start_worker(autoscale="2,1")
    cluster.start_gateway()
    pending = cluster.chat_in_background("fenced", "f")
    wait_for(lambda: "turn start session=api:f" in first.log(), 30, "worker A to start the turn")
    time.sleep(0.3)  # its LLM request is out; the answer comes in 1 s, to a stopped process
    cluster.kill_holder("api:f", signal.SIGSTOP)
    try:
        cluster.start_worker(autoscale="2,1")
        pending["thread"].join(60)
        assert pending["response"].json()["choices"][0]["message"]["content"] == "FROM-B"
    finally:
        os.killpg(first.proc.pid, signal.SIGCONT)
    wait_for(lambda: "lock lost" in first.log() or "stale" in first.log(), 20, "worker A to find its lock lost")
    time.sleep(0.5)
    assert [m["content"] for m in cluster.history("api:f")] == ["fenced", "FROM-B"]
    assert [m["content"] for m in final_replies(cluster)] == ["FROM-B"]
    assert len(by_text(fake_llm.requests, "fenced")) == 2
