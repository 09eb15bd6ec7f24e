"""What one worker process keeps between tasks: its event loop, Redis clients, provider, session store, lock
manager, /stop listener and AgentLoop, built once and reused by every task it runs.

Two ways to run it, by pool:
- prefork (and solo): a task runs on the process's main thread, which runs the loop itself for the task's
  drain (`run_until_complete`); the runtime is built at `worker_process_init`, before the first task.
- threads: every pool thread hands its task's drain to the one loop of the process, which runs in a thread of
  its own, and waits for it. Many turns then share one event loop, one Redis pool and one LLM client: a
  turn waiting on the LLM costs a coroutine, not a process. Built on first use.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import gc
import importlib
import logging
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from nanobot.agent.loop import AgentLoop
from nanobot.agent.toolset import agent_tools_config, precompile_tool_schemas
from nanobot.config import Config, load_config
from nanobot.config.loader import ConfigError, cron_store_path
from nanobot.cron.service import CronService
from nanobot.logs import quiet_http_loggers
from nanobot.providers.factory import create_provider
from nanobot.providers.openai_compat import tls_context, warm_response_models
from nanobot.session.factory import shared_turn_options
from nanobot.session.locks import RedisConversationLockManager
from nanobot_celery.admission import admission_for
from nanobot_celery.bus import CeleryMessageBus
from nanobot_celery.cancels import CancelListener
from nanobot_celery.spawner import CelerySpawner

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class WorkerRuntime:
    config: Config
    loop: asyncio.AbstractEventLoop
    bus: CeleryMessageBus
    locks: RedisConversationLockManager
    agent: AgentLoop
    cancels: CancelListener
    thread: threading.Thread | None = None  # the loop's own thread (threads pool); None: run in the caller's

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the runtime's loop and return its result (from any thread)."""
        if self.thread is None:
            return self.loop.run_until_complete(coro)
        return _run_on(self.loop, coro).result()

    def close(self) -> None:
        async def shutdown() -> None:
            await self.cancels.close()
            await self.agent.close()
            await self.bus.close()

        if self.thread is None:
            self.loop.run_until_complete(shutdown())
            self.loop.close()
            return
        try:
            _run_on(self.loop, shutdown()).result(timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()


def _run_on(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """`asyncio.run_coroutine_threadsafe`, but the task runs in the calling thread's context, so what the
    caller bound with `log_context` stays on the lines the coroutine logs."""
    done: concurrent.futures.Future[T] = concurrent.futures.Future()
    context = contextvars.copy_context()

    def settle(task: asyncio.Task[T]) -> None:
        if task.cancelled():
            done.cancel()
        elif (error := task.exception()) is not None:
            done.set_exception(error)
        else:
            done.set_result(task.result())

    def start() -> None:
        if done.set_running_or_notify_cancel():
            loop.create_task(coro, context=context).add_done_callback(settle)
        else:
            coro.close()

    loop.call_soon_threadsafe(start)
    return done


def build_runtime(config: Config | None = None, *, own_thread: bool = False) -> WorkerRuntime:
    """Everything a task needs; no network round trip happens here (clients connect on first use).
    `own_thread`: the loop runs in a thread of its own, shared by every thread that calls `run`."""
    config = config or load_config()
    quiet_http_loggers()
    loop = asyncio.new_event_loop()
    if not own_thread:
        asyncio.set_event_loop(loop)
    bus = CeleryMessageBus(config)
    shared = shared_turn_options(config, bus.redis)
    agent = AgentLoop.from_config(
        config,
        bus,
        create_provider(config),
        spawner=CelerySpawner(config),
        cron_service=CronService(cron_store_path()),
        # Workers only count tokens: without a daily budget they need no limits storage at all.
        admission=admission_for(config, bus) if config.limits.llm_tokens_per_day else None,
        **shared,
    )
    thread = None
    if own_thread:
        thread = threading.Thread(target=loop.run_forever, name="nanobot-loop", daemon=True)
        thread.start()
    return WorkerRuntime(config, loop, bus, shared["locks"], agent, CancelListener(bus.redis), thread)


_runtime: WorkerRuntime | None = None
_building = threading.Lock()


def get_runtime() -> WorkerRuntime:
    """The process's runtime, built on first use. A task on a thread other than the main one (the threads pool)
    gets a runtime whose loop runs in its own thread, shared by every pool thread."""
    global _runtime
    if _runtime is None:
        with _building:
            if _runtime is None:
                own_thread = threading.current_thread() is not threading.main_thread()
                _runtime = build_runtime(own_thread=own_thread)
                log.info("worker runtime ready (model=%s, sessions=%s, shared loop=%s)",
                         _runtime.agent.model, _runtime.config.sessions.backend, own_thread)
    return _runtime


# Imported by the first LLM call, not at import time: loaded once in the worker's main process instead of
# again in every pool child that autoscale forks.
_LAZY_IMPORTS = ("anyio._backends._asyncio", "httpcore2", "httpcore", "openai.types.chat", "redis.asyncio",
                 "openai._vendor.httpx_aiohttp")


def prepare_pool_parent() -> None:
    """`worker_init`, in the worker's main process before the pool forks.

    Loads what a turn would otherwise import lazily, the TLS context of the LLM clients, the SDK's response
    models, the tools' argument validators and the exec sandbox's probe, so every child inherits them, and
    freezes the heap:
    Celery runs `gc.collect()` before each fork (autoscale forks during a burst), which then has almost
    nothing to scan, and the frozen objects' pages stay shared with the children.
    """
    for name in _LAZY_IMPORTS:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
    tls_context()
    warm_response_models()
    precompile_tool_schemas()
    try:
        # Probe bubblewrap (and warn if it cannot run) once here: the children inherit the answer.
        agent_tools_config(load_config())
    except ConfigError:
        pass  # each pool process reports it when it builds its runtime
    gc.freeze()


def init_process_runtime() -> None:
    """`worker_process_init`: build this child's runtime before its first task."""
    get_runtime()


def close_runtime() -> None:
    global _runtime
    with _building:
        runtime, _runtime = _runtime, None
    if runtime is not None:
        runtime.close()
