"""Which Celery queue rings a conversation's doorbell.

Queue names start with `bus.keyPrefix` (`nanobot.turns.<shard>`, `nanobot.subagents` with the default prefix),
so installations that share one Redis with their own prefixes never take each other's doorbells.
"""

from __future__ import annotations

import zlib

DEFAULT_PREFIX = "nanobot"


def shard_for(session_key: str, shards: int) -> int:
    """A stable shard number: crc32 (never Python's per-process salted `hash()`)."""
    return zlib.crc32(session_key.encode("utf-8")) % shards


def turn_queue(shard: int, prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}.turns.{shard}"


def subagent_queue(prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}.subagents"


def queue_for(session_key: str, shards: int, prefix: str = DEFAULT_PREFIX) -> str:
    return turn_queue(shard_for(session_key, shards), prefix)


def all_queues(shards: int, prefix: str = DEFAULT_PREFIX) -> list[str]:
    return [turn_queue(i, prefix) for i in range(shards)] + [subagent_queue(prefix)]
