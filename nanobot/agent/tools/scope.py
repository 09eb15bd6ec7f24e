"""Where one tool call works: the agent's workspace, or its conversation's own folder.

With `tools.isolation: "shared"` (upstream) every turn's tools work in the agent's workspace. With
`"conversation"` they work in the folder of the conversation whose turn is running
(`<workspace>/conversations/<session>/`, made on first use): relative paths resolve there, writes stay
there, exec runs there with it as HOME, the message tool sends files only from there. Outside it, only the
operator's instructions and skills of the shared workspace can be read (`Scope.readable`); every other
conversation's folder, and the rest of the workspace, cannot.

The tools are built once per agent and shared by every turn; each call finds its conversation through the
turn's context variable (`nanobot.agent.turn`), so concurrent turns never see each other's folder. A call
outside any turn under isolation has no folder, and is refused (`NoConversation`).
"""

from __future__ import annotations

import functools
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from nanobot.agent.tools.protected_paths import instruction_paths
from nanobot.agent.turn import turn_or_none, workspace_key_of
from nanobot.agent.workspace import conversation_folder


class NoConversation(Exception):
    """A tool call under isolation with no conversation to work for."""


@dataclass(frozen=True)
class Scope:
    root: Path
    """Relative paths resolve here; the only place written; exec's working directory and HOME."""
    workspace: Path
    """The agent's (shared) workspace: its histories, memory and instructions live there."""
    isolated: bool

    @property
    def name(self) -> str:
        """How refusals name the root."""
        return "this conversation's folder" if self.isolated else "the workspace"

    def readable(self) -> list[Path]:
        """Paths outside `root` that tools may read (never write), resolved: the operator's instructions and skills,
        when the root is a conversation's folder."""
        return list(_instructions(self.workspace)) if self.isolated else []


@functools.lru_cache(maxsize=16)
def _instructions(workspace: Path) -> tuple[Path, ...]:
    """The operator's instructions, resolved once per workspace (a link swapped in later fails closed: the walk
    then leads somewhere these do not name)."""
    return tuple(Path(os.path.realpath(path)) for path in instruction_paths(workspace))


@functools.lru_cache(maxsize=4096)
def _folder(workspace: Path, key: str) -> Path:
    return conversation_folder(workspace, key)


def scope_of_call(workspace: Path, isolated: bool) -> Scope:
    """The scope of the tool call being made now; under isolation the conversation's folder is made if missing.
    Raises NoConversation when isolated and no turn is running."""
    workspace = Path(os.path.abspath(Path(workspace).expanduser()))
    if not isolated:
        return Scope(workspace, workspace, False)
    turn = turn_or_none()
    if turn is None:
        raise NoConversation("Error: this tool works in a conversation's own folder, and no conversation is running")
    root = _folder(workspace, workspace_key_of(turn))
    # The folder, and the one holding every conversation's, must be real directories: a link (planted, say, by an
    # unsandboxed command while the workspace was shared) would make the conversation work elsewhere.
    try:
        info = os.lstat(root)
    except FileNotFoundError:
        root.mkdir(parents=True, exist_ok=True)
        info = os.lstat(root)
    if not stat.S_ISDIR(info.st_mode) or not stat.S_ISDIR(os.lstat(root.parent).st_mode):
        raise NoConversation(f"Error: this conversation's folder {root} leads elsewhere through a link; refused")
    return Scope(root, workspace, True)
