"""nanobot_celery: run nanobot's turns on autoscaled Celery workers. `celery -A nanobot_celery worker`."""

# Before anything imports prometheus_client: a worker's metrics go to multiprocess files (see metrics_dir), then
# its task metrics and /metrics and /health server (worker_metrics).
from nanobot_celery import metrics_dir  # noqa: I001
from nanobot_celery import worker_metrics
from nanobot_celery import worker_logging
from nanobot_celery.app import app

__all__ = ["app", "metrics_dir", "worker_logging", "worker_metrics"]
