"""A Celery worker's log lines in nanobot's formats (text, or one JSON object per line), with the turn's
session key, message id, channel and the worker's name on every line that concerns a turn.

Celery configures the worker's logging itself (`app.log.setup`, in `Worker.on_init_blueprint`, after
`celery -A nanobot_celery` imported this package, so these receivers are connected in time):
- `celeryd_init` (before the logging set-up) binds `worker` = the worker's hostname as a process-wide default
  field (prefork children inherit it through fork) and formats what is logged before the set-up;
- `after_setup_logger` / `after_setup_task_logger` put our formatter on the handlers Celery just installed on
  the root logger, the multiprocessing logger and the `celery.task` logger, so Celery's own lines ("Task ...
  received", "... succeeded in ...") are in the same format. In text format they keep Celery's layout and get
  the bound fields appended.
The format is `$NANOBOT_LOG_FORMAT`, else the config's `logging.format`; the level is `$NANOBOT_LOG_LEVEL` when
set, else Celery's `--loglevel`.
"""

from __future__ import annotations

import logging
import os
import sys
from functools import lru_cache
from typing import Any

from celery import signals
from celery._state import get_current_task
from celery.app.log import TaskFormatter
from celery.utils.log import ColorFormatter, get_multiprocessing_logger

from nanobot.logs import (
    FieldsSuffix,
    JsonFormatter,
    StderrHandler,
    chosen_format,
    chosen_level,
    make_formatter,
    set_default_log_fields,
    stderr_handler,
)
from nanobot_celery.metrics_dir import celery_subcommand

log = logging.getLogger(__name__)


# A worker imports this package (`-A nanobot_celery`) before it loads the config (celeryconfig does at import)
# and long before Celery sets up logging: hold what is logged until `celeryd_init` knows the format.
if celery_subcommand(sys.argv) == "worker" and not logging.getLogger().handlers:
    stderr_handler().start_holding()


class CeleryJsonFormatter(JsonFormatter):
    """JSON lines, plus the Celery task's name and id for records logged while a task runs."""

    def extra_fields(self, record: logging.LogRecord) -> dict[str, Any]:
        task = get_current_task()
        if task is None or task.request is None or task.request.id is None:
            return {}
        return {"task_name": task.name, "task_id": task.request.id}


class CeleryTextFormatter(FieldsSuffix, ColorFormatter):
    """Celery's worker lines, with the bound fields appended."""


class CeleryTaskTextFormatter(FieldsSuffix, TaskFormatter):
    """Celery's task lines (task name and id), with the bound fields appended."""


@lru_cache(maxsize=1)
def worker_log_format() -> str:
    """`$NANOBOT_LOG_FORMAT`, else the config's `logging.format` (text when the config cannot be read); read
    once per process."""
    if os.environ.get("NANOBOT_LOG_FORMAT"):
        return chosen_format()
    from nanobot.config import load_config
    from nanobot.config.loader import ConfigError

    try:
        return chosen_format(load_config().logging)
    except ConfigError:
        return "text"


def _formatter(text: type[ColorFormatter], fmt: str, layout: str | None, colorize: bool | None) -> logging.Formatter:
    if fmt == "json":
        return CeleryJsonFormatter()
    return text(layout, use_color=bool(colorize))


def _restyle(logger: logging.Logger, text: type[ColorFormatter], layout: str | None, colorize: bool | None) -> None:
    fmt = worker_log_format()
    for handler in logger.handlers:
        if not isinstance(handler, logging.NullHandler):
            handler.setFormatter(_formatter(text, fmt, layout, colorize))
    if os.environ.get("NANOBOT_LOG_LEVEL"):
        logger.setLevel(chosen_level())


@signals.celeryd_init.connect
def bind_worker_name(sender: str | None = None, instance: Any = None, **_: Any) -> None:
    """The worker's hostname (e.g. "w0@host") on every line of this process and its pool children; and the lines
    logged before Celery sets up logging (its warning about running as root, the `worker_init` hooks' warnings)
    in our format too: a provisional root handler, which Celery's set-up replaces (or restyles, see below).
    In JSON format, no start-up banner on stdout either (log collectors read both streams)."""
    if sender:
        set_default_log_fields(worker=sender)
    root = logging.getLogger()
    provisional = next((h for h in root.handlers if isinstance(h, StderrHandler)), None)
    if provisional is None and not any(not isinstance(h, logging.NullHandler) for h in root.handlers):
        provisional = stderr_handler()
        provisional.start_holding()  # what loading the config logs waits for the format the config names
    fmt = worker_log_format()
    if provisional is not None:
        provisional.setFormatter(make_formatter(fmt))
        provisional.write_held()
    if fmt == "json" and instance is not None:
        instance.quiet = True
    logging.captureWarnings(True)


@signals.worker_process_init.connect
def bind_child_worker_name(sender: str | None = None, **_: Any) -> None:
    """The same for a pool child that was spawned rather than forked (it did not inherit the default)."""
    if sender:
        set_default_log_fields(worker=sender)


@signals.after_setup_logger.connect
def format_worker_lines(logger: logging.Logger, format: str | None = None, colorize: bool | None = None,
                        **_: Any) -> None:
    """The root logger's and the multiprocessing logger's handlers: our formatter."""
    _restyle(logger, CeleryTextFormatter, format, colorize)
    mp_logger = get_multiprocessing_logger()
    if mp_logger is not None:
        fmt = worker_log_format()
        for handler in mp_logger.handlers:
            handler.setFormatter(_formatter(CeleryTextFormatter, fmt, format, colorize))


@signals.after_setup_task_logger.connect
def format_task_lines(logger: logging.Logger, format: str | None = None, colorize: bool | None = None,
                      **_: Any) -> None:
    """The `celery.task` logger's handler (it does not propagate to the root): our formatter."""
    _restyle(logger, CeleryTaskTextFormatter, format, colorize)
