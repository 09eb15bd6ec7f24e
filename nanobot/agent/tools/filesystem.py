"""File tools: read_file, write_file, edit_file and list_dir.

Relative paths resolve against the workspace and `~` expands to the home directory. When `allowed_dir`
is set, a path whose fully resolved form (symlinks followed, `..` collapsed) lies outside it is refused.
Expected problems (missing file, refused path, ...) come back as "Error: ..." text.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from nanobot.agent.tools.base import Tool

MAX_READ_BYTES = 128 * 1024
MAX_LIST_ENTRIES = 1000
_BINARY_SNIFF_BYTES = 8192


class PathError(Exception):
    """A path that may not or cannot be used; the message is shown to the model."""


def _path_property(description: str) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "description": description}


class _FileTool(Tool):
    """Shared path handling for the file tools."""

    def __init__(self, workspace: Path, allowed_dir: Path | None = None) -> None:
        self.workspace = Path(workspace).expanduser()
        self.allowed_dir = Path(allowed_dir).expanduser().resolve() if allowed_dir is not None else None

    def resolve_path(self, path: str) -> Path:
        """The absolute, resolved path for `path`; raises PathError when it is outside `allowed_dir`."""
        candidate = Path(path).expanduser()
        if not candidate.is_absolute():
            candidate = self.workspace / candidate
        resolved = candidate.resolve()
        if self.allowed_dir is not None and not resolved.is_relative_to(self.allowed_dir):
            raise PathError(
                f"access denied: '{path}' resolves to {resolved}, which is outside the allowed "
                f"directory {self.allowed_dir}"
            )
        return resolved

    async def execute(self, **kwargs: Any) -> str:
        try:
            return await asyncio.to_thread(self.run, **kwargs)
        except PathError as exc:
            return f"Error: {exc}"
        except PermissionError as exc:
            return f"Error: permission denied: {exc.filename or exc}"
        except OSError as exc:
            return f"Error: {exc.strerror or exc}: {exc.filename or kwargs.get('path', '')}"

    def run(self, **kwargs: Any) -> str:
        raise NotImplementedError


class ReadFileTool(_FileTool):
    name = "read_file"
    description = (
        f"Read a UTF-8 text file and return its contents (at most {MAX_READ_BYTES // 1024} KB; longer "
        "files are truncated). Relative paths are relative to the workspace."
    )
    parameters = {
        "type": "object",
        "properties": {"path": _path_property("The file to read.")},
        "required": ["path"],
        "additionalProperties": False,
    }

    def run(self, path: str) -> str:  # type: ignore[override]
        target = self.resolve_path(path)
        if not target.exists():
            return f"Error: file not found: {path}"
        if target.is_dir():
            return f"Error: {path} is a directory, not a file (use list_dir to see its contents)"
        size = target.stat().st_size
        with target.open("rb") as handle:
            data = handle.read(MAX_READ_BYTES)
        if b"\x00" in data[:_BINARY_SNIFF_BYTES]:
            return f"Error: {path} looks like a binary file ({size} bytes); only text files can be read"
        text = data.decode("utf-8", errors="replace")
        if size > MAX_READ_BYTES:
            text += f"\n\n[truncated: showing the first {MAX_READ_BYTES} of {size} bytes]"
        return text


class WriteFileTool(_FileTool):
    name = "write_file"
    description = (
        "Write text to a file, replacing its contents if it exists. Parent directories are created. "
        "Relative paths are relative to the workspace."
    )
    parameters = {
        "type": "object",
        "properties": {
            "path": _path_property("The file to write."),
            "content": {"type": "string", "description": "The complete new contents of the file."},
        },
        "required": ["path", "content"],
        "additionalProperties": False,
    }

    def run(self, path: str, content: str) -> str:  # type: ignore[override]
        target = self.resolve_path(path)
        if target.is_dir():
            return f"Error: {path} is a directory"
        target.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode("utf-8")
        target.write_bytes(data)
        return f"Wrote {len(data)} bytes to {target}"


class EditFileTool(_FileTool):
    name = "edit_file"
    description = (
        "Replace one exact occurrence of old_text with new_text in a file. old_text must appear exactly "
        "once; include enough surrounding lines to make it unique."
    )
    parameters = {
        "type": "object",
        "properties": {
            "path": _path_property("The file to edit."),
            "old_text": {"type": "string", "minLength": 1, "description": "The exact text to replace."},
            "new_text": {"type": "string", "description": "The replacement text."},
        },
        "required": ["path", "old_text", "new_text"],
        "additionalProperties": False,
    }

    def run(self, path: str, old_text: str, new_text: str) -> str:  # type: ignore[override]
        target = self.resolve_path(path)
        if not target.is_file():
            return f"Error: file not found: {path}"
        try:
            content = target.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            return f"Error: {path} is not a UTF-8 text file"
        count = content.count(old_text)
        if count == 0:
            return f"Error: old_text was not found in {path}. Searched for:\n{_preview(old_text)}"
        if count > 1:
            return (
                f"Error: old_text occurs {count} times in {path}; it must occur exactly once. "
                "Include more surrounding text to make it unique."
            )
        target.write_text(content.replace(old_text, new_text, 1), encoding="utf-8")
        return f"Edited {target}: replaced 1 occurrence"


class ListDirTool(_FileTool):
    name = "list_dir"
    description = "List the entries of a directory, sorted by name; directories end with '/'."
    parameters = {
        "type": "object",
        "properties": {
            "path": _path_property("The directory to list (default: the workspace)."),
        },
        "additionalProperties": False,
    }

    def run(self, path: str = ".") -> str:  # type: ignore[override]
        target = self.resolve_path(path)
        if not target.exists():
            return f"Error: directory not found: {path}"
        if not target.is_dir():
            return f"Error: {path} is a file, not a directory (use read_file to read it)"
        entries = sorted(target.iterdir(), key=lambda entry: entry.name)
        if not entries:
            return f"{target} is empty"
        lines = [f"{entry.name}/" if entry.is_dir() else entry.name for entry in entries[:MAX_LIST_ENTRIES]]
        if len(entries) > MAX_LIST_ENTRIES:
            lines.append(f"[... {len(entries) - MAX_LIST_ENTRIES} more entries not shown]")
        return "\n".join(lines)


def _preview(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more characters]"
