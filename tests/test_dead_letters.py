"""Poison messages: delivery counting in the mailbox, the dead letters, the apology, `nanobot deadletters`, and
/stop answering the messages queued behind the stopped turn (each once)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from nanobot.bus.events import InboundMessage, OutboundMessage
from nanobot.session.locks import RedisConversationLockManager
from nanobot.session.redis_keys import RedisKeys
from nanobot.testing.llm_server import FakeLLM, Rule
from nanobot.testing.processes import free_port, nanobot
from nanobot_celery.deadletters import APOLOGY, WORKER_DIED, describe_error
from nanobot_celery.mailbox import Mailbox
from tests.cluster import REDIS_DB, REDIS_HOST, REDIS_PORT, Cluster, redis_available, wait_for
from tests.conftest import write_config

KILL_MY_WORKER = [{"name": "exec", "arguments": {"command": "kill -9 $PPID"}}]
UNSANDBOXED = {"tools": {"exec": {"sandbox": "none"}}}


def content(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**cluster.env, "COLUMNS": "250"}
    return subprocess.run(nanobot("deadletters", *args), env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=60)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A worker's /metrics: (sample name, sorted labels) -> value."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10, trust_env=False).text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def one_line(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------------------- the mailbox, on real Redis
def test_claims_are_counted_and_errors_handed_over_once() -> None:
    if not redis_available():
        pytest.fail(f"Redis does not answer at {REDIS_HOST}:{REDIS_PORT}")

    async def scenario() -> None:
        client = aioredis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB, decode_responses=True)
        keys = RedisKeys(f"nbtest{uuid.uuid4().hex[:8]}")
        mailbox = Mailbox(client, keys, dedup_ttl_s=600)
        locks = RedisConversationLockManager(client, keys, ttl_ms=5000)
        msg = InboundMessage("api", "u1", "c1", "private words")
        sk = msg.session_key
        try:
            assert await mailbox.enqueue(msg)
            lease = await locks.acquire(sk)
            first = await mailbox.claim(lease)
            assert first is not None and (first.recovered, first.deliveries, first.last_error) == (False, 1, "")
            error = describe_error(RuntimeError("tool blew up on private words"), msg.content)
            assert error == "RuntimeError: tool blew up on <message>"
            await mailbox.record_error(sk, msg.message_id, error)
            second = await mailbox.claim(lease)  # still in flight: the same message, counted again
            assert second is not None and (second.recovered, second.deliveries, second.last_error) == (True, 2, error)
            third = await mailbox.claim(lease)  # the error was handed over once
            assert third is not None and (third.deliveries, third.last_error) == (3, "")
            assert 0 < await client.ttl(keys.deliveries(sk)) <= 600
            reply = OutboundMessage("api", "c1", "done", reply_to=msg.message_id)
            assert await mailbox.commit(lease, third, msg.message_id, reply)
            assert not await client.exists(keys.deliveries(sk))  # commit forgot the count
            assert await mailbox.claim(lease) is None
            await locks.release(lease)
        finally:
            await client.delete(*[k async for k in client.scan_iter(f"{keys.prefix}:*")] or ["-"])
            await client.aclose()

    asyncio.run(scenario())


def test_drain_sets_aside_with_the_recorded_error(tmp_path: Path, fake_llm: FakeLLM) -> None:
    """In-process drain on real Redis: a message already claimed maxDeliveries times, whose last attempt
    recorded an error, is set aside on its next claim (no LLM call) with that error; its user gets the
    apology on the outbound stream; the next message of the conversation is answered."""
    if not redis_available():
        pytest.fail(f"Redis does not answer at {REDIS_HOST}:{REDIS_PORT}")
    from nanobot.config import load_config
    from nanobot_celery.drain import drain
    from nanobot_celery.runtime import build_runtime

    prefix = f"nbtest{uuid.uuid4().hex[:8]}"
    path = write_config(tmp_path, fake_llm.base_url, bus={
        "backend": "celery", "redisUrl": f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}", "keyPrefix": prefix,
        "maxDeliveries": 2,
    })
    rt = build_runtime(load_config(path))
    keys = rt.bus.keys
    poison = InboundMessage("api", "u1", "c9", "do the thing")
    after = InboundMessage("api", "u1", "c9", "next one")
    sk = poison.session_key
    try:
        assert rt.run(rt.bus.mailbox.enqueue(poison)) and rt.run(rt.bus.mailbox.enqueue(after))
        rt.run(rt.bus.redis.hset(keys.deliveries(sk), mapping={
            poison.message_id: 2, f"error:{poison.message_id}": "KeyError: 'boom'"}))
        result = rt.run(drain(rt, sk))
        assert result.handled == 2
        [(_, letter)] = rt.run(rt.bus.redis.xrange(keys.dead_letters))
        assert (letter["error"], letter["deliveries"], letter["message_id"]) == ("KeyError: 'boom'", "3",
                                                                                  poison.message_id)
        replies = [json.loads(f["m"]) for _, f in rt.run(rt.bus.redis.xrange(keys.outbound))]
        assert [(r["reply_to"], r["content"]) for r in replies] == [
            (poison.message_id, APOLOGY.format(n=3)), (after.message_id, "echo: next one")]
        assert not [r for r in fake_llm.requests if r.last_user_text == "do the thing"]
        assert rt.run(rt.bus.mailbox.is_done(sk, poison.message_id))
        assert not rt.run(rt.bus.redis.exists(keys.deliveries(sk)))
    finally:
        rt.run(rt.bus.redis.delete(*[k for k in rt.run(_keys(rt.bus.redis, prefix))] or ["-"]))
        rt.close()


async def _keys(client: Any, prefix: str) -> list[str]:
    return [k async for k in client.scan_iter(f"{prefix}:*")]


def test_error_text_is_bounded() -> None:
    assert len(describe_error(ValueError("x" * 1000))) == 300


def test_cli_in_local_mode_says_dead_letters_need_celery(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9/v1")
    done = subprocess.run(nanobot("deadletters", "list"), env={**os.environ, "NANOBOT_CONFIG": str(config),
                          "COLUMNS": "250"}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "dead letters exist only in distributed mode (bus.backend celery)" in one_line(done.stderr)


# ---------------------------------------------------------------------------- a real cluster
def test_poison_message_is_set_aside_and_the_conversation_moves_on(cluster_factory: Any, fake_llm: FakeLLM) -> None:
    """A turn that kills its pool child every time: after maxDeliveries (2) attempts it lands in the dead letters
    with its error and count, its user gets the apology, the conversation's next message is answered, other
    conversations are served; then `nanobot deadletters` lists, shows, retries and drops."""
    fake_llm.add_rule(Rule(match="poison-a", tool_calls=KILL_MY_WORKER, times=2))
    fake_llm.add_rule(Rule(match="poison-b", tool_calls=KILL_MY_WORKER, times=2))
    cluster: Cluster = cluster_factory(maxDeliveries=2, sections=UNSANDBOXED)
    metrics_port = free_port()
    worker = cluster.start_worker(autoscale="4,2", metrics_port=metrics_port)
    cluster.start_gateway()
    a = cluster.chat_in_background("poison-a secret words", "pa")
    wait_for(lambda: cluster.redis.llen(f"{cluster.prefix}:mailbox:api:pa") == 0
             and cluster.redis.llen(f"{cluster.prefix}:inflight:api:pa") == 1, 30, "the poison to be claimed")
    queued_behind = cluster.chat_in_background("after the poison", "pa")
    b = cluster.chat_in_background("poison-b", "pb")
    assert content(cluster.chat("an innocent message", "other")) == "echo: an innocent message"

    for pending in (a, b, queued_behind):
        pending["thread"].join(90)
    assert content(a["response"]) == APOLOGY.format(n=3)
    assert content(b["response"]) == APOLOGY.format(n=3)
    assert content(queued_behind["response"]) == "echo: after the poison"
    assert content(cluster.chat("still here?", "pa")) == "echo: still here?"
    assert len([r for r in fake_llm.requests if r.last_user_text.startswith("poison-a")]) == 2
    assert worker.alive

    letters = {f["session_key"]: (entry_id, f) for entry_id, f in cluster.redis.xrange(f"{cluster.prefix}:deadletters")}
    assert sorted(letters) == ["api:pa", "api:pb"]
    a_id, a_fields = letters["api:pa"]
    assert a_fields["error"] == WORKER_DIED
    assert a_fields["deliveries"] == "3"
    assert a_fields["channel"] == "api" and a_fields["chat_id"] == "pa"
    assert "poison-a secret words" in a_fields["entry"]
    assert not cluster.redis.hgetall(f"{cluster.prefix}:deliveries:api:pa")
    assert "set aside in the dead letters" in worker.log()
    assert "secret words" not in worker.log()
    scraped = scrape(metrics_port)
    assert scraped.get(("nanobot_turns_total", (("outcome", "dead_letter"),))) == 2
    assert scraped.get(("nanobot_redeliveries_total", ())) == 4  # claims 2 and 3 of each poison

    listed = cli(cluster, "list")
    assert listed.returncode == 0, listed.stderr
    assert a_id in listed.stdout and "api:pa" in listed.stdout and "api:pb" in listed.stdout
    assert "worker process died" in one_line(listed.stdout)
    assert "secret words" not in listed.stdout

    shown = cli(cluster, "show", a_id)
    assert shown.returncode == 0, shown.stderr
    assert "poison-a secret words" in shown.stdout and '"deliveries": 3' in shown.stdout

    retried = cli(cluster, "retry", a_id)  # the LLM's kill rule is used up: this time it is answered
    assert retried.returncode == 0, retried.stderr
    wait_for(lambda: any(m["content"] == "echo: poison-a secret words" for m in cluster.outbound()), 60,
             "the retried message to be answered")
    assert [entry_id for entry_id, _ in cluster.redis.xrange(f"{cluster.prefix}:deadletters")] == [letters["api:pb"][0]]

    unknown = cli(cluster, "drop", "1-1")
    assert unknown.returncode == 1
    assert "no dead letter has the id '1-1'" in one_line(unknown.stderr)
    assert cli(cluster, "show", "not-an-id").returncode == 1

    dropped = cli(cluster, "drop", letters["api:pb"][0])
    assert dropped.returncode == 0, dropped.stderr
    assert cluster.redis.xlen(f"{cluster.prefix}:deadletters") == 0
    assert "no dead letters" in cli(cluster, "list").stdout
    assert "dropped 0 dead letter(s)" in cli(cluster, "drop", "--all").stdout


def test_stop_answers_each_queued_message_once(cluster_factory: Any, fake_llm: FakeLLM) -> None:
    """/stop while two messages wait behind the running turn: all three are answered 'Stopped' once each (the
    stopped one left flight before the queued ones were claimed)."""
    fake_llm.add_rule(Rule(match="slow thing", content="too late", delay_s=8.0, times=1))
    cluster: Cluster = cluster_factory()
    cluster.start_worker(autoscale="2,2")
    cluster.start_gateway()
    running = cluster.chat_in_background("slow thing", "sq")
    wait_for(lambda: cluster.lock_owner_pid("api:sq") is not None, 30, "the turn to start")
    queued = [cluster.chat_in_background(f"queued {i}", "sq") for i in range(2)]
    wait_for(lambda: cluster.redis.llen(f"{cluster.prefix}:mailbox:api:sq") == 2, 30, "two queued messages")
    time.sleep(0.3)
    assert content(cluster.chat("/stop", "sq")).startswith("⏹ Stopped 3")
    for pending in (running, *queued):
        pending["thread"].join(30)
        assert content(pending["response"]) == "⏹ Stopped."
    stopped = [m for m in cluster.outbound() if m["content"] == "⏹ Stopped."]
    assert len(stopped) == 3
    assert len({m["reply_to"] for m in stopped}) == 3
    assert not [r for r in fake_llm.requests if r.last_user_text.startswith("queued")]
