"""Schedule maths: validation and computing the next run time."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from nanobot.cron.types import CronSchedule


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown timezone {name!r} (expected an IANA name such as 'Europe/Paris')") from None


def validate_schedule(schedule: CronSchedule) -> None:
    """Raise ValueError with a readable message if ``schedule`` cannot be used."""
    kind = schedule.kind
    if kind not in ("at", "every", "cron"):
        raise ValueError(f"unknown schedule kind {kind!r} (expected 'at', 'every' or 'cron')")
    if schedule.tz is not None and kind != "cron":
        raise ValueError(f"a timezone can only be given for cron schedules, not for {kind!r} schedules")

    if kind == "at":
        if schedule.at_ms is None:
            raise ValueError("an 'at' schedule needs a time (at_ms)")
        if isinstance(schedule.at_ms, bool) or not isinstance(schedule.at_ms, int):
            raise ValueError(f"at_ms must be an integer epoch time in milliseconds, got {schedule.at_ms!r}")
        if schedule.every_ms is not None or schedule.expr is not None:
            raise ValueError("an 'at' schedule takes only at_ms (not every_ms or expr)")
    elif kind == "every":
        every = schedule.every_ms
        if every is None:
            raise ValueError("an 'every' schedule needs an interval (every_ms)")
        if isinstance(every, bool) or not isinstance(every, int):
            raise ValueError(f"every_ms must be an integer number of milliseconds, got {every!r}")
        if every <= 0:
            raise ValueError(f"the interval must be positive, got every_ms={every}")
        if schedule.at_ms is not None or schedule.expr is not None:
            raise ValueError("an 'every' schedule takes only every_ms (not at_ms or expr)")
    else:
        expr = schedule.expr
        if expr is None or not expr.strip():
            raise ValueError("a 'cron' schedule needs a cron expression (expr)")
        if schedule.at_ms is not None or schedule.every_ms is not None:
            raise ValueError("a 'cron' schedule takes only expr and tz (not at_ms or every_ms)")
        fields = expr.split()
        alias = len(fields) == 1 and fields[0].startswith("@")
        if not (len(fields) == 5 or alias) or not croniter.is_valid(expr):
            raise ValueError(
                f"invalid cron expression {expr!r} "
                "(expected 5 fields: minute hour day-of-month month day-of-week, or an alias like @daily)"
            )
        if schedule.tz is not None:
            _zone(schedule.tz)


def next_run_ms(schedule: CronSchedule, now_ms: int) -> int | None:
    """The next time (epoch ms) strictly after ``now_ms`` at which ``schedule`` fires.

    Returns None for an ``at`` schedule whose time is not in the future.
    Raises ValueError for an invalid schedule.
    """
    validate_schedule(schedule)
    if schedule.kind == "at":
        assert schedule.at_ms is not None
        return schedule.at_ms if schedule.at_ms > now_ms else None
    if schedule.kind == "every":
        assert schedule.every_ms is not None
        return now_ms + schedule.every_ms

    assert schedule.expr is not None
    if schedule.tz is not None:
        start = datetime.fromtimestamp(now_ms / 1000, tz=_zone(schedule.tz))
    else:
        # Naive local time: datetime.timestamp() below maps it back using the
        # system's local rules, including daylight saving changes.
        start = datetime.fromtimestamp(now_ms / 1000)
    it = croniter(schedule.expr, start)
    for _ in range(3):
        candidate = int(it.get_next(datetime).timestamp() * 1000)
        if candidate > now_ms:
            return candidate
    return None  # pragma: no cover - croniter always moves forward
