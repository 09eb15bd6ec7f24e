"""CPU time and memory of the processes a benchmark started, read from /proc (Linux).

CPU is summed over each started process and all its descendants: a live process counts its own
user+system time plus the time of the children it has already reaped (`cutime`, `cstime`), so a pool
child that autoscale retired between two readings is still counted, once, in its parent.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces; everything after the last ')' is space-separated.
    return raw[raw.rindex(")") + 2 :].split()


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            found.extend(int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split())
        except OSError:
            continue
    return found


def process_tree(pid: int) -> list[int]:
    """`pid` and every live descendant."""
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(_children(p))
    return tree


def cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of `pid` and its descendants, reaped ones included."""
    total = 0
    for p in process_tree(pid):
        fields = _stat_fields(p)
        if fields is not None:
            # utime, stime, cutime, cstime are fields 14-17 of /proc/PID/stat; [0] here is field 3.
            total += sum(int(x) for x in fields[11:15])
    return total / _TICKS


def _status_mb(pid: int, field: str) -> float:
    """A kB field of /proc/PID/status, in MiB; 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def peak_rss_mb(pid: int) -> float:
    """The process's own peak resident set size (VmHWM), in MiB."""
    return _status_mb(pid, "VmHWM:")


def rss_mb(pid: int) -> float:
    """The process's resident set size now (VmRSS), in MiB."""
    return _status_mb(pid, "VmRSS:")


TOTAL = "total"


@dataclass
class MemoryWatch:
    """Samples peak RSS in the background: of each root process, of the largest of their children (a worker's
    pool processes, which autoscale starts and retires while the load runs), and of all of them together
    (`TOTAL`: the sum of every process's RSS at one sample, its peak over the run)."""

    roots: Callable[[], Iterable[tuple[str, int]]]  # (role, pid) of the started processes, read each tick
    interval_s: float = 0.25
    peaks: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        total = 0.0
        for role, pid in list(self.roots()):
            self._note(role, peak_rss_mb(pid))
            tree = process_tree(pid)
            total += sum(rss_mb(p) for p in tree)
            for child in tree[1:]:
                self._note(f"{role} child", peak_rss_mb(child))
        self._note(TOTAL, total)

    def _note(self, role: str, mb: float) -> None:
        if mb > self.peaks.get(role, 0.0):
            self.peaks[role] = mb

    def start(self) -> MemoryWatch:
        def loop() -> None:
            while not self._stop.wait(self.interval_s):
                self.sample()

        self.sample()
        self._thread = threading.Thread(target=loop, name="memory-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.sample()
        return dict(self.peaks)
