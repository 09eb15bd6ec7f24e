"""Provider selection like nanobot's, and the OpenAI-compatible provider against the simulated LLM."""

from __future__ import annotations

import asyncio

import pytest

from nanobot.config.schema import Config
from nanobot.providers.factory import create_provider
from nanobot.providers.registry import NoProviderError, select_provider
from nanobot.testing.llm_server import FakeLLM, Rule
from tests.conftest import make_provider


def config_with(model: str, provider: str = "auto", **keys: str) -> Config:
    c = Config()
    c.agents.defaults.model = model
    c.agents.defaults.provider = provider
    for name, key in keys.items():
        getattr(c.providers, name).api_key = key
    return c


def test_named_provider_uses_model_as_given() -> None:
    c = config_with("my-model", provider="custom")
    c.providers.custom.api_base = "http://127.0.0.1:9/v1"
    choice = select_provider(c)
    assert (choice.spec.name, choice.model, choice.api_base) == ("custom", "my-model", "http://127.0.0.1:9/v1")


def test_auto_by_prefix_keyword_and_key() -> None:
    both = {"anthropic": "a", "deepseek": "d", "openrouter": "o"}
    assert select_provider(config_with("anthropic/claude-opus-4-5", **both)).spec.name == "anthropic"
    assert select_provider(config_with("anthropic/claude-opus-4-5", **both)).model == "claude-opus-4-5"
    assert select_provider(config_with("deepseek-chat", **both)).spec.name == "deepseek"
    # Only a gateway has a key: it serves any vendor's model, with the full name.
    routed = select_provider(config_with("anthropic/claude-opus-4-5", openrouter="o"))
    assert (routed.spec.name, routed.model) == ("openrouter", "anthropic/claude-opus-4-5")
    # A keyword match without a key is skipped.
    assert select_provider(config_with("gpt-4o", deepseek="d")).spec.name == "deepseek"


def test_no_provider_names_what_to_set() -> None:
    with pytest.raises(NoProviderError, match="apiKey"):
        select_provider(config_with("gpt-4o"))
    with pytest.raises(NoProviderError, match=r"agents\.defaults\.provider"):
        select_provider(config_with("x", provider="nonesuch"))


def test_extra_headers_and_model_reach_the_endpoint(fake_llm: FakeLLM) -> None:
    c = config_with("my-model", provider="custom")
    c.providers.custom.api_base = fake_llm.base_url
    c.providers.custom.extra_headers = {"X-Test": "1"}
    provider = create_provider(c)

    async def call() -> str | None:
        try:
            return (await provider.chat([{"role": "user", "content": "hey"}])).content
        finally:
            await provider.close()

    assert asyncio.run(call()) == "echo: hey"
    assert fake_llm.requests[0].model == "my-model"


def test_non_retryable_error_is_not_retried(fake_llm: FakeLLM) -> None:
    fake_llm.add_rule(Rule(status=401, times=None))
    provider = make_provider(fake_llm)

    async def call() -> tuple[bool, str | None]:
        try:
            r = await provider.chat([{"role": "user", "content": "x"}])
            return r.is_error, r.content
        finally:
            await provider.close()

    is_error, content = asyncio.run(call())
    assert is_error and content and "HTTP 401" in content
    assert len(fake_llm.requests) == 1


def test_timeout_is_retried_then_apology(fake_llm: FakeLLM) -> None:
    fake_llm.add_rule(Rule(delay_s=1.0, times=None))
    provider = make_provider(fake_llm, timeout_s=0.2, max_retries=1)

    async def call() -> str | None:
        try:
            return (await provider.chat([{"role": "user", "content": "x"}])).content
        finally:
            await provider.close()

    content = asyncio.run(call())
    assert content and "timed out" in content


def test_dropped_connection_is_a_connection_failure_not_a_timeout(fake_llm: FakeLLM) -> None:
    """The SDK's aiohttp transport maps a server that hangs up to a connect timeout; nanobot still calls it what it
    is, in the apology and in the metrics (`outcome="connection"`, see test_core_metrics)."""
    fake_llm.add_rule(Rule(match="hang up", disconnect=True, times=None))
    provider = make_provider(fake_llm, max_retries=1)

    async def call() -> str | None:
        try:
            return (await provider.chat([{"role": "user", "content": "hang up"}])).content
        finally:
            await provider.close()

    content = asyncio.run(call())
    assert content and "connection failed" in content and "timed out" not in content
