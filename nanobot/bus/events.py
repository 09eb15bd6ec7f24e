"""The two messages that travel on the bus."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


def new_message_id() -> str:
    return uuid.uuid4().hex


@dataclass
class InboundMessage:
    """A message a channel received from a person (or a system message for the agent)."""

    channel: str
    sender_id: str
    chat_id: str
    content: str
    timestamp: datetime = field(default_factory=datetime.now)
    media: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    session_key_override: str | None = None
    message_id: str = field(default_factory=new_message_id)

    @property
    def session_key(self) -> str:
        return self.session_key_override or f"{self.channel}:{self.chat_id}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "sender_id": self.sender_id,
            "chat_id": self.chat_id,
            "content": self.content,
            "timestamp": self.timestamp.isoformat(),
            "media": list(self.media),
            "metadata": dict(self.metadata),
            "session_key_override": self.session_key_override,
            "message_id": self.message_id,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InboundMessage:
        """Rebuild a message from `to_dict`; raises ValueError on a malformed record."""
        try:
            return cls(
                channel=str(data["channel"]),
                sender_id=str(data["sender_id"]),
                chat_id=str(data["chat_id"]),
                content=str(data["content"]),
                timestamp=datetime.fromisoformat(data["timestamp"]) if data.get("timestamp") else datetime.now(),
                media=list(data.get("media") or []),
                metadata=dict(data.get("metadata") or {}),
                session_key_override=data.get("session_key_override"),
                message_id=str(data.get("message_id") or new_message_id()),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed inbound message: {exc!r}") from exc


@dataclass
class OutboundMessage:
    """A message the agent sends to a chat.

    `reply_to` holds the id of the inbound message this answers (when there is one), so a channel
    that waits for an answer (the API channel) can match it. Metadata keys starting with `_` are
    nanobot's own markers: `_progress` (an interim update), `_tool_hint` (a tool-call summary), `_usage` (on a
    final reply: the LLM tokens its turn used, as the provider reported them).
    """

    channel: str
    chat_id: str
    content: str
    reply_to: str | None = None
    media: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def is_progress(self) -> bool:
        return bool(self.metadata.get("_progress"))

    @property
    def usage(self) -> dict[str, int]:
        """The tokens the turn that this replies to used (empty when unknown)."""
        usage = self.metadata.get("_usage")
        return {k: v for k, v in usage.items() if isinstance(v, int)} if isinstance(usage, dict) else {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "chat_id": self.chat_id,
            "content": self.content,
            "reply_to": self.reply_to,
            "media": list(self.media),
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OutboundMessage:
        try:
            return cls(
                channel=str(data["channel"]),
                chat_id=str(data["chat_id"]),
                content=str(data["content"]),
                reply_to=data.get("reply_to"),
                media=list(data.get("media") or []),
                metadata=dict(data.get("metadata") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed outbound message: {exc!r}") from exc
