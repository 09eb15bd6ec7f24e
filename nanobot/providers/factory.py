"""Build the LLM provider the config asks for."""

from __future__ import annotations

from nanobot.config.schema import Config
from nanobot.providers.base import LLMProvider
from nanobot.providers.openai_compat import OpenAICompatProvider
from nanobot.providers.registry import select_provider


def create_provider(config: Config) -> LLMProvider:
    """Raises NoProviderError with a message that names the key to set."""
    choice = select_provider(config)
    defaults = config.agents.defaults
    return OpenAICompatProvider(
        api_key=choice.config.api_key,
        api_base=choice.api_base,
        default_model=choice.model,
        extra_headers=choice.config.extra_headers,
        timeout_s=defaults.llm_timeout_s,
        max_retries=defaults.llm_max_retries,
        retry_base_delay_s=defaults.llm_retry_base_delay_s,
        name=choice.spec.name,
    )
