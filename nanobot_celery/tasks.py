"""The Celery tasks. `process_turn` is a doorbell: it names a conversation, and drains its mailbox."""

from __future__ import annotations

import logging
import random
from typing import Any

from celery import Task
from celery.signals import worker_init, worker_process_init, worker_process_shutdown, worker_shutdown

from nanobot.agent.subagent import SubagentTask, run_subagent
from nanobot.logs import log_context
from nanobot.metrics.instruments import REDIS_RETRIES
from nanobot.session.locks import LockLost
from nanobot_celery.app import app
from nanobot_celery.bus import PROCESS_TURN, is_connection_error
from nanobot_celery.drain import drain
from nanobot_celery.runtime import close_runtime, get_runtime, init_process_runtime, prepare_pool_parent
from nanobot_celery.spawner import RUN_SUBAGENT

log = logging.getLogger(__name__)

REDIS_RETRY_LIMIT = 20


@worker_init.connect
def _prepare_pool_parent(**_: Any) -> None:
    prepare_pool_parent()


@worker_process_init.connect
def _build_child_runtime(**_: Any) -> None:
    init_process_runtime()


@worker_process_shutdown.connect
def _close_child_runtime(**_: Any) -> None:
    close_runtime()


@worker_shutdown.connect
def _close_shared_runtime(**_: Any) -> None:
    """The threads pool's shared runtime (prefork's main process has none: its children close theirs)."""
    close_runtime()


REDIS_RETRY_CAP_S = 30.0


def _retry_delay(task: Task) -> float:
    """Seconds before retry number `retries + 1`: equal jitter on min(2**retries, 30) s (so at most 30 s, and
    workers that lost Redis together do not all come back at the same instant). Counted in the metrics."""
    if int(task.request.retries) < REDIS_RETRY_LIMIT:  # past the limit, `retry` gives up (raises the error)
        REDIS_RETRIES.labels("worker_task").inc()
    base = min(2.0 ** int(task.request.retries), REDIS_RETRY_CAP_S)
    return base / 2 + random.uniform(0, base / 2)


@app.task(name=PROCESS_TURN, bind=True, max_retries=REDIS_RETRY_LIMIT)
def process_turn(self: Task, session_key: str) -> dict[str, Any]:
    """Run every waiting turn of `session_key`, in order, under its lock."""
    rt = get_runtime()
    try:
        result = rt.run(drain(rt, session_key))
    except LockLost as exc:
        # The message stays in flight: the next holder (or the gateway's sweeper) finishes it.
        log.warning("session=%s %s", session_key, exc)
        return {"session_key": session_key, "lock_lost": True}
    except Exception as exc:
        if not is_connection_error(exc):
            raise
        delay = _retry_delay(self)
        log.warning("session=%s Redis unavailable (%s); retry %d of %d in %.1fs",
                    session_key, exc, self.request.retries + 1, REDIS_RETRY_LIMIT, delay)
        raise self.retry(exc=exc, countdown=delay) from exc
    return {"session_key": session_key, "handled": result.handled, "busy": result.busy}


@app.task(name=RUN_SUBAGENT, bind=True, max_retries=REDIS_RETRY_LIMIT)
def run_subagent_task(self: Task, job: dict[str, Any]) -> dict[str, Any]:
    """Run a spawned subagent to the end, then queue its report in the origin conversation's mailbox."""
    rt = get_runtime()
    task = SubagentTask(**job)
    with log_context(session_key=task.session_key, channel=task.channel):
        report = rt.run(
            run_subagent(task, rt.agent.provider, rt.agent.workspace, rt.agent.tools_config, model=rt.agent.model)
        )
    try:
        rt.run(rt.bus.deliver_inbound(report))
    except Exception as exc:
        if not is_connection_error(exc):
            raise
        raise self.retry(exc=exc, countdown=_retry_delay(self)) from exc
    return {"subagent": task.id, "session_key": task.session_key}
