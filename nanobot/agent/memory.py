"""Long-term memory: MEMORY.md (facts the agent keeps) and HISTORY.md (a dated log of past talk).

Consolidation folds old messages of a session into both files with one LLM call, so the history the
LLM sees stays short while nothing said is forgotten.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from nanobot.providers.base import LLMProvider
from nanobot.session.manager import Session, session_stem

log = logging.getLogger(__name__)

SAVE_MEMORY_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "save_memory",
        "description": "Store the result of consolidating a conversation excerpt.",
        "parameters": {
            "type": "object",
            "properties": {
                "history_entry": {
                    "type": "string",
                    "description": "A short dated paragraph summarising the excerpt, for the history log.",
                },
                "memory_update": {
                    "type": "string",
                    "description": "The complete new MEMORY.md: the previous facts plus anything durable learned.",
                },
            },
            "required": ["history_entry", "memory_update"],
        },
    },
}

CONSOLIDATION_PROMPT = """[memory consolidation] Fold this conversation excerpt into long-term memory.

Current MEMORY.md:
{memory}

Excerpt:
{excerpt}

Call save_memory with a one-paragraph history_entry and the full updated memory_update."""


CONVERSATIONS_DIR = "conversations"  # under memory/: one folder per conversation when memory is per conversation


class MemoryStore:
    """MEMORY.md and HISTORY.md in one folder: `memory/` (shared by every conversation), or
    `memory/conversations/<session>/` (see `for_conversation`)."""

    def __init__(self, workspace: Path, folder: Path | None = None) -> None:
        self.dir = folder or Path(workspace) / "memory"
        self.memory_file = self.dir / "MEMORY.md"
        self.history_file = self.dir / "HISTORY.md"

    @classmethod
    def for_conversation(cls, workspace: Path, session_key: str) -> MemoryStore:
        """The memory of one conversation only (the folder name is unique per session key)."""
        return cls(workspace, Path(workspace) / "memory" / CONVERSATIONS_DIR / session_stem(session_key))

    def read_long_term(self) -> str:
        return self.memory_file.read_text(encoding="utf-8") if self.memory_file.exists() else ""

    def write_long_term(self, text: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.memory_file.with_suffix(".md.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(self.memory_file)

    def append_history(self, entry: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with self.history_file.open("a", encoding="utf-8") as fh:
            fh.write(entry.rstrip() + "\n\n")

    def context_block(self) -> str:
        facts = self.read_long_term().strip()
        return f"## Long-term memory\n{facts}" if facts else ""

    async def consolidate(
        self,
        session: Session,
        provider: LLMProvider,
        model: str,
        *,
        keep_last: int,
        archive_all: bool = False,
    ) -> bool:
        """Summarise the unconsolidated messages (all of them, or all but the last `keep_last`) into
        HISTORY.md and MEMORY.md, then move `session.last_consolidated`. Returns False, changing
        nothing, when the LLM did not answer with a usable save_memory call."""
        end = len(session.messages)
        if not archive_all:
            end = max(session.last_consolidated, end - keep_last)
        excerpt = session.messages[session.last_consolidated : end]
        if not excerpt:
            return True
        prompt = CONSOLIDATION_PROMPT.format(
            memory=self.read_long_term() or "(empty)", excerpt=format_excerpt(excerpt)
        )
        response = await provider.chat(
            [
                {"role": "system", "content": "You maintain the assistant's long-term memory."},
                {"role": "user", "content": prompt},
            ],
            tools=[SAVE_MEMORY_TOOL],
            model=model,
            max_tokens=4096,
            temperature=0.0,
        )
        call = next((c for c in response.tool_calls if c.name == "save_memory"), None)
        args = call.arguments if call else None
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                args = None
        if not isinstance(args, dict) or not isinstance(args.get("history_entry"), str):
            log.warning("session=%s memory consolidation skipped: no usable save_memory call", session.key)
            return False
        self.append_history(args["history_entry"])
        update = args.get("memory_update")
        if isinstance(update, str) and update.strip() and update != self.read_long_term():
            self.write_long_term(update)
        session.last_consolidated = end
        log.info("session=%s consolidated %d message(s) into memory", session.key, len(excerpt))
        return True


def format_excerpt(messages: list[dict[str, Any]]) -> str:
    lines = []
    for m in messages:
        content = m.get("content")
        if not content:
            continue
        if not isinstance(content, str):
            content = json.dumps(content, ensure_ascii=False)
        stamp = str(m.get("timestamp", ""))[:16] or datetime.now().isoformat()[:16]
        tools = f" [tools: {', '.join(c['function']['name'] for c in m['tool_calls'])}]" if m.get("tool_calls") else ""
        lines.append(f"[{stamp}] {str(m.get('role', '?')).upper()}{tools}: {content}")
    return "\n".join(lines)
