"""What a command checks before it touches Redis: that the configured one answers (else one line, exit 1)."""

from __future__ import annotations

from nanobot.cli.output import fail
from nanobot.config.schema import Config


def require_redis(config: Config) -> None:
    """Fail in one line when `bus.redisUrl` does not answer (the URL shown without its password)."""
    from nanobot.bus.factory import BusUnavailableError, check_distributed_ready

    try:
        check_distributed_ready(config)
    except BusUnavailableError as exc:
        raise fail(str(exc)) from exc
