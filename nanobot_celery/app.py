"""The Celery app. Its settings live in the top-level `celeryconfig.py`."""

from __future__ import annotations

from celery import Celery, Task

import celeryconfig
from nanobot.config import Config
from nanobot_celery.broker_fixes import forget_default_channel_on_collect

forget_default_channel_on_collect()


class NanobotTask(Task):
    """Every task of the app: its requests count `celery_task_rejected` (see worker_metrics)."""

    Request = "nanobot_celery.worker_metrics:CountingRequest"


app = Celery("nanobot_celery", include=["nanobot_celery.tasks"], task_cls=NanobotTask)
app.config_from_object(celeryconfig)


def use_config(config: Config) -> None:
    """Point the app at `config` (a gateway whose config was changed on the command line, or a test)."""
    app.conf.update(celeryconfig.settings_from(config))
