"""The tool loop: ask the LLM, run the tools it calls, feed the results back, until it answers."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from nanobot.agent.tools.registry import ToolRegistry
from nanobot.providers.base import LLMProvider, ToolCallRequest

log = logging.getLogger(__name__)

# Called with (text, is_tool_hint) while the loop runs: interim text the model wrote before calling tools,
# or a one-line summary of the tool calls.
ProgressCallback = Callable[[str, bool], Awaitable[None]]

MAX_TOOL_RESULT_CHARS = 16_000


@dataclass
class LoopResult:
    content: str
    new_messages: list[dict[str, Any]] = field(default_factory=list)  # assistant/tool messages, in order
    tools_used: list[str] = field(default_factory=list)
    error: bool = False  # the provider gave up; `content` is the apology
    # Tokens the provider reported for every call of the loop, added up (prompt_tokens, completion_tokens, ...).
    usage: dict[str, int] = field(default_factory=dict)

    def add_usage(self, usage: dict[str, int]) -> None:
        for name, count in usage.items():
            if isinstance(count, int):
                self.usage[name] = self.usage.get(name, 0) + count


def tool_hint(calls: list[ToolCallRequest]) -> str:
    def one(call: ToolCallRequest) -> str:
        args = call.arguments if isinstance(call.arguments, dict) else {}
        first = next((v for v in args.values() if isinstance(v, str)), "")
        first = first if len(first) <= 40 else first[:40] + "…"
        return f'{call.name}("{first}")' if first else call.name

    return ", ".join(one(c) for c in calls)


async def run_tool_loop(
    provider: LLMProvider,
    messages: list[dict[str, Any]],
    tools: ToolRegistry,
    *,
    model: str,
    max_iterations: int,
    max_tokens: int,
    temperature: float,
    on_progress: ProgressCallback | None = None,
    log_prefix: str = "",
) -> LoopResult:
    """Run until the model answers without tool calls, the provider fails, or `max_iterations` is hit.
    `messages` is extended in place with what the loop adds."""
    result = LoopResult(content="")
    definitions = tools.definitions()
    for _ in range(max_iterations):
        response = await provider.chat(
            messages, tools=definitions or None, model=model, max_tokens=max_tokens, temperature=temperature
        )
        result.add_usage(response.usage)
        if response.is_error:
            result.content, result.error = response.content or "Sorry, the language model failed.", True
            return result
        if not response.has_tool_calls:
            result.content = response.content or ""
            return result
        assistant: dict[str, Any] = {
            "role": "assistant",
            "content": response.content or "",
            "tool_calls": [c.to_openai() for c in response.tool_calls],
        }
        messages.append(assistant)
        result.new_messages.append(assistant)
        if on_progress is not None:
            if response.content:
                await on_progress(response.content, False)
            await on_progress(tool_hint(response.tool_calls), True)
        for call in response.tool_calls:
            log.info("%stool=%s", log_prefix, call.name)
            output = await tools.execute(call.name, call.arguments)
            if len(output) > MAX_TOOL_RESULT_CHARS:
                output = output[:MAX_TOOL_RESULT_CHARS] + f"\n… ({len(output) - MAX_TOOL_RESULT_CHARS} chars cut)"
            tool_msg = {"role": "tool", "tool_call_id": call.id, "name": call.name, "content": output}
            messages.append(tool_msg)
            result.new_messages.append(tool_msg)
            result.tools_used.append(call.name)
    result.content = (
        f"I stopped after {max_iterations} tool steps without finishing. "
        "Tell me how to continue, or break the task into smaller steps."
    )
    return result
