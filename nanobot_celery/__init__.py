"""nanobot_celery: run nanobot's turns on autoscaled Celery workers. `celery -A nanobot_celery worker`."""

from nanobot_celery.app import app

__all__ = ["app"]
