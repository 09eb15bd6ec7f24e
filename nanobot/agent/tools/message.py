"""The message tool: send text to a chat (this one by default, or another), with files from the workspace.

Chat channels upload the files a message names to the person at the other end, and what the agent names
may be what a hostile user or a web page asked for. So a file is sent only when it opens through
`Confinement` inside the workspace (links followed by the walk, never out of it) and is not a protected
path (conversation histories, the config file); the channel then gets a copy of it in the outbox (see
`media_outbox`), not the path the model named. Upstream nanobot sends any path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from nanobot.agent.tools import media_outbox
from nanobot.agent.tools.base import Tool
from nanobot.agent.tools.confined_path import AccessDenied, Confinement, Opened, OutsideRoot, absolute_in
from nanobot.agent.tools.protected_paths import protected_paths
from nanobot.agent.turn import turn_or_none
from nanobot.bus.events import OutboundMessage


class MessageTool(Tool):
    name = "message"
    description = (
        "Send a message to a chat. Without channel and chat_id it goes to the current chat, and then "
        "it is your reply for this turn. Use it to reach another chat, or to send files (media)."
    )
    parameters = {
        "type": "object",
        "properties": {
            "content": {"type": "string", "minLength": 1, "description": "The text to send."},
            "channel": {"type": "string", "description": "Target channel (telegram, whatsapp, api, ...)."},
            "chat_id": {"type": "string", "description": "Target chat id in that channel."},
            "media": {"type": "array", "items": {"type": "string"},
              "description": "Files in the workspace to attach (relative to it, or absolute)."},
        },
        "required": ["content"],
        "additionalProperties": False,
    }

    def __init__(self, send: Callable[[OutboundMessage], Awaitable[None]], workspace: Path) -> None:
        self._send = send
        self.workspace = Path(workspace).expanduser().resolve()

    def _media_paths(self, paths: list[str]) -> list[str]:
        """The outbox copies of `paths`; raises ValueError (or AccessDenied, OSError) naming the first refused."""
        confinement = Confinement(self.workspace, protected_paths(self.workspace), root_name="the workspace")
        with ExitStack() as stack:
            sources: list[tuple[Opened, str]] = []
            for path in paths:
                try:
                    opened = stack.enter_context(confinement.open_file(absolute_in(self.workspace, path), path))
                    sources.append((opened, path))
                except FileNotFoundError:
                    raise ValueError(f"'{path}' is not a file") from None
            return media_outbox.stage(confinement, self.workspace, sources)

    async def execute(self, **kwargs: Any) -> str:
        turn = turn_or_none()
        channel = kwargs.get("channel") or (turn.channel if turn else None)
        chat_id = kwargs.get("chat_id") or (turn.chat_id if turn else None)
        if not channel or not chat_id:
            return "Error: no target chat: give channel and chat_id"
        try:
            media = await asyncio.to_thread(self._media_paths, list(kwargs.get("media") or []))
        except OutsideRoot as exc:
            return f"Error: {exc}; only files in the workspace can be sent"
        except (ValueError, AccessDenied) as exc:
            return f"Error: {exc}"
        except OSError as exc:
            return f"Error: cannot send {exc.filename or 'a file'}: {exc.strerror or exc}"
        same_chat = turn is not None and (channel, chat_id) == (turn.channel, turn.chat_id)
        await self._send(
            OutboundMessage(
                channel=channel,
                chat_id=chat_id,
                content=kwargs["content"],
                reply_to=turn.message_id if same_chat and turn else None,
                media=media,
            )
        )
        if same_chat and turn:
            turn.replied_in_turn = True
        return f"Message sent to {channel}:{chat_id}"
