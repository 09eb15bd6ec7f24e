"""Metrics of distributed mode, on top of nanobot/metrics/instruments.py.

Gateway (collected by the sweeper's pass over the conversations with work, and served at gateway.port
`/metrics`): the backlog, the shard queues, the outbound streams, the dead letters, the leader. Every gateway
reports the same backlog (it is Redis's): dashboards take `max` across gateways.

Workers (multiprocess mode, served by each worker's main process at bus.worker.metricsPort `/metrics`):
redeliveries, and Celery's own task metrics under celery-exporter's names and labels
(`celery_task_*_total{name,hostname,queue_name}`, `celery_task_runtime`, `celery_worker_up{hostname}`,
`celery_worker_tasks_active{hostname}`), so its dashboards work unchanged.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# ----------------------------------------------------------------- gateway: backlog and streams
BACKLOG = Gauge(
    "nanobot_backlog_messages",
    "Accepted messages not yet answered, by state: waiting (in mailboxes), in_flight (claimed by a turn).",
    ["state"], multiprocess_mode="max",
)
BACKLOG_OLDEST_AGE = Gauge(
    "nanobot_backlog_oldest_age_seconds", "Age of the oldest message waiting in any mailbox (0 when none).",
    multiprocess_mode="max",
)
CONVERSATIONS = Gauge(
    "nanobot_backlog_conversations",
    "Conversations with work, by state: held (a worker holds the lock), unheld (work and no lock holder).",
    ["state"], multiprocess_mode="max",
)
DEAD_LETTERS = Gauge(
    "nanobot_dead_letters", "Messages set aside in the dead-letter stream (see `nanobot deadletters`).",
    multiprocess_mode="max",
)
QUEUE_LENGTH = Gauge(
    "celery_queue_length", "Doorbell tasks waiting in a shard queue of the broker.", ["queue_name"],
    multiprocess_mode="max",
)
OUTBOUND_PENDING = Gauge(
    "nanobot_outbound_pending",
    "Replies on an outbound stream not yet acknowledged by a gateway, by stream: shared, own.",
    ["stream"], multiprocess_mode="max",
)
SWEEPER_RINGS = Counter(
    "nanobot_sweeper_rings", "Conversations the sweeper rang again (work waiting with no lock holder)."
)
GATEWAY_LEADER = Gauge(
    "nanobot_gateway_leader", "1 while this gateway holds the cron and heartbeat leader lease.",
    multiprocess_mode="max",
)
EMBEDDED_WORKER_RESTARTS = Counter(
    "nanobot_embedded_worker_restarts", "Times the gateway restarted its embedded worker after it died."
)

# ----------------------------------------------------------------- workers
REDELIVERIES = Counter(
    "nanobot_redeliveries",
    "Messages claimed again after their previous holder died or lost its lock mid-turn.",
)

TASK_LABELS = ["name", "hostname", "queue_name"]
TASK_RECEIVED = Counter("celery_task_received", "Tasks received by this worker.", TASK_LABELS)
TASK_STARTED = Counter("celery_task_started", "Tasks started.", TASK_LABELS)
TASK_SUCCEEDED = Counter("celery_task_succeeded", "Tasks that succeeded.", TASK_LABELS)
TASK_FAILED = Counter("celery_task_failed", "Tasks that failed.", [*TASK_LABELS, "exception"])
TASK_RETRIED = Counter("celery_task_retried", "Tasks that failed and will be retried.", TASK_LABELS)
TASK_REJECTED = Counter("celery_task_rejected", "Tasks rejected (requeued after their worker died).", TASK_LABELS)
TASK_RUNTIME = Histogram(
    "celery_task_runtime", "Task runtime in seconds.", TASK_LABELS,
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600),
)
WORKER_UP = Gauge("celery_worker_up", "1 while the worker runs.", ["hostname"], multiprocess_mode="max")
WORKER_TASKS_ACTIVE = Gauge(
    "celery_worker_tasks_active", "Tasks the worker is running now.", ["hostname"], multiprocess_mode="livesum"
)
