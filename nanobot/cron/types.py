"""Data types for scheduled (cron) jobs and their JSON representation.

The store file looks like ``{"version": 1, "jobs": [<job>, ...]}`` where each job
is serialised by :meth:`CronJob.to_dict` using camelCase keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, cast

STORE_VERSION = 1
PAYLOAD_KIND = "agent_turn"
MAX_REPLY_CHARS = 500

ScheduleKind = Literal["at", "every", "cron"]
RunStatus = Literal["ok", "error"]

_SCHEDULE_KINDS: tuple[str, ...] = ("at", "every", "cron")
_RUN_STATUSES: tuple[str, ...] = ("ok", "error")


# ---------------------------------------------------------------------------
# small typed accessors used by the from_dict methods
# ---------------------------------------------------------------------------


def _require_mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
    return cast(dict[str, Any], value)


def _opt_int(data: dict[str, Any], key: str, where: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}: '{key}' must be an integer, got {value!r}")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{where}: '{key}' must be an integer, got {value!r}")
    return int(value)


def _opt_str(data: dict[str, Any], key: str, where: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{where}: '{key}' must be a string, got {value!r}")
    return value


def _bool(data: dict[str, Any], key: str, where: str, default: bool) -> bool:
    value = data.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ValueError(f"{where}: '{key}' must be true or false, got {value!r}")
    return value


# ---------------------------------------------------------------------------
# dataclasses
# ---------------------------------------------------------------------------


@dataclass
class CronSchedule:
    """When a job runs.

    * ``at``: once, at ``at_ms`` (epoch milliseconds).
    * ``every``: repeatedly, ``every_ms`` milliseconds after the previous run.
    * ``cron``: a 5-field cron expression ``expr`` evaluated in ``tz``
      (an IANA zone name such as ``"Europe/Paris"``; local time when ``None``).
    """

    kind: ScheduleKind
    at_ms: int | None = None
    every_ms: int | None = None
    expr: str | None = None
    tz: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "atMs": self.at_ms,
            "everyMs": self.every_ms,
            "expr": self.expr,
            "tz": self.tz,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "schedule") -> CronSchedule:
        d = _require_mapping(data, where)
        kind = d.get("kind")
        if kind not in _SCHEDULE_KINDS:
            raise ValueError(f"{where}: 'kind' must be one of {', '.join(_SCHEDULE_KINDS)}, got {kind!r}")
        return cls(
            kind=cast(ScheduleKind, kind),
            at_ms=_opt_int(d, "atMs", where),
            every_ms=_opt_int(d, "everyMs", where),
            expr=_opt_str(d, "expr", where),
            tz=_opt_str(d, "tz", where),
        )

    def describe(self) -> str:
        """A short human readable description (for CLI listings and logs)."""
        if self.kind == "at":
            return f"at {self.at_ms}"
        if self.kind == "every":
            return f"every {self.every_ms} ms"
        return f"cron '{self.expr}'" + (f" ({self.tz})" if self.tz else "")


@dataclass
class CronPayload:
    """What a job does: run one agent turn with ``message``.

    When ``deliver`` is true the agent's reply is sent to ``channel``/``to``.
    """

    message: str
    deliver: bool = False
    channel: str | None = None
    to: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": PAYLOAD_KIND,
            "message": self.message,
            "deliver": self.deliver,
            "channel": self.channel,
            "to": self.to,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "payload") -> CronPayload:
        d = _require_mapping(data, where)
        kind = d.get("kind", PAYLOAD_KIND)
        if kind != PAYLOAD_KIND:
            raise ValueError(f"{where}: unsupported payload kind {kind!r} (expected {PAYLOAD_KIND!r})")
        message = d.get("message")
        if not isinstance(message, str):
            raise ValueError(f"{where}: 'message' must be a string, got {message!r}")
        return cls(
            message=message,
            deliver=_bool(d, "deliver", where, False),
            channel=_opt_str(d, "channel", where),
            to=_opt_str(d, "to", where),
        )


@dataclass
class CronJobState:
    """Runtime state of a job, maintained by the service."""

    next_run_at_ms: int | None = None
    last_run_at_ms: int | None = None
    last_status: RunStatus | None = None
    last_error: str | None = None
    last_reply: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "nextRunAtMs": self.next_run_at_ms,
            "lastRunAtMs": self.last_run_at_ms,
            "lastStatus": self.last_status,
            "lastError": self.last_error,
            "lastReply": self.last_reply,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "state") -> CronJobState:
        if data is None:
            return cls()
        d = _require_mapping(data, where)
        status = d.get("lastStatus")
        if status is not None and status not in _RUN_STATUSES:
            raise ValueError(f"{where}: 'lastStatus' must be 'ok', 'error' or null, got {status!r}")
        return cls(
            next_run_at_ms=_opt_int(d, "nextRunAtMs", where),
            last_run_at_ms=_opt_int(d, "lastRunAtMs", where),
            last_status=cast(RunStatus | None, status),
            last_error=_opt_str(d, "lastError", where),
            last_reply=_opt_str(d, "lastReply", where),
        )


@dataclass
class CronJob:
    """A scheduled job as stored in ``jobs.json``."""

    id: str
    name: str
    schedule: CronSchedule
    payload: CronPayload
    enabled: bool = True
    state: CronJobState = field(default_factory=CronJobState)
    created_at_ms: int = 0
    updated_at_ms: int = 0
    delete_after_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "enabled": self.enabled,
            "schedule": self.schedule.to_dict(),
            "payload": self.payload.to_dict(),
            "state": self.state.to_dict(),
            "createdAtMs": self.created_at_ms,
            "updatedAtMs": self.updated_at_ms,
            "deleteAfterRun": self.delete_after_run,
        }

    @classmethod
    def from_dict(cls, data: Any) -> CronJob:
        d = _require_mapping(data, "job")
        job_id = d.get("id")
        if not isinstance(job_id, str) or not job_id:
            raise ValueError(f"job: 'id' must be a non-empty string, got {job_id!r}")
        where = f"job {job_id!r}"
        name = d.get("name", "")
        if not isinstance(name, str):
            raise ValueError(f"{where}: 'name' must be a string, got {name!r}")
        if "schedule" not in d:
            raise ValueError(f"{where}: missing 'schedule'")
        if "payload" not in d:
            raise ValueError(f"{where}: missing 'payload'")
        return cls(
            id=job_id,
            name=name,
            enabled=_bool(d, "enabled", where, True),
            schedule=CronSchedule.from_dict(d["schedule"], f"{where} schedule"),
            payload=CronPayload.from_dict(d["payload"], f"{where} payload"),
            state=CronJobState.from_dict(d.get("state"), f"{where} state"),
            created_at_ms=_opt_int(d, "createdAtMs", where) or 0,
            updated_at_ms=_opt_int(d, "updatedAtMs", where) or 0,
            delete_after_run=_bool(d, "deleteAfterRun", where, False),
        )


def store_to_dict(jobs: list[CronJob]) -> dict[str, Any]:
    """Serialise a list of jobs to the store format."""
    return {"version": STORE_VERSION, "jobs": [job.to_dict() for job in jobs]}


def store_from_dict(data: Any) -> list[CronJob]:
    """Parse the store format; raises ValueError on anything malformed (including duplicate ids)."""
    d = _require_mapping(data, "store")
    version = d.get("version", STORE_VERSION)
    if version != STORE_VERSION:
        raise ValueError(f"store: unsupported version {version!r} (expected {STORE_VERSION})")
    raw_jobs = d.get("jobs", [])
    if not isinstance(raw_jobs, list):
        raise ValueError("store: 'jobs' must be a list")
    jobs: list[CronJob] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_jobs):
        try:
            job = CronJob.from_dict(raw)
        except ValueError as exc:
            raise ValueError(f"jobs[{index}]: {exc}") from None
        if job.id in seen:
            raise ValueError(f"jobs[{index}]: duplicate job id {job.id!r}")
        seen.add(job.id)
        jobs.append(job)
    return jobs
