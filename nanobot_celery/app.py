"""The Celery app. Its settings live in the top-level `celeryconfig.py`."""

from __future__ import annotations

from celery import Celery

import celeryconfig
from nanobot.config import Config

app = Celery("nanobot_celery", include=["nanobot_celery.tasks"])
app.config_from_object(celeryconfig)


def use_config(config: Config) -> None:
    """Point the app at `config` (a gateway whose config was changed on the command line, or a test)."""
    app.conf.update(celeryconfig.settings_from(config))
