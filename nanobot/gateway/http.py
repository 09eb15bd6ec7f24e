"""HTTP serving on aiohttp: `WebServer` runs one application on host:port; `GatewayHttp` is the gateway's.

The gateway's own server listens on `gateway.host:gateway.port` (default 127.0.0.1:18790) and serves
`GET /health` (liveness), `GET /ready` (readiness: 200, or 503 naming what is not ready), `GET /metrics`
(Prometheus) plus the webhook routes that push channels contribute through `BaseChannel.web_routes()`
(mounted before it starts). The API channel and Telegram's webhook mode run their own `WebServer`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web

from nanobot.metrics.exposition import metrics_handler

log = logging.getLogger(__name__)


class WebServer:
    """One aiohttp application listening on host:port, from `start()` until `stop()`."""

    def __init__(self, app: web.Application, host: str, port: int, *, shutdown_timeout: float = 5.0,
                 **server_options: Any) -> None:
        self.app = app
        self.host = host
        self._requested_port = port
        self._shutdown_timeout = shutdown_timeout
        self._server_options = server_options
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    @property
    def port(self) -> int:
        """The bound port once listening (so port 0 works), else the configured one."""
        if self._runner is not None:
            for address in self._runner.addresses:
                if isinstance(address, tuple) and len(address) >= 2:
                    return int(address[1])
        return self._requested_port

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("server already started")
        runner = web.AppRunner(
            self.app, access_log=None, shutdown_timeout=self._shutdown_timeout, **self._server_options
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self._site = runner, site

    async def stop(self) -> None:
        """Stop listening; requests still running get the shutdown timeout, then are cancelled."""
        runner, self._runner, self._site = self._runner, None, None
        if runner is not None:
            await runner.cleanup()


ReadinessCheck = Callable[[], Awaitable[list[str]]]
"""Returns the reasons the gateway is not ready; an empty list means ready."""


class GatewayHttp(WebServer):
    """The gateway's server: `/health` (with what `health()` adds), `/ready` (what `ready()` says), `/metrics`
    (refreshed first by `before_metrics`) and the channels' webhook routes."""

    def __init__(
        self,
        host: str,
        port: int,
        health: Callable[[], dict[str, Any]] | None = None,
        *,
        ready: ReadinessCheck | None = None,
        before_metrics: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(web.Application(), host, port)
        self._health = health
        self._ready = ready
        self.app.router.add_get("/health", self._health_route)
        self.app.router.add_get("/ready", self._ready_route)
        self.app.router.add_get("/metrics", metrics_handler(before=before_metrics))

    def add_routes(self, routes: Iterable[web.RouteDef]) -> None:
        self.app.router.add_routes(list(routes))

    async def _health_route(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = {"status": "ok"}
        if self._health is not None:
            body.update(self._health())
        return web.json_response(body)

    async def _ready_route(self, request: web.Request) -> web.Response:
        reasons: list[str] = []
        if self._ready is not None:
            try:
                reasons = await self._ready()
            except Exception as exc:  # a failing check is a reason, never a 500
                log.warning("readiness check failed: %s", exc)
                reasons = [f"readiness check failed: {type(exc).__name__}"]
        if reasons:
            return web.json_response({"status": "not ready", "reasons": reasons}, status=503)
        return web.json_response({"status": "ready"})

    async def start(self) -> None:
        await super().start()
        log.info("gateway http listening on http://%s:%d", self.host, self.port)
