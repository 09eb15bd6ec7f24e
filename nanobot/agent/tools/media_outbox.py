"""The outbox: copies of the files the message tool sends, for the channel to upload later.

A channel reads a message's files after the tool returned, by path. Had it the path the model named, a
link swapped in there meanwhile would send whatever it points to. So each file is read once, through
`Confinement` (inside the workspace, never a protected path), and copied into a new folder
`<workspace>/media/outbox/<random>/<name>` made for that one message; the channel gets the copy's path.
The folder's name is random and was never named by the model. Folders older than `OUTBOX_TTL_S` are
removed when files are next sent.

The outbox is inside the workspace: a command the exec tool runs could still find and swap a copy before
the channel reads it, unless the exec sandbox keeps `media/outbox` out of its reach (read-only).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
import uuid
from pathlib import Path

from nanobot.agent.tools.confined_path import AccessDenied, Confinement, Opened, write_all

log = logging.getLogger(__name__)

OUTBOX_DIR = Path("media") / "outbox"
OUTBOX_TTL_S = 24 * 3600
MAX_MEDIA_BYTES = 100 * 1024 * 1024  # above what Telegram (50 MB) and WhatsApp (100 MB) upload


def stage(confinement: Confinement, workspace: Path, sources: list[tuple[Opened, str]]) -> list[str]:
    """Copy each opened source file into one new outbox folder; return the copies' paths, in order.

    `sources` pairs each open file with the path the model gave (for messages). Raises ValueError for a
    source that is not a regular file or is too large, before anything is copied.
    """
    for opened, shown in sources:
        info = os.fstat(opened.fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"'{shown}' is not a file")
        if info.st_size > MAX_MEDIA_BYTES:
            raise ValueError(f"'{shown}' is larger than {MAX_MEDIA_BYTES // 2**20} MB")
    if not sources:
        return []
    outbox = workspace / OUTBOX_DIR
    _remove_old_folders(confinement, outbox)
    folder = outbox / uuid.uuid4().hex
    staged: list[str] = []
    used: set[str] = set()
    for opened, shown in sources:
        name = _unique(opened.path.name, used)
        with confinement.create_file(folder / name, shown) as copy:
            _copy(opened.fd, copy.fd, MAX_MEDIA_BYTES)
            staged.append(str(copy.path))
    return staged


def _unique(name: str, used: set[str]) -> str:
    """`name`, or `2-name`, `3-name`, ... when two files of one message share a name."""
    candidate, n = name, 1
    while candidate in used:
        n += 1
        candidate = f"{n}-{name}"
    used.add(candidate)
    return candidate


def _copy(source: int, target: int, limit: int) -> None:
    os.lseek(source, 0, os.SEEK_SET)
    copied = 0
    while copied < limit:
        chunk = os.read(source, min(1024 * 1024, limit - copied))
        if not chunk:
            return
        write_all(target, chunk)
        copied += len(chunk)


def _remove_old_folders(confinement: Confinement, outbox: Path) -> None:
    """Best effort: remove the outbox entries last changed more than OUTBOX_TTL_S ago; links are not followed."""
    cutoff = time.time() - OUTBOX_TTL_S
    try:
        with confinement.open_dir(outbox, str(OUTBOX_DIR)) as opened:
            with os.scandir(opened.fd) as scan:
                old = [entry for entry in scan if entry.stat(follow_symlinks=False).st_mtime < cutoff]
            for entry in old:
                if entry.is_dir(follow_symlinks=False):
                    _remove_folder(opened.fd, entry.name)
                else:
                    os.unlink(entry.name, dir_fd=opened.fd)
    except FileNotFoundError:
        return
    except (OSError, AccessDenied) as exc:  # a refused outbox is reported when the copies are made
        log.debug("could not clean the media outbox %s: %s", outbox, exc)


def _remove_folder(parent_fd: int, name: str) -> None:
    """Remove the folder `name` in `parent_fd` and the files in it (one level: the outbox holds no deeper)."""
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent_fd)
    try:
        with os.scandir(fd) as scan:
            for entry in scan:
                with contextlib.suppress(OSError):  # a folder planted inside stays, and so does its parent
                    os.unlink(entry.name, dir_fd=fd)
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        os.rmdir(name, dir_fd=parent_fd)
