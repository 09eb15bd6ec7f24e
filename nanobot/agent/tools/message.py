"""The message tool: send text to a chat (this one by default, or another)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from nanobot.agent.tools.base import Tool
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
            "media": {"type": "array", "items": {"type": "string"}, "description": "File paths to attach."},
        },
        "required": ["content"],
        "additionalProperties": False,
    }

    def __init__(self, send: Callable[[OutboundMessage], Awaitable[None]]) -> None:
        self._send = send

    async def execute(self, **kwargs: Any) -> str:
        turn = turn_or_none()
        channel = kwargs.get("channel") or (turn.channel if turn else None)
        chat_id = kwargs.get("chat_id") or (turn.chat_id if turn else None)
        if not channel or not chat_id:
            return "Error: no target chat: give channel and chat_id"
        same_chat = turn is not None and (channel, chat_id) == (turn.channel, turn.chat_id)
        await self._send(
            OutboundMessage(
                channel=channel,
                chat_id=chat_id,
                content=kwargs["content"],
                reply_to=turn.message_id if same_chat and turn else None,
                media=list(kwargs.get("media") or []),
            )
        )
        if same_chat and turn:
            turn.replied_in_turn = True
        return f"Message sent to {channel}:{chat_id}"
