"""Everything else that runs turns, in distributed mode: /stop, subagents, cron and heartbeat under a leader,
the CLI, the embedded worker and `nanobot worker`."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from typing import Any

import pytest

from nanobot.config.loader import cron_store_path
from nanobot.cron.service import CronService
from nanobot.cron.types import CronSchedule
from nanobot.testing.llm_server import FakeLLM, Rule
from nanobot.testing.processes import Process, nanobot, wait_until
from tests.cluster import Cluster, wait_for
from tests.pools import POOLS

# The tests whose turns run differently under the two pools (a /stop reaching the running turn, a subagent task, the
# provider's retries) run under both; cron, the CLI and the worker commands do not depend on the pool.


def content(response: Any) -> str:
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def test_embedded_worker_serves_alone(cluster_factory: Any, fake_llm: FakeLLM) -> None:
    cluster: Cluster = cluster_factory(runEmbeddedWorker=True, pool="threads")  # the default pool
    gateway = cluster.start_gateway()
    assert content(cluster.chat("hi embedded", "e")) == "echo: hi embedded"
    assert "starting the embedded worker" in gateway.log()
    started = time.monotonic()
    assert gateway.stop(timeout=30) == 0
    assert time.monotonic() - started < 20, "an idle gateway should stop promptly"
    time.sleep(0.5)
    leftover = subprocess.run(["pgrep", "-f", f"embedded-{gateway.proc.pid}@"], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", "the embedded worker outlived its gateway"


def test_nanobot_worker_command_serves_turns(cluster_factory: Any) -> None:
    cluster: Cluster = cluster_factory(pool="threads")  # the default pool
    worker = Process(nanobot("worker", "--concurrency", "2"), cluster.tmp_path / "nanobot-worker.log", env=cluster.env)
    cluster.workers.append(worker)
    wait_until(lambda: " ready." in worker.log(), 60, "nanobot worker ready", worker)
    assert "--without-gossip" in worker.log() and "--pool=threads" in worker.log()
    cluster.start_gateway()
    assert content(cluster.chat("via nanobot worker", "nw")) == "echo: via nanobot worker"


@pytest.mark.parametrize("pool", POOLS)
def test_stop_cancels_the_turn_on_the_worker(cluster_factory: Any, fake_llm: FakeLLM, pool: str) -> None:
    fake_llm.add_rule(Rule(match="slow thing", content="too late", delay_s=6.0, times=1))
    cluster: Cluster = cluster_factory(pool=pool)
    cluster.start_worker(autoscale="3,2")
    cluster.start_gateway()
    results: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: results.update(slow=cluster.chat("slow thing", "st")), daemon=True)
    thread.start()
    wait_for(lambda: cluster.lock_owner_pid("api:st") is not None, 30, "the turn to start")
    time.sleep(0.5)
    stop_reply = content(cluster.chat("/stop", "st"))
    thread.join(20)
    assert stop_reply.startswith("⏹ Stopped 1")
    assert content(results["slow"]) == "⏹ Stopped."
    assert content(cluster.chat("after stop", "st")) == "echo: after stop"
    assert content(cluster.chat("/stop", "st")) == "Nothing is running in this conversation."


@pytest.mark.parametrize("pool", POOLS)
def test_spawned_subagent_runs_as_a_task_and_reports_back(cluster_factory: Any, fake_llm: FakeLLM, pool: str) -> None:
    fake_llm.add_rule(Rule(match="investigate", tool_calls=[{"name": "spawn", "arguments": {"task": "count sheep"}}]))
    fake_llm.add_rule(Rule(match="investigate", when_last_role="tool", content="On it."))
    fake_llm.add_rule(Rule(match="count sheep", content="42 sheep"))
    cluster: Cluster = cluster_factory(pool=pool)
    cluster.start_worker(autoscale="3,2")
    cluster.start_gateway()
    assert content(cluster.chat("investigate please", "sub")) == "On it."
    wait_for(lambda: any("42 sheep" in m["content"] for m in cluster.outbound()), 30, "the subagent's report")
    report = next(m for m in cluster.outbound() if "42 sheep" in m["content"])
    assert (report["channel"], report["chat_id"]) == ("api", "sub")
    assert any("nanobot.run_subagent" in w.log() for w in cluster.workers)
    assert "42 sheep" in json.dumps(cluster.history("api:sub"))


def test_cli_agent_shares_lock_and_history_with_workers(cluster_factory: Any, fake_llm: FakeLLM) -> None:
    cluster: Cluster = cluster_factory(sessions="redis")
    cluster.start_worker(autoscale="2,1")
    cluster.start_gateway()
    assert content(cluster.chat("from the api", "shared")) == "echo: from the api"
    env = {**os.environ, **cluster.env}
    cli = subprocess.run(nanobot("agent", "-m", "from the cli", "-s", "api:shared", "--no-markdown"), env=env,
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert "echo: from the cli" in cli.stdout
    assert [m["content"] for m in fake_llm.requests[-1].messages[1:]] == [
        "from the api", "echo: from the api", "from the cli"]
    assert content(cluster.chat("and back", "shared")) == "echo: and back"
    assert len(fake_llm.requests[-1].messages) == 6


def test_two_gateways_fire_each_cron_job_once(cluster_factory: Any, fake_llm: FakeLLM) -> None:
    cluster: Cluster = cluster_factory()
    cluster.start_worker(autoscale="2,1")
    first = cluster.start_gateway()
    second = Process(nanobot("gateway", "--port", "0"), cluster.tmp_path / "second-gateway.log", env=cluster.env)
    try:
        wait_until(lambda: "gateway started" in second.log(), 30, "second gateway", second)
        os.environ["NANOBOT_CONFIG"] = str(cluster.config_path)
        try:
            jobs = CronService(cron_store_path())
            jobs.add_job(name="ping", schedule=CronSchedule(kind="every", every_ms=1000), message="cron ping")
            jobs.add_job(name="once", schedule=CronSchedule(kind="at", at_ms=int(time.time() * 1000) + 1500),
                         message="cron once", delete_after_run=True)
        finally:
            del os.environ["NANOBOT_CONFIG"]
        time.sleep(6)
        leaders = [g for g in (first, second) if "leads cron and heartbeat" in g.log()]
        assert len(leaders) == 1
        once = [r for r in fake_llm.requests if r.last_user_text == "cron once"]
        assert len(once) == 1
        pings = [r for r in fake_llm.requests if r.last_user_text == "cron ping"]
        assert 2 <= len(pings) <= 7
        ping_id = next(j.id for j in jobs.list_jobs(include_disabled=True) if j.name == "ping")
        history = cluster.history(f"cron:{ping_id}")
        assert len([m for m in history if m["role"] == "user"]) == len(pings)
    finally:
        second.stop()


@pytest.mark.parametrize("pool", POOLS)
def test_worker_that_cannot_reach_the_llm_retries_then_apologises(
    cluster_factory: Any, fake_llm: FakeLLM, pool: str
) -> None:
    fake_llm.add_rule(Rule(match="are you there", status=503, times=None))
    cluster: Cluster = cluster_factory(pool=pool)
    cluster.start_worker(autoscale="2,1")
    cluster.start_gateway()
    reply = content(cluster.chat("are you there?", "down"))
    assert reply.startswith("Sorry, I could not reach the language model")
    assert len([r for r in fake_llm.requests if r.last_user_text == "are you there?"]) == 2  # 1 try + 1 retry
    assert cluster.history("api:down")[0]["content"] == "are you there?"  # the message is kept
