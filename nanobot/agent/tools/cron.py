"""The cron tool: the agent schedules reminders and recurring tasks for the current chat.

Every job records the conversation that made it (`CronJob.owner`). Under `tools.isolation: conversation` a
conversation lists and removes only its own jobs: another person's reminders (and what they say) stay theirs.
A job always delivers to the chat it was made from: the model cannot choose another."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from nanobot.agent.tools.base import Tool
from nanobot.agent.turn import turn_or_none, workspace_key_of
from nanobot.cron.types import CronSchedule

if TYPE_CHECKING:
    from nanobot.cron.service import CronService


def schedule_from_args(args: dict[str, Any]) -> CronSchedule:
    """Exactly one of every_seconds, cron_expr (with optional tz) or at (ISO date-time)."""
    given = [k for k in ("every_seconds", "cron_expr", "at") if args.get(k) not in (None, "")]
    if len(given) != 1:
        raise ValueError("give exactly one of every_seconds, cron_expr or at")
    if args.get("tz") and given[0] != "cron_expr":
        raise ValueError("tz only goes with cron_expr")
    if given[0] == "every_seconds":
        return CronSchedule(kind="every", every_ms=int(args["every_seconds"] * 1000))
    if given[0] == "cron_expr":
        return CronSchedule(kind="cron", expr=args["cron_expr"], tz=args.get("tz") or None)
    try:
        when = datetime.fromisoformat(args["at"])
    except ValueError as exc:
        raise ValueError(f"at: not an ISO date-time: {args['at']!r}") from exc
    return CronSchedule(kind="at", at_ms=int(when.timestamp() * 1000))


class CronTool(Tool):
    name = "cron"
    description = (
        "Schedule, list or remove jobs. A job gives you its message as a task when it fires, and your "
        "answer goes to the chat it was created from."
    )
    parameters = {
        "type": "object",
        "properties": {
            "action": {"type": "string", "enum": ["add", "list", "remove"]},
            "message": {"type": "string", "description": "add: the task or reminder text."},
            "every_seconds": {"type": "integer", "minimum": 1, "description": "add: repeat interval."},
            "cron_expr": {"type": "string", "description": "add: cron expression, e.g. '0 9 * * *'."},
            "tz": {"type": "string", "description": "add: IANA timezone for cron_expr."},
            "at": {"type": "string", "description": "add: ISO date-time for a one-time job."},
            "job_id": {"type": "string", "description": "remove: the job id."},
        },
        "required": ["action"],
        "additionalProperties": False,
    }

    def __init__(self, cron: CronService, isolated: bool = False) -> None:
        self._cron = cron
        self.isolated = isolated

    def _owner(self) -> str | None:
        """The conversation whose jobs this call may see (None: every job, the shared workspace's way)."""
        if not self.isolated:
            return None
        turn = turn_or_none()
        return workspace_key_of(turn) if turn is not None else ""

    async def execute(self, **kwargs: Any) -> str:
        action = kwargs["action"]
        owner = self._owner()
        if action == "list":
            jobs = [j for j in self._cron.list_jobs(include_disabled=True) if owner is None or j.owner == owner]
            if not jobs:
                return "No scheduled jobs."
            return "\n".join(
                f"- {j.id} {j.name!r} ({j.schedule.kind}, {'on' if j.enabled else 'off'})" for j in jobs
            )
        if action == "remove":
            job_id = kwargs.get("job_id")
            if not job_id:
                return "Error: remove needs job_id"
            removed = self._cron.remove_job(job_id, owner=owner)
            return f"Removed job {job_id}" if removed else f"Error: no job {job_id}"
        message = kwargs.get("message")
        if not message:
            return "Error: add needs message"
        try:
            schedule = schedule_from_args(kwargs)
        except ValueError as exc:
            return f"Error: {exc}"
        turn = turn_or_none()
        try:
            job = self._cron.add_job(
                name=message[:40],
                schedule=schedule,
                message=message,
                deliver=turn is not None,
                channel=turn.channel if turn else None,
                to=turn.chat_id if turn else None,
                delete_after_run=schedule.kind == "at",
                owner=workspace_key_of(turn) if turn is not None else None,
            )
        except ValueError as exc:  # a schedule the service refuses (bad cron expression, timezone, ...)
            return f"Error: {exc}"
        return f"Scheduled job {job.id} ({schedule.kind})"
