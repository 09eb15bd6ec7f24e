"""Skills: folders holding a SKILL.md (front matter + instructions) the agent reads when a task needs it.

The front matter is YAML between `---` lines: `name`, `description`, `always` (its instructions are always in the
system prompt) and upstream's `metadata` (`{"nanobot": {"always": true, "requires": {"bins": [...]}}}`, a mapping
or a JSON string). Workspace skills (`<workspace>/skills/<name>/SKILL.md`) override built-in ones of the same name.
A skill whose front matter cannot be read is skipped with a warning.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import yaml

log = logging.getLogger(__name__)
# libyaml's safe loader where PyYAML was built with it (about 10x faster), else the pure-Python one.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

BUILTIN_SKILLS_DIR = Path(__file__).resolve().parent.parent / "skills"

# `---` on the first line, the YAML, `---` alone on a line; CRLF line ends accepted.
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)^---[ \t]*(?:\r?\n|\Z)", re.DOTALL | re.MULTILINE)


class SkillError(ValueError):
    """A SKILL.md whose front matter cannot be used."""


@dataclass
class Skill:
    name: str
    description: str
    path: Path
    always: bool  # its instructions are always in the system prompt
    source: str  # "workspace" or "builtin"
    requires_bins: list[str] = field(default_factory=list)  # programs it needs on PATH (upstream's metadata)

    def body(self) -> str:
        return split_front_matter(self.path.read_text(encoding="utf-8"))[1].strip()

    def missing_bins(self) -> list[str]:
        return [name for name in self.requires_bins if shutil.which(name) is None]


def split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """`---\\n<YAML mapping>\\n---\\nbody` -> (mapping, body); text without front matter -> ({}, text).

    SkillError when the front matter is not closed, is not valid YAML, or is not a mapping."""
    if not re.match(r"---[ \t]*\r?\n", text):
        return {}, text
    match = _FRONT_MATTER.match(text)
    if match is None:
        raise SkillError("front matter: no closing '---' line")
    try:
        meta = yaml.load(match.group(1), Loader=_SAFE_LOADER)
    except yaml.YAMLError as exc:
        raise SkillError(f"front matter: invalid YAML: {exc}".replace("\n", " ")) from None
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise SkillError(f"front matter: expected a mapping of keys, got {type(meta).__name__}")
    return meta, text[match.end() :]


def _text(meta: dict[str, Any], key: str) -> str:
    value = meta.get(key)
    if value is None:
        return ""
    if isinstance(value, dict | list):  # a date or a number is text that YAML read as something else
        raise SkillError(f"front matter: {key!r} must be text, got {type(value).__name__}")
    return str(value).strip()


def _flag(value: Any, key: str) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise SkillError(f"front matter: {key!r} must be true or false, got {value!r}")


def _nanobot_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """Upstream's `metadata`: a mapping (or a JSON string of one) whose `nanobot` (or `openclaw`) entry we read."""
    raw = meta.get("metadata")
    if raw is None:
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise SkillError(f"front matter: 'metadata' is not a JSON object: {exc}") from None
    if not isinstance(raw, dict):
        raise SkillError(f"front matter: 'metadata' must be a mapping, got {type(raw).__name__}")
    ours = raw.get("nanobot", raw.get("openclaw", {}))
    if not isinstance(ours, dict):
        raise SkillError(f"front matter: 'metadata.nanobot' must be a mapping, got {type(ours).__name__}")
    return ours


def _bins(ours: dict[str, Any]) -> list[str]:
    requires = ours.get("requires") or {}
    if not isinstance(requires, dict):
        raise SkillError(f"front matter: 'metadata.nanobot.requires' must be a mapping, got {type(requires).__name__}")
    bins = requires.get("bins") or []
    if not isinstance(bins, list) or not all(isinstance(b, str) for b in bins):
        raise SkillError("front matter: 'metadata.nanobot.requires.bins' must be a list of program names")
    return bins


def read_skill(skill_file: Path, source: str) -> Skill:
    """The skill a SKILL.md describes; OSError when unreadable, SkillError when its front matter is unusable.
    Parsed once per version of the file (the skills index is part of every turn's prompt)."""
    stat = skill_file.stat()
    return _read_skill_version(skill_file, source, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=512)
def _read_skill_version(skill_file: Path, source: str, _mtime_ns: int, _size: int) -> Skill:
    meta, _ = split_front_matter(skill_file.read_text(encoding="utf-8"))
    ours = _nanobot_metadata(meta)
    return Skill(
        name=_text(meta, "name") or skill_file.parent.name,
        description=_text(meta, "description"),
        path=skill_file,
        always=_flag(meta.get("always"), "always") or _flag(ours.get("always"), "metadata.nanobot.always"),
        source=source,
        requires_bins=_bins(ours),
    )


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
                    skill = read_skill(skill_file, source)
                except (OSError, UnicodeDecodeError, SkillError) as exc:
                    log.warning("skill %s skipped: %s", skill_file, exc)
                    continue
                found[skill.name] = skill
        return sorted(found.values(), key=lambda s: s.name)

    def summary(self) -> str:
        """The skills block of the system prompt: always-on skills in full, the others as an index."""
        skills = self.list_skills()
        if not skills:
            return ""
        parts = []
        for skill in (s for s in skills if s.always):
            try:
                parts.append(f"### Skill: {skill.name}\n{skill.body()}")
            except (OSError, UnicodeDecodeError, SkillError) as exc:
                log.warning("skill %s skipped: %s", skill.path, exc)
        index = "\n".join(_index_entry(s) for s in skills if not s.always)
        if index:
            parts.append(
                "## Skills\nRead a skill's SKILL.md with read_file before using it.\n<skills>\n" + index + "\n</skills>"
            )
        return "\n\n".join(parts)


def _index_entry(skill: Skill) -> str:
    description = " ".join(skill.description.split())  # one line, however the YAML folded it
    attrs = f"name={quoteattr(skill.name)} path={quoteattr(str(skill.path))}"
    missing = skill.missing_bins()
    if missing:
        attrs += f" unavailable={quoteattr('needs ' + ', '.join(missing))}"
    return f"  <skill {attrs}>{escape(description)}</skill>"
