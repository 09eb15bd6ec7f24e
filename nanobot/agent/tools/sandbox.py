"""The bubblewrap sandbox of the `exec` tool: whether it works here, which sandbox to use, its command line.

Under bubblewrap a command gets its own user, PID, network, IPC, UTS and cgroup namespaces, no capabilities and no way
to create further user namespaces. Its filesystem is only: the system directories needed to run programs (read-only),
a fresh /proc and /dev, a /tmp tmpfs the size of the memory limit, the workspace (read-write, at its own absolute
path; with `tools.isolation: conversation`, the conversation's own folder, and the operator's instructions read-only
beside it), the operator's extra binds, and an /etc/passwd and /etc/group of its own that name no host account; the
rest of its root is read-only. The shared workspace's `sessions/` and `memory/` (every conversation's history, the
agent's memory) are hidden under empty read-only tmpfs mounts, as are the cron store and the operator's home wherever
a bind would show them; a config file a bind would show becomes an unreadable /dev/null. Everything else (the
operator's home, /root, /home, the config file, /etc/shadow, ...) does not exist in the sandbox.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from nanobot.config.loader import config_path, data_dir

log = logging.getLogger(__name__)

SANDBOXES = ("bwrap", "none")
MINIMAL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Namespaces and privileges: every namespace, no capabilities (bwrap keeps them when started by root), no
# nested user namespaces (they would allow remounting), killed with the worker, no controlling terminal.
ISOLATION = (
    "--unshare-all", "--unshare-user", "--disable-userns", "--cap-drop", "ALL", "--die-with-parent", "--new-session",
)
# What programs need from the host, read-only; missing ones are skipped, merged-/usr symlinks kept as links.
SYSTEM_PATHS = (
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
    "/etc/alternatives", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d",
    "/etc/ssl/certs", "/etc/ssl/openssl.cnf", "/etc/ca-certificates", "/etc/ca-certificates.conf", "/etc/pki/tls/certs",
    "/etc/pki/ca-trust", "/etc/resolv.conf", "/etc/hosts", "/etc/host.conf", "/etc/nsswitch.conf", "/etc/gai.conf",
    "/etc/localtime", "/etc/timezone", "/etc/mime.types", "/etc/os-release",
)
# /etc/passwd and /etc/group are not the host's (they name its accounts): each command gets its own, naming only
# the sandbox's user and `nobody` (as Flatpak does), handed to bwrap through a pipe (`account_files`).
ACCOUNT_FILES = ("/etc/passwd", "/etc/group")
# Workspace folders no command may read or change: every conversation's history, the agent's memory.
MASKED_WORKSPACE_DIRS = ("sessions", "memory")
_warned_unsandboxed = False


def bwrap_executable() -> str | None:
    """The bwrap program: on PATH, else /usr/bin/bwrap, else None."""
    return shutil.which("bwrap") or (os.path.exists("/usr/bin/bwrap") and "/usr/bin/bwrap") or None


@functools.cache
def bwrap_problem() -> str | None:
    """Why bubblewrap cannot sandbox commands here, or None when it can (probed once per process).

    Installed is not enough: Docker's default seccomp profile, for one, forbids the user namespaces it needs."""
    bwrap = bwrap_executable()
    if bwrap is None:
        return "bubblewrap (bwrap) is not installed"
    probe = [bwrap, *ISOLATION, "--ro-bind", "/", "/", "--size", "1048576", "--tmpfs", "/tmp", "true"]
    try:
        done = subprocess.run(
            probe, env={"PATH": MINIMAL_PATH}, stdin=subprocess.DEVNULL, capture_output=True, timeout=15, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{bwrap} cannot be run: {exc}"
    if done.returncode != 0:
        stderr = done.stderr.decode("utf-8", errors="replace").strip()
        return f"{bwrap} cannot create its namespaces here (exit code {done.returncode}): {stderr or 'no message'}"
    return None


def choose_sandbox(setting: str, *, prefer_bwrap: bool) -> str:
    """The sandbox for `tools.exec.sandbox` = `setting`: "bwrap" or "none".

    "" means bubblewrap when `prefer_bwrap` and it works here, else none (with one warning when bubblewrap was
    preferred). An explicit "bwrap" stays "bwrap" even when bubblewrap cannot run: the exec tool then refuses
    every command (never a silent fallback)."""
    global _warned_unsandboxed
    if setting in SANDBOXES:
        return setting
    if setting != "":
        raise ValueError(f"tools.exec.sandbox: {setting!r} is not one of '', 'bwrap', 'none'")
    if not prefer_bwrap:
        return "none"
    problem = bwrap_problem()
    if problem is None:
        return "bwrap"
    if not _warned_unsandboxed:  # once per process tree: a worker's pool children inherit the flag
        _warned_unsandboxed = True
        log.warning(
            "exec runs without a sandbox: %s. Install bubblewrap and allow user namespaces (Docker: a seccomp "
            "profile that permits them), or set tools.exec.sandbox to 'none' to accept this",
            problem,
        )
    return "none"


@dataclass(frozen=True)
class Bind:
    """A host path `src` shown at `dst` in the sandbox."""

    src: Path
    dst: Path
    writable: bool = False


def parse_binds(specs: Iterable[str], *, writable: bool, key: str) -> list[Bind]:
    """`sandboxRoBinds` / `sandboxRwBinds` entries, each "path" or "src:dst" (absolute; `~` is expanded)."""
    binds = []
    for i, spec in enumerate(specs):
        src, sep, dst = spec.partition(":")
        paths = [Path(p).expanduser() for p in ((src, dst) if sep else (src, src))]
        if not all(p.is_absolute() for p in paths):
            raise ValueError(f"tools.exec.{key}[{i}]: {spec!r} must be an absolute path, or src:dst of absolute paths")
        if not paths[0].exists():
            log.warning("tools.exec.%s[%d]: %s does not exist; it is skipped until it does", key, i, paths[0])
        binds.append(Bind(paths[0].resolve(), paths[1], writable))
    return binds


def account_files(home: str, uid: int | None = None, gid: int | None = None) -> tuple[bytes, bytes]:
    """The sandbox's /etc/passwd and /etc/group: its own user (root when the worker is root, else `nanobot`) with
    `home`, and `nobody`/`nogroup`, which files of ids outside the sandbox's user namespace show as."""
    uid = os.getuid() if uid is None else uid
    gid = os.getgid() if gid is None else gid
    user = "root" if uid == 0 else "nanobot"
    group = "root" if gid == 0 else "nanobot"
    passwd = f"{user}:x:{uid}:{gid}:{user}:{home}:/bin/sh\n"
    groups = f"{group}:x:{gid}:\n"
    if uid != 65534:
        passwd += "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    if gid != 65534:
        groups += "nogroup:x:65534:\n"
    return passwd.encode(), groups.encode()


def hidden_paths() -> list[Path]:
    """What a bind must never show: the config file, the cron store and the operator's home."""
    return [config_path().resolve(), (data_dir() / "cron").resolve(), Path.home().resolve()]


def _masks(workspace: Path, binds: Sequence[Bind], masked: Sequence[str]) -> list[str]:
    """Arguments hiding the workspace's `masked` folders and every hidden path that a bind would show."""
    args: list[str] = []
    for name in masked:
        args += ["--tmpfs", str(workspace / name), "--remount-ro", str(workspace / name)]
    for hidden in hidden_paths():
        if not hidden.exists():
            continue
        for bind in binds:
            if not hidden.is_relative_to(bind.src):
                continue
            target = bind.dst / hidden.relative_to(bind.src)
            if workspace.is_relative_to(target):
                continue  # it would hide the workspace too, which is mounted from its own path
            if hidden.is_dir():
                args += ["--tmpfs", str(target), "--remount-ro", str(target)]
            else:
                args += ["--ro-bind", "/dev/null", str(target)]
    return args


def _system_binds() -> list[str]:
    args: list[str] = []
    for path in SYSTEM_PATHS:
        if os.path.islink(path) and os.path.dirname(path) == "/":
            args += ["--symlink", os.readlink(path), path]  # merged /usr: /bin -> usr/bin
        else:
            args += ["--ro-bind-try", path, path]
    return args


def bwrap_argv(
    argv: Sequence[str],
    *,
    bwrap: str,
    workspace: Path,
    cwd: Path,
    env: dict[str, str],
    network: bool = False,
    extra_binds: Sequence[Bind] = (),
    tmp_size_mb: int = 256,
    read_only: Sequence[Path] = (),
    masked: Sequence[str] = MASKED_WORKSPACE_DIRS,
    account_fds: tuple[int, int] | None = None,
) -> list[str]:
    """The bwrap command line that runs `argv` in `cwd` with exactly `env`, seeing the workspace at its path.

    `masked`: folders of the workspace hidden under empty tmpfs (the shared workspace's histories and memory; a
    conversation's own folder has none). `account_fds`: pipes bwrap reads /etc/passwd and /etc/group from
    (`account_files`); without them the sandbox has neither file."""
    args = [bwrap, *ISOLATION]
    if network:
        args.append("--share-net")
    args += _system_binds()
    args += ["--proc", "/proc", "--dev", "/dev", "--size", str(tmp_size_mb * 1024 * 1024), "--tmpfs", "/tmp"]
    binds = [*extra_binds, Bind(workspace, workspace, writable=True)]  # the workspace over any bind around it
    system = [Bind(Path(p).resolve(), Path(p)) for p in SYSTEM_PATHS if os.path.exists(p)]
    for bind in binds:
        args += ["--bind-try" if bind.writable else "--ro-bind-try", str(bind.src), str(bind.dst)]
    for path in read_only:  # parts of the workspace commands may read but not change (that exist now)
        args += ["--ro-bind-try", str(path), str(path)]
    args += _masks(workspace, [*system, *binds], masked)
    if account_fds is not None:
        for fd, path in zip(account_fds, ACCOUNT_FILES, strict=True):
            args += ["--ro-bind-data", str(fd), path]
    args += ["--remount-ro", "/"]  # the sandbox's own root (its /etc, the parents of binds); not the mounts on it
    args.append("--clearenv")
    for name, value in env.items():
        args += ["--setenv", name, value]
    args += ["--chdir", str(cwd), "--", *argv]
    return args
