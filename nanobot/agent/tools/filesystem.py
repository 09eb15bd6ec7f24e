"""File tools: read_file, write_file, edit_file and list_dir.

Relative paths resolve against the workspace (with `tools.isolation: conversation`, the conversation's own
folder, which then confines every path: see `scope`) and `~` expands to the home directory. Every path is opened
through `Confinement` (see `confined_path`), which follows links itself: when `allowed_dir` is set, a path
leading outside it (through `..`, an absolute path or a link, even one swapped in while the tool runs) is
refused; whatever `allowed_dir` says, conversation histories, the config file and `/proc` are refused
(see `protected_paths`). Expected problems (missing file, refused path, ...) come back as "Error: ..." text.
"""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import Any

from nanobot.agent.tools.base import Tool
from nanobot.agent.tools.confined_path import AccessDenied, Confinement, Opened, absolute_in
from nanobot.agent.tools.protected_paths import protected_paths
from nanobot.agent.tools.scope import NoConversation, Scope, scope_of_call

MAX_READ_BYTES = 128 * 1024
MAX_EDIT_BYTES = 8 * 1024 * 1024
MAX_LIST_ENTRIES = 1000
_BINARY_SNIFF_BYTES = 8192


def _path_property(description: str) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "description": description}


class _FileTool(Tool):
    """Shared path handling for the file tools."""

    def __init__(
        self,
        workspace: Path,
        allowed_dir: Path | None = None,
        read_only_instructions: bool = False,
        isolated: bool = False,
    ) -> None:
        """`isolated`: each call works in its conversation's own folder (see `scope`), confined to it."""
        self.workspace = Path(os.path.abspath(Path(workspace).expanduser()))
        self.allowed_dir = Path(allowed_dir).expanduser().resolve() if allowed_dir is not None else None
        self.read_only_instructions = read_only_instructions
        self.isolated = isolated

    def confinement(self, scope: Scope, writing: bool = False) -> Confinement:
        """Where paths may lead now: inside the conversation's folder (plus, to read, the operator's instructions)
        when isolated, else inside `allowed_dir` (anywhere without one); never to a protected path (for
        `writing`, nor to the operator's instructions when they are read-only)."""
        protected = protected_paths(
            self.workspace, writing=writing, read_only_instructions=self.read_only_instructions,
            in_conversation=scope.isolated,
        )
        if scope.isolated:
            also = [] if writing else scope.readable()
            return Confinement(scope.root, protected, root_name=scope.name, also=also)
        return Confinement(self.allowed_dir or Path("/"), protected)

    async def execute(self, **kwargs: Any) -> str:
        try:
            scope = scope_of_call(self.workspace, self.isolated)
            return await asyncio.to_thread(self.run, scope, **kwargs)
        except NoConversation as exc:
            return str(exc)
        except AccessDenied as exc:
            return f"Error: {exc}"
        except PermissionError as exc:
            return f"Error: permission denied: {exc.filename or exc}"
        except OSError as exc:
            return f"Error: {exc.strerror or exc}: {exc.filename or kwargs.get('path', '')}"

    def run(self, scope: Scope, **kwargs: Any) -> str:
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

    def run(self, scope: Scope, path: str) -> str:  # type: ignore[override]
        try:
            with self.confinement(scope).open_file(absolute_in(scope.root, path), path) as opened:
                if problem := _not_a_regular_file(opened, path):
                    return problem
                size = os.fstat(opened.fd).st_size
                data = _read_at_most(opened.fd, MAX_READ_BYTES)
        except FileNotFoundError:
            return f"Error: file not found: {path}"
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

    def run(self, scope: Scope, path: str, content: str) -> str:  # type: ignore[override]
        data = content.encode("utf-8")
        try:
            target = self.confinement(scope, writing=True).replace_file(absolute_in(scope.root, path), path, data)
        except IsADirectoryError:
            return f"Error: {path} is a directory"
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

    def run(self, scope: Scope, path: str, old_text: str, new_text: str) -> str:  # type: ignore[override]
        confinement = self.confinement(scope, writing=True)
        try:
            with confinement.open_file(absolute_in(scope.root, path), path) as opened:
                if problem := _not_a_regular_file(opened, path):
                    return problem
                if os.fstat(opened.fd).st_size > MAX_EDIT_BYTES:
                    return f"Error: {path} is larger than {MAX_EDIT_BYTES // 2**20} MB; edit_file cannot edit it"
                raw = _read_at_most(opened.fd, MAX_EDIT_BYTES)
                target = opened.path
        except FileNotFoundError:
            return f"Error: file not found: {path}"
        try:
            content = raw.decode("utf-8")
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
        # The file's link-free path: the write goes to the file that was read, not through a link again.
        target = confinement.replace_file(target, path, content.replace(old_text, new_text, 1).encode("utf-8"))
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

    def run(self, scope: Scope, path: str = ".") -> str:  # type: ignore[override]
        try:
            with self.confinement(scope).open_dir(absolute_in(scope.root, path), path) as opened:
                # Entries are not followed: a link shows as a plain name, whatever it points to.
                with os.scandir(opened.fd) as scan:
                    entries = sorted(
                        ((entry.name, entry.is_dir(follow_symlinks=False)) for entry in scan), key=lambda e: e[0]
                    )
        except FileNotFoundError:
            return f"Error: directory not found: {path}"
        except NotADirectoryError:
            return f"Error: {path} is a file, not a directory (use read_file to read it)"
        if not entries:
            return f"{path} is empty"  # as the model named it: the same in every mode and on every host
        lines = [f"{name}/" if is_dir else name for name, is_dir in entries[:MAX_LIST_ENTRIES]]
        if len(entries) > MAX_LIST_ENTRIES:
            lines.append(f"[... {len(entries) - MAX_LIST_ENTRIES} more entries not shown]")
        return "\n".join(lines)


def _not_a_regular_file(opened: Opened, path: str) -> str | None:
    """The error for a directory, FIFO, device, ... or None for a regular file."""
    mode = os.fstat(opened.fd).st_mode
    if stat.S_ISDIR(mode):
        return f"Error: {path} is a directory, not a file (use list_dir to see its contents)"
    if not stat.S_ISREG(mode):
        return f"Error: {path} is not a regular file"
    return None


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    remaining = limit
    while remaining > 0:
        chunk = os.read(fd, min(remaining, 1024 * 1024))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _preview(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more characters]"
