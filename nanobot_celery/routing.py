"""Which Celery queue rings a conversation's doorbell."""

from __future__ import annotations

import zlib

QUEUE_PREFIX = "nanobot.turns"
SUBAGENT_QUEUE = "nanobot.subagents"


def shard_for(session_key: str, shards: int) -> int:
    """A stable shard number: crc32 (never Python's per-process salted `hash()`)."""
    return zlib.crc32(session_key.encode("utf-8")) % shards


def queue_for(session_key: str, shards: int) -> str:
    return f"{QUEUE_PREFIX}.{shard_for(session_key, shards)}"


def all_queues(shards: int) -> list[str]:
    return [f"{QUEUE_PREFIX}.{i}" for i in range(shards)] + [SUBAGENT_QUEUE]
