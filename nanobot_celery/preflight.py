"""Start-up checks that fail in one clear line."""

from __future__ import annotations

from nanobot_celery.redis_url import redact


class RedisUnreachable(Exception):
    pass


def check_redis(url: str, timeout_s: float = 3.0) -> None:
    """Raise RedisUnreachable naming the (password-less) URL when Redis does not answer PING."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        client.ping()
    except Exception as exc:
        raise RedisUnreachable(f"cannot reach Redis at {redact(url)}: {exc}") from exc
    finally:
        client.close()
