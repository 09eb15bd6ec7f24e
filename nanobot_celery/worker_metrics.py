"""A worker's metrics and liveness: Celery's task metrics under celery-exporter's names (counted by Celery
signals in whichever process runs the task: prefork children, threads, solo), prefork children added up through
prometheus-client's multiprocess mode (see metrics_dir), and the worker main process's server on
`bus.worker.metricsHost:metricsPort`: GET /metrics, and GET /health (200 while the worker consumes and Redis
answers PING, 503 with the reason otherwise), on a daemon thread with its own event loop."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from celery import bootsteps, signals
from celery.worker.request import Request
from prometheus_client import multiprocess

from nanobot.config import load_config
from nanobot.metrics.exposition import metrics_handler, multiprocess_dir
from nanobot.metrics.instruments import labelled
from nanobot_celery import metrics as m
from nanobot_celery.metrics_dir import alive, remove_created_dir
from nanobot_celery.preflight import RedisUnreachable, check_redis

log = logging.getLogger(__name__)

REDIS_TIMEOUT_S = 2.0
SERVER_START_TIMEOUT_S = 10.0
SERVER_STOP_TIMEOUT_S = 5.0


# ----------------------------------------------------------------- Celery task metrics
_running: dict[str, tuple[float, tuple[str, str, str]]] = {}  # task id -> (start, its labels), in this process


def _labels(name: str, hostname: str | None, delivery_info: dict[str, Any] | None) -> tuple[str, str, str]:
    queue = (delivery_info or {}).get("routing_key") or ""
    return name or "", hostname or "", queue


def _task_labels(task: Any) -> tuple[str, str, str]:
    request = task.request
    return _labels(task.name, request.hostname, request.delivery_info)


@signals.task_received.connect
def _count_received(request: Request, **_: Any) -> None:
    labelled(m.TASK_RECEIVED, *_labels(request.name, request.hostname, request.delivery_info)).inc()


@signals.task_prerun.connect
def _count_started(task_id: str, task: Any, **_: Any) -> None:
    labels = _task_labels(task)
    labelled(m.TASK_STARTED, *labels).inc()
    labelled(m.WORKER_TASKS_ACTIVE, labels[1]).inc()
    _running[task_id] = (time.perf_counter(), labels)


@signals.task_postrun.connect
def _count_finished(task_id: str, state: str | None = None, **_: Any) -> None:
    entry = _running.pop(task_id, None)
    if entry is None:
        return
    began, labels = entry
    labelled(m.TASK_RUNTIME, *labels).observe(time.perf_counter() - began)
    labelled(m.WORKER_TASKS_ACTIVE, labels[1]).dec()
    if state == "SUCCESS":
        labelled(m.TASK_SUCCEEDED, *labels).inc()


@signals.task_failure.connect
def _count_failed(sender: Any, exception: BaseException | None = None, **_: Any) -> None:
    labelled(m.TASK_FAILED, *_task_labels(sender), type(exception).__name__).inc()


@signals.task_retry.connect
def _count_retried(sender: Any, **_: Any) -> None:
    labelled(m.TASK_RETRIED, *_task_labels(sender)).inc()


class CountingRequest(Request):
    """Celery's request, counting `celery_task_rejected` where Celery sends its `task-rejected` event (e.g. a
    task requeued because the pool child running it died). The app's tasks use it (see app.py)."""

    def reject(self, requeue: bool = False) -> None:
        if not self.acknowledged:
            labelled(m.TASK_REJECTED, *_labels(self.name, self.hostname, self.delivery_info)).inc()
        super().reject(requeue=requeue)


# ----------------------------------------------------------------- pool children's files
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live\w*_(\d+)\.db$")


def forget_dead_processes() -> None:
    """Drop the live gauges (`livesum`...) of processes that are gone (a child killed before its own
    `worker_process_shutdown` could): their counters and histograms stay in the sums."""
    directory = multiprocess_dir()
    if directory is None:
        return
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for name in names:
        match = _LIVE_GAUGE_FILE.match(name)
        if match and not alive(int(match[1])):
            multiprocess.mark_process_dead(int(match[1]), directory)


@signals.worker_process_shutdown.connect
def _child_exits(pid: int | None = None, **_: Any) -> None:
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid or os.getpid())


