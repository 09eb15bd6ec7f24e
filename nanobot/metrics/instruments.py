"""Every metric the core records, and the small functions the code calls to record them.

In a Celery worker these are written through prometheus-client's multiprocess mode (the worker sets
PROMETHEUS_MULTIPROC_DIR before this module is imported), so prefork children add up; elsewhere they live
in the default registry of the process. Gauges therefore name a `multiprocess_mode`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

# Outcomes (the `outcome` label); "ok" is success everywhere.
OK = "ok"
ERROR = "error"

TURN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
LLM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)
TOOL_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

# ----------------------------------------------------------------- channels (gateway)
INBOUND = Counter(
    "nanobot_inbound_messages",
    "Messages received by a channel: ok (accepted onto the bus), refused (allowFrom), duplicate, invalid, "
    "unauthorized, throttled.",
    ["channel", "outcome"],
)
LIMITED = Counter(
    "nanobot_limited",
    "Messages refused by a fair limit before they were queued (`limits`): rate (messagesPerMinute, burst), queue "
    "(maxQueuedPerConversation), tokens (llmTokensPerDay).",
    ["channel", "limit"],
)
OUTBOUND = Counter(
    "nanobot_outbound_messages",
    "Messages a channel sent: ok, failed (the send raised), dropped (no such channel on this gateway).",
    ["channel", "outcome"],
)

# ----------------------------------------------------------------- turns (where turns run)
TURN_OUTCOMES = ("ok", "error", "stopped", "lock_lost", "recovered", "dead_letter")
TURNS = Counter(
    "nanobot_turns",
    "Turns finished, by outcome: ok, error (answered with an apology), stopped (/stop), lock_lost, "
    "recovered (a dead holder's turn answered from the history), dead_letter (set aside after maxDeliveries).",
    ["outcome"],
)
TURN_DURATION = Histogram(
    "nanobot_turn_duration_seconds", "Time a turn ran, from its start to its reply (every turn that ran).",
    buckets=TURN_BUCKETS,
)
LOCK_WAIT = Histogram(
    "nanobot_lock_wait_seconds", "Time a turn waited for its conversation lock.", buckets=WAIT_BUCKETS
)
QUEUE_WAIT = Histogram(
    "nanobot_turn_queue_wait_seconds",
    "Time from a message's arrival at the channel to the start of its turn.",
    buckets=WAIT_BUCKETS,
)
TURNS_RUNNING = Gauge(
    "nanobot_turns_running", "Turns running now in this process (all pool children of a worker).",
    multiprocess_mode="livesum",
)

# ----------------------------------------------------------------- LLM provider
LLM_REQUESTS = Counter(
    "nanobot_llm_requests",
    "HTTP requests to the LLM provider (each retry counts), by outcome: ok, http_429, http_4xx, http_5xx, "
    "timeout, connection, error.",
    ["provider", "model", "outcome"],
)
LLM_DURATION = Histogram(
    "nanobot_llm_request_duration_seconds", "Duration of one request to the LLM provider.",
    ["provider", "model"], buckets=LLM_BUCKETS,
)
LLM_RETRIES = Counter("nanobot_llm_retries", "LLM requests retried after a backoff.", ["provider"])
LLM_TOKENS = Counter(
    "nanobot_llm_tokens", "Tokens reported by the provider, by kind: prompt, completion.",
    ["provider", "model", "kind"],
)

# ----------------------------------------------------------------- tools
TOOL_OUTCOMES = ("ok", "error", "invalid", "unknown")
TOOL_CALLS = Counter(
    "nanobot_tool_calls",
    "Tool calls, by outcome: ok, error (the tool failed or returned an error), invalid (bad arguments), "
    "unknown (no such tool; the tool label is then \"unknown\").",
    ["tool", "outcome"],
)
TOOL_DURATION = Histogram(
    "nanobot_tool_duration_seconds", "Duration of one tool call.", ["tool"], buckets=TOOL_BUCKETS
)

# ----------------------------------------------------------------- schedules (whoever fires them)
SCHEDULE_FIRES = Counter(
    "nanobot_schedule_fires", "Cron jobs and heartbeats fired by this process, by kind: cron, heartbeat.", ["kind"]
)

# ----------------------------------------------------------------- retries of the bus (Redis, broker)
REDIS_RETRIES = Counter(
    "nanobot_redis_retries",
    "Operations retried after a backoff because Redis or the broker was unreachable, by where: "
    "gateway_inbound, worker_task, outbound.",
    ["where"],
)


@lru_cache(maxsize=4096)
def labelled(metric: MetricWrapperBase, *values: str) -> Any:
    """`metric.labels(*values)`, looked up once: the hot paths (every turn, LLM request, tool call, task) then
    skip prometheus-client's lock and dict per call. Label values are bounded, so the cache is too. Safe across
    fork: in multiprocess mode a child's first update moves each value to the child's own file."""
    return metric.labels(*values)


def count_inbound(channel: str, outcome: str = OK) -> None:
    labelled(INBOUND, channel, outcome).inc()


def count_limited(channel: str, limit: str) -> None:
    labelled(LIMITED, channel, limit).inc()


def count_outbound(channel: str, outcome: str = OK) -> None:
    labelled(OUTBOUND, channel, outcome).inc()


def count_turn(outcome: str) -> None:
    labelled(TURNS, outcome).inc()


def count_tool(tool: str, outcome: str, duration_s: float | None = None) -> None:
    """One tool call; `duration_s` when the tool ran."""
    labelled(TOOL_CALLS, tool, outcome).inc()
    if duration_s is not None:
        labelled(TOOL_DURATION, tool).observe(duration_s)


def count_llm(provider: str, model: str, outcome: str, duration_s: float) -> None:
    """One HTTP request to the provider."""
    labelled(LLM_REQUESTS, provider, model, outcome).inc()
    labelled(LLM_DURATION, provider, model).observe(duration_s)


def count_llm_retry(provider: str) -> None:
    labelled(LLM_RETRIES, provider).inc()


def count_tokens(provider: str, model: str, usage: dict[str, int]) -> None:
    for kind in ("prompt", "completion"):
        n = usage.get(f"{kind}_tokens")
        if n:
            labelled(LLM_TOKENS, provider, model, kind).inc(n)
