"""Opening paths through directory descriptors, so that no link (planted before or swapped in during the
call) leads a file tool outside its root or into a protected path.

A path is walked one component at a time from `/`, each directory opened relative to the one before with
`O_NOFOLLOW`; nothing is ever opened by its full name. A component that is a link is read with `readlink`
and its target spliced into the rest of the walk (from `/` when absolute), so links are followed by us,
never by the kernel, and `..` returns to the directory the walk came from. While walking, the walk's path
has no links and no `..`; before each open it must be inside the root (or, for a directory on the way,
above it: `/`, `/home`, ...) and outside every protected path. A link that stays inside the root keeps
working; one leading out is refused before anything outside is opened. An entry swapped for a link after
it was checked makes the `O_NOFOLLOW` open fail, and the walk starts over (a few times at most).

After opening, the descriptor is checked once more: its path as the kernel sees it (`/proc/self/fd`)
must be inside the root and unprotected, and it must not be the same file as a protected path (a hard
link). Writes go to a new file created beside the target with `O_EXCL | O_NOFOLLOW`, then renamed over
it through the same directory descriptor; a rename replaces a link, it never writes through one.

What this does not stop: a directory the walk holds being renamed out of the root meanwhile, which needs
write access outside the root. Written for Linux (`O_PATH`, `/proc/self/fd`); elsewhere the walk still
holds, without the second check of the kernel's path.
"""

from __future__ import annotations

import errno
import os
import stat
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from nanobot.agent.tools.protected_paths import ProtectedPath

MAX_LINKS = 40  # links followed in one walk, as Linux allows
_ATTEMPTS = 3  # walks when an entry keeps changing between its check and its open

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_PATH = getattr(os, "O_PATH", os.O_RDONLY)  # a handle for walking; needs no read permission
_O_WALK = _O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | _O_CLOEXEC
_O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | _O_CLOEXEC


class AccessDenied(Exception):
    """A path that leads outside the root or into a protected path; the message is shown to the model."""


class OutsideRoot(AccessDenied):
    """The path leads outside the root."""


class Protected(AccessDenied):
    """The path leads to or into a protected path."""


@dataclass
class Opened:
    """An open descriptor and the link-free path it was opened as."""

    fd: int
    path: Path


@dataclass
class _Located:
    """Where a walk ended: the directory holding `name` (or, when `name` is None, the directory itself)."""

    dir_fd: int
    name: str | None
    path: Path


class _Changed(Exception):
    """The last entry was swapped (for a link) between its check and its open: walk again."""


