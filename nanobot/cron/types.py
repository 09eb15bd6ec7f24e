"""Scheduled (cron) job records and the jobs.json store format.

The store file looks like ``{"version": 1, "jobs": [<job>, ...]}``; each job is a :class:`CronJob` written with
camelCase keys, as upstream nanobot writes it. A ``null`` in a record means "not set" (the default applies); keys
we do not know (upstream's ``runHistory``, ...) are ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

STORE_VERSION = 1
PAYLOAD_KIND = "agent_turn"
# A fired job's inbound message carries its owner under this metadata key (see `AgentLoop`'s `cron_owner`).
CRON_OWNER_KEY = "cron_owner"
MAX_REPLY_CHARS = 500

ScheduleKind = Literal["at", "every", "cron"]
RunStatus = Literal["ok", "error"]


class CronRecordError(ValueError):
    """A job record that cannot be used; the message names the job and the key."""


class _Record(BaseModel):
    """camelCase on disk, snake_case in Python (both read), strict types, `null` means the default."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, strict=True, extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _nulls_mean_default(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data

    def to_dict(self) -> dict[str, Any]:
        """The record as jobs.json holds it (camelCase keys, every key written)."""
        return self.model_dump(mode="json", by_alias=True)

    @classmethod
    def from_dict(cls, data: Any, where: str | None = None) -> Self:
        """Validate a record read from jobs.json; CronRecordError names `where` and the bad key."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise CronRecordError(f"{where or cls.__name__}: {_describe(exc)}") from None


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"]) or "(record)"
        text = f"{key}: {err['msg']}"
        if err["type"] != "missing":
            text += f" (got {_shown(err.get('input'))})"
        parts.append(text)
    return "; ".join(parts)


def _shown(value: Any) -> str:
    if isinstance(value, dict | list):
        return type(value).__name__
    text = repr(value)
    return text if len(text) <= 60 else text[:59] + "…"


class CronSchedule(_Record):
    """When a job runs.

    * ``at``: once, at ``at_ms`` (epoch milliseconds).
    * ``every``: repeatedly, ``every_ms`` milliseconds after the previous run.
    * ``cron``: a 5-field cron expression ``expr`` evaluated in ``tz``
      (an IANA zone name such as ``"Europe/Paris"``; local time when ``None``).

    The combination of keys is checked by :func:`nanobot.cron.schedule.validate_schedule`.
    """

    kind: ScheduleKind
    at_ms: int | None = None
    every_ms: int | None = None
    expr: str | None = None
    tz: str | None = None

    def describe(self) -> str:
        """A short human readable description (for CLI listings and logs)."""
        if self.kind == "at":
            return f"at {self.at_ms}"
        if self.kind == "every":
            return f"every {self.every_ms} ms"
        return f"cron '{self.expr}'" + (f" ({self.tz})" if self.tz else "")


class CronPayload(_Record):
    """What a job does: run one agent turn with ``message``.

    When ``deliver`` is true the agent's reply is sent to ``channel``/``to``.
    """

    kind: Literal["agent_turn"] = PAYLOAD_KIND
    message: str
    deliver: bool = False
    channel: str | None = None
    to: str | None = None


class CronJobState(_Record):
    """Runtime state of a job, maintained by the service."""

    next_run_at_ms: int | None = None
    last_run_at_ms: int | None = None
    last_status: RunStatus | None = None
    last_error: str | None = None
    last_reply: str | None = None


class CronJob(_Record):
    """A scheduled job as stored in ``jobs.json``."""

    id: str = Field(min_length=1)
    name: str = ""
    enabled: bool = True
    schedule: CronSchedule
    payload: CronPayload
    state: CronJobState = Field(default_factory=CronJobState)
    created_at_ms: int = 0
    updated_at_ms: int = 0
    delete_after_run: bool = False
    # The session key of the conversation that made the job (the cron tool), or None for the operator's (the CLI,
    # upstream's jobs.json). Under `tools.isolation: conversation` only that conversation lists or removes it,
    # and its turn works in that conversation's folder.
    owner: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record as jobs.json holds it; an operator's job (no owner) is written exactly as before owners were
        recorded, as upstream writes it."""
        data = super().to_dict()
        if data.get("owner") is None:
            data.pop("owner", None)
        return data

    @classmethod
    def from_dict(cls, data: Any, where: str | None = None) -> Self:
        """Validate one job record; the error names the job by its id (or `where` when it has none)."""
        job_id = data.get("id") if isinstance(data, dict) else None
        named = f"job {job_id!r}" if isinstance(job_id, str) and job_id else (where or "job")
        return super().from_dict(data, named)


@dataclass(frozen=True)
class RejectedJob:
    """A record in jobs.json that is not a usable job: kept as it is, with the reason."""

    raw: Any
    reason: str

    @property
    def id(self) -> str | None:
        job_id = self.raw.get("id") if isinstance(self.raw, dict) else None
        return job_id if isinstance(job_id, str) else None


def store_to_dict(jobs: Sequence[CronJob], rejected: Sequence[RejectedJob] = ()) -> dict[str, Any]:
    """The store format: the jobs, then the rejected records exactly as they were read."""
    return {"version": STORE_VERSION, "jobs": [job.to_dict() for job in jobs] + [r.raw for r in rejected]}


def parse_store(
    data: Any, check: Callable[[CronJob], None] | None = None
) -> tuple[list[CronJob], list[RejectedJob]]:
    """Read the store format: the usable jobs and the rejected records (malformed, refused by `check` with a
    ValueError, or a duplicate id).

    Raises CronRecordError when the file as a whole is not a store (not an object, another version, no job list).
    """
    if not isinstance(data, dict):
        raise CronRecordError(f"store: expected an object, got {type(data).__name__}")
    version = data.get("version", STORE_VERSION)
    if version != STORE_VERSION:
        raise CronRecordError(f"store: unsupported version {version!r} (expected {STORE_VERSION})")
    raw_jobs = data.get("jobs", [])
    if not isinstance(raw_jobs, list):
        raise CronRecordError("store: 'jobs' must be a list")
    jobs: list[CronJob] = []
    rejected: list[RejectedJob] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_jobs):
        try:
            job = CronJob.from_dict(raw, f"jobs[{index}]")
            if check is not None:
                check(job)
        except ValueError as exc:
            rejected.append(RejectedJob(raw, str(exc)))
            continue
        if job.id in seen:
            rejected.append(RejectedJob(raw, f"job {job.id!r}: duplicate id (jobs[{index}])"))
            continue
        seen.add(job.id)
        jobs.append(job)
    return jobs, rejected


def store_from_dict(data: Any) -> list[CronJob]:
    """Read the store format, all or nothing: CronRecordError on the first unusable record."""
    jobs, rejected = parse_store(data)
    if rejected:
        raise CronRecordError(rejected[0].reason)
    return jobs
