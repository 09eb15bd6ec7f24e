"""Distributed mode end to end: gateway process, Celery worker processes, real Redis, real HTTP."""

from __future__ import annotations

from typing import Any

from nanobot.testing.llm_server import FakeLLM
from tests.pools import cluster_factory_each_pool  # noqa: F401  (every test here runs under both pools)


def answer(response: Any) -> str:
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def test_turns_run_on_workers_and_keep_history(cluster_factory: Any, fake_llm: FakeLLM) -> None:
    cluster = cluster_factory()
    cluster.start_worker()
    cluster.start_gateway()
    assert answer(cluster.chat("my name is Ada", "ada")) == "echo: my name is Ada"
    assert answer(cluster.chat("and yours?", "ada")) == "echo: and yours?"
    last = fake_llm.requests[-1]
    assert [m["content"] for m in last.messages[1:]] == ["my name is Ada", "echo: my name is Ada", "and yours?"]
    history = cluster.history("api:ada")
    expected = ["my name is Ada", "echo: my name is Ada", "and yours?", "echo: and yours?"]
    assert [m["content"] for m in history] == expected
    assert all(m.get("message_id") for m in history if m["role"] == "user")
