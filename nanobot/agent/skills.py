"""Skills: folders holding a SKILL.md (front matter + instructions) the agent reads when a task needs it.

Workspace skills (`<workspace>/skills/<name>/SKILL.md`) override built-in ones of the same name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

log = logging.getLogger(__name__)

BUILTIN_SKILLS_DIR = Path(__file__).resolve().parent.parent / "skills"


@dataclass
class Skill:
    name: str
    description: str
    path: Path
    always: bool  # its instructions are always in the system prompt
    source: str  # "workspace" or "builtin"

    def body(self) -> str:
        return split_front_matter(self.path.read_text(encoding="utf-8"))[1].strip()


def split_front_matter(text: str) -> tuple[dict[str, str], str]:
    """`---\\nkey: value\\n---\\nbody` -> ({key: value}, body). Only flat `key: value` lines are read."""
    if not text.startswith("---"):
        return {}, text
    head, sep, body = text[3:].partition("\n---")
    if not sep:
        return {}, text
    meta: dict[str, str] = {}
    for line in head.splitlines():
        key, colon, value = line.partition(":")
        if colon and key.strip():
            meta[key.strip()] = value.strip().strip("\"'")
    return meta, body.lstrip("-\n")


class SkillsLoader:
    def __init__(self, workspace: Path, builtin_dir: Path = BUILTIN_SKILLS_DIR) -> None:
        self.workspace_dir = Path(workspace) / "skills"
        self.builtin_dir = builtin_dir

    def list_skills(self) -> list[Skill]:
        found: dict[str, Skill] = {}
        for source, root in (("builtin", self.builtin_dir), ("workspace", self.workspace_dir)):
            if not root.is_dir():
                continue
            for skill_file in sorted(root.glob("*/SKILL.md")):
                try:
                    meta, _ = split_front_matter(skill_file.read_text(encoding="utf-8"))
                except OSError as exc:
                    log.warning("skill %s unreadable: %s", skill_file, exc)
                    continue
                name = meta.get("name") or skill_file.parent.name
                found[name] = Skill(
                    name=name,
                    description=meta.get("description", ""),
                    path=skill_file,
                    always=meta.get("always", "").lower() == "true",
                    source=source,
                )
        return sorted(found.values(), key=lambda s: s.name)

    def summary(self) -> str:
        """The skills block of the system prompt: always-on skills in full, the others as an index."""
        skills = self.list_skills()
        if not skills:
            return ""
        parts = []
        for skill in (s for s in skills if s.always):
            parts.append(f"### Skill: {skill.name}\n{skill.body()}")
        index = "\n".join(
            f'  <skill name="{escape(s.name)}" path="{escape(str(s.path))}">{escape(s.description)}</skill>'
            for s in skills
            if not s.always
        )
        if index:
            parts.append(
                "## Skills\nRead a skill's SKILL.md with read_file before using it.\n<skills>\n" + index + "\n</skills>"
            )
        return "\n\n".join(parts)
