"""Log set-up: one line per event, `key=value` fields (session=..., message_id=...) to follow a turn."""

from __future__ import annotations

import logging
import os
import sys

FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"


def setup_logging(level: str | None = None) -> None:
    """Log to stderr at `level` (or $NANOBOT_LOG_LEVEL, default INFO). Idempotent."""
    chosen = (level or os.environ.get("NANOBOT_LOG_LEVEL") or "INFO").upper()
    root = logging.getLogger()
    if not any(getattr(h, "_nanobot", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        handler._nanobot = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(chosen)
    quiet_http_loggers(root.level)


def quiet_http_loggers(level: int = logging.WARNING) -> None:
    """Libraries that log every HTTP request at INFO would drown the turn lines: at least WARNING for them.
    (A Celery worker's logging is Celery's, so its runtime calls this directly.)"""
    for noisy in ("httpx", "httpx2", "httpcore", "openai"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, level))
