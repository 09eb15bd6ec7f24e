"""Celery settings for nanobot_celery: `celery -A nanobot_celery worker` and Flower read these.

The broker, the queues and the visibility timeout come from nanobot's own config (~/.nanobot/config.json
or $NANOBOT_CONFIG, `bus` section); the rest is fixed here because the guarantees depend on it.
"""

from __future__ import annotations

from typing import Any

from kombu import Queue

from nanobot.config import Config, load_config
from nanobot_celery.redis_url import tls_options
from nanobot_celery.routing import all_queues, turn_queue


def settings_from(config: Config) -> dict[str, Any]:
    """The settings that depend on nanobot's config."""
    bus = config.bus
    settings: dict[str, Any] = {
        "broker_url": bus.redis_url,
        # Longer than any turn: a task still unacknowledged after this is delivered again (see DESIGN §4).
        "broker_transport_options": {"visibility_timeout": bus.visibility_timeout_s},
        "task_queues": [Queue(name, routing_key=name) for name in all_queues(bus.shards, bus.key_prefix)],
        "task_default_queue": turn_queue(0, bus.key_prefix),
    }
    # rediss://: without these kombu would connect with certificate checks off (CERT_NONE, with a warning).
    # The result backend's too, although results are not stored today (task_ignore_result). Always set, so
    # that `use_config` with a redis:// URL undoes an earlier rediss:// one.
    tls = tls_options(bus.redis_url)
    settings["broker_use_ssl"] = tls or False
    settings["redis_backend_use_ssl"] = tls
    return settings


# A task is acknowledged when it finishes, so a worker killed mid-task leaves it to be delivered again.
task_acks_late = True
task_reject_on_worker_lost = True
# One task at a time per pool process: nothing waits behind a long turn in a busy child's prefetch.
worker_prefetch_multiplier = 1
# Results are replies on the outbound path, not Celery results.
task_ignore_result = True
# Task events only while someone watches: Flower turns them on in the workers itself (its `--enable_events`,
# on by default, broadcasts `enable_events` every few seconds), so no worker publishes three events per turn
# to nobody. `task-sent` would be published by the gateway, which Flower cannot turn on: Flower shows a turn
# from `received`. Our own task metrics come from Celery's signals (nanobot_celery/worker_metrics.py), not events.
worker_send_task_events = False
task_send_sent_event = False
task_track_started = True
# Finish running turns on shutdown (soft shutdown), then stop.
worker_soft_shutdown_timeout = 30.0
broker_connection_retry_on_startup = True
worker_cancel_long_running_tasks_on_connection_loss = False
task_serializer = "json"
accept_content = ["json"]

globals().update(settings_from(load_config()))
