"""What one worker pool process (or thread) keeps between tasks: its event loop, Redis clients, provider,
session store, lock manager and AgentLoop, built once (at `worker_process_init` for prefork children,
on first use for threads) and reused by every task it runs."""

from __future__ import annotations

import asyncio
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
from nanobot_celery.bus import CeleryMessageBus
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
    cancels: Any = None  # the pub/sub connection that hears /stop for the conversation being drained

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        async def shutdown() -> None:
            if self.cancels is not None:
                await self.cancels.aclose()
            await self.agent.close()
            await self.bus.close()

        self.loop.run_until_complete(shutdown())
        self.loop.close()


def build_runtime(config: Config | None = None) -> WorkerRuntime:
    """Everything a task needs; no network round trip happens here (clients connect on first use)."""
    config = config or load_config()
    quiet_http_loggers()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    bus = CeleryMessageBus(config)
    shared = shared_turn_options(config, bus.redis)
    agent = AgentLoop.from_config(
        config,
        bus,
        create_provider(config),
        spawner=CelerySpawner(config),
        cron_service=CronService(cron_store_path()),
        **shared,
    )
    return WorkerRuntime(config, loop, bus, shared["locks"], agent)


_local = threading.local()


def get_runtime() -> WorkerRuntime:
    runtime: WorkerRuntime | None = getattr(_local, "runtime", None)
    if runtime is None:
        runtime = _local.runtime = build_runtime()
        log.info("worker runtime ready (model=%s, sessions=%s)", runtime.agent.model, runtime.config.sessions.backend)
    return runtime


# Imported by the first LLM call, not at import time: loaded once in the worker's main process instead of
# again in every pool child that autoscale forks.
_LAZY_IMPORTS = ("anyio._backends._asyncio", "httpcore2", "httpcore", "openai.types.chat", "redis.asyncio")


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
    runtime: WorkerRuntime | None = getattr(_local, "runtime", None)
    if runtime is not None:
        _local.runtime = None
        runtime.close()
