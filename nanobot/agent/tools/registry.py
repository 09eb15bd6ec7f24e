"""The set of tools an agent may call, and the one place where tool calls are executed.

`ToolRegistry.execute` never raises (apart from `asyncio.CancelledError`): unknown tools, malformed
arguments and exceptions inside a tool all come back as "Error: ..." text the model can read and react to.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from nanobot.agent.tools.base import Tool
from nanobot.agent.tools.validation import type_name, validate

logger = logging.getLogger(__name__)


class ToolRegistry:
    """Tools by name, in registration order."""

    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}

    def register(self, tool: Tool) -> None:
        """Add a tool; a tool registered under the same name replaces the earlier one."""
        self._tools[tool.name] = tool

    def unregister(self, name: str) -> None:
        """Remove a tool; removing an unknown name does nothing."""
        self._tools.pop(name, None)

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def definitions(self) -> list[dict[str, Any]]:
        """The OpenAI function-tool definitions of every registered tool."""
        return [tool.to_schema() for tool in self._tools.values()]

    async def execute(self, name: str, arguments: dict[str, Any] | str | None) -> str:
        """Run a tool and return its text result, or an "Error: ..." message; never raises."""
        tool = self._tools.get(name)
        if tool is None:
            available = ", ".join(self._tools) or "(none)"
            return f"Error: unknown tool '{name}'. Available: {available}"

        parsed = _parse_arguments(arguments)
        if isinstance(parsed, str):
            return f"Error: invalid arguments for tool '{name}': {parsed}"
        errors = validate(tool.parameters, parsed)
        if errors:
            return f"Error: invalid arguments for tool '{name}': " + "; ".join(errors)

        try:
            result = await tool.execute(**parsed)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("tool %r failed", name)
            return f"Error: tool '{name}' failed: {type(exc).__name__}: {exc}"
        return result if isinstance(result, str) else str(result)


def _parse_arguments(arguments: dict[str, Any] | str | None) -> dict[str, Any] | str:
    """The arguments as a dict, or a description of why they are unusable."""
    if arguments is None:
        return {}
    if isinstance(arguments, str):
        if not arguments.strip():
            return {}
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as exc:
            return f"arguments are not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    if not isinstance(arguments, dict):
        return f"arguments must be a JSON object, got {type_name(arguments)}"
    return arguments
