"""The workspace: the agent's folder, created from templates on first use; and, when conversations are kept
apart (`tools.isolation: conversation`), the folder of each conversation inside it."""

from __future__ import annotations

import shutil
from pathlib import Path

from nanobot.session.manager import session_stem

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"


def init_workspace(workspace: Path) -> list[Path]:
    """Create the workspace and copy every template that is missing; returns the files created.
    Existing files are never overwritten."""
    workspace = Path(workspace).expanduser()
    created: list[Path] = []
    for template in sorted(TEMPLATES_DIR.rglob("*")):
        if not template.is_file():
            continue
        target = workspace / template.relative_to(TEMPLATES_DIR)
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, target)
        created.append(target)
    for folder in ("sessions", "skills", "memory"):
        (workspace / folder).mkdir(parents=True, exist_ok=True)
    return created


# Under `tools.isolation: conversation`, each conversation's own folder is `<workspace>/conversations/<stem>/`.
CONVERSATIONS_DIR = "conversations"


def conversations_root(workspace: Path) -> Path:
    """The folder that holds every conversation's own folder."""
    return Path(workspace).expanduser() / CONVERSATIONS_DIR


def conversation_folder(workspace: Path, session_key: str) -> Path:
    """The folder of the conversation `session_key`: its name is the session file's stem, which no other key
    shares (`nanobot.session.manager.session_stem`), so two conversations never share a folder."""
    return conversations_root(workspace) / session_stem(session_key)
