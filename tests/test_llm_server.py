"""Tests for the simulated LLM server (nanobot.testing.llm_server), driven with the real openai SDK."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from nanobot.testing.llm_server import (
    SIMULATED_OWNER,
    FakeLLM,
    RecordedRequest,
    RemoteFakeLLM,
    Rule,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    with FakeLLM() as fake:
        yield fake


def client_for(base_url: str, timeout: float = 10.0) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=timeout)


def ask(client: openai.OpenAI, text: str, **kwargs: object) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": text}], **kwargs)


# -- replies ---------------------------------------------------------------------------------------


def test_plain_reply_echoes_last_user_message(llm: FakeLLM) -> None:
    completion = ask(client_for(llm.base_url), "hello there")
    assert completion.object == "chat.completion"
    assert completion.model == "test-model"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "echo: hello there"
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert completion.usage.completion_tokens > 0


def test_list_content_and_tool_result_defaults(llm: FakeLLM) -> None:
    client = client_for(llm.base_url)
    parts = client.chat.completions.create(
        model="m",
        messages=[
            {"role": "system", "content": "be nice"},
            {"role": "user", "content": [{"type": "text", "text": "from parts"}]},
        ],
    )
    assert parts.choices[0].message.content == "echo: from parts"

    long_output = "x" * 800
    after_tool = client.chat.completions.create(
        model="m",
        messages=[
            {"role": "user", "content": "run it"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "exec", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "call_9", "content": long_output},
        ],
    )
    assert after_tool.choices[0].message.content == "tool said: " + "x" * 500


def test_tool_call_rule(llm: FakeLLM) -> None:
    llm.add_rule(
        Rule(
            match="weather",
            tool_calls=[
                {"name": "get_weather", "arguments": {"city": "Paris"}},
                {"name": "raw", "arguments": '{"a": 1}'},
            ],
        )
    )
    client = client_for(llm.base_url)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]

    other = ask(client, "hi", tools=tools)  # does not match: default reply, rule untouched
    assert other.choices[0].message.content == "echo: hi"

    completion = ask(client, "what's the weather?", tools=tools)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 2
    assert calls[0].id == "call_1" and calls[1].id == "call_2"
    assert calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
    assert calls[1].function.arguments == '{"a": 1}'

    # times=1: the rule is spent, the next matching request gets the default reply
    assert ask(client, "weather again").choices[0].message.content == "echo: weather again"
    assert llm.unused_rules() == []
    record = llm.requests[1]
    assert record.tools == tools
    assert record.reply_tool_calls is not None
    assert record.reply_tool_calls[0]["function"]["name"] == "get_weather"


def test_rules_order_times_and_when_last_role(llm: FakeLLM) -> None:
    llm.add_rule(Rule(when_last_role="tool", content="done with tools", times=None))
    llm.script("first", {"content": "second"})
    llm.add_rule(Rule(content="forever", times=None))
    client = client_for(llm.base_url)
    assert ask(client, "a").choices[0].message.content == "first"
    assert ask(client, "b").choices[0].message.content == "second"
    assert ask(client, "c").choices[0].message.content == "forever"
    assert ask(client, "d").choices[0].message.content == "forever"
    tool_turn = client.chat.completions.create(
        model="m",
        messages=[
            {"role": "user", "content": "x"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "out"},
        ],
    )
    assert tool_turn.choices[0].message.content == "done with tools"


def test_match_uses_most_recent_user_message(llm: FakeLLM) -> None:
    llm.add_rule(Rule(match="needle", content="found"))
    client = client_for(llm.base_url)
    older_needle = client.chat.completions.create(
        model="m",
        messages=[
            {"role": "user", "content": "needle here"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "something else"},
        ],
    )
    assert older_needle.choices[0].message.content == "echo: something else"
    assert ask(client, "a needle!").choices[0].message.content == "found"


# -- streaming -------------------------------------------------------------------------------------


def test_streaming_text(llm: FakeLLM) -> None:
    llm.script("the quick brown fox")
    stream = ask(client_for(llm.base_url), "go", stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "the quick brown fox"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    record = llm.requests[0]
    assert record.stream is True
    assert record.reply_content == "the quick brown fox"


def test_streaming_tool_calls(llm: FakeLLM) -> None:
    args = {"path": "/tmp/some/rather/long/path.txt", "mode": "read"}
    llm.add_rule(Rule(content="let me look", tool_calls=[{"name": "read_file", "arguments": args}]))
    stream = ask(client_for(llm.base_url), "read it", stream=True)
    content = ""
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for call in delta.tool_calls or []:
            slot = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
            if call.id:
                slot["id"] = call.id
            if call.function and call.function.name:
                slot["name"] += call.function.name
            if call.function and call.function.arguments:
                slot["arguments"] += call.function.arguments
        finish = chunk.choices[0].finish_reason or finish
    assert content == "let me look"
    assert finish == "tool_calls"
    assert calls[0]["id"] == "call_1"
    assert calls[0]["name"] == "read_file"
    assert json.loads(calls[0]["arguments"]) == args


def test_streaming_raw_sse_ends_with_done(llm: FakeLLM) -> None:
    with httpx.Client() as http:
        response = http.post(
            f"{llm.base_url}/chat/completions",
            json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"


# -- errors ----------------------------------------------------------------------------------------


def test_error_status_raises_matching_sdk_error(llm: FakeLLM) -> None:
    client = client_for(llm.base_url)
    llm.fail_next(1, status=500)
    with pytest.raises(openai.InternalServerError) as server_error:
        ask(client, "boom")
    assert server_error.value.status_code == 500
    body = server_error.value.body
    assert isinstance(body, dict) and {"message", "type", "param", "code"} <= set(body)

    llm.add_rule(Rule(match="slow down", status=429, retry_after=2, error_message="too many"))
    with pytest.raises(openai.RateLimitError) as rate_limited:
        ask(client, "please slow down")
    assert rate_limited.value.response.headers["retry-after"] == "2"
    assert "too many" in str(rate_limited.value)

    llm.add_rule(Rule(status=401))
    with pytest.raises(openai.AuthenticationError):
        ask(client, "who am i")

    assert ask(client, "fine now").choices[0].message.content == "echo: fine now"
    assert [r.status for r in llm.requests] == [500, 429, 401, 200]


def test_fail_next_takes_precedence_over_catch_all(llm: FakeLLM) -> None:
    llm.add_rule(Rule(content="always", times=None))
    llm.fail_next(2, status=503)
    client = client_for(llm.base_url)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            ask(client, "x")
    assert ask(client, "x").choices[0].message.content == "always"


def test_disconnect_rule_raises_connection_error(llm: FakeLLM) -> None:
    llm.add_rule(Rule(disconnect=True))
    client = client_for(llm.base_url)
    with pytest.raises(openai.APIConnectionError):
        ask(client, "drop me")
    assert ask(client, "again").choices[0].message.content == "echo: again"
    assert [r.status for r in llm.requests] == [0, 200]


def test_malformed_requests_get_openai_style_400(llm: FakeLLM) -> None:
    with httpx.Client(base_url=llm.base_url) as http:
        bad_json = http.post("/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
        assert bad_json.status_code == 400
        error = bad_json.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error"

        missing = http.post("/chat/completions", json={"model": "m"})
        assert missing.status_code == 400
        assert missing.json()["error"]["param"] == "messages"

        # the keep-alive connection still works after errors
        ok = http.post("/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "k"}]})
        assert ok.status_code == 200
        assert ok.json()["choices"][0]["message"]["content"] == "echo: k"
    assert [r.status for r in llm.requests] == [400, 400, 200]


def test_models_endpoint_is_labelled_simulated(llm: FakeLLM) -> None:
    models = client_for(llm.base_url).models.list()
    assert models.data and all(m.owned_by == SIMULATED_OWNER for m in models.data)


# -- latency and concurrency -----------------------------------------------------------------------


def test_concurrent_requests_overlap() -> None:
    with FakeLLM(latency_s=0.5) as llm:
        client = client_for(llm.base_url)
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=20) as pool:
            replies = list(pool.map(lambda i: ask(client, f"request {i}"), range(20)))
        elapsed = time.monotonic() - started
    assert elapsed < 5.0, f"20 requests of 0.5 s took {elapsed:.2f}s: not concurrent"
    assert elapsed >= 0.45
    assert [r.choices[0].message.content for r in replies] == [f"echo: request {i}" for i in range(20)]
    records = llm.requests
    assert len(records) == 20
    assert sorted(r.seq for r in records) == list(range(1, 21))
    for record in records:
        assert record.reply_content == "echo: " + record.last_user_text
        assert record.duration_s >= 0.45


def test_hundred_concurrent_one_second_requests() -> None:
    with FakeLLM(latency_s=1.0) as llm:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        with httpx.Client(base_url=llm.base_url, limits=limits, timeout=30) as http:

            def one(i: int) -> str:
                response = http.post(
                    "/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": str(i)}]}
                )
                response.raise_for_status()
                return response.json()["choices"][0]["message"]["content"]

            started = time.monotonic()
            with ThreadPoolExecutor(max_workers=100) as pool:
                replies = list(pool.map(one, range(100)))
            elapsed = time.monotonic() - started
    assert replies == [f"echo: {i}" for i in range(100)]
    assert elapsed < 5.0, f"100 concurrent 1 s requests took {elapsed:.2f}s"


def test_jitter_and_rule_delay() -> None:
    with FakeLLM(latency_s=0.2, jitter=0.5, seed=7) as llm:
        llm.add_rule(Rule(match="fast", delay_s=0.0))
        client = client_for(llm.base_url)
        ask(client, "fast please")
        for i in range(4):
            ask(client, f"normal {i}")
    fast, *normal = llm.requests
    assert fast.duration_s < 0.09
    for record in normal:
        assert 0.09 <= record.duration_s < 0.6


def test_stop_is_prompt_with_idle_keepalive_connections() -> None:
    llm = FakeLLM().start()
    client = client_for(llm.base_url)
    ask(client, "hi")  # leaves a pooled keep-alive connection open
    started = time.monotonic()
    llm.stop()
    assert time.monotonic() - started < 2.0
    llm.stop()  # idempotent
    client.close()


# -- recording and data classes --------------------------------------------------------------------


def test_recording_content(llm: FakeLLM) -> None:
    client = client_for(llm.base_url)
    tools = [{"type": "function", "function": {"name": "t", "parameters": {"type": "object"}}}]
    client.chat.completions.create(
        model="model-a",
        messages=[{"role": "system", "content": "sys"}, {"role": "user", "content": "first"}],
        tools=tools,
        temperature=0.3,
        max_tokens=99,
    )
    ask(client, "second")
    first, second = llm.requests
    assert first.seq == 1 and second.seq == 2
    assert first.model == "model-a"
    assert first.messages[0] == {"role": "system", "content": "sys"}
    assert first.last_user_text == "first"
    assert first.tools == tools
    assert first.params["temperature"] == 0.3 and first.params["max_tokens"] == 99
    assert first.status == 200 and first.stream is False
    assert first.reply_content == "echo: first"
    assert first.reply_tool_calls is None
    assert first.received_at <= first.finished_at <= second.received_at <= second.finished_at
    assert second.tools is None
    assert llm.last_request == second

    copy = llm.requests
    copy.clear()
    assert len(llm.requests) == 2  # `requests` hands out a copy

    assert llm.wait_for_requests(2, timeout=1) == llm.requests
    with pytest.raises(TimeoutError):
        llm.wait_for_requests(3, timeout=0.1)

    llm.add_rule(Rule(content="scripted", times=None))
    llm.reset()
    assert llm.requests == []
    assert ask(client, "after reset").choices[0].message.content == "echo: after reset"
    assert llm.requests[0].seq == 1


def test_dataclass_round_trips() -> None:
    rule = Rule(match="m", tool_calls=[{"function": {"name": "f", "arguments": {"x": 1}}}], times=None)
    assert rule.tool_calls == [{"name": "f", "arguments": {"x": 1}}]
    assert Rule.from_dict(json.loads(json.dumps(rule.to_dict()))) == rule
    with pytest.raises(ValueError):
        Rule.from_dict({"contnet": "typo"})
    with pytest.raises(ValueError):
        Rule(tool_calls=[{"arguments": {}}])

    record = RecordedRequest(
        seq=3,
        received_at=1.0,
        finished_at=2.0,
        model="m",
        messages=[{"role": "user", "content": [{"type": "text", "text": "hey"}]}],
        tools=None,
        status=200,
        reply_content="echo: hey",
        reply_tool_calls=None,
        stream=False,
    )
    data = json.loads(json.dumps(record.to_dict()))
    data["some_future_field"] = 1
    assert RecordedRequest.from_dict(data) == record
    assert record.last_user_text == "hey"


# -- another process: control endpoints and RemoteFakeLLM ------------------------------------------


def _start_subprocess(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[str], int]:
    port_file = tmp_path / "llm.port"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nanobot.testing.llm_server", "--port", "0", "--port-file", str(port_file), *extra],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while not port_file.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"simulated LLM exited early: {proc.stderr.read() if proc.stderr else ''}")
            if time.monotonic() > deadline:
                raise TimeoutError("simulated LLM did not write its port file")
            time.sleep(0.05)
        return proc, int(port_file.read_text().strip())
    except BaseException:
        _terminate(proc)
        raise


def _terminate(proc: subprocess.Popen[str]) -> None:
    try:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
    finally:
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def llm_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    proc, port = _start_subprocess(tmp_path)
    try:
        yield proc, port
    finally:
        _terminate(proc)


def test_control_endpoints_in_subprocess(llm_process: tuple[subprocess.Popen[str], int]) -> None:
    _proc, port = llm_process
    root = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=root, timeout=10) as http:
        health = http.get("/_health").json()
        assert health["status"] == "ok" and health["simulated"] is True

        added = http.post(
            "/_rules",
            json={"rules": [{"match": "tool", "tool_calls": [{"name": "ls", "arguments": {}}]}, {"content": "hi!"}]},
        )
        assert added.status_code == 200 and added.json() == {"added": 2}
        bad_rule = http.post("/_rules", json={"rules": [{"nope": 1}]})
        assert bad_rule.status_code == 400 and "nope" in bad_rule.json()["error"]["message"]

        config = http.patch("/_config", json={"latency_s": 0.05, "jitter": 0.1})
        assert config.json()["latency_s"] == 0.05 and config.json()["jitter"] == 0.1
        assert http.post("/_config", json={"latency_s": 0.0}).json()["latency_s"] == 0.0

        client = client_for(f"{root}/v1")
        assert ask(client, "use a tool").choices[0].message.tool_calls is not None
        assert ask(client, "plain").choices[0].message.content == "hi!"
        assert ask(client, "plain").choices[0].message.content == "echo: plain"

        records = [RecordedRequest.from_dict(item) for item in http.get("/_requests").json()]
        assert [r.last_user_text for r in records] == ["use a tool", "plain", "plain"]
        assert [r["seq"] for r in http.get("/_requests", params={"since": 2}).json()] == [3]

        assert http.post("/_reset").status_code == 200
        assert http.get("/_requests").json() == []
        assert ask(client, "x").choices[0].message.content == "echo: x"
        client.close()


def test_remote_fake_llm(llm_process: tuple[subprocess.Popen[str], int]) -> None:
    _proc, port = llm_process
    with RemoteFakeLLM(f"http://127.0.0.1:{port}/v1") as remote:
        assert remote.base_url == f"http://127.0.0.1:{port}/v1"
        assert remote.health()["simulated"] is True
        remote.add_rules([Rule(match="hello", content="remote hi"), {"content": "from dict"}])
        remote.fail_next(1, status=502)
        assert remote.configure(latency_s=0.01, jitter=0.0)["latency_s"] == 0.01

        client = client_for(remote.base_url)
        with pytest.raises(openai.InternalServerError):
            ask(client, "hello")
        assert ask(client, "hello").choices[0].message.content == "remote hi"
        assert ask(client, "other").choices[0].message.content == "from dict"

        records = remote.wait_for_requests(3, timeout=5)
        assert [r.status for r in records] == [502, 200, 200]
        assert records[1].reply_content == "remote hi"
        assert all(isinstance(r, RecordedRequest) for r in records)

        remote.reset()
        assert remote.requests() == []
        client.close()


def test_cli_prints_banner_and_exits_zero_on_sigterm(tmp_path: Path) -> None:
    proc, port = _start_subprocess(tmp_path, "--latency", "0.0", "--jitter", "0.2")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line == f"nanobot simulated LLM listening on http://127.0.0.1:{port}/v1"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        _terminate(proc)
