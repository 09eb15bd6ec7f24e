"""Gateway restarts (durable stream vs plain pub/sub), rollback to local mode, and same answers in both modes."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from typing import Any

import httpx
import pytest

from nanobot.testing.llm_server import FakeLLM, Rule
from nanobot.testing.processes import Process, nanobot, wait_http_ok
from tests.cluster import Cluster, wait_for
from tests.pools import POOLS


def _send_all(cluster: Cluster, n: int) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = [{} for _ in range(n)]

    def one(i: int) -> None:
        try:
            results[i]["response"] = cluster.chat(f"restart-{i}", f"r{i}", key=f"key-{i}", timeout=60)
        except httpx.HTTPError as exc:
            results[i]["error"] = exc

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for r, t in zip(results, threads, strict=True):
        r["thread"] = t
    return results


# Plain pub/sub loses replies whatever the pool: that variant runs once.
@pytest.mark.parametrize(("mode", "pool"), [("stream", "prefork"), ("stream", "threads"), ("pubsub", "prefork")])
def test_gateway_restart_while_turns_run(cluster_factory: Any, fake_llm: FakeLLM, mode: str, pool: str) -> None:
    """Invariant 3 across a gateway restart: the stream keeps every reply published while the gateway
    was down (clients retry with the same Idempotency-Key and get it, with no second turn); plain pub/sub
    loses them."""
    fake_llm.add_rule(Rule(match="restart-", delay_s=2.0, times=None))
    cluster: Cluster = cluster_factory(outbound=mode, api_timeout_s=8, pool=pool)
    cluster.start_worker(autoscale="4,4")
    gateway = cluster.start_gateway()
    first = _send_all(cluster, 4)
    wait_for(lambda: "queued" in gateway.log() and gateway.log().count("queued") >= 4, 20, "4 accepted messages")
    assert gateway.stop() == 0
    for r in first:
        r["thread"].join(10)
    wait_for(lambda: sum("turn done" in w.log() for w in cluster.workers) and all(
        f"restart-{i}" in "".join(m["content"] for m in cluster.history(f"api:r{i}")) for i in range(4)), 30,
        "the 4 turns to finish while the gateway is down")
    time.sleep(0.5)
    cluster.start_gateway()
    retries = [cluster.chat(f"restart-{i}", f"r{i}", key=f"key-{i}", timeout=30) for i in range(4)]
    assert len([r for r in fake_llm.requests if r.last_user_text.startswith("restart-")]) == 4  # no turn ran twice
    if mode == "stream":
        for i, response in enumerate(retries):
            assert response.status_code == 200, response.text
            assert response.json()["choices"][0]["message"]["content"] == f"echo: restart-{i}"
    else:
        assert all(r.status_code == 504 for r in retries), [r.status_code for r in retries]


@pytest.mark.parametrize("pool", POOLS)
def test_rollback_from_celery_with_redis_sessions_to_local(cluster_factory: Any, fake_llm: FakeLLM, pool: str) -> None:
    cluster: Cluster = cluster_factory(pool=pool, sessions="redis")
    cluster.start_worker(autoscale="2,1")
    cluster.start_gateway()
    for text in ("remember the number 7", "and the colour blue"):
        assert cluster.chat(text, "rb").status_code == 200
    assert not (cluster.tmp_path / "workspace" / "sessions" / "api_rb.jsonl").exists()
    cluster.gateway.stop()
    for w in cluster.workers:
        w.stop()

    env = {**cluster.env}
    started = time.monotonic()
    exported = subprocess.run(nanobot("sessions", "export"), env={**os.environ, **env},
                              capture_output=True, text=True, timeout=60)
    assert exported.returncode == 0, exported.stderr
    again = subprocess.run(nanobot("sessions", "export"), env={**os.environ, **env},
                           capture_output=True, text=True, timeout=60)
    assert "exported 0" in again.stdout  # idempotent
    config = json.loads(cluster.config_path.read_text())
    config["bus"]["backend"] = "local"
    config["sessions"]["backend"] = "file"
    cluster.config_path.write_text(json.dumps(config))
    local = Process(nanobot("gateway"), cluster.tmp_path / "local-gateway.log", env=env)
    try:
        wait_http_ok(f"{cluster.base}/health", 30, local)
        response = cluster.chat("what did I tell you?", "rb")
        elapsed = time.monotonic() - started
        assert response.status_code == 200
        seen = [m["content"] for m in fake_llm.requests[-1].messages[1:]]
        assert seen == ["remember the number 7", "echo: remember the number 7", "and the colour blue",
                        "echo: and the colour blue", "what did I tell you?"]
        assert elapsed < 300
    finally:
        local.stop()


SCRIPT = [("alice", "hello"), ("bob", "note this"), ("alice", "how are you?"), ("bob", "thanks"), ("alice", "bye")]


def _tool_rules(llm: FakeLLM) -> None:
    llm.add_rule(Rule(match="note this", tool_calls=[{"name": "list_dir", "arguments": {}}], times=None,
                      when_last_role="user"))


def _normalise(history: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Role, content and tool calls; not timestamps, message ids or the simulated LLM's call ids."""
    def calls(m: dict[str, Any]) -> str | None:
        return json.dumps([c["function"] for c in m["tool_calls"]], sort_keys=True) if m.get("tool_calls") else None

    return [(m["role"], m.get("content") if m["role"] != "tool" else "(tool output)", calls(m)) for m in history]


@pytest.mark.parametrize("pool", POOLS)
def test_local_and_celery_modes_give_the_same_answers(cluster_factory: Any, fake_llm: FakeLLM, pool: str) -> None:
    """Invariant 7: the same conversation gives the same replies and histories in both modes."""
    _tool_rules(fake_llm)
    cluster: Cluster = cluster_factory(pool=pool)
    cluster.start_worker(autoscale="2,1")
    cluster.start_gateway()
    celery_replies = [cluster.chat(text, who).json()["choices"][0]["message"]["content"] for who, text in SCRIPT]
    celery_histories = {who: _normalise(cluster.history(f"api:{who}")) for who in ("alice", "bob")}
    cluster.gateway.stop()

    config = json.loads(cluster.config_path.read_text())
    config["bus"]["backend"] = "local"
    config.setdefault("tools", {})["isolation"] = "conversation"  # kept apart as in distributed mode (README)
    config["agents"]["defaults"]["workspace"] = str(cluster.tmp_path / "workspace-local")
    cluster.config_path.write_text(json.dumps(config))
    local = Process(nanobot("gateway"), cluster.tmp_path / "local-gateway.log", env=cluster.env)
    try:
        wait_http_ok(f"{cluster.base}/health", 30, local)
        local_replies = [cluster.chat(text, who).json()["choices"][0]["message"]["content"] for who, text in SCRIPT]
    finally:
        local.stop()
    assert local_replies == celery_replies
    for who in ("alice", "bob"):
        path = cluster.tmp_path / "workspace-local" / "sessions" / f"api_{who}.jsonl"
        local_history = [json.loads(x) for x in path.read_text().splitlines()[1:]]
        assert _normalise(local_history) == celery_histories[who]
