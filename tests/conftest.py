"""Shared fixtures: the simulated LLM on loopback, a workspace, a provider and config files pointing at it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nanobot.providers.openai_compat import OpenAICompatProvider
from nanobot.testing.llm_server import FakeLLM
from tests.private_redis import StoppableRedis, stoppable_redis_server

pytest_plugins = ["tests.cluster"]


@pytest.fixture
def fake_llm() -> Iterator[FakeLLM]:
    llm = FakeLLM()
    llm.start()
    try:
        yield llm
    finally:
        llm.stop()


@pytest.fixture
def stoppable_redis(tmp_path: Path) -> Iterator[StoppableRedis]:
    """A redis-server of this test alone that it may stop and start again (tests/private_redis.py)."""
    with stoppable_redis_server(tmp_path / "redis-data") as server:
        yield server


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return tmp_path / "workspace"


def make_provider(llm: FakeLLM, **kwargs: Any) -> OpenAICompatProvider:
    options: dict[str, Any] = {"max_retries": 2, "retry_base_delay_s": 0.01, "timeout_s": 10.0}
    options.update(kwargs)
    return OpenAICompatProvider(api_key="test-key", api_base=llm.base_url, default_model="test-model", **options)


def write_config(directory: Path, llm_url: str, **sections: Any) -> Path:
    """A config.json using the simulated LLM through the `custom` provider; `sections` are merged in."""
    config: dict[str, Any] = {
        "agents": {
            "defaults": {
                "workspace": str(directory / "workspace"),
                "model": "test-model",
                "provider": "custom",
                "llmMaxRetries": 1,
                "llmRetryBaseDelayS": 0.01,
            }
        },
        "providers": {"custom": {"apiKey": "test-key", "apiBase": llm_url}},
        "gateway": {"heartbeat": {"enabled": False}, "port": 0},
    }
    for key, value in sections.items():
        merged = config.setdefault(key, {})
        merged.update(value)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.json"
    path.write_text(json.dumps(config, indent=2))
    return path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Expose each phase's report on the test item (fixtures print process logs when the test failed)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)
