"""Heartbeat: periodically wake the agent to work through ``HEARTBEAT.md``.

The user keeps a list of standing tasks in ``<workspace>/HEARTBEAT.md``. Every
``interval_s`` seconds the service reads the file and, when it holds anything
actionable (see :func:`has_tasks`), asks the agent to handle it with
:data:`HEARTBEAT_PROMPT`. The agent answers exactly :data:`HEARTBEAT_OK` when
nothing needs attention.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Generator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

HEARTBEAT_OK = "HEARTBEAT_OK"
HEARTBEAT_FILE = "HEARTBEAT.md"

HEARTBEAT_PROMPT = (
    f"This is a scheduled heartbeat check. Read the file {HEARTBEAT_FILE} in your workspace and "
    "carry out whatever it asks for right now (checks, reminders, follow-ups). Only act on what the "
    "file actually says; do not repeat work that is already done. If nothing needs attention, reply "
    f"with exactly {HEARTBEAT_OK} and nothing else."
)

HeartbeatCallback = Callable[[str], Awaitable[str | None]]

_COMMENT_RE = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)
_HEADING_RE = re.compile(r"^#{1,6}(?:\s|$)")
# A list marker ("-", "*", "+", "1.", "1)") optionally followed by a checkbox, with nothing after it.
_EMPTY_ITEM_RE = re.compile(r"^(?:[-*+]|\d+[.)])(?:\s+\[[ xX]?\])?$")
_RULE_RE = re.compile(r"^(?:-{3,}|\*{3,}|_{3,}|={3,})$")


def has_tasks(text: str) -> bool:
    """True if ``text`` holds at least one line that is more than markdown scaffolding.

    Ignored: blank lines, headings, HTML comments (also multi-line or unterminated),
    horizontal rules and list items / checkboxes with nothing after them
    (``- [ ]``, ``* [ ]``, ``- [x]``, ``-``).
    """
    without_comments = _COMMENT_RE.sub("\n", text)
    for raw in without_comments.splitlines():
        line = raw.strip()
        if not line or _HEADING_RE.match(line) or _RULE_RE.match(line):
            continue
        if _EMPTY_ITEM_RE.match(re.sub(r"\s+", " ", line)):
            continue
        return True
    return False


def is_heartbeat_ok(reply: str | None) -> bool:
    """True if the agent's reply means "nothing to report" (empty, or just HEARTBEAT_OK)."""
    if reply is None:
        return True
    cleaned = reply.strip().strip("`*_.!\"' \n").upper()
    return cleaned in ("", HEARTBEAT_OK)


class _StopHandle:
    """Returned by :meth:`HeartbeatService.stop`; awaiting it waits for the task to end."""

    def __init__(self, task: asyncio.Task[Any] | None) -> None:
        self._task = task

    async def _wait(self) -> None:
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    def __await__(self) -> Generator[Any, None, None]:
        return self._wait().__await__()


class HeartbeatService:
    """Every ``interval_s`` seconds, run ``on_heartbeat(HEARTBEAT_PROMPT)`` if HEARTBEAT.md has tasks."""

    def __init__(
        self,
        workspace: Path,
        on_heartbeat: HeartbeatCallback,
        interval_s: float = 1800,
        enabled: bool = True,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.workspace = Path(workspace).expanduser()
        self.on_heartbeat = on_heartbeat
        self.interval_s = interval_s
        self.enabled = enabled
        self._task: asyncio.Task[None] | None = None
        self._busy = asyncio.Lock()

    @property
    def heartbeat_file(self) -> Path:
        return self.workspace / HEARTBEAT_FILE

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start the periodic loop (the first beat happens after one interval)."""
        if not self.enabled:
            log.info("heartbeat: disabled")
            return
        if self.running:
            return
        self._task = asyncio.create_task(self._loop(), name="heartbeat")
        log.info("heartbeat: started (every %ss, file %s)", self.interval_s, self.heartbeat_file)

    def stop(self) -> _StopHandle:
        """Cancel the loop; may be awaited to wait until it has ended."""
        task, self._task = self._task, None
        if task is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                task.cancel()
        return _StopHandle(task)

    async def trigger_now(self) -> str | None:
        """Run one heartbeat right away.

        Returns the agent's reply, or None when HEARTBEAT.md has no tasks. Errors from
        ``on_heartbeat`` propagate to the caller.
        """
        async with self._busy:
            return await self._beat()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            if self._busy.locked():
                log.debug("heartbeat: previous beat still running, skipping this one")
                continue
            try:
                async with self._busy:
                    reply = await self._beat()
            except Exception:
                log.exception("heartbeat: beat failed")
                continue
            if reply is not None and not is_heartbeat_ok(reply):
                log.info("heartbeat: agent replied: %s", reply[:200])

    def _read_file(self) -> str | None:
        try:
            return self.heartbeat_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("heartbeat: cannot read %s: %s", self.heartbeat_file, exc)
            return None

    async def _beat(self) -> str | None:
        text = self._read_file()
        if text is None or not has_tasks(text):
            log.debug("heartbeat: no tasks in %s", self.heartbeat_file)
            return None
        log.info("heartbeat: %s has tasks, waking the agent", self.heartbeat_file)
        return await self.on_heartbeat(HEARTBEAT_PROMPT)
