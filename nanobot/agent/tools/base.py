"""What every tool is: a name, a description, a JSON schema for its arguments, and `execute`.

The shape is upstream nanobot's, so a tool written for upstream runs unchanged: `name`, `description`
and `parameters` may be plain class attributes or properties, and the registry checks arguments by
calling `validate_params`, which a tool may override.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from nanobot.agent.tools.validation import ArgumentSchema, compile_schema


class Tool(ABC):
    """A capability the model can call. `execute` returns text for the model; it may raise, and the
    registry turns any exception into an error message instead of letting it out of the agent loop."""

    name: str
    description: str
    parameters: dict[str, Any]
    _nanobot_argument_schema: tuple[object, ArgumentSchema] | None = None

    @abstractmethod
    async def execute(self, **kwargs: Any) -> str: ...

    def validate_params(self, params: dict[str, Any]) -> list[str]:
        """What is wrong with `params` for this tool's schema, one readable line each; empty when valid.
        Raises SchemaError (a ValueError) when the tool's schema itself is invalid."""
        return self._argument_schema().errors(params)

    def to_schema(self) -> dict[str, Any]:
        """The OpenAI function-tool definition."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    def _argument_schema(self) -> ArgumentSchema:
        """The compiled `parameters`, kept on the tool while `parameters` returns the same object."""
        schema = self.parameters
        cached = self._nanobot_argument_schema
        if cached is not None and cached[0] is schema:
            return cached[1]
        compiled = compile_schema(schema)
        try:
            self._nanobot_argument_schema = (schema, compiled)
        except AttributeError:  # a tool with __slots__: the content-keyed cache in compile_schema still applies
            pass
        return compiled
