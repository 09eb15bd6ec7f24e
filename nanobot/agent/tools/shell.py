"""The `exec` tool: run a shell command and return its output.

Every command, sandboxed or not:

* runs with a scrubbed environment: a minimal PATH (plus `pathPrepend` / `pathAppend`), HOME = the
  workspace, TMPDIR, LANG/LC_ALL, TERM=dumb and only the variables the operator named in `allowedEnvKeys`;
  never the worker's own (provider keys, NANOBOT_*, the Redis URL), so `env` or `/proc/self/environ`
  show none of them;
* runs under resource limits (`cpuSeconds`, `memoryMb` of address space, `fileSizeMb` per written file,
  `maxProcesses`, no core dumps) set in the child before it starts, plus the timeout (its whole process
  group is killed) and the output cap;
* is checked against a deny-list of destructive commands (wiping `/`, `~` or `*`, formatting disks,
  writing to block devices, powering off, fork bombs, ...), the operator's `denyPatterns` and, when
  given, `allowPatterns` (the command must match one; patterns are searched, so anchor them);
* with `restrict_to_workspace`, must run inside the workspace and pass a textual heuristic refusing `..`
  path components and absolute paths outside the workspace (`~` and `$HOME` are the workspace).

Without the sandbox those checks only stop honest mistakes: the command runs as the worker's user, with
the worker's view of the filesystem and network. The heuristic does not see `cd /; cat etc/passwd`,
interpreters (`python3 -c "open('/' + 'etc/...')"`), variables, globs or scripts; `/proc/$PPID/environ`
shows the worker's full environment, secrets included; the config file and other users' session files
are readable; Redis and the LAN are reachable. A root worker holding CAP_SYS_RESOURCE lets a command raise
its own limits, and `maxProcesses` is never enforced for root (the kernel exempts it): it holds only for a
non-root worker user, where it counts all of that user's processes and threads, the worker's own included.

With `sandbox: "bwrap"` (see sandbox.py) a command sees only the system directories, the workspace (with
`tools.isolation: conversation`, its conversation's folder, and the operator's instructions read-only) and
the configured binds, not the config file, the operator's home, other conversations' histories or any
process outside its own PID namespace (so `/proc/$PPID/environ` is the scrubbed environment too); it has
no network unless `sandboxNetwork`, no capabilities, cannot raise its limits, and dies with the worker.
Background processes end when the command ends. `maxProcesses` still does not bind root (the timeout and
the PID namespace's teardown end a fork bomb).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import resource
import signal
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from nanobot.agent.tools.base import Tool
from nanobot.agent.tools.confined_path import write_all
from nanobot.agent.tools.sandbox import (
    MASKED_WORKSPACE_DIRS,
    MINIMAL_PATH,
    SANDBOXES,
    Bind,
    account_files,
    bwrap_argv,
    bwrap_executable,
    bwrap_problem,
    parse_binds,
)
from nanobot.agent.tools.scope import NoConversation, Scope, scope_of_call
from nanobot.config.schema import ExecToolConfig

log = logging.getLogger(__name__)

# Bytes read back per stream, so a chatty command cannot exhaust memory (the rest is only counted).
_MAX_CAPTURE_BYTES = 4 * 1024 * 1024
# Paths that are harmless to mention even when the command is restricted to the workspace.
_ALWAYS_ALLOWED_PATHS = {"/dev/null", "/dev/stdin", "/dev/stdout", "/dev/stderr", "/dev/zero", "/dev/urandom"}
_SHELL = "/bin/sh"
_SANDBOX_TMP = "/tmp"

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
    """Why `command` seems to reach outside `workspace` (the textual heuristic), or None.

    `~` and `$HOME` stand for the workspace, the HOME that commands run with."""
    if _PARENT_REF.search(command):
        return "it contains '..' path traversal"
    root = workspace.resolve()
    for match in _ABSOLUTE_PATH.finditer(command):
        raw = match.group(1)
        if raw in _ALWAYS_ALLOWED_PATHS:
            continue
        if raw.startswith("~") and raw != "~" and not raw.startswith("~/"):
            return f"it refers to {raw}, another user's home"
        # A command's HOME is the workspace.
        expanded = re.sub(r"^(?:~|\$HOME\b|\$\{HOME\})", lambda _: str(root), raw)
        if not Path(expanded).resolve().is_relative_to(root):
            return f"it refers to {raw}, which is outside the workspace {root}"
    return None


@dataclass(frozen=True)
class ResourceLimits:
    """What one command may use (`tools.exec.cpuSeconds` ... `maxProcesses`); applied with setrlimit."""

    cpu_seconds: int = 60
    memory_mb: int = 1024
    file_size_mb: int = 100
    max_processes: int = 64

    def rlimits(self) -> list[tuple[int, int, int]]:
        """(resource, soft, hard) triples, lowered to the worker's own hard limits where those are smaller.

        The CPU limit is soft: SIGXCPU at `cpu_seconds`, SIGKILL two seconds later if the command ignores it."""
        mib = 1024 * 1024
        wanted = [
            (resource.RLIMIT_CPU, self.cpu_seconds, self.cpu_seconds + 2),
            (resource.RLIMIT_AS, self.memory_mb * mib, self.memory_mb * mib),
            (resource.RLIMIT_FSIZE, self.file_size_mb * mib, self.file_size_mb * mib),
            (resource.RLIMIT_NPROC, self.max_processes, self.max_processes),
            (resource.RLIMIT_CORE, 0, 0),
        ]
        limits = []
        for which, soft, hard in wanted:
            current_hard = resource.getrlimit(which)[1]
            if current_hard != resource.RLIM_INFINITY:
                hard = min(hard, current_hard)
            limits.append((which, min(soft, hard), hard))
        return limits


def _limit_setter(limits: list[tuple[int, int, int]]) -> Callable[[], None]:
    """The `preexec_fn` that applies `limits` in the child between fork and exec (only setrlimit calls)."""

    def apply() -> None:
        for which, soft, hard in limits:
            resource.setrlimit(which, (soft, hard))

    return apply


_SECRET_LOOKING = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|^NANOBOT_", re.IGNORECASE)
_warned_env_keys: set[str] = set()


def command_env(
    home: Path,
    tmpdir: str,
    *,
    allowed_keys: Iterable[str] = (),
    path_prepend: str = "",
    path_append: str = "",
    source: dict[str, str] | None = None,
) -> dict[str, str]:
    """The whole environment of a command: our defaults, then the allowed keys copied from `source`
    (the process environment), then PATH's additions; HOME and TMPDIR are always ours."""
    source = dict(os.environ) if source is None else source
    env = {"PATH": MINIMAL_PATH, "LANG": "C.UTF-8", "TERM": "dumb"}
    env.update({key: source[key] for key in allowed_keys if key in source})
    env.setdefault("LC_ALL", env["LANG"])
    env["PATH"] = os.pathsep.join(part for part in (path_prepend, env["PATH"], path_append) if part)
    env["HOME"] = str(home)
    env["TMPDIR"] = tmpdir
    return env


