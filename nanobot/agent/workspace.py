"""The workspace: the agent's folder, created from templates on first use."""

from __future__ import annotations

import shutil
from pathlib import Path

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
