"""The cron service: a JSON job store plus an asyncio timer that fires due jobs.

Two kinds of process use the same store file:

* a short-lived CLI process that only edits jobs (``add_job``, ``remove_job``,
  ``enable_job``, ``list_jobs``) and never calls :meth:`CronService.start`;
* a long-running gateway process that calls :meth:`CronService.start` and runs
  the timer.

Every public method re-reads the file when it changed on disk (inode, mtime or
size differ from what this instance last saw), and the timer checks at least
once a second, so edits from another process are picked up without a restart.
Read-modify-write cycles hold an advisory lock on ``<store>.lock`` (POSIX only)
so that the two processes cannot overwrite each other's changes. Writes are
atomic (temporary file in the same directory, then ``os.replace``).

A record that is not a usable job (a bad key, a bad schedule, a duplicate id) is
logged, never run, and written back unchanged; the other jobs work. A file that
is not a store at all is left untouched until the first write, which moves it
aside to ``<store>.corrupt-<timestamp>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable, Generator, Iterator
from pathlib import Path
from typing import Any

from nanobot.cron.schedule import next_run_ms, validate_schedule
from nanobot.cron.types import (
    MAX_REPLY_CHARS,
    CronJob,
    CronJobState,
    CronPayload,
    CronSchedule,
    RejectedJob,
    RunStatus,
    parse_store,
    store_to_dict,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - not available on Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

JobCallback = Callable[[CronJob], Awaitable[str | None]]

#: The timer never sleeps longer than this, so store changes are noticed quickly.
MAX_SLEEP_S = 1.0

_Signature = tuple[int, int, int]  # (inode, mtime_ns, size)


def now_ms() -> int:
    """Current wall-clock time in epoch milliseconds."""
    return int(time.time() * 1000)


def validate_schedule_of(job: CronJob) -> None:
    """ValueError naming the job when its schedule cannot be used."""
    try:
        validate_schedule(job.schedule)
    except ValueError as exc:
        raise ValueError(f"job {job.id!r}: schedule: {exc}") from None


def _truncate(text: str, limit: int = MAX_REPLY_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _StopHandle:
    """Returned by :meth:`CronService.stop`.

    Calling ``stop()`` cancels the tasks right away; awaiting the result also
    waits until they have finished, so both ``svc.stop()`` and
    ``await svc.stop()`` are valid.
    """

    def __init__(self, tasks: list[asyncio.Task[Any]]) -> None:
        self._tasks = tasks

    async def _wait(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def __await__(self) -> Generator[Any, None, None]:
        return self._wait().__await__()


class CronService:
    """Manage scheduled jobs stored in ``store_path`` and (after ``start``) run them.

    ``on_job`` is awaited with a copy of the job when it fires; its return value
    (the agent's reply, if any) is kept, shortened, in ``job.state.last_reply``.
    """

    def __init__(self, store_path: Path, on_job: JobCallback | None = None) -> None:
        self.store_path = Path(store_path).expanduser()
        self.on_job = on_job
        self._jobs: dict[str, CronJob] = {}
        self._rejected: list[RejectedJob] = []
        self._loaded = False
        self._signature: _Signature | None = None
        self._store_corrupt = False
        self._lock_depth = 0
        self._timer_task: asyncio.Task[None] | None = None
        self._job_tasks: set[asyncio.Task[None]] = set()
        self._running_ids: set[str] = set()
        self._wakeup: asyncio.Event | None = None

    # ------------------------------------------------------------------
    # public API
    # ------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the timer task is active."""
        return self._timer_task is not None and not self._timer_task.done()

    def list_jobs(self, include_disabled: bool = False) -> list[CronJob]:
        """Jobs sorted by next run time (jobs without a next run last)."""
        self._refresh()
        jobs = [job for job in self._jobs.values() if include_disabled or job.enabled]
        jobs.sort(
            key=lambda j: (
                j.state.next_run_at_ms is None,
                j.state.next_run_at_ms or 0,
                j.created_at_ms,
                j.id,
            )
        )
        return [copy.deepcopy(job) for job in jobs]

    def get_job(self, job_id: str) -> CronJob | None:
        """A copy of one job, or None if there is no job with that id."""
        self._refresh()
        job = self._jobs.get(job_id)
        return copy.deepcopy(job) if job is not None else None

    def add_job(
        self,
        name: str,
        schedule: CronSchedule,
        message: str,
        deliver: bool = False,
        channel: str | None = None,
        to: str | None = None,
        delete_after_run: bool = False,
        owner: str | None = None,
    ) -> CronJob:
        """Validate, store and return a new enabled job; `owner` is the session key of the conversation that made
        it (None: the operator's).

        An ``at`` job whose time has already passed is due immediately (it fires
        on the next timer tick of the running service).
        """
        validate_schedule(schedule)
        if not isinstance(message, str) or not message.strip():
            raise ValueError("the job message must not be empty")
        with self._locked():
            self._refresh()
            now = now_ms()
            job = CronJob(
                id=self._new_id(),
                name=name,
                enabled=True,
                schedule=copy.deepcopy(schedule),
                payload=CronPayload(message=message, deliver=deliver, channel=channel, to=to),
                state=CronJobState(),
                created_at_ms=now,
                updated_at_ms=now,
                delete_after_run=delete_after_run,
                owner=owner,
            )
            job.state.next_run_at_ms = self._initial_next_run(job, now)
            self._jobs[job.id] = job
            self._save()
        self._wake()
        log.info("cron: added job %s (%s)", job.id, job.schedule.describe())
        return copy.deepcopy(job)

    def remove_job(self, job_id: str, owner: str | None = None) -> bool:
        """Delete a job (or a rejected record with that id); False if there was none. With `owner`, only a job of
        that conversation is deleted (checked under the store's lock)."""
        with self._locked():
            self._refresh()
            if owner is not None and getattr(self._jobs.get(job_id), "owner", None) != owner:
                return False
            rejected = [r for r in self._rejected if r.id != job_id]
            if self._jobs.pop(job_id, None) is None and len(rejected) == len(self._rejected):
                return False
            self._rejected = rejected
            self._save()
        self._wake()
        log.info("cron: removed job %s", job_id)
        return True

    def enable_job(self, job_id: str, enabled: bool = True) -> CronJob | None:
        """Enable or disable a job and recompute its next run; None if it does not exist."""
        with self._locked():
            self._refresh()
            job = self._jobs.get(job_id)
            if job is None:
                return None
            now = now_ms()
            job.enabled = enabled
            job.state.next_run_at_ms = self._initial_next_run(job, now)
            job.updated_at_ms = now
            self._save()
        self._wake()
        log.info("cron: %s job %s", "enabled" if enabled else "disabled", job_id)
        return copy.deepcopy(job)

    async def run_job(self, job_id: str, force: bool = False) -> bool:
        """Run a job now and wait for it.

        Returns False when the job does not exist, is disabled (unless ``force``)
        or is already running; True once it ran (even if ``on_job`` failed — the
        failure is recorded in the job state).
        """
        self._refresh()
        job = self._jobs.get(job_id)
        if job is None or (not job.enabled and not force) or job_id in self._running_ids:
            return False
        self._running_ids.add(job_id)
        await self._execute(job_id)
        return True

    def status(self) -> dict[str, Any]:
        """``{"enabled": timer running, "jobs": n, "enabled_jobs": n, "next_wake_at_ms": ms | None}``."""
        self._refresh()
        enabled = [job for job in self._jobs.values() if job.enabled]
        upcoming = [j.state.next_run_at_ms for j in enabled if j.state.next_run_at_ms is not None]
        return {
            "enabled": self.running,
            "jobs": len(self._jobs),
            "enabled_jobs": len(enabled),
            "next_wake_at_ms": min(upcoming) if upcoming else None,
            "store": str(self.store_path),
        }

    async def start(self) -> None:
        """Load the store, recompute next runs and start the timer task."""
        if self.running:
            return
        with self._locked():
            self._loaded = False
            self._refresh()
            if self._reconcile_at_start(now_ms()):
                self._save()
        self._wakeup = asyncio.Event()
        self._timer_task = asyncio.create_task(self._timer_loop(), name="cron-timer")
        log.info("cron: started with %d job(s) from %s", len(self._jobs), self.store_path)

    def stop(self) -> _StopHandle:
        """Stop the timer and cancel running jobs. May be awaited to wait for them to finish."""
        tasks: list[asyncio.Task[Any]] = list(self._job_tasks)
        if self._timer_task is not None:
            tasks.append(self._timer_task)
            self._timer_task = None
        self._wakeup = None
        for task in tasks:
            with contextlib.suppress(RuntimeError):  # loop already closed
                task.cancel()
        return _StopHandle(tasks)

    # ------------------------------------------------------------------
    # timer
    # ------------------------------------------------------------------

    async def _timer_loop(self) -> None:
        while True:
            delay = MAX_SLEEP_S
            try:
                self._refresh()
                now = now_ms()
                for job in list(self._jobs.values()):
                    if self._is_due(job, now):
                        self._spawn(job.id)
                delay = self._seconds_until_next(now_ms())
            except Exception:
                log.exception("cron: timer tick failed; will retry")
            await self._sleep(delay)

    async def _sleep(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or less if :meth:`_wake` is called meanwhile."""
        event = self._wakeup
        if event is None:
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await event.wait()
        event.clear()

    def _wake(self) -> None:
        """Make the timer re-check the jobs now (after a change made by this process)."""
        if self._wakeup is not None and self.running:
            self._wakeup.set()

    def _is_due(self, job: CronJob, now: int) -> bool:
        nxt = job.state.next_run_at_ms
        return job.enabled and nxt is not None and nxt <= now and job.id not in self._running_ids

    def _seconds_until_next(self, now: int) -> float:
        upcoming = [
            job.state.next_run_at_ms
            for job in self._jobs.values()
            if job.enabled and job.state.next_run_at_ms is not None and job.id not in self._running_ids
        ]
        if not upcoming:
            return MAX_SLEEP_S
        return min(MAX_SLEEP_S, max(0.0, (min(upcoming) - now) / 1000))

    def _spawn(self, job_id: str) -> None:
        self._running_ids.add(job_id)
        task = asyncio.create_task(self._execute(job_id), name=f"cron-job-{job_id}")
        self._job_tasks.add(task)
        task.add_done_callback(self._job_tasks.discard)

    async def _execute(self, job_id: str) -> None:
        """Run one job whose id the caller already put in ``_running_ids``."""
        try:
            job = self._jobs.get(job_id)
            if job is None:
                return
            started = now_ms()
            status: RunStatus = "ok"
            error: str | None = None
            reply: str | None = None
            log.info("cron: running job %s", job.id)
            if self.on_job is not None:
                try:
                    result = await self.on_job(copy.deepcopy(job))
                    reply = None if result is None else str(result)
                except Exception as exc:
                    log.exception("cron: job %s failed", job.id)
                    status, error = "error", _truncate(f"{type(exc).__name__}: {exc}")
            try:
                self._record_run(job_id, started, status, error, reply)
            except Exception:
                log.exception("cron: could not record the run of job %s", job_id)
        finally:
            self._running_ids.discard(job_id)
            self._wake()

    def _record_run(self, job_id: str, started: int, status: RunStatus, error: str | None, reply: str | None) -> None:
        with self._locked():
            self._refresh()
            job = self._jobs.get(job_id)
            if job is None:
                log.info("cron: job %s was removed while it ran", job_id)
                return
            now = now_ms()
            state = job.state
            state.last_run_at_ms = started
            state.last_status = status
            state.last_error = error
            state.last_reply = _truncate(reply) if reply is not None else None
            job.updated_at_ms = now
            if job.schedule.kind == "at":
                if job.delete_after_run:
                    del self._jobs[job_id]
                else:
                    job.enabled = False
                    state.next_run_at_ms = None
            elif job.enabled:
                state.next_run_at_ms = next_run_ms(job.schedule, now)
            else:
                state.next_run_at_ms = None
            self._save()

    # ------------------------------------------------------------------
    # next-run bookkeeping
    # ------------------------------------------------------------------

    @staticmethod
    def _initial_next_run(job: CronJob, now: int) -> int | None:
        if not job.enabled:
            return None
        if job.schedule.kind == "at" and job.state.last_run_at_ms is None:
            return job.schedule.at_ms  # never ran: due at its time, even if that has passed
        return next_run_ms(job.schedule, now)

    def _fill_missing_next_runs(self, now: int) -> None:
        """After loading: give enabled jobs without a next run one, clear it on disabled jobs."""
        for job in self._jobs.values():
            if not job.enabled:
                job.state.next_run_at_ms = None
            elif job.state.next_run_at_ms is None:
                job.state.next_run_at_ms = self._initial_next_run(job, now)

    def _reconcile_at_start(self, now: int) -> bool:
        """Recompute next runs when the timer starts; True if anything changed.

        Runs of ``every``/``cron`` jobs missed while no process was running are
        skipped (they get their next future time); an ``at`` job that never ran
        stays due and fires once.
        """
        changed = False
        for job in self._jobs.values():
            old = job.state.next_run_at_ms
            if not job.enabled:
                new = None
            elif job.schedule.kind == "at":
                new = self._initial_next_run(job, now)
            elif job.schedule.kind == "every":
                every = job.schedule.every_ms or 0
                new = old if old is not None and now < old <= now + every else now + every
            else:
                new = next_run_ms(job.schedule, now)
            if new != old:
                job.state.next_run_at_ms = new
                changed = True
        return changed

    # ------------------------------------------------------------------
    # store
    # ------------------------------------------------------------------

    def _new_id(self) -> str:
        while True:
            job_id = secrets.token_hex(4)
            if job_id not in self._jobs and all(r.id != job_id for r in self._rejected):
                return job_id

    def _stat(self) -> _Signature | None:
        try:
            st = os.stat(self.store_path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _refresh(self) -> None:
        """(Re)load the store if it was never loaded or changed on disk."""
        if self._loaded and self._stat() == self._signature:
            return
        self._load()

    def _load(self) -> None:
        path = self.store_path
        self._loaded = True
        try:
            with open(path, "rb") as fh:
                st = os.fstat(fh.fileno())
                raw = fh.read()
        except FileNotFoundError:
            self._jobs = {}
            self._rejected = []
            self._signature = None
            self._store_corrupt = False
            return
        except OSError as exc:
            log.error("cron: cannot read job store %s: %s", path, exc)
            self._signature = self._stat()
            return
        self._signature = (st.st_ino, st.st_mtime_ns, st.st_size)
        try:
            jobs, rejected = parse_store(json.loads(raw.decode("utf-8")), check=validate_schedule_of)
        except ValueError as exc:  # includes CronRecordError, JSONDecodeError and UnicodeDecodeError
            self._store_corrupt = True
            log.error(
                "cron: job store %s is malformed (%s). It is left untouched; it will be renamed to "
                "%s.corrupt-<timestamp> before a new store is written.",
                path,
                exc,
                path.name,
            )
            return
        for bad in rejected:
            log.error("cron: job store %s: skipping %s; it is kept in the file as it is", path, bad.reason)
        self._store_corrupt = False
        self._jobs = {job.id: job for job in jobs}
        self._rejected = rejected
        self._fill_missing_next_runs(now_ms())

    def _set_aside_corrupt(self) -> None:
        path = self.store_path
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = path.with_name(f"{path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
            n += 1
        os.replace(path, target)
        log.warning("cron: moved malformed job store %s to %s", path, target)

    def _save(self) -> None:
        path = self.store_path
        path.parent.mkdir(parents=True, exist_ok=True)
        if self._store_corrupt and path.exists():
            self._set_aside_corrupt()
        text = json.dumps(store_to_dict(list(self._jobs.values()), self._rejected), indent=2, ensure_ascii=False) + "\n"
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
                st = os.fstat(fh.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise
        self._store_corrupt = False
        self._loaded = True
        self._signature = (st.st_ino, st.st_mtime_ns, st.st_size)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold an exclusive advisory lock on ``<store>.lock`` (re-entrant within this instance)."""
        if fcntl is None or self._lock_depth > 0:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        self.store_path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.store_path.with_name(self.store_path.name + ".lock")
        with open(lock_path, "a") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
