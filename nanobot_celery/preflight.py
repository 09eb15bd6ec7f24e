"""Start-up checks that fail in one clear line."""

from __future__ import annotations

from nanobot_celery.redis_url import UNPARSEABLE, redact

URL_FORM = "redis://:password@host:port/db or rediss://..., special characters in the password URL-encoded"


class RedisUnreachable(Exception):
    pass


def check_redis(url: str, timeout_s: float = 3.0) -> None:
    """Raise RedisUnreachable naming the (password-less) URL when Redis does not answer PING.

    A URL that does not parse cleanly is refused before connecting: redis-py would read pieces of the
    password as a host or a port, and its errors would quote them."""
    import redis

    shown = redact(url)
    invalid = f"bus.redisUrl is not a valid Redis URL ({shown}); expected {URL_FORM}"
    if UNPARSEABLE in shown:
        raise RedisUnreachable(invalid)
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    except ValueError:
        raise RedisUnreachable(invalid) from None  # its message may quote the URL: neither shown nor chained
    try:
        client.ping()
    except Exception as exc:
        raise RedisUnreachable(f"cannot reach Redis at {shown}: {exc}") from exc
    finally:
        client.close()
