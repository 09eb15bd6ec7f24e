"""Paths no tool may read, write, list or send, whatever `tools.restrictToWorkspace` says.

The file tools and the message tool refuse these (and anything below them) after following links, so a
link, a `..` or an absolute path leading to them is refused too:

* `<workspace>/sessions/`: the JSONL history of every conversation (see `nanobot.session.manager`);
  one end user must not read another's.
* `<workspace>/memory/conversations/`: each conversation's own memory (`agents.defaults.memoryScope`).
* the cron jobs file: every user's scheduled messages and where they go.
* the config file in use: it holds the operator's provider keys and the Redis URL.
* `/proc`: the environment and command line of nanobot's own processes can hold the same secrets.
* `<workspace>/conversations/`, for tools working in the shared workspace: each conversation's own folder
  (`tools.isolation: conversation`); a tool working in one of them is confined to it instead (`scope`).

With `tools.readOnlyInstructions` (on in distributed mode), writes are also refused to the operator's
instructions (`INSTRUCTIONS`): every conversation's system prompt is built from them, so one end user must
not rewrite what the agent tells everyone else.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from nanobot.agent.context import BOOTSTRAP_FILES
from nanobot.agent.memory import CONVERSATIONS_DIR
from nanobot.agent.workspace import conversations_root
from nanobot.config.loader import config_path, cron_store_path

# The folder SessionManager keeps its histories in, inside the workspace.
SESSIONS_DIR_NAME = "sessions"


class ProtectedPath(NamedTuple):
    path: Path
    """Resolved (links followed), so it compares with the link-free paths a confined walk produces."""
    reason: str
    """Why it is refused, shown to the model after "access denied: "."""


# The operator's instructions in the workspace: every conversation's system prompt is built from them.
INSTRUCTIONS = (*BOOTSTRAP_FILES, "HEARTBEAT.md", "skills")


def instruction_paths(workspace: Path) -> list[Path]:
    """The operator's instructions in `workspace` (`tools.readOnlyInstructions` keeps tools from changing them)."""
    return [Path(workspace).expanduser() / name for name in INSTRUCTIONS]


def protected_paths(
    workspace: Path, *, writing: bool = False, read_only_instructions: bool = False, in_conversation: bool = False
) -> list[ProtectedPath]:
    """The protected paths for an agent whose workspace is `workspace`, resolved now (the config file may move).
    `writing` with `read_only_instructions` adds the operator's instructions; a tool working in a conversation's
    own folder (`in_conversation`) is kept out of the others by its root, so the conversations' folders are
    not listed."""
    workspace = Path(workspace).expanduser()
    instructions = [
        ProtectedPath(path.resolve(), "the operator's instructions are read-only for tools")
        for path in instruction_paths(workspace)
    ] if writing and read_only_instructions else []
    conversations = [] if in_conversation else [
        ProtectedPath(conversations_root(workspace).resolve(), "other conversations' folders are not available"),
    ]
    return [
        *instructions,
        *conversations,
        ProtectedPath(
            (workspace / SESSIONS_DIR_NAME).resolve(), "conversation histories are not available to tools"
        ),
        ProtectedPath(
            (workspace / "memory" / CONVERSATIONS_DIR).resolve(), "conversations' memory is not available to tools"
        ),
        ProtectedPath(config_path().resolve(), "the configuration file is not available to tools"),
        ProtectedPath(cron_store_path().resolve(), "scheduled jobs are not available to tools"),
        ProtectedPath(Path("/proc"), "process information is not available to tools"),
    ]
