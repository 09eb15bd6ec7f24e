"""Fair limits per sender in distributed mode: the `limits` library's Redis storage (redis-py, on the bus's own
connection pool), so every gateway and worker counts together; the queue a conversation has is its mailbox."""

from __future__ import annotations

from limits.aio.storage import RedisStorage

from nanobot.admission.gate import Admission
from nanobot.config.schema import Config
from nanobot_celery.bus import CeleryMessageBus


def limits_storage(bus: CeleryMessageBus) -> RedisStorage:
    """Counts under `<bus.keyPrefix>:limits:` in the bus's Redis."""
    return RedisStorage(
        "async+" + bus.config.bus.redis_url,
        implementation="redispy",
        key_prefix=f"{bus.config.bus.key_prefix}:limits",
        connection_pool=bus.redis.connection_pool,
    )


def admission_for(config: Config, bus: CeleryMessageBus) -> Admission:
    """The gateway's checks and the workers' token counts, on Redis."""

    async def waiting(session_key: str) -> int:
        """Messages in the conversation's mailbox that no turn has taken yet."""
        return int(await bus.redis.llen(bus.keys.mailbox(session_key)))

    return Admission(config, limits_storage(bus), waiting=waiting)
