"""The turn being run: who it answers, visible to the tools that run inside it.

A context variable, not tool state: in local mode several conversations run concurrently in one
event loop, and each asyncio task sees only its own turn.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass
class TurnContext:
    channel: str
    chat_id: str
    session_key: str
    message_id: str | None = None
    # Whose folder the tools work in when conversations are kept apart (`tools.isolation: conversation`): the
    # session's own (None), or for a cron job's turn the conversation that made the job.
    workspace_key: str | None = None
    # Set by the message tool when it already sent something to this chat: the final reply is then skipped.
    replied_in_turn: bool = False


current_turn: ContextVar[TurnContext | None] = ContextVar("nanobot_current_turn", default=None)


def turn_or_none() -> TurnContext | None:
    return current_turn.get()


def workspace_key_of(turn: TurnContext) -> str:
    """The conversation whose folder `turn`'s tools work in."""
    return turn.workspace_key or turn.session_key
