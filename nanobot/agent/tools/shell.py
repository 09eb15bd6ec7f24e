"""The `exec` tool: run a shell command and return its output.

Safety is best effort, not a sandbox:

* A deny-list of regular expressions refuses obviously destructive commands (wiping `/`, `~` or `*`,
  formatting disks, writing to block devices, powering the machine off, fork bombs, ...).
* With `restrict_to_workspace`, the working directory must be inside the workspace, and a simple textual
  heuristic refuses commands that mention `..` as a path component or an absolute (or `~`/`$HOME`) path
  outside the workspace. It does not understand variables, globs, `cd` chains or scripts that the command
  runs, so it keeps honest mistakes out rather than stopping a determined adversary.

Commands run through the shell in their own process group, which is killed as a whole on timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import tempfile
from pathlib import Path
from typing import IO, Any

from nanobot.agent.tools.base import Tool

# Bytes read back per stream, so a chatty command cannot exhaust memory (the rest is only counted).
_MAX_CAPTURE_BYTES = 4 * 1024 * 1024
# Paths that are harmless to mention even when the command is restricted to the workspace.
_ALWAYS_ALLOWED_PATHS = {"/dev/null", "/dev/stdin", "/dev/stdout", "/dev/stderr", "/dev/zero", "/dev/urandom"}

_CMD_START = r"(?:^|[;&|({`\n]|\$\()\s*(?:sudo\s+(?:-\S+\s+)*)?"
_DENY_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p, re.IGNORECASE), why)
    for p, why in [
        (r"\brm\s[^;&|\n]*--no-preserve-root", "removing the root directory"),
        (_CMD_START + r"mkfs(?:\.\w+)?\b", "creating a filesystem (formats a disk)"),
        (_CMD_START + r"(?:format|diskpart)\b", "formatting a disk"),
        (r"\b(?:fdisk|parted|sfdisk|wipefs|shred)\b[^;&|\n]*/dev/", "modifying or wiping a disk device"),
        (r"\bdd\b[^;&|\n]*\bof=/dev/(?!null\b)", "dd writing to a device"),
        (r">\s*/dev/(?:sd|hd|vd|xvd|nvme|mmcblk|disk)", "writing directly to a disk device"),
        (_CMD_START + r"(?:shutdown|reboot|poweroff|halt)\b", "shutting down or rebooting the machine"),
        (_CMD_START + r"init\s+[06]\b", "shutting down or rebooting the machine"),
        (r"\bsystemctl\s+(?:poweroff|reboot|halt|kexec)\b", "shutting down or rebooting the machine"),
        (r":\s*\(\s*\)\s*\{[^}]*:\s*\|\s*:[^}]*&[^}]*\}", "a fork bomb"),
        (
            r"\b(?:chmod|chown|chgrp)\s+(?:[^;&|\n]*\s)?-[a-z]*r[a-z]*\s+(?:[^;&|\n]*\s)?/(?:\*)?(?=\s|$|;|&|\|)",
            "recursively changing permissions or ownership of /",
        ),
        (r"\bfind\s+/\s[^;&|\n]*-delete\b", "deleting files across the whole filesystem"),
        (r">\s*/etc/(?:passwd|shadow|sudoers)\b", "overwriting system account files"),
    ]
]

_RM_COMMAND = re.compile(r"(?<![\w./-])rm\s+([^;&|\n)`]*)")
_DANGEROUS_RM_TARGETS = frozenset(
    "/ /* ~ ~/ ~/* * . ./ ./* .. ../ ../* $home $home/ $home/* ${home} ${home}/ ${home}/*".split()
)


def check_denied(command: str) -> str | None:
    """Why `command` is refused by the deny-list, or None if it is not."""
    if reason := _dangerous_rm(command):
        return reason
    for pattern, reason in _DENY_PATTERNS:
        if pattern.search(command):
            return reason
    return None


def _dangerous_rm(command: str) -> str | None:
    """Detect `rm -r` (any flag spelling) aimed at /, ~, $HOME, . , .. or a bare *."""
    for match in _RM_COMMAND.finditer(command):
        words = [w.strip("'\"").lower() for w in match.group(1).split()]
        recursive = any(
            w == "--recursive" or (w.startswith("-") and not w.startswith("--") and "r" in w) for w in words
        )
        if recursive and any(w in _DANGEROUS_RM_TARGETS for w in words):
            return "recursively deleting the root, home or current directory"
    return None


_PARENT_REF = re.compile(r"(?:^|[\s/=<>'\"(:])\.\.(?=[/\\\s'\";|&)]|$)")
_ABSOLUTE_PATH = re.compile(r"(?:^|(?<=[\s=<>'\"(]))((?:/|~|\$HOME\b|\$\{HOME\})[^\s'\";|&<>()`]*)")


def check_outside_workspace(command: str, workspace: Path) -> str | None:
    """Why `command` seems to reach outside `workspace` (the textual heuristic), or None."""
    if _PARENT_REF.search(command):
        return "it contains '..' path traversal"
    root = workspace.resolve()
    home = str(Path.home())
    for match in _ABSOLUTE_PATH.finditer(command):
        raw = match.group(1)
        if raw in _ALWAYS_ALLOWED_PATHS:
            continue
        expanded = re.sub(r"^(?:~|\$HOME\b|\$\{HOME\})", lambda _: home, raw)
        if not Path(expanded).resolve().is_relative_to(root):
            return f"it refers to {raw}, which is outside the workspace {root}"
    return None


class ExecTool(Tool):
    name = "exec"
    description = (
        "Run a shell command and return its stdout, stderr and exit code. Use it for builds, tests, git, "
        "searching files and similar tasks; it is not for interactive programs (stdin is empty)."
    )
    parameters = {
        "type": "object",
        "properties": {
            "command": {"type": "string", "minLength": 1, "description": "The shell command to run."},
            "working_dir": {
                "type": "string",
                "description": "Directory to run in (default: the workspace); relative to the workspace.",
            },
        },
        "required": ["command"],
        "additionalProperties": False,
    }

    def __init__(
        self,
        working_dir: Path,
        timeout_s: int = 60,
        restrict_to_workspace: bool = False,
        max_output_chars: int = 10000,
    ) -> None:
        self.working_dir = Path(working_dir).expanduser()
        self.timeout_s = timeout_s
        self.restrict_to_workspace = restrict_to_workspace
        self.max_output_chars = max_output_chars

    async def execute(self, command: str, working_dir: str | None = None, **_: Any) -> str:  # type: ignore[override]
        if reason := check_denied(command):
            return f"Error: command refused by the safety policy ({reason}). Run it yourself if intended."
        cwd_or_error = self._check_working_dir(working_dir, command)
        if isinstance(cwd_or_error, str):
            return cwd_or_error
        cwd = cwd_or_error
        return await self._run(command, cwd)

    def _check_working_dir(self, working_dir: str | None, command: str) -> Path | str:
        """The directory to run in, or an error message (including the workspace restriction)."""
        cwd = self.working_dir
        if working_dir:
            cwd = (self.working_dir / Path(working_dir).expanduser()).resolve()
        if self.restrict_to_workspace:
            workspace = self.working_dir.resolve()
            if not cwd.resolve().is_relative_to(workspace):
                return f"Error: working_dir {cwd} is outside the workspace {workspace}"
            if reason := check_outside_workspace(command, workspace):
                return f"Error: command refused because {reason} (commands are restricted to the workspace)"
        if not cwd.is_dir():
            return f"Error: working directory does not exist: {cwd}"
        return cwd

    async def _run(self, command: str, cwd: Path) -> str:
        # Output goes to temporary files rather than pipes: a background child that keeps a pipe open
        # would otherwise make the wait hang until it exits, and files keep partial output on timeout.
        with tempfile.TemporaryFile() as out_file, tempfile.TemporaryFile() as err_file:
            process = await asyncio.create_subprocess_shell(
                command,
                cwd=cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out_file,
                stderr=err_file,
                start_new_session=True,  # its own process group, so a timeout can kill every child too
            )
            timed_out = False
            try:
                await asyncio.wait_for(process.wait(), timeout=self.timeout_s)
            except TimeoutError:
                timed_out = True
            finally:
                if process.returncode is None:  # timed out, or this task was cancelled
                    _kill_group(process)
                    await asyncio.shield(process.wait())
            output = self._format(_read_capped(out_file), _read_capped(err_file))
        if timed_out:
            return f"Error: command timed out after {self.timeout_s}s and was killed.\n{output}"
        if process.returncode:
            output += f"\nExit code: {process.returncode}"
        return output

    def _format(self, stdout: str, stderr: str) -> str:
        parts = []
        if stdout:
            parts.append(f"STDOUT:\n{stdout.rstrip()}")
        if stderr:
            parts.append(f"STDERR:\n{stderr.rstrip()}")
        text = "\n".join(parts) if parts else "(no output)"
        return cap_text(text, self.max_output_chars)


def cap_text(text: str, limit: int) -> str:
    """Keep the head and tail of `text` within `limit` characters, saying how many were cut."""
    if len(text) <= limit:
        return text
    cut = len(text) - limit
    head = limit // 2
    tail = limit - head
    return f"{text[:head]}\n[... {cut} characters cut ...]\n{text[len(text) - tail :]}"


def _read_capped(file: IO[bytes]) -> str:
    """The text written to `file`, at most _MAX_CAPTURE_BYTES of it."""
    size = os.fstat(file.fileno()).st_size
    file.seek(0)
    text = file.read(_MAX_CAPTURE_BYTES).decode("utf-8", errors="replace")
    if size > _MAX_CAPTURE_BYTES:
        text += f"\n[... {size - _MAX_CAPTURE_BYTES} more bytes not read ...]"
    return text


def _kill_group(process: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            process.kill()