# ----------------------------------------------------------------- the main process's server
def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (OSError when it is taken)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class WorkerServer:
    """/metrics and /health on `sock`, served by aiohttp on a daemon thread with its own event loop."""

    def __init__(self, sock: socket.socket, health: Callable[[], Awaitable[str | None]], hostname: str) -> None:
        self.sock = sock
        self.port = int(sock.getsockname()[1])
        self._health = health
        self._hostname = hostname
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="worker-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._started.wait(SERVER_START_TIMEOUT_S):
            raise TimeoutError("the metrics server did not start")
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        loop = self._loop
        if loop is not None and self._thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(SERVER_STOP_TIMEOUT_S)

    def forget_in_child(self) -> None:
        """In a pool child forked after the server started: close its inherited copy of the listening socket
        (the parent's stays open), so a child outliving its parent does not hold the port."""
        self.sock.close()

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", metrics_handler(before=self._before_scrape))
        app.router.add_get("/health", self._health_route)
        return app

    async def _before_scrape(self) -> None:
        forget_dead_processes()

    async def _health_route(self, request: web.Request) -> web.Response:
        problem = await self._health()
        body: dict[str, Any] = {"status": "ok" if problem is None else "unavailable", "worker": self._hostname}
        if problem is not None:
            body["reason"] = problem
        return web.json_response(body, status=200 if problem is None else 503)

    def _serve(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=2.0)
        try:
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.SockSite(runner, self.sock).start())
        except BaseException as exc:
            self._error = exc
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()


@dataclass
class _WorkerState:
    consumer: Any = None
    hostname: str = ""
    stopping: bool = False
    redis_url: str = ""
    server: WorkerServer | None = None


_state = _WorkerState()


def worker_problem() -> str | None:
    """Why this worker is not running, or None."""
    if _state.stopping:
        return "the worker is shutting down"
    consumer = _state.consumer
    if consumer is None:
        return "the worker is not ready yet"
    blueprint = getattr(consumer, "blueprint", None)
    if blueprint is not None and blueprint.state != bootsteps.RUN:
        return "the worker's consumer is not running (reconnecting to the broker?)"
    return None


async def health_problem() -> str | None:
    """None when the worker runs and Redis answers PING within REDIS_TIMEOUT_S; else the reason."""
    problem = worker_problem()
    if problem is not None:
        return problem
    try:
        await asyncio.wait_for(asyncio.to_thread(check_redis, _state.redis_url, REDIS_TIMEOUT_S),
                               REDIS_TIMEOUT_S * 2 + 1)
    except RedisUnreachable as exc:
        return str(exc)
    except TimeoutError:
        return f"Redis did not answer PING within {REDIS_TIMEOUT_S:g} s"
    return None


@signals.worker_ready.connect
def _worker_ready(sender: Any = None, **_: Any) -> None:
    """The worker consumes: mark it up and start its server (a taken port is logged, not fatal)."""
    if _state.consumer is not None:
        return  # Celery sends it once; never start a second server
    config = load_config()
    _state.consumer = sender
    _state.hostname = str(getattr(sender, "hostname", "") or "")
    _state.redis_url = config.bus.redis_url
    m.WORKER_UP.labels(_state.hostname).set(1)
    host, port = config.bus.worker.metrics_host, config.bus.worker.metrics_port
    if not port:  # 0: turned off
        return
    try:
        sock = listen(host, port)
    except OSError as exc:
        log.error("worker metrics: cannot listen on %s:%d (%s); this worker runs without /metrics and /health",
                  host, port, exc.strerror or exc)
        return
    server = WorkerServer(sock, health_problem, _state.hostname)
    try:
        server.start()
    except Exception as exc:
        sock.close()
        log.error("worker metrics: the server on %s:%d did not start (%s); running without it", host, port, exc)
        return
    _state.server = server
    log.info("worker metrics: /metrics and /health on http://%s:%d", host, server.port)


@signals.worker_process_init.connect
def _child_started(**_: Any) -> None:
    if _state.server is not None:
        _state.server.forget_in_child()
        _state.server = None


@signals.worker_shutting_down.connect
def _worker_stopping(**_: Any) -> None:
    _state.stopping = True


@signals.worker_shutdown.connect
def _worker_stopped(**_: Any) -> None:
    _state.stopping = True
    if _state.hostname:
        m.WORKER_UP.labels(_state.hostname).set(0)
    server, _state.server = _state.server, None
    if server is not None:
        server.stop()
    remove_created_dir()
