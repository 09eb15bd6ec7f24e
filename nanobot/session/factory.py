"""Build the session store the config asks for, and move histories between stores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from nanobot.config.schema import Config
from nanobot.session.manager import FenceCheck, Session, SessionManager
from nanobot.session.redis_keys import RedisKeys


class SessionStore(Protocol):
    def get_or_create(self, key: str) -> Session: ...
    def load(self, key: str) -> Session | None: ...
    def save(self, session: Session, fence: int | None = None) -> None: ...
    def invalidate(self, key: str) -> None: ...
    def list_sessions(self) -> list[dict[str, Any]]: ...
    def load_text(self, key: str) -> str | None: ...


def redis_keys(config: Config) -> RedisKeys:
    return RedisKeys(config.bus.key_prefix)


def sync_redis(config: Config) -> Any:
    import redis

    return redis.Redis.from_url(config.bus.redis_url, decode_responses=True, socket_timeout=10,
                                socket_connect_timeout=5, health_check_interval=30)


def redis_fence_check(client: Any, keys: RedisKeys) -> FenceCheck:
    """For file sessions in distributed mode: is `fence` still the newest holder's lock fence?"""

    def check(session_key: str, fence: int) -> bool:
        return client.get(keys.fence(session_key)) == str(fence)

    return check


def create_session_store(config: Config, backend: str | None = None, fenced: bool = False) -> SessionStore:
    """`sessions.backend` (or `backend`): files in the workspace, or Redis at `bus.redisUrl`.
    `fenced` (distributed workers) makes file saves check the Redis lock fence too."""
    chosen = backend or config.sessions.backend
    if chosen == "redis":
        from nanobot.session.redis_manager import RedisSessionManager

        return RedisSessionManager(sync_redis(config), redis_keys(config))
    check = redis_fence_check(sync_redis(config), redis_keys(config)) if fenced else None
    return SessionManager(config.workspace_path, fence_check=check)


def shared_turn_options(config: Config, async_redis: Any) -> dict[str, Any]:
    """AgentLoop options for a process that runs turns beside others (a worker, or the CLI in celery mode):
    the Redis conversation lock, fenced history writes, and history re-read under the lock on every turn."""
    from nanobot.session.locks import RedisConversationLockManager

    return {
        "locks": RedisConversationLockManager(async_redis, redis_keys(config), ttl_ms=config.bus.lock.ttl_ms),
        "sessions": create_session_store(config, fenced=True),
        "reload_history": True,
    }


@dataclass
class CopyReport:
    copied: list[str]
    skipped: list[str]  # the target already held the same or a newer version


def copy_sessions(source: SessionStore, target: SessionStore) -> CopyReport:
    """Copy every session; a target version updated at the same time or later is left alone, so
    running it again changes nothing."""
    report = CopyReport([], [])
    for info in source.list_sessions():
        key = info["key"]
        session = source.load(key)
        if session is None:
            continue
        existing = target.load(key)
        if existing is not None and existing.updated_at >= session.updated_at:
            report.skipped.append(key)
            continue
        target.save(session)
        report.copied.append(key)
    return report
