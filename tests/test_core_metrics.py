"""Turn, LLM and tool metrics: scraped from a real local-mode gateway's /metrics, plus in-process edge cases.

The gateway runs as a real process (API channel, the simulated LLM on loopback); its /metrics is parsed with
prometheus-client's parser and compared before and after, so only the differences a test caused are asserted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from nanobot.agent.loop import STOPPED_TEXT, AgentLoop, queue_wait_s
from nanobot.agent.tools.base import Tool
from nanobot.agent.tools.registry import ToolRegistry
from nanobot.bus.events import InboundMessage
from nanobot.bus.queue import MessageBus
from nanobot.providers.openai_compat import MAX_RETRY_DELAY_S, outcome_of, retry_delay_s
from nanobot.session.locks import LockLease, LockLost
from nanobot.testing.llm_server import FakeLLM, Rule
from nanobot.testing.processes import Process, free_port, nanobot, wait_http_ok
from tests.conftest import make_provider, write_config

API_KEY = "test-api-key"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class MetricsGateway:
    """`nanobot gateway` in local mode: the API channel on one port, /metrics on the gateway's own port."""

    def __init__(self, tmp_path: Path, llm: FakeLLM) -> None:
        self.api_port, self.port = free_port(), free_port()
        self.config = write_config(
            tmp_path,
            llm.base_url,
            channels={"api": {"enabled": True, "port": self.api_port, "apiKey": API_KEY, "timeoutS": 20}},
            gateway={"heartbeat": {"enabled": False}, "port": self.port},
        )
        self.proc = Process(nanobot("gateway"), tmp_path / "gateway.log", env={"NANOBOT_CONFIG": str(self.config)})
        wait_http_ok(f"http://127.0.0.1:{self.api_port}/health", 30, self.proc)
        wait_http_ok(f"http://127.0.0.1:{self.port}/health", 30, self.proc)

    def chat(self, content: str, session_id: str) -> str:
        response = httpx.post(
            f"http://127.0.0.1:{self.api_port}/v1/chat/completions",
            json={"model": "nanobot", "messages": [{"role": "user", "content": content}], "session_id": session_id},
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        return str(response.json()["choices"][0]["message"]["content"])

    def scrape(self) -> Samples:
        response = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=10)
        assert response.status_code == 200
        return parse(response.text)


@pytest.fixture
def gateway(tmp_path: Path, fake_llm: FakeLLM) -> Iterator[MetricsGateway]:
    gw = MetricsGateway(tmp_path, fake_llm)
    try:
        yield gw
    finally:
        gw.proc.stop()


