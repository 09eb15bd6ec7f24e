"""The set of tools an agent may call, and the one place where tool calls are executed.

`register` refuses a tool without a usable name, description or parameters schema. `ToolRegistry.execute`
never raises (apart from `asyncio.CancelledError`): unknown tools, malformed arguments (as judged by the
tool's `validate_params`) and exceptions inside a tool all come back as "Error: ..." text the model can
read and react to. Upstream nanobot's names (`has`, `get_definitions`, `tool_names`) are kept as aliases.
Every call is counted in `nanobot_tool_calls_total{tool,outcome}` (ok, error, invalid, unknown; an unknown
tool is labelled "unknown", never with the name the model made up) and timed when the tool ran.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from nanobot.agent.tools.base import Tool
from nanobot.agent.tools.validation import SchemaError, type_name
from nanobot.metrics.instruments import count_tool

logger = logging.getLogger(__name__)

UNKNOWN_TOOL = "unknown"  # the tool label of a call to a tool that does not exist


class ToolRegistry:
    """Tools by name, in registration order."""

    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}

    def register(self, tool: Tool) -> None:
        """Add a tool; a tool registered under the same name replaces the earlier one. Raises TypeError for a
        tool without a string name and description, SchemaError (a ValueError) for an unusable schema."""
        _check_tool(tool)
        self._tools[tool.name] = tool

    def unregister(self, name: str) -> None:
        """Remove a tool; removing an unknown name does nothing."""
        self._tools.pop(name, None)

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def has(self, name: str) -> bool:
        """Upstream's name for `name in registry`."""
        return name in self._tools

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    @property
    def tool_names(self) -> list[str]:
        """Upstream's name for `names`."""
        return self.names

    def definitions(self) -> list[dict[str, Any]]:
        """The OpenAI function-tool definitions of every registered tool."""
        return [tool.to_schema() for tool in self._tools.values()]

    def get_definitions(self) -> list[dict[str, Any]]:
        """Upstream's name for `definitions`."""
        return self.definitions()

    async def execute(self, name: str, arguments: dict[str, Any] | str | None) -> str:
        """Run a tool and return its text result, or an "Error: ..." message; never raises."""
        tool = self._tools.get(name)
        if tool is None:
            count_tool(UNKNOWN_TOOL, "unknown")
            available = ", ".join(self._tools) or "(none)"
            return f"Error: unknown tool '{name}'. Available: {available}"

        parsed = _parse_arguments(arguments)
        if isinstance(parsed, str):
            count_tool(name, "invalid")
            return f"Error: invalid arguments for tool '{name}': {parsed}"
        try:
            errors = tool.validate_params(parsed)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            count_tool(name, "error")
            logger.exception("checking the arguments of tool %r failed", name)
            return f"Error: cannot check the arguments of tool '{name}': {type(exc).__name__}: {exc}"
        if errors:
            count_tool(name, "invalid")
            return f"Error: invalid arguments for tool '{name}': " + "; ".join(map(str, errors))

        started = time.monotonic()
        try:
            result = await tool.execute(**parsed)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            count_tool(name, "error", time.monotonic() - started)
            logger.exception("tool %r failed", name)
            return f"Error: tool '{name}' failed: {type(exc).__name__}: {exc}"
        text = result if isinstance(result, str) else str(result)
        count_tool(name, "error" if text.startswith("Error") else "ok", time.monotonic() - started)
        return text


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
        except ValueError as exc:  # e.g. an integer beyond Python's digit limit
            return f"arguments are not usable JSON ({exc})"
        except RecursionError:
            return "arguments are nested too deeply"
    if not isinstance(arguments, dict):
        return f"arguments must be a JSON object, got {type_name(arguments)}"
    return arguments


def _check_tool(tool: Tool) -> None:
    """Refuse a tool the model could not call: no name or description, or an invalid parameters schema."""
    kind = type(tool).__name__
    name = getattr(tool, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"tool {kind} has no name: `name` must be a non-empty string, got {name!r}")
    if not isinstance(getattr(tool, "description", None), str):
        raise TypeError(f"tool '{name}' ({kind}): `description` must be a string")
    schema = getattr(tool, "parameters", None)
    if not isinstance(schema, dict):
        raise SchemaError(f"tool '{name}' ({kind}): `parameters` must be a JSON schema dict, got {type_name(schema)}")
    if schema.get("type", "object") != "object":
        raise SchemaError(f"tool '{name}' ({kind}): the parameters schema must have type 'object'")
    try:
        tool._argument_schema()
    except SchemaError as exc:
        raise SchemaError(f"tool '{name}' ({kind}): invalid parameters schema: {exc}") from None
