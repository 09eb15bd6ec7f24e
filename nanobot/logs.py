"""Log set-up for the gateway, the CLI and (through nanobot_celery.worker_logging) the workers.

Two formats on stderr: `text` (one readable line per event) and `json` (one JSON object per line: time, level,
logger, process, message, exception, plus the bound fields). `$NANOBOT_LOG_FORMAT` / `$NANOBOT_LOG_LEVEL` win
over the config's `logging.format` / `logging.level`; a level the command line chose explicitly wins over both.

`log_context(session_key=..., message_id=..., channel=...)` binds fields to everything logged inside it (a
context variable: asyncio tasks and `to_thread` calls started inside inherit them); `current_log_fields()`
reads them. `set_default_log_fields(worker=...)` binds process-wide defaults (inherited by forked children, seen
by every thread). The formatters add both to every line.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"
FORMATS = ("text", "json")

# The fields every line that concerns a turn carries.
TURN_FIELDS = ("session_key", "message_id", "channel", "worker")

_fields: ContextVar[dict[str, str]] = ContextVar("nanobot_log_fields", default={})  # noqa: B039 (never mutated)
_defaults: dict[str, str] = {}


class LogSettings(Protocol):
    """What setup_logging reads from the config (`Config.logging`)."""

    format: str
    level: str


@contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Bind `fields` (None values are skipped) to every record logged inside the block."""
    token = _fields.set({**_fields.get(), **{k: str(v) for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _fields.reset(token)


def current_log_fields() -> dict[str, str]:
    """The fields bound here: the process-wide defaults, overridden by the `log_context` blocks we are in."""
    bound = _fields.get()
    return {**_defaults, **bound} if _defaults else bound


def set_default_log_fields(**fields: str | None) -> None:
    """Bind fields to every record of this process (and of children it forks); None removes one."""
    for key, value in fields.items():
        if value is None:
            _defaults.pop(key, None)
        else:
            _defaults[key] = str(value)


# ---------------------------------------------------------------------------- formatters
def iso_utc(created: float) -> str:
    """`created` (epoch seconds) as ISO 8601 UTC with milliseconds: 2026-01-31T12:00:00.123Z."""
    seconds = int(created)
    millis = min(int((created - seconds) * 1000), 999)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: time, level, logger, process, message, [exception, stack],
    then the bound fields (`current_log_fields()`)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": iso_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        entry.update(self.extra_fields(record))
        for key, value in current_log_fields().items():
            entry.setdefault(key, value)
        return json.dumps(entry, ensure_ascii=False, default=str)

    def extra_fields(self, record: logging.LogRecord) -> dict[str, Any]:
        """More fields for subclasses (e.g. a Celery task's id); none here."""
        return {}


class FieldsSuffix(logging.Formatter):
    """Mixin for text formatters: appends ` key=value` for each bound field whose value the message does not
    already show as a word or after an `=` (the turn lines say `session=... message_id=...` themselves). Only the
    `log_context` fields: the process-wide defaults (the worker's name) would repeat on every line."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        shown = {token.rstrip(",;:.)").rpartition("=")[2] for token in record.message.split()}
        # repr() for a value with a line break or other control character: one event stays one line.
        extra = [f"{k}={v if v.isprintable() else repr(v)}" for k, v in _fields.get().items() if v not in shown]
        return f"{line} {' '.join(extra)}" if extra else line


class TextFormatter(FieldsSuffix, logging.Formatter):
    """nanobot's text lines: `FORMAT`, then the bound fields the message does not carry."""

    def __init__(self, fmt: str = FORMAT, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)


def make_formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else TextFormatter()


# ---------------------------------------------------------------------------- choices
def chosen_format(settings: LogSettings | None = None) -> str:
    """`$NANOBOT_LOG_FORMAT`, else the config's `logging.format`, else text (an unknown value means text)."""
    value = (os.environ.get("NANOBOT_LOG_FORMAT") or (settings.format if settings else "") or "text").lower()
    return value if value in FORMATS else "text"


def chosen_level(level: str | None = None, settings: LogSettings | None = None) -> int:
    """`level` (the command line's explicit choice), else `$NANOBOT_LOG_LEVEL`, else the config's
    `logging.level`, else INFO. An unknown name means INFO."""
    name = (level or os.environ.get("NANOBOT_LOG_LEVEL") or (settings.level if settings else "") or "INFO").upper()
    value = logging.getLevelName(name)
    return value if isinstance(value, int) else logging.INFO


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """nanobot's handler on stderr. While `held` is a list it keeps the records instead of writing them: the
    lines logged while the config loads, before the config says which format to write them in."""

    MAX_HELD = 1000

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.held: list[logging.LogRecord] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.held is None:
            super().emit(record)
        elif len(self.held) < self.MAX_HELD:
            self.held.append(record)

    def start_holding(self) -> None:
        if self.held is None:
            self.held = []

    def write_held(self) -> None:
        """Write the held records with the formatter set now, and stop holding."""
        held, self.held = self.held, None
        for record in held or ():
            self.handle(record)


def stderr_handler() -> StderrHandler:
    """The root logger's StderrHandler (added on first use)."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, StderrHandler)), None)
    if handler is None:
        handler = StderrHandler()
        root.addHandler(handler)
        atexit.register(handler.write_held)  # lines held when the config never came
    return handler


def setup_logging(level: str | None = None, settings: LogSettings | None = None, *, hold: bool = False) -> None:
    """Log to stderr in the chosen format at the chosen level (see `chosen_format` / `chosen_level`).

    Idempotent: call it first without `settings` (to log while the config loads), then again with
    `config.logging` once loaded; the second call switches the format and level of the same handler. With
    `hold=True` (the first call of a command that loads the config next) and no `$NANOBOT_LOG_FORMAT`, the lines
    wait for that second call, so they come out in the config's format too."""
    handler = stderr_handler()
    handler.setFormatter(make_formatter(chosen_format(settings)))
    if hold and settings is None and not os.environ.get("NANOBOT_LOG_FORMAT"):
        handler.start_holding()
    else:
        handler.write_held()
    root = logging.getLogger()
    root.setLevel(chosen_level(level, settings))
    quiet_http_loggers(root.level)


def quiet_http_loggers(level: int = logging.WARNING) -> None:
    """Libraries that log every HTTP request at INFO would drown the turn lines: at least WARNING for them.
    (A Celery worker's logging is Celery's, so its runtime calls this directly.)"""
    for noisy in ("httpx", "httpx2", "httpcore", "openai"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, level))