class Confinement:
    """Opens absolute paths without leaving `root` (`/` allows every path; `also` adds paths to read) or entering
    a protected path.

    `root_name` names the root in refusals ("the workspace"); `shown` in each call is the path as the
    model wrote it. Missing files and the like raise the usual OSError subclasses.
    """

    def __init__(
        self,
        root: Path,
        protected: Sequence[ProtectedPath],
        root_name: str = "the allowed directory",
        also: Sequence[Path] = (),
    ):
        """`also`: resolved paths outside the root that may be opened too (a conversation's tools reading the
        operator's instructions); give none for writing: new files and missing directories are made only inside the
        root."""
        self.root = Path(os.path.realpath(root))
        self.also = list(also)
        self.protected = list(protected)
        self.root_name = root_name

    # ------------------------------------------------------------------ opening

    def open_file(self, path: Path, shown: str) -> AbstractContextManager[Opened]:
        """`path` opened read-only (without blocking, should it be a FIFO); links inside the root followed."""

        def open_name(located: _Located) -> int:
            if located.name is None:
                return os.open(".", os.O_RDONLY | os.O_DIRECTORY | _O_CLOEXEC, dir_fd=located.dir_fd)
            try:
                return os.open(located.name, _O_READ, dir_fd=located.dir_fd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise _Changed from exc
                raise

        return self._open(path, shown, open_name)

    def open_dir(self, path: Path, shown: str) -> AbstractContextManager[Opened]:
        """`path` opened as a directory, readable with `os.scandir(fd)`."""

        def open_name(located: _Located) -> int:
            name = "." if located.name is None else located.name
            try:
                return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _O_CLOEXEC, dir_fd=located.dir_fd)
            except NotADirectoryError:
                if located.name is not None and _link_target(located.dir_fd, located.name) is not None:
                    raise _Changed from None
                raise

        return self._open(path, shown, open_name)

    @contextmanager
    def create_file(self, path: Path, shown: str, mode: int = 0o666) -> Iterator[Opened]:
        """A new file at `path` (missing directories made), opened for writing; FileExistsError if taken."""
        with self._parent(path, shown, make_parents=True) as located:
            assert located.name is not None
            fd = os.open(
                located.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _O_CLOEXEC, mode,
                dir_fd=located.dir_fd,
            )
        try:
            yield Opened(fd, located.path)
        finally:
            os.close(fd)

    def replace_file(self, path: Path, shown: str, data: bytes) -> Path:
        """Write `data` as the whole of `path` (missing directories made) and return the path written.

        The data goes to a new file in the same directory, renamed over the target, so readers see the old
        or the new contents; an existing file keeps its permission bits.
        """
        with self._parent(path, shown, make_parents=True) as located:
            assert located.name is not None
            try:
                current = os.stat(located.name, dir_fd=located.dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                current = None
            if current is not None and stat.S_ISDIR(current.st_mode):
                raise IsADirectoryError(errno.EISDIR, "Is a directory", shown)
            keep_mode = stat.S_IMODE(current.st_mode) if current is not None and stat.S_ISREG(current.st_mode) else None
            temp = f".{located.name[:100]}.{uuid.uuid4().hex[:12]}.tmp"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _O_CLOEXEC, 0o666,
                         dir_fd=located.dir_fd)
            try:
                try:
                    write_all(fd, data)
                    if keep_mode is not None:
                        os.fchmod(fd, keep_mode)
                finally:
                    os.close(fd)
                os.replace(temp, located.name, src_dir_fd=located.dir_fd, dst_dir_fd=located.dir_fd)
            except BaseException:
                try:
                    os.unlink(temp, dir_fd=located.dir_fd)
                except OSError:
                    pass
                raise
            return located.path

    # ------------------------------------------------------------------ the walk

    @contextmanager
    def _open(self, path: Path, shown: str, open_name: Callable[[_Located], int]) -> Iterator[Opened]:
        """Walk to `path` and open its last entry with `open_name` (walking again when it changed), checked;
        closed on leaving."""
        for _ in range(_ATTEMPTS):
            located = self._locate(path, shown, make_parents=False)
            try:
                fd = open_name(located)
            except _Changed:
                continue
            finally:
                os.close(located.dir_fd)
            try:
                self._check_opened(fd, shown, located.path)
                yield Opened(fd, located.path)
            finally:
                os.close(fd)
            return
        raise AccessDenied(f"access denied: '{shown}' kept changing while it was being opened; try again")

    @contextmanager
    def _parent(self, path: Path, shown: str, *, make_parents: bool) -> Iterator[_Located]:
        """The directory that holds (or will hold) the last entry of `path`, checked through its descriptor."""
        located = self._locate(path, shown, make_parents=make_parents)
        try:
            if located.name is None:
                raise IsADirectoryError(errno.EISDIR, "Is a directory", shown)
            self._check_opened(located.dir_fd, shown, located.path.parent, final=False)
            yield located
        finally:
            os.close(located.dir_fd)

    def _locate(self, path: Path, shown: str, *, make_parents: bool) -> _Located:
        """Walk `path` (absolute), following links ourselves, to the entry it names.

        The entry itself is not opened: it was not a link when read, exists or not, and its link-free path
        has been checked. Missing directories on the way are made when `make_parents` is set.
        """
        if not path.is_absolute():
            raise ValueError(f"not an absolute path: {path}")
        stack: list[tuple[int, Path]] = [(os.open("/", _O_WALK), Path("/"))]
        pending = list(reversed(path.parts[1:]))
        links = 0
        try:
            while pending:
                part = pending.pop()
                if part in ("", "."):
                    continue
                if part == "..":
                    if len(stack) > 1:
                        os.close(stack.pop()[0])
                    continue
                dir_fd, here = stack[-1]
                candidate = here / part
                target = _link_target(dir_fd, part)
                if target is not None:
                    links += 1
                    if links > MAX_LINKS or not target:
                        raise OSError(errno.ELOOP, "Too many levels of symbolic links", shown)
                    if target.startswith("/"):
                        while len(stack) > 1:
                            os.close(stack.pop()[0])
                    pending.extend(reversed(Path(target).parts[1:] if target.startswith("/") else Path(target).parts))
                    continue
                if not pending:
                    self._check(candidate, shown, final=True)
                    return _Located(os.dup(dir_fd), part, candidate)
                self._check(candidate, shown, final=False)
                stack.append((self._open_dir_entry(dir_fd, part, candidate, shown, make_parents), candidate))
            dir_fd, here = stack[-1]
            self._check(here, shown, final=True)
            return _Located(os.dup(dir_fd), None, here)
        finally:
            for fd, _ in stack:
                os.close(fd)

    def _open_dir_entry(self, dir_fd: int, name: str, candidate: Path, shown: str, make_parents: bool) -> int:
        try:
            return os.open(name, _O_WALK, dir_fd=dir_fd)
        except FileNotFoundError:
            if not make_parents or not self._inside_root(candidate):
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", shown) from None
        except NotADirectoryError:
            # A file, or an entry swapped for a link since it was read: either way not walked into.
            raise NotADirectoryError(errno.ENOTDIR, f"Not a directory: {candidate.name}", shown) from None
        try:
            os.mkdir(name, 0o777, dir_fd=dir_fd)
        except FileExistsError:
            pass
        try:
            return os.open(name, _O_WALK, dir_fd=dir_fd)
        except NotADirectoryError:
            raise NotADirectoryError(errno.ENOTDIR, f"Not a directory: {candidate.name}", shown) from None

    # ------------------------------------------------------------------ the checks

    def _inside_root(self, path: Path) -> bool:
        return path.is_relative_to(self.root)

    def _check(self, path: Path, shown: str, *, final: bool) -> None:
        """Refuse `path` (link-free) when protected, or outside the root; `final=False` also admits the
        directories above the root, which a walk passes through."""
        for protected in self.protected:
            if path.is_relative_to(protected.path):
                raise Protected(f"access denied: {protected.reason}")
        if self._inside_root(path) or (not final and self.root.is_relative_to(path)):
            return
        for allowed in self.also:
            if path.is_relative_to(allowed) or (not final and allowed.is_relative_to(path)):
                return
        raise OutsideRoot(f"access denied: '{shown}' leads outside {self.root_name} {self.root} (to {path})")

    def _check_opened(self, fd: int, shown: str, walked: Path, *, final: bool = True) -> None:
        """Check what `fd` is now: its kernel path and, against hard links, its identity."""
        kernel_path = _fd_path(fd)
        self._check(kernel_path if kernel_path is not None else walked, shown, final=final)
        info = os.fstat(fd)
        for protected in self.protected:
            try:
                other = os.stat(protected.path)
            except OSError:
                continue
            if (other.st_dev, other.st_ino) == (info.st_dev, info.st_ino):
                raise Protected(f"access denied: {protected.reason}")


def write_all(fd: int, data: bytes) -> None:
    """Write the whole of `data` to `fd` (os.write may write less than it is given)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def absolute_in(workspace: Path, path: str) -> Path:
    """`path` as the model wrote it, made absolute: `~` expanded, relative to the workspace; links and `..` are
    left for the walk."""
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else workspace / candidate


def _link_target(dir_fd: int, name: str) -> str | None:
    """The target of the link `name` in `dir_fd`, or None when it is not a link (or does not exist)."""
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOENT, errno.ENOTDIR):
            return None
        raise


def _fd_path(fd: int) -> Path | None:
    """The path of `fd` as the kernel sees it now, or None where this system cannot tell."""
    try:
        link = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    if link.endswith(" (deleted)"):
        link = link[: -len(" (deleted)")]
    return Path(link) if link.startswith("/") else None
