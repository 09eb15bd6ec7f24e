"""Build the bus the config asks for: local (default) or celery (through a lazy import)."""

from __future__ import annotations

import importlib

from nanobot.bus.queue import MessageBus
from nanobot.config.schema import Config


class BusUnavailableError(Exception):
    """The configured bus backend cannot be used; the message says why and what to do."""


def create_bus(config: Config) -> MessageBus:
    backend = config.bus.backend
    if backend == "local":
        return MessageBus()
    if backend == "celery":
        try:
            module = importlib.import_module("nanobot_celery.bus")
        except ImportError as exc:
            raise BusUnavailableError(
                "bus.backend is 'celery' but the distributed mode is not installed "
                f"({exc}); install it with: pip install 'nanobot[celery]', or set bus.backend to 'local'"
            ) from exc
        bus: MessageBus = module.CeleryMessageBus.from_config(config)
        return bus
    raise BusUnavailableError(f"bus.backend: unknown backend {backend!r} (expected 'local' or 'celery')")
