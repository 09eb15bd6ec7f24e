"""What the LLM is told: the system prompt (identity, workspace files, memory, skills) and the messages."""

from __future__ import annotations

import functools
import platform
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from nanobot.agent.memory import MemoryStore
from nanobot.agent.skills import SkillsLoader
from nanobot.agent.workspace import conversation_folder

BOOTSTRAP_FILES = ("AGENTS.md", "SOUL.md", "USER.md", "TOOLS.md", "IDENTITY.md")
_WORKSPACE = "\x00workspace\x00"  # where the identity names the workspace, filled per turn


class ContextBuilder:
    def __init__(
        self, workspace: Path, memory_scope: Literal["shared", "conversation"] = "shared", isolated: bool = False
    ) -> None:
        """`isolated`: each conversation's tools work in its own folder, and its prompt names that folder."""
        self.workspace = Path(workspace)
        self.memory_scope = memory_scope
        self.isolated = isolated
        self.skills = SkillsLoader(self.workspace)

    def memory_for(self, session_key: str) -> MemoryStore:
        """The memory a conversation reads and consolidates into (its own one when memory is per conversation)."""
        if self.memory_scope == "conversation":
            return MemoryStore.for_conversation(self.workspace, session_key)
        return MemoryStore(self.workspace)

    def build_system_prompt(self, session_key: str = "", workspace_key: str | None = None) -> str:
        """The system prompt of `session_key`'s turn; `workspace_key` names whose folder its tools work in (a cron
        job's turn works in its owner's)."""
        folder = self._resolved_workspace
        if self.isolated:
            folder = conversation_folder(folder, workspace_key or session_key)
        parts = [self._identity.replace(_WORKSPACE, str(folder))]
        for name in BOOTSTRAP_FILES:
            path = self.workspace / name
            if path.is_file():
                text = path.read_text(encoding="utf-8").strip()
                if text:
                    parts.append(f"## {name}\n{text}")
        for block in (self.memory_for(session_key).context_block(), self.skills.summary()):
            if block:
                parts.append(block)
        return "\n\n---\n\n".join(parts)

    @functools.cached_property
    def _resolved_workspace(self) -> Path:
        return self.workspace.resolve()

    @functools.cached_property
    def _identity(self) -> str:
        """The same for every turn but for the workspace's path (`_WORKSPACE`): built once."""
        return (
            "# nanobot\n"
            "You are nanobot, a helpful personal AI assistant. You can read, write and edit files, run "
            "shell commands, search and fetch the web, send messages, schedule tasks and spawn "
            "background subagents, through your tools.\n"
            f"Workspace: {_WORKSPACE} ({self._memory_note()}, {self._skills_note()}). "
            f"Runtime: {platform.system()} {platform.machine()}, "
            f"Python {platform.python_version()}.\n"
            "Reply directly with text for the current conversation; use the message tool only to reach "
            "another chat. Be concise."
        )

    def _skills_note(self) -> str:
        if self.isolated:
            return f"your own folder; the operator's skills, read-only, in {self._resolved_workspace / 'skills'}"
        return "skills in skills/"

    def _memory_note(self) -> str:
        if self.memory_scope == "conversation":
            return "long-term memory of this conversation shown below, kept for you automatically"
        return "memory in memory/MEMORY.md, history log in memory/HISTORY.md"

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
        session_key: str = "",
        workspace_key: str | None = None,
    ) -> list[dict[str, Any]]:
        system = (self.build_system_prompt(session_key, workspace_key) + "\n\n---\n\n"
                  + self.runtime_context(channel, chat_id))
        user: dict[str, Any] = {"role": "user", "content": current_message}
        if media:
            user["content"] = current_message + "\n\n[attached: " + ", ".join(media) + "]"
        return [{"role": "system", "content": system}, *history, user]
