"""Forgetting a person (`nanobot conversations forget`): in local mode (files) and in distributed mode (a real
gateway and worker on Redis, with histories in Redis, a real dead letter, replies in the outbound streams and
fair-limit counters). Afterwards no trace of the person's secret is left in Redis, the workspace or any store;
the other person's conversation is untouched; a second run removes nothing and says so."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx

from nanobot.agent.workspace import conversation_folder
from nanobot.session.manager import SessionManager
from nanobot.testing.llm_server import FakeLLM, Rule
from nanobot.testing.processes import free_port, nanobot
from tests.cluster import API_KEY, Cluster, wait_for
from tests.conftest import write_config

SECRET = "forget-me-CANARY-6c1d"
KILL_MY_WORKER = [{"name": "exec", "arguments": {"command": "kill -9 $PPID"}}]


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **env, "COLUMNS": "250", "NO_COLOR": "1"}
    return subprocess.run(nanobot("conversations", *args), env=env, capture_output=True, text=True, timeout=60)


def files_holding(root: Path, text: str) -> list[Path]:
    """Every file under `root` whose bytes contain `text` (links not followed)."""
    found = []
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            if not path.is_symlink() and text.encode() in path.read_bytes():
                found.append(path)
    return found


def test_a_cached_history_whose_file_was_removed_is_not_written_back(tmp_path: Path) -> None:
    store = SessionManager(tmp_path)
    session = store.get_or_create("telegram:1")
    session.add_message("user", SECRET)
    store.save(session)
    store.path_for("telegram:1").unlink()  # what `forget` does while a local gateway keeps its cache
    assert store.get_or_create("telegram:1").messages == []


def test_forget_in_local_mode(tmp_path: Path, fake_llm: FakeLLM) -> None:
    config = write_config(tmp_path, fake_llm.base_url, tools={"isolation": "conversation"})
    env = {"NANOBOT_CONFIG": str(config)}
    fake_llm.add_rule(Rule(match="keep my secret", tool_calls=[
        {"name": "write_file", "arguments": {"path": "notes.txt", "content": SECRET}}]))
    fake_llm.add_rule(Rule(match="remind me", tool_calls=[
        {"name": "cron", "arguments": {"action": "add", "message": SECRET, "every_seconds": 3600}}]))
    for session, text in (("telegram:111", f"keep my secret {SECRET}"), ("telegram:111", "remind me"),
                          ("telegram:222", "hello from bob")):
        done = subprocess.run(nanobot("agent", "-m", text, "-s", session, "--no-markdown"), capture_output=True,
                              text=True, timeout=60, env={**os.environ, **env})
        assert done.returncode == 0, done.stderr
    workspace = tmp_path / "workspace"
    assert (conversation_folder(workspace, "telegram:111") / "notes.txt").read_text() == SECRET
    assert files_holding(tmp_path, SECRET), "the secret is stored before"

    listed = cli(env, "list")
    assert listed.returncode == 0, listed.stderr
    assert "telegram:111" in listed.stdout and "telegram:222" in listed.stdout
    jobs = subprocess.run(nanobot("cron", "list"), capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env, "COLUMNS": "250"})
    assert "telegram:111" in jobs.stdout, "the operator sees every job with its owner"

    forgotten = cli(env, "forget", "telegram:111")
    assert forgotten.returncode == 0, forgotten.stderr
    assert "cron job" in forgotten.stdout and "history file" in forgotten.stdout and "folder of" in forgotten.stdout
    assert files_holding(tmp_path, SECRET) == []
    assert "hello from bob" in (workspace / "sessions" / "telegram_222.jsonl").read_text()
    assert "telegram:111" not in cli(env, "list").stdout

    again = cli(env, "forget", "telegram:111")
    assert again.returncode == 0 and "nothing to remove" in again.stdout, again.stdout
    assert cli(env, "forget").returncode == 2, "a key or --sender is needed"


def redis_values(cluster: Cluster) -> str:
    """Everything the cluster keeps in Redis, keys and values, as one text."""
    r = cluster.redis
    parts = []
    for key in r.scan_iter(f"{cluster.prefix}*"):
        kind = r.type(key)
        if kind == "none":  # gone since the scan saw it
            continue
        value: Any = {"string": r.get, "list": lambda k: r.lrange(k, 0, -1), "hash": r.hgetall,
                      "set": r.smembers, "zset": lambda k: r.zrange(k, 0, -1), "stream": r.xrange}[kind](key)
        parts.append(f"{key} {value}")
    return "\n".join(parts)


def test_forget_in_distributed_mode(cluster_factory: Any, fake_llm: FakeLLM, tmp_path: Path) -> None:
    keys = {"key-alice": "alice", "key-bob": "bob"}
    api_port = free_port()
    cluster: Cluster = cluster_factory(
        sessions="redis", maxDeliveries=2,
        channels={"api": {"enabled": True, "port": api_port, "apiKey": API_KEY, "keys": keys}},
        sections={"tools": {"exec": {"sandbox": "none"}}, "limits": {"messagesPerMinute": 100}},
    )
    cluster.base = f"http://127.0.0.1:{api_port}"
    cluster.start_worker(autoscale="2,1")
    cluster.start_gateway()

    def post(key: str, content: str, session: str) -> httpx.Response:
        return cluster.chat(content, session, api_key=key, timeout=90)

    fake_llm.add_rule(Rule(match="keep my secret", tool_calls=[
        {"name": "write_file", "arguments": {"path": "notes.txt", "content": SECRET}}]))
    fake_llm.add_rule(Rule(match="remind me", tool_calls=[
        {"name": "cron", "arguments": {"action": "add", "message": SECRET, "every_seconds": 3600}}]))
    fake_llm.add_rule(Rule(match="poison", tool_calls=KILL_MY_WORKER, times=2))
    assert post("key-alice", f"keep my secret {SECRET}", "s1").status_code == 200
    assert post("key-alice", "remind me", "s1").status_code == 200
    assert post("key-alice", f"poison {SECRET}", "s2").status_code == 200  # the apology, after two deliveries
    assert post("key-bob", "hello from bob", "s1").status_code == 200
    wait_for(lambda: cluster.redis.xlen(f"{cluster.prefix}:deadletters") == 1, 60, "the dead letter")
    before = redis_values(cluster)
    assert SECRET in before and "deadletters" in before and ":limits:" in before
    assert files_holding(tmp_path / "workspace", SECRET)

    listed = cli(cluster.env, "list")
    assert listed.returncode == 0, listed.stderr
    assert "api:alice/s1" in listed.stdout and "api:bob/s1" in listed.stdout

    forgotten = cli(cluster.env, "forget", "--sender", "api:alice")
    assert forgotten.returncode == 0, forgotten.stderr
    out = " ".join(forgotten.stdout.split())
    for what in ("dead letter", "not yet delivered", "fair-limit counter", "cron job", "Redis key(s) of api:alice/s2",
                 "folder of api:alice/s1"):
        assert what in out, (what, out)

    after = redis_values(cluster)
    assert SECRET not in after and "alice" not in after.replace(f"{cluster.prefix}:", ""), after
    assert files_holding(tmp_path, SECRET) == []
    assert "hello from bob" in after, "the other person's history and replies are untouched"
    bob = cluster.history("api:bob/s1")
    assert any("hello from bob" in str(m.get("content")) for m in bob)

    again = cli(cluster.env, "forget", "--sender", "api:alice")
    assert again.returncode == 0 and "nothing to remove" in again.stdout, again.stdout
    # The person may come back: a new conversation starts from nothing.
    fresh = post("key-alice", "do you know me?", "s1")
    assert fresh.status_code == 200
    request = next(r for r in fake_llm.requests if r.last_user_text == "do you know me?")
    assert SECRET not in json.dumps(request.messages)
