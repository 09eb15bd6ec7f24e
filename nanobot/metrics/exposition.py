"""Serve metrics on aiohttp: `metrics_handler()` renders this process's registry, or, when the process runs
in prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR set), every process's files added up."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def current_registry() -> CollectorRegistry:
    """What /metrics shows: the default registry, or a fresh one collecting the multiprocess files."""
    if multiprocess_dir() is None:
        return REGISTRY
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def render() -> bytes:
    return generate_latest(current_registry())


def metrics_handler(
    before: Callable[[], Awaitable[None]] | None = None,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An aiohttp handler for GET /metrics; `before` runs first (e.g. refreshing gauges read from Redis)."""

    async def handle(request: web.Request) -> web.Response:
        if before is not None:
            await before()
        body = render()
        content_type, _, charset = CONTENT_TYPE_LATEST.partition("; charset=")
        return web.Response(body=body, content_type=content_type.strip(), charset=charset or "utf-8")

    return handle