def parse(text: str) -> Samples:
    """Every sample of a /metrics page, by name and labels."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def rise(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def llm_labels(outcome: str) -> dict[str, str]:
    return {"provider": "custom", "model": "test-model", "outcome": outcome}


def test_turns_count_exactly_and_histograms_follow(gateway: MetricsGateway) -> None:
    before = gateway.scrape()
    n = 4
    for i in range(n):
        assert gateway.chat(f"hello {i}", session_id=f"s{i % 2}") == f"echo: hello {i}"
    after = gateway.scrape()

    assert rise(before, after, "nanobot_turns_total", outcome="ok") == n
    assert rise(before, after, "nanobot_turns_total", outcome="error") == 0
    assert rise(before, after, "nanobot_turn_duration_seconds_count") == n
    assert rise(before, after, "nanobot_lock_wait_seconds_count") == n
    assert rise(before, after, "nanobot_turn_queue_wait_seconds_count") == n
    assert value(after, "nanobot_turns_running") == 0
    assert rise(before, after, "nanobot_llm_requests_total", **llm_labels("ok")) == n
    assert rise(before, after, "nanobot_llm_request_duration_seconds_count", provider="custom", model="test-model") == n
    for kind in ("prompt", "completion"):
        assert rise(before, after, "nanobot_llm_tokens_total", provider="custom", model="test-model", kind=kind) > 0


def test_provider_500s_count_per_attempt_and_the_turn_as_error(gateway: MetricsGateway, fake_llm: FakeLLM) -> None:
    before = gateway.scrape()
    fake_llm.add_rule(Rule(match="break it", status=500, times=2))  # the config allows 1 retry: 2 attempts
    reply = gateway.chat("break it", session_id="broken")
    assert "could not reach the language model" in reply
    after = gateway.scrape()

    assert rise(before, after, "nanobot_llm_requests_total", **llm_labels("http_5xx")) == 2
    assert rise(before, after, "nanobot_llm_retries_total", provider="custom") == 1
    assert rise(before, after, "nanobot_turns_total", outcome="error") == 1
    assert rise(before, after, "nanobot_turns_total", outcome="ok") == 0
    assert rise(before, after, "nanobot_turn_duration_seconds_count") == 1


def test_tool_errors_and_unknown_tools_are_counted(gateway: MetricsGateway, fake_llm: FakeLLM) -> None:
    before = gateway.scrape()
    fake_llm.add_rule(Rule(match="read it", tool_calls=[{"name": "read_file", "arguments": {"path": "missing.txt"}}]))
    assert gateway.chat("read it", session_id="tools").startswith("tool said: Error")
    fake_llm.add_rule(Rule(match="invent", tool_calls=[{"name": "no_such_tool_4711", "arguments": {}}]))
    assert gateway.chat("invent a tool", session_id="tools").startswith("tool said: Error: unknown tool")
    fake_llm.add_rule(Rule(match="list it", tool_calls=[{"name": "list_dir", "arguments": {"path": "."}}]))
    gateway.chat("list it", session_id="tools")
    fake_llm.add_rule(Rule(match="bad args", tool_calls=[{"name": "read_file", "arguments": "{not json"}]))
    gateway.chat("bad args", session_id="tools")
    after = gateway.scrape()

    assert rise(before, after, "nanobot_tool_calls_total", tool="read_file", outcome="error") == 1
    assert rise(before, after, "nanobot_tool_calls_total", tool="unknown", outcome="unknown") == 1
    assert rise(before, after, "nanobot_tool_calls_total", tool="list_dir", outcome="ok") == 1
    assert rise(before, after, "nanobot_tool_calls_total", tool="read_file", outcome="invalid") == 1
    assert rise(before, after, "nanobot_tool_duration_seconds_count", tool="read_file") == 1  # only the one that ran
    assert not any("no_such_tool_4711" in str(labels) for _, labels in after)
    assert rise(before, after, "nanobot_turns_total", outcome="ok") == 4


# ---------------------------------------------------------------------------------------------- in-process


def _status_error(status: int) -> openai.APIStatusError:
    request = httpx.Request("POST", "http://llm.invalid/v1/chat/completions")
    return openai.APIStatusError("x", response=httpx.Response(status, request=request), body=None)


def test_every_openai_failure_has_its_outcome() -> None:
    request = httpx.Request("POST", "http://llm.invalid/v1/chat/completions")
    assert outcome_of(None) == "ok"
    assert outcome_of(_status_error(429)) == "http_429"
    assert outcome_of(_status_error(400)) == "http_4xx"
    assert outcome_of(_status_error(404)) == "http_4xx"
    assert outcome_of(_status_error(500)) == "http_5xx"
    assert outcome_of(_status_error(503)) == "http_5xx"
    assert outcome_of(openai.APITimeoutError(request)) == "timeout"
    assert outcome_of(openai.APIConnectionError(request=request)) == "connection"
    assert outcome_of(ValueError("bad reply")) == "error"


def test_retry_delays_are_bounded_with_jitter_and_retry_after() -> None:
    assert retry_delay_s(0, 1.0, None, 1.0) == 1.0
    assert retry_delay_s(3, 1.0, None, 1.2) == pytest.approx(9.6)
    assert retry_delay_s(2, 0.01, 5.0, 1.0) == 5.0  # Retry-After wins when longer
    assert retry_delay_s(1000, 1.0, None, 1.2) == MAX_RETRY_DELAY_S  # no overflow, capped
    assert retry_delay_s(0, 1.0, 3600.0, 1.0) == MAX_RETRY_DELAY_S  # a huge Retry-After is capped too


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_connection_failure_counts_each_attempt_and_retry(fake_llm: FakeLLM) -> None:
    provider = make_provider(fake_llm, max_retries=2, name="edge-case")
    fake_llm.add_rule(Rule(match="drop", disconnect=True, times=3))
    labels = {"provider": "edge-case", "model": "test-model", "outcome": "connection"}
    before = _sample("nanobot_llm_requests_total", **labels), _sample("nanobot_llm_retries_total", provider="edge-case")

    async def go() -> None:
        try:
            response = await provider.chat([{"role": "user", "content": "drop"}])
            assert response.is_error
        finally:
            await provider.close()

    asyncio.run(go())
    assert _sample("nanobot_llm_requests_total", **labels) - before[0] == 3
    assert _sample("nanobot_llm_retries_total", provider="edge-case") - before[1] == 2


class _Raises(Tool):
    name = "raises_tool"
    description = "always raises"
    parameters = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}

    async def execute(self, **kwargs: object) -> str:
        raise RuntimeError("boom")


def test_tool_outcomes_in_process() -> None:
    registry = ToolRegistry()
    registry.register(_Raises())

    def calls(outcome: str) -> float:
        return _sample("nanobot_tool_calls_total", tool="raises_tool", outcome=outcome)

    before = {o: calls(o) for o in ("error", "invalid")}
    unknown = _sample("nanobot_tool_calls_total", tool="unknown", outcome="unknown")

    async def go() -> None:
        assert (await registry.execute("raises_tool", {"n": 1})).startswith("Error: tool")
        assert (await registry.execute("raises_tool", {"n": "x"})).startswith("Error: invalid")
        assert (await registry.execute("raises_tool", "[1]")).startswith("Error: invalid")
        assert (await registry.execute("made_up", {})).startswith("Error: unknown tool")

    asyncio.run(go())
    assert calls("error") - before["error"] == 1
    assert calls("invalid") - before["invalid"] == 2
    assert _sample("nanobot_tool_calls_total", tool="unknown", outcome="unknown") - unknown == 1
    assert _sample("nanobot_tool_calls_total", tool="made_up", outcome="unknown") == 0


def test_queue_wait_is_never_negative_and_handles_aware_timestamps() -> None:
    late = InboundMessage("cli", "u", "c", "x", timestamp=datetime.now() - timedelta(seconds=5))
    assert queue_wait_s(late) >= 5
    future = InboundMessage("cli", "u", "c", "x", timestamp=datetime.now() + timedelta(hours=1))
    assert queue_wait_s(future) == 0.0
    aware = InboundMessage("cli", "u", "c", "x", timestamp=datetime.now(UTC) - timedelta(seconds=2))
    assert queue_wait_s(aware) >= 2


def _turns(outcome: str) -> float:
    return _sample("nanobot_turns_total", outcome=outcome)


def _loop(llm: FakeLLM, workspace: Path) -> AgentLoop:
    return AgentLoop(MessageBus(), make_provider(llm, max_retries=0), workspace)


def test_direct_turns_count_ok_and_error(fake_llm: FakeLLM, workspace: Path) -> None:
    ok, error, durations = _turns("ok"), _turns("error"), _sample("nanobot_turn_duration_seconds_count")
    fake_llm.add_rule(Rule(match="fail", status=503))

    async def go() -> None:
        loop = _loop(fake_llm, workspace)
        try:
            assert await loop.process_direct("hello") == "echo: hello"
            assert "could not reach" in await loop.process_direct("fail now")
        finally:
            await loop.close()

    asyncio.run(go())
    assert (_turns("ok") - ok, _turns("error") - error) == (1, 1)
    assert _sample("nanobot_turn_duration_seconds_count") - durations == 2
    assert _sample("nanobot_turns_running") == 0


def test_a_stopped_turn_counts_stopped_and_its_duration(fake_llm: FakeLLM, workspace: Path) -> None:
    fake_llm.add_rule(Rule(match="slow", content="too late", delay_s=5.0))
    stopped, ok, durations = _turns("stopped"), _turns("ok"), _sample("nanobot_turn_duration_seconds_count")

    async def go() -> None:
        loop = _loop(fake_llm, workspace)
        runner = asyncio.create_task(loop.run())
        try:
            await loop.bus.publish_inbound(InboundMessage("api", "u", "s", "slow job"))
            for _ in range(100):  # until the turn runs
                if _sample("nanobot_turns_running") > 0:
                    break
                await asyncio.sleep(0.05)
            await loop.bus.publish_inbound(InboundMessage("api", "u", "s", "/stop"))
            while (await asyncio.wait_for(loop.bus.consume_outbound(), 10)).content != STOPPED_TEXT:
                pass
        finally:
            loop.stop()
            await runner
            await loop.close()

    asyncio.run(go())
    assert _turns("stopped") - stopped == 1
    assert _turns("ok") - ok == 0
    assert _sample("nanobot_turn_duration_seconds_count") - durations == 1
    assert _sample("nanobot_turns_running") == 0


def test_a_turn_that_finds_its_lock_lost_counts_lock_lost(fake_llm: FakeLLM, workspace: Path) -> None:
    lost, durations = _turns("lock_lost"), _sample("nanobot_turn_duration_seconds_count")
    lease = LockLease("cli:direct", fence=1, waited_s=0.25, token="t", lost=True)
    waits = _sample("nanobot_lock_wait_seconds_sum")

    async def go() -> None:
        loop = _loop(fake_llm, workspace)
        try:
            with pytest.raises(LockLost):
                await loop.run_turn(InboundMessage("cli", "u", "direct", "hi"), lease)
        finally:
            await loop.close()

    asyncio.run(go())
    assert _turns("lock_lost") - lost == 1
    assert _sample("nanobot_turn_duration_seconds_count") - durations == 1
    assert _sample("nanobot_lock_wait_seconds_sum") - waits == pytest.approx(0.25)


# ---------------------------------------------------------------------------------------------- distributed


def test_a_prefork_worker_adds_up_its_childrens_turns(cluster_factory: Any, fake_llm: FakeLLM) -> None:
    """The same counters on a real worker's /metrics, its pool children's turns added up."""
    cluster = cluster_factory()
    port = free_port()
    cluster.start_worker(metrics_port=port)
    cluster.start_gateway()
    fake_llm.add_rule(Rule(match="read it", tool_calls=[{"name": "read_file", "arguments": {"path": "missing.txt"}}]))
    n = 6
    for i in range(n):
        response = cluster.chat(f"read it {i}" if i == 0 else f"hi {i}", session_id=f"w{i}")
        assert response.status_code == 200, response.text
    samples = parse(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)

    assert value(samples, "nanobot_turns_total", outcome="ok") == n
    assert value(samples, "nanobot_turn_duration_seconds_count") == n
    assert value(samples, "nanobot_lock_wait_seconds_count") == n
    assert value(samples, "nanobot_turns_running") == 0
    assert value(samples, "nanobot_llm_requests_total", **llm_labels("ok")) == n + 1  # the tool call's second request
    assert value(samples, "nanobot_tool_calls_total", tool="read_file", outcome="error") == 1
