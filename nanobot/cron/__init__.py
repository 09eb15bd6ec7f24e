"""Scheduled jobs (cron) for nanobot."""

from nanobot.cron.schedule import next_run_ms, validate_schedule
from nanobot.cron.service import CronService
from nanobot.cron.types import CronJob, CronJobState, CronPayload, CronSchedule

__all__ = [
    "CronJob",
    "CronJobState",
    "CronPayload",
    "CronSchedule",
    "CronService",
    "next_run_ms",
    "validate_schedule",
]
