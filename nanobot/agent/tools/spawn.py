"""The spawn tool: hand a task to a background subagent that reports back to this conversation."""

from __future__ import annotations

from typing import Any, Protocol

from nanobot.agent.tools.base import Tool
from nanobot.agent.turn import turn_or_none


class Spawner(Protocol):
    async def spawn(
        self, task: str, label: str | None, channel: str, chat_id: str, session_key: str,
        workspace_key: str | None = None,
    ) -> str: ...


class SpawnTool(Tool):
    name = "spawn"
    description = (
        "Start a background subagent for a self-contained task that takes a while. It works on its own "
        "with file, shell and web tools and reports its result back to this conversation when done."
    )
    parameters = {
        "type": "object",
        "properties": {
            "task": {"type": "string", "minLength": 1, "description": "What the subagent must do, completely."},
            "label": {"type": "string", "description": "A short name for the task."},
        },
        "required": ["task"],
        "additionalProperties": False,
    }

    def __init__(self, spawner: Spawner) -> None:
        self._spawner = spawner

    async def execute(self, **kwargs: Any) -> str:
        turn = turn_or_none()
        if turn is None:
            return "Error: spawn needs a conversation to report back to"
        return await self._spawner.spawn(
            kwargs["task"], kwargs.get("label"), turn.channel, turn.chat_id, turn.session_key, turn.workspace_key
        )
