"""The Celery worker command line, from nanobot's config: `nanobot worker` and the gateway's embedded
worker run exactly what `celery -A nanobot_celery worker ...` would."""

from __future__ import annotations

import os
import sys

from nanobot.config.schema import Config
from nanobot_celery.routing import all_queues

# Turns one threads-pool worker runs at once when `bus.worker.concurrency` is not set.
THREADS_DEFAULT = 100


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
    """`loglevel` defaults to $NANOBOT_LOG_LEVEL, else the config's `logging.level`. An `autoscale` given without
    a pool asks for prefork (only prefork autoscales)."""
    w = config.bus.worker
    loglevel = loglevel or os.environ.get("NANOBOT_LOG_LEVEL") or config.logging.level
    pool = pool or ("prefork" if autoscale else w.pool)
    argv = [sys.executable, "-m", "celery", "-A", "nanobot_celery", "worker", f"--pool={pool}",
            f"--loglevel={loglevel}", "--without-gossip", "--without-mingle",
            f"--queues={queues or ','.join(all_queues(config.bus.shards, config.bus.key_prefix))}"]
    concurrency = concurrency or w.concurrency
    if pool == "threads":
        # Autoscale is prefork's: a threads pool has its fixed number of threads (a parked one costs little).
        argv.append(f"--concurrency={concurrency or THREADS_DEFAULT}")
    elif pool == "prefork":
        autoscale = autoscale or (None if concurrency else w.autoscale)
        if autoscale or concurrency:
            argv.append(f"--autoscale={autoscale}" if autoscale else f"--concurrency={concurrency}")
    if name:
        argv.append(f"--hostname={name}")
    return argv
