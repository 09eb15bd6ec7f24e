"""What every tool is: a name, a description, a JSON schema for its arguments, and `execute`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any


class Tool(ABC):
    """A capability the model can call. `execute` returns text for the model; it may raise, and the
    registry turns any exception into an error message instead of letting it out of the agent loop."""

    name: str
    description: str
    parameters: dict[str, Any]

    @abstractmethod
    async def execute(self, **kwargs: Any) -> str: ...

    def to_schema(self) -> dict[str, Any]:
        """The OpenAI function-tool definition."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }
