"""WhatsApp Cloud API webhooks through real gateway processes: `nanobot gateway` in local mode, and in celery
mode with two workers (`--autoscale=10,2`). Meta's Graph API is the loopback fake, which also signs and
delivers the webhooks; the LLM is the simulated one (it answers "echo: <message>")."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nanobot.testing.llm_server import FakeLLM
from nanobot.testing.processes import Process, free_port, nanobot, wait_http_ok, wait_until
from nanobot.testing.whatsapp_server import FakeGraphAPI
from tests.cluster import NO_LIMITS
from tests.conftest import write_config

VERIFY_TOKEN = "verify-me"


@pytest.fixture
def graph() -> Iterator[FakeGraphAPI]:
    fake = FakeGraphAPI().start()
    try:
        yield fake
    finally:
        fake.stop()


def whatsapp_config(graph: FakeGraphAPI) -> dict[str, Any]:
    cloud = {"phoneNumberId": graph.phone_number_id, "accessToken": graph.access_token,
             "appSecret": graph.app_secret, "verifyToken": VERIFY_TOKEN, "apiBase": graph.base_url}
    return {"whatsapp": {"enabled": True, "allowFrom": ["+34600000001", "34600000002"], "cloud": cloud}}


def texts(graph: FakeGraphAPI, to: str) -> list[str]:
    return [m["text"]["body"] for m in graph.sent_messages(to) if m.get("type") == "text"]


def converse(graph: FakeGraphAPI, llm: FakeLLM, webhook: str) -> None:
    assert graph.verify(webhook, VERIFY_TOKEN, "challenge-123") == (200, "challenge-123")
    assert graph.verify(webhook, "wrong", "challenge-123")[0] == 403
    graph.set_webhook(webhook)
    burst = [f"burst {i}" for i in range(6)]
    for text in burst:
        assert graph.deliver_text("34600000001", text)[0] == 200
    status, wamid = graph.deliver_text("34600000002", "hello")
    assert status == 200
    assert graph.deliver_text("34600000002", "hello", wamid=wamid)[0] == 200  # Meta delivers it again
    assert graph.deliver_text("34699999999", "stranger")[0] == 200
    assert graph.deliver_raw(b'{"object": "whatsapp_business_account", "entry": []}', "sha256=" + "0" * 64) == 403
    assert graph.deliver_raw(b'{"object": "whatsapp_business_account", "entry": []}', None) == 401

    wait_until(lambda: len(texts(graph, "34600000001")) >= 6, 60, "the burst's replies")
    assert texts(graph, "34600000001") == [f"echo: {text}" for text in burst]
    wait_until(lambda: texts(graph, "34600000002") == ["echo: hello"], 30, "the second chat's reply")
    time.sleep(0.5)
    assert texts(graph, "34600000002") == ["echo: hello"], "the redelivery is not a second turn"
    assert texts(graph, "34699999999") == []
    asked = [r.last_user_text for r in llm.requests]
    assert [t for t in asked if t.startswith("burst")] == burst
    assert asked.count("hello") == 1


def test_local_gateway_serves_whatsapp_cloud(tmp_path: Path, fake_llm: FakeLLM, graph: FakeGraphAPI) -> None:
    port = free_port()
    config = write_config(tmp_path, fake_llm.base_url, channels=whatsapp_config(graph),
                          gateway={"heartbeat": {"enabled": False}, "port": port})
    gateway = Process(nanobot("gateway"), tmp_path / "gateway.log", env={"NANOBOT_CONFIG": str(config)})
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/health", 60, gateway)
        converse(graph, fake_llm, f"http://127.0.0.1:{port}/whatsapp")
    except BaseException:
        print(gateway.log()[-6000:])
        raise
    finally:
        assert gateway.stop() == 0


def test_celery_gateway_and_two_workers_serve_whatsapp_cloud(
    cluster_factory: Any, fake_llm: FakeLLM, graph: FakeGraphAPI
) -> None:
    cluster = cluster_factory(channels=whatsapp_config(graph), worker={"pool": "prefork", "autoscale": "10,2"},
                              sections=NO_LIMITS)
    port = free_port()
    cluster.env["NANOBOT_GATEWAY__PORT"] = str(port)
    for _ in range(2):
        cluster.start_worker()
    cluster.start_gateway("--no-embedded-worker")
    converse(graph, fake_llm, f"http://127.0.0.1:{port}/whatsapp")
