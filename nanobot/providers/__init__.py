"""LLM providers: the interface, the OpenAI-compatible implementation, and provider selection."""

from nanobot.providers.base import LLMProvider, LLMResponse, ToolCallRequest

__all__ = ["LLMProvider", "LLMResponse", "ToolCallRequest"]
