"""HTTP serving on aiohttp: `WebServer` runs one application on host:port; `GatewayHttp` is the gateway's.

The gateway's own server listens on `gateway.host:gateway.port` (default 127.0.0.1:18790) and serves
`GET /health` plus the webhook routes that push channels contribute through `BaseChannel.web_routes()`
(mounted before it starts). The API channel and Telegram's webhook mode run their own `WebServer`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web

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


class GatewayHttp(WebServer):
    """The gateway's server: `/health` (with what `health()` adds) and the channels' webhook routes."""

    def __init__(self, host: str, port: int, health: Callable[[], dict[str, Any]] | None = None) -> None:
        super().__init__(web.Application(), host, port)
        self._health = health
        self.app.router.add_get("/health", self._health_route)

    def add_routes(self, routes: Iterable[web.RouteDef]) -> None:
        self.app.router.add_routes(list(routes))

    async def _health_route(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = {"status": "ok"}
        if self._health is not None:
            body.update(self._health())
        return web.json_response(body)

    async def start(self) -> None:
        await super().start()
        log.info("gateway http listening on http://%s:%d", self.host, self.port)
