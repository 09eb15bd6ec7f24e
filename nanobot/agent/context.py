"""What the LLM is told: the system prompt (identity, workspace files, memory, skills) and the messages."""

from __future__ import annotations

import platform
from datetime import datetime
from pathlib import Path
from typing import Any

from nanobot.agent.memory import MemoryStore
from nanobot.agent.skills import SkillsLoader

BOOTSTRAP_FILES = ("AGENTS.md", "SOUL.md", "USER.md", "TOOLS.md", "IDENTITY.md")


class ContextBuilder:
    def __init__(self, workspace: Path) -> None:
        self.workspace = Path(workspace)
        self.memory = MemoryStore(self.workspace)
        self.skills = SkillsLoader(self.workspace)

    def build_system_prompt(self) -> str:
        parts = [self._identity()]
        for name in BOOTSTRAP_FILES:
            path = self.workspace / name
            if path.is_file():
                text = path.read_text(encoding="utf-8").strip()
                if text:
                    parts.append(f"## {name}\n{text}")
        for block in (self.memory.context_block(), self.skills.summary()):
            if block:
                parts.append(block)
        return "\n\n---\n\n".join(parts)

    def _identity(self) -> str:
        return (
            "# nanobot\n"
            "You are nanobot, a helpful personal AI assistant. You can read, write and edit files, run "
            "shell commands, search and fetch the web, send messages, schedule tasks and spawn "
            "background subagents, through your tools.\n"
            f"Workspace: {self.workspace.resolve()} (memory in memory/MEMORY.md, history log in "
            f"memory/HISTORY.md, skills in skills/). Runtime: {platform.system()} {platform.machine()}, "
            f"Python {platform.python_version()}.\n"
            "Reply directly with text for the current conversation; use the message tool only to reach "
            "another chat. Be concise."
        )

    @staticmethod
    def runtime_context(channel: str, chat_id: str) -> str:
        now = datetime.now().astimezone()
        return (
            "## Current turn\n"
            f"Time: {now.strftime('%Y-%m-%d %H:%M (%A)')} {now.tzname() or ''}\n"
            f"Channel: {channel}\nChat: {chat_id}"
        )

    def build_messages(
        self,
        history: list[dict[str, Any]],
        current_message: str,
        channel: str,
        chat_id: str,
        media: list[str] | None = None,
    ) -> list[dict[str, Any]]:
        system = self.build_system_prompt() + "\n\n---\n\n" + self.runtime_context(channel, chat_id)
        user: dict[str, Any] = {"role": "user", "content": current_message}
        if media:
            user["content"] = current_message + "\n\n[attached: " + ", ".join(media) + "]"
        return [{"role": "system", "content": system}, *history, user]
