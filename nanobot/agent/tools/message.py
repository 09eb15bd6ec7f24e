"""The message tool: send text to the chat of the turn it serves, with files from the workspace.

Another chat only when the operator allows it (`tools.message.allowOtherChats`): otherwise a `channel`/`chat_id`
naming any other chat is an error and nothing is sent, so one person cannot make the bot write to another.

Chat channels upload the files a message names to the person at the other end, and what the agent names
may be what a hostile user or a web page asked for. So a file is sent only when it opens through
`Confinement` inside the workspace (the conversation's own folder under `tools.isolation: conversation`;
links followed by the walk, never out of it) and is not a protected path (conversation histories, the config
file); the channel then gets a copy of it in the outbox (see `media_outbox`), not the path the model named.
Upstream nanobot sends any path.
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
from nanobot.agent.tools.scope import NoConversation, Scope, scope_of_call
from nanobot.agent.turn import TurnContext, turn_or_none
from nanobot.bus.events import OutboundMessage


class MessageTool(Tool):
    name = "message"
    description = (
        "Send a message to the current chat; it is then your reply for this turn. Use it to send files "
        "(media). Other chats are reachable only where the operator allows it."
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

    def __init__(
        self,
        send: Callable[[OutboundMessage], Awaitable[None]],
        workspace: Path,
        *,
        allow_other_chats: bool = False,
        isolated: bool = False,
    ) -> None:
        """`isolated`: files are sent only from the conversation's own folder (see `scope`)."""
        self._send = send
        self.workspace = Path(workspace).expanduser().resolve()
        self.allow_other_chats = allow_other_chats
        self.isolated = isolated

    def _media_paths(self, scope: Scope, paths: list[str]) -> list[str]:
        """The outbox copies of `paths`; raises ValueError (or AccessDenied, OSError) naming the first refused."""
        protected = protected_paths(self.workspace, in_conversation=scope.isolated)
        confinement = Confinement(scope.root, protected, root_name=scope.name)
        with ExitStack() as stack:
            sources: list[tuple[Opened, str]] = []
            for path in paths:
                try:
                    opened = stack.enter_context(confinement.open_file(absolute_in(scope.root, path), path))
                    sources.append((opened, path))
                except FileNotFoundError:
                    raise ValueError(f"'{path}' is not a file") from None
            return media_outbox.stage(confinement, scope.root, sources)

    def _refusal(self, turn: TurnContext | None, channel: str, chat_id: str) -> str | None:
        """Why sending to `channel`:`chat_id` is refused now, or None."""
        if self.allow_other_chats or (turn is not None and (channel, chat_id) == (turn.channel, turn.chat_id)):
            return None
        return ("Error: the message tool sends only to the chat of this conversation "
                f"({turn.channel}:{turn.chat_id}); nothing was sent to {channel}:{chat_id}" if turn is not None else
                "Error: the message tool sends only to the chat of the conversation it serves, and none is running")

    async def execute(self, **kwargs: Any) -> str:
        turn = turn_or_none()
        channel = kwargs.get("channel") or (turn.channel if turn else None)
        chat_id = kwargs.get("chat_id") or (turn.chat_id if turn else None)
        if not channel or not chat_id:
            return "Error: no target chat: give channel and chat_id"
        if refusal := self._refusal(turn, str(channel), str(chat_id)):
            return refusal
        try:
            scope = scope_of_call(self.workspace, self.isolated)
            media = await asyncio.to_thread(self._media_paths, scope, list(kwargs.get("media") or []))
        except NoConversation as exc:
            return str(exc)
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