def _warn_secret_looking(keys: Iterable[str]) -> None:
    """Warn once per process about each allowed variable whose name looks like a secret."""
    for key in keys:
        if _SECRET_LOOKING.search(key) and key not in _warned_env_keys:
            _warned_env_keys.add(key)
            log.warning(
                "tools.exec.allowedEnvKeys includes %s, which looks like a secret: every command (and so whoever "
                "talks to the agent) can read it", key,
            )


def compile_patterns(patterns: Iterable[str], key: str) -> list[re.Pattern[str]]:
    """The operator's regexes (case-insensitive); an invalid one is a ValueError naming `tools.exec.<key>[i]`."""
    compiled = []
    for i, pattern in enumerate(patterns):
        try:
            compiled.append(re.compile(pattern, re.IGNORECASE))
        except re.error as exc:
            raise ValueError(f"tools.exec.{key}[{i}]: invalid regular expression {pattern!r}: {exc}") from exc
    return compiled


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
        *,
        limits: ResourceLimits | None = None,
        sandbox: str = "none",
        sandbox_network: bool = False,
        sandbox_ro_binds: Sequence[str] = (),
        sandbox_rw_binds: Sequence[str] = (),
        allowed_env_keys: Sequence[str] = (),
        path_prepend: str = "",
        path_append: str = "",
        deny_patterns: Sequence[str] = (),
        allow_patterns: Sequence[str] = (),
        read_only_paths: Sequence[Path] = (),
        isolated: bool = False,
    ) -> None:
        """`sandbox` is "bwrap" or "none" (see sandbox.choose_sandbox); bad patterns or binds raise ValueError.
        `isolated`: each command runs in its conversation's own folder (see `scope`), its HOME, the only folder of
        the workspace the sandbox shows (writable), beside the operator's instructions (read-only)."""
        if sandbox not in SANDBOXES:
            raise ValueError(f"exec sandbox must be 'bwrap' or 'none', not {sandbox!r}")
        self.working_dir = Path(working_dir).expanduser()
        self.timeout_s = timeout_s
        self.restrict_to_workspace = restrict_to_workspace
        self.max_output_chars = max_output_chars
        self.limits = limits or ResourceLimits()
        self.sandbox = sandbox
        self.sandbox_network = sandbox_network
        self.read_only_paths = [Path(path) for path in read_only_paths]  # under the sandbox
        self.isolated = isolated
        self.deny_patterns = compile_patterns(deny_patterns, "denyPatterns")
        self.allow_patterns = compile_patterns(allow_patterns, "allowPatterns")
        self.binds: list[Bind] = [
            *parse_binds(sandbox_ro_binds, writable=False, key="sandboxRoBinds"),
            *parse_binds(sandbox_rw_binds, writable=True, key="sandboxRwBinds"),
        ]
        _warn_secret_looking(allowed_env_keys)
        tmpdir = _SANDBOX_TMP if sandbox == "bwrap" else tempfile.gettempdir()
        self.env = command_env(
            self.working_dir.resolve(), tmpdir,
            allowed_keys=allowed_env_keys, path_prepend=path_prepend, path_append=path_append,
        )
        self._rlimits = self.limits.rlimits()
        self.sandbox_error: str | None = None
        if sandbox == "bwrap" and (problem := bwrap_problem()):
            self.sandbox_error = problem
            log.error("tools.exec.sandbox is 'bwrap' but %s; the exec tool refuses every command", problem)

    @classmethod
    def from_config(
        cls,
        workspace: Path,
        config: ExecToolConfig,
        *,
        sandbox: str,
        restrict_to_workspace: bool = False,
        read_only_paths: Sequence[Path] = (),
        isolated: bool = False,
    ) -> ExecTool:
        """The tool as `tools.exec` describes it, with the sandbox already chosen ("bwrap" or "none")."""
        return cls(
            workspace,
            timeout_s=config.timeout,
            restrict_to_workspace=restrict_to_workspace,
            max_output_chars=config.max_output_chars,
            limits=ResourceLimits(config.cpu_seconds, config.memory_mb, config.file_size_mb, config.max_processes),
            sandbox=sandbox,
            sandbox_network=config.sandbox_network,
            sandbox_ro_binds=config.sandbox_ro_binds,
            sandbox_rw_binds=config.sandbox_rw_binds,
            allowed_env_keys=config.allowed_env_keys,
            path_prepend=config.path_prepend,
            path_append=config.path_append,
            deny_patterns=config.deny_patterns,
            allow_patterns=config.allow_patterns,
            read_only_paths=read_only_paths,
            isolated=isolated,
        )

    async def execute(self, command: str, working_dir: str | None = None, **_: Any) -> str:  # type: ignore[override]
        if self.sandbox_error:
            return (
                f"Error: commands must run in the bubblewrap sandbox, which cannot run here ({self.sandbox_error}). "
                "No command runs until the operator fixes it."
            )
        if reason := self._refusal(command):
            return f"Error: command refused by the safety policy ({reason}). Run it yourself if intended."
        try:
            scope = scope_of_call(self.working_dir, self.isolated)
        except NoConversation as exc:
            return str(exc)
        cwd_or_error = self._check_working_dir(scope, working_dir, command)
        if isinstance(cwd_or_error, str):
            return cwd_or_error
        cwd = cwd_or_error
        return await self._run(scope, command, cwd)

    def _refusal(self, command: str) -> str | None:
        """Why the deny-list or the operator's patterns refuse `command`, or None."""
        if reason := check_denied(command):
            return reason
        if any(pattern.search(command) for pattern in self.deny_patterns):
            return "it matches a pattern the operator denied"
        if self.allow_patterns and not any(pattern.search(command) for pattern in self.allow_patterns):
            return "it matches none of the command patterns the operator allowed"
        return None

    def _check_working_dir(self, scope: Scope, working_dir: str | None, command: str) -> Path | str:
        """The directory to run in, or an error message (including the workspace restriction). A conversation's
        command runs inside its folder; without the sandbox the textual heuristic applies to it too."""
        cwd = scope.root
        if working_dir:
            cwd = (scope.root / Path(working_dir).expanduser()).resolve()
        root = scope.root.resolve()
        if (self.restrict_to_workspace or scope.isolated) and not cwd.resolve().is_relative_to(root):
            return f"Error: working_dir {cwd} is outside {scope.name} {root}"
        if self.restrict_to_workspace or (scope.isolated and self.sandbox == "none"):
            if reason := check_outside_workspace(command, root):
                return f"Error: command refused because {reason} (commands are restricted to {scope.name})"
        if not cwd.is_dir():
            return f"Error: working directory does not exist: {cwd}"
        return cwd

    def _argv(
        self, scope: Scope, command: str, cwd: Path, env: dict[str, str], account_fds: tuple[int, ...]
    ) -> list[str]:
        argv = [_SHELL, "-c", command]
        if self.sandbox == "none":
            return argv
        if scope.isolated:  # the operator's instructions beside the conversation's folder; nothing of it masked
            read_only, masked = [p for p in scope.readable() if p.exists()], ()
        else:
            read_only, masked = self.read_only_paths, MASKED_WORKSPACE_DIRS
        return bwrap_argv(
            argv,
            bwrap=bwrap_executable() or "bwrap",
            workspace=scope.root.resolve(),
            cwd=cwd.resolve(),
            env=env,
            network=self.sandbox_network,
            extra_binds=self.binds,
            tmp_size_mb=self.limits.memory_mb,
            read_only=[path.resolve() for path in read_only],
            masked=masked,
            account_fds=(account_fds[0], account_fds[1]) if account_fds else None,
        )

    async def _run(self, scope: Scope, command: str, cwd: Path) -> str:
        env = {**self.env, "HOME": str(scope.root.resolve())}
        # Output goes to temporary files rather than pipes: a background child that keeps a pipe open
        # would otherwise make the wait hang until it exits, and files keep partial output on timeout.
        with tempfile.TemporaryFile() as out_file, tempfile.TemporaryFile() as err_file, \
                _account_pipes(env["HOME"], self.sandbox == "bwrap") as account_fds:
            process = await asyncio.create_subprocess_exec(
                *self._argv(scope, command, cwd, env, account_fds),
                cwd=cwd,
                env=env,  # bwrap too: the sandbox's /proc/1/environ is bwrap's
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out_file,
                stderr=err_file,
                start_new_session=True,  # its own process group, so a timeout can kill every child too
                preexec_fn=_limit_setter(self._rlimits),
                pass_fds=account_fds,
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
        if process.returncode and (limit := self._limit_reached(process.returncode)):
            return f"Error: command killed: it reached {limit}.\n{output}\nExit code: {process.returncode}"
        if process.returncode:
            output += f"\nExit code: {process.returncode}"
        return output

    def _limit_reached(self, returncode: int) -> str | None:
        """Which limit killed the command, from its signal (-N from the shell itself, 128+N when the shell or
        bwrap reports a child's), or None."""
        signum = -returncode if returncode < 0 else returncode - 128
        if signum == signal.SIGXCPU:
            return f"the CPU time limit ({self.limits.cpu_seconds}s of CPU)"
        if signum == signal.SIGXFSZ:
            return f"the file size limit ({self.limits.file_size_mb} MB per file)"
        return None

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


@contextlib.contextmanager
def _account_pipes(home: str, wanted: bool) -> Iterator[tuple[int, ...]]:
    """Two pipes holding the sandbox's /etc/passwd and /etc/group (`account_files`), their read ends yielded for
    bwrap and closed here afterwards; nothing when not `wanted`. Both files fit in a pipe's buffer."""
    read_ends: list[int] = []
    try:
        if wanted:
            for data in account_files(home):
                read_end, write_end = os.pipe()
                read_ends.append(read_end)
                try:
                    write_all(write_end, data)
                finally:
                    os.close(write_end)
        yield tuple(read_ends)
    finally:
        for fd in read_ends:
            os.close(fd)


def _kill_group(process: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            process.kill()
