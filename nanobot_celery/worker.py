"""The Celery worker command line, from nanobot's config: `nanobot worker` and the gateway's embedded
worker run exactly what `celery -A nanobot_celery worker ...` would."""

from __future__ import annotations

import os
import sys

from nanobot.config.schema import Config
from nanobot_celery.routing import all_queues


def worker_argv(
    config: Config,
    *,
    pool: str | None = None,
    autoscale: str | None = None,
    concurrency: int | None = None,
    queues: str | None = None,
    name: str | None = None,
    loglevel: str | None = None,
) -> list[str]:
    """`loglevel` defaults to $NANOBOT_LOG_LEVEL, else the config's `logging.level`."""
    w = config.bus.worker
    loglevel = loglevel or os.environ.get("NANOBOT_LOG_LEVEL") or config.logging.level
    pool = pool or w.pool
    argv = [sys.executable, "-m", "celery", "-A", "nanobot_celery", "worker", f"--pool={pool}",
            f"--loglevel={loglevel}", "--without-gossip", "--without-mingle",
            f"--queues={queues or ','.join(all_queues(config.bus.shards, config.bus.key_prefix))}"]
    concurrency = concurrency or w.concurrency
    autoscale = autoscale or (None if concurrency else w.autoscale)
    if pool != "solo":
        if autoscale and pool == "prefork":
            argv.append(f"--autoscale={autoscale}")
        elif concurrency or autoscale:
            argv.append(f"--concurrency={concurrency or int((autoscale or '1').split(',')[0])}")
    if name:
        argv.append(f"--hostname={name}")
    return argv
