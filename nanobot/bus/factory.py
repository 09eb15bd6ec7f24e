"""Build the bus the config asks for: local (default) or celery (through a lazy import)."""

from __future__ import annotations

import importlib
from types import ModuleType

from nanobot.bus.queue import MessageBus
from nanobot.config.schema import Config


class BusUnavailableError(Exception):
    """The configured bus backend cannot be used; the message says why and what to do."""


def distributed(module: str) -> ModuleType:
    """A module of nanobot_celery, imported only when distributed mode is used (nanobot never needs celery)."""
    try:
        return importlib.import_module(f"nanobot_celery.{module}")
    except ImportError as exc:
        raise BusUnavailableError(
            "bus.backend is 'celery' but the distributed mode is not installed "
            f"({exc}); install it with: pip install 'nanobot[celery]', or set bus.backend to 'local'"
        ) from exc


def check_distributed_ready(config: Config) -> None:
    """Fail in one line when Redis does not answer (the URL shown without its password)."""
    preflight = distributed("preflight")
    try:
        preflight.check_redis(config.bus.redis_url)
    except preflight.RedisUnreachable as exc:
        raise BusUnavailableError(str(exc)) from exc


def create_bus(config: Config) -> MessageBus:
    backend = config.bus.backend
    if backend == "local":
        return MessageBus()
    if backend == "celery":
        bus: MessageBus = distributed("bus").CeleryMessageBus.from_config(config)
        return bus
    raise BusUnavailableError(f"bus.backend: unknown backend {backend!r} (expected 'local' or 'celery')")
