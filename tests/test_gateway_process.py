"""`nanobot gateway` as a real process, serving the API channel over real HTTP."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nanobot.testing.llm_server import FakeLLM
from nanobot.testing.processes import Process, free_port, nanobot, wait_http_ok, wait_until
from tests.conftest import write_config

API_KEY = "test-api-key"


class Gateway:
    def __init__(self, tmp_path: Path, llm: FakeLLM) -> None:
        self.port = free_port()
        self.config = write_config(
            tmp_path,
            llm.base_url,
            channels={"api": {"enabled": True, "port": self.port, "apiKey": API_KEY, "timeoutS": 20}},
        )
        self.tmp_path = tmp_path
        self.proc: Process | None = None
        self.base = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = Process(nanobot("gateway"), self.tmp_path / "gateway.log", env={"NANOBOT_CONFIG": str(self.config)})
        wait_http_ok(f"{self.base}/health", 30, self.proc)

    def stop(self) -> int:
        assert self.proc is not None
        return self.proc.stop()

    def chat(self, content: str, session_id: str | None = None, **extra: object) -> httpx.Response:
        body: dict[str, object] = {"model": "nanobot", "messages": [{"role": "user", "content": content}], **extra}
        if session_id is not None:
            body["session_id"] = session_id
        return httpx.post(
            f"{self.base}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30
        )


@pytest.fixture
def gateway(tmp_path: Path, fake_llm: FakeLLM) -> Iterator[Gateway]:
    gw = Gateway(tmp_path, fake_llm)
    gw.start()
    try:
        yield gw
    finally:
        if gw.proc is not None:
            gw.proc.stop()


def answer(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def test_sessions_keep_history_across_turns_and_restart(gateway: Gateway, fake_llm: FakeLLM) -> None:
    assert answer(gateway.chat("my name is Ada", session_id="ada")) == "echo: my name is Ada"
    assert answer(gateway.chat("hello", session_id="bob")) == "echo: hello"
    assert answer(gateway.chat("what is my name?", session_id="ada")) == "echo: what is my name?"
    seen = [m["content"] for m in fake_llm.requests[-1].messages[1:]]
    assert seen == ["my name is Ada", "echo: my name is Ada", "what is my name?"]

    assert gateway.stop() == 0, "gateway did not exit cleanly on SIGTERM"
    gateway.start()
    assert answer(gateway.chat("still there?", session_id="ada")) == "echo: still there?"
    seen = [m["content"] for m in fake_llm.requests[-1].messages[1:]]
    assert seen[:2] == ["my name is Ada", "echo: my name is Ada"] and len(seen) == 5
    assert "hello" not in seen  # bob's conversation never leaks into ada's
    workspace = gateway.tmp_path / "workspace" / "sessions"
    assert {p.name for p in workspace.glob("*.jsonl")} == {"api_ada.jsonl", "api_bob.jsonl"}


def test_default_session_and_streaming(gateway: Gateway) -> None:
    assert answer(gateway.chat("no session given")) == "echo: no session given"
    assert (gateway.tmp_path / "workspace" / "sessions" / "api_default.jsonl").exists()
    with httpx.stream(
        "POST",
        f"{gateway.base}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "stream me"}], "stream": True, "session_id": "s"},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert text == "echo: stream me"


def test_concurrent_sessions_get_their_own_replies(gateway: Gateway) -> None:
    def ask(i: int) -> tuple[int, str]:
        return i, answer(gateway.chat(f"question {i}", session_id=f"user{i}"))

    with concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(ask, range(10)))
    assert all(text == f"echo: question {i}" for i, text in results)


def test_malformed_requests_and_auth(gateway: Gateway) -> None:
    url = f"{gateway.base}/v1/chat/completions"
    auth = {"Authorization": f"Bearer {API_KEY}"}
    no_auth = httpx.post(url, json={"messages": [{"role": "user", "content": "x"}]}, timeout=10)
    assert no_auth.status_code == 401 and no_auth.json()["error"]["type"] == "authentication_error"
    wrong = httpx.post(url, json={"messages": []}, headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401
    for body in (
        b"{not json",
        b"[1, 2]",
        json.dumps({"messages": []}).encode(),
        json.dumps({"messages": [{"role": "system", "content": "only system"}]}).encode(),
        json.dumps({"messages": [{"role": "user", "content": "x"}], "session_id": 5}).encode(),
    ):
        r = httpx.post(url, content=body, headers={**auth, "Content-Type": "application/json"}, timeout=10)
        assert r.status_code == 400, body
        assert r.json()["error"]["type"] == "invalid_request_error"
    models = httpx.get(f"{gateway.base}/v1/models", headers=auth, timeout=10)
    assert models.status_code == 200 and models.json()["data"][0]["id"]
    assert httpx.get(f"{gateway.base}/health", timeout=10).json()["status"] == "ok"
    # The gateway is still serving after all that.
    assert answer(gateway.chat("fine?", session_id="z")) == "echo: fine?"


def test_cron_job_added_by_cli_fires_in_running_gateway(gateway: Gateway, fake_llm: FakeLLM) -> None:
    env = {"NANOBOT_CONFIG": str(gateway.config)}
    added = subprocess.run(
        nanobot("cron", "add", "--name", "tick", "--message", "cron says hi", "--every", "1"),
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert added.returncode == 0, added.stderr
    wait_until(lambda: any(r.last_user_text == "cron says hi" for r in fake_llm.requests), 20, "cron job to fire")
    sessions = gateway.tmp_path / "workspace" / "sessions"
    wait_until(lambda: any(sessions.glob("cron_*.jsonl")), 10, "cron session file")
    cron_file = next(sessions.glob("cron_*.jsonl"))
    assert "cron says hi" in cron_file.read_text()


def test_heartbeat_runs_workspace_tasks_in_its_own_session(tmp_path: Path, fake_llm: FakeLLM) -> None:
    config = write_config(tmp_path, fake_llm.base_url, gateway={"heartbeat": {"enabled": True, "intervalS": 1}})
    workspace = tmp_path / "workspace"
    workspace.mkdir(parents=True)
    (workspace / "HEARTBEAT.md").write_text("# Tasks\n- water the plants\n")
    proc = Process(nanobot("gateway"), tmp_path / "gateway.log", env={"NANOBOT_CONFIG": str(config)})
    try:
        wait_until(lambda: len(fake_llm.requests) > 0, 20, "a heartbeat turn", proc)
        assert "HEARTBEAT.md" in fake_llm.requests[0].last_user_text
        wait_until(lambda: (workspace / "sessions" / "heartbeat.jsonl").exists(), 10, "heartbeat session", proc)
    finally:
        assert proc.stop() == 0
