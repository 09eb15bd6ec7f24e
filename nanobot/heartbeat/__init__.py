"""Periodic heartbeat that wakes the agent to work through HEARTBEAT.md."""

from nanobot.heartbeat.service import (
    HEARTBEAT_OK,
    HEARTBEAT_PROMPT,
    HeartbeatService,
    has_tasks,
    is_heartbeat_ok,
)

__all__ = ["HEARTBEAT_OK", "HEARTBEAT_PROMPT", "HeartbeatService", "has_tasks", "is_heartbeat_ok"]
