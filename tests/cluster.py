"""A distributed-mode cluster for tests: real Redis (its own database, flushed), Celery workers and the
gateway as real processes, the simulated LLM on loopback. Every process is stopped at teardown."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from nanobot.config import load_config
from nanobot.session.manager import session_filename
from nanobot.testing.llm_server import FakeLLM
from nanobot.testing.processes import Process, free_port, nanobot, wait_http_ok, wait_until
from nanobot_celery.worker import worker_argv
from tests.conftest import write_config

REDIS_HOST = os.environ.get("NANOBOT_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("NANOBOT_TEST_REDIS_PORT", "6379"))
REDIS_DB = int(os.environ.get("NANOBOT_TEST_REDIS_DB", "13"))
API_KEY = "cluster-key"
# For tests whose people send bursts of messages (ordering, polling): the fair limits (tests/test_limits.py) off.
NO_LIMITS = {"limits": {"messagesPerMinute": 0, "maxQueuedPerConversation": 0}}


class Cluster:
    def __init__(
        self,
        tmp_path: Path,
        llm: FakeLLM,
        api_timeout_s: float = 60,
        sessions: str = "file",
        redis_url: str | None = None,
        channels: dict[str, Any] | None = None,
        sections: dict[str, Any] | None = None,
        pool: str = "prefork",
        **bus: Any,
    ) -> None:
        self.tmp_path = tmp_path
        self.pool = pool
        self.llm = llm
        self.prefix = f"nbtest{uuid.uuid4().hex[:8]}"
        self.redis_url = redis_url or f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
        self.port = free_port()
        bus_config = {
            "backend": "celery", "redisUrl": self.redis_url, "keyPrefix": self.prefix, "shards": 4,
            "runEmbeddedWorker": False, "sweepIntervalS": 0.5, "lock": {"ttlMs": 3000},
            "worker": {"pool": pool, "autoscale": "4,2", "metricsPort": 0},
        }
        bus_config.update(bus)
        self.config_path = write_config(
            tmp_path, llm.base_url, bus=bus_config,
            channels={"api": {"enabled": True, "port": self.port, "apiKey": API_KEY, "timeoutS": api_timeout_s},
                      **(channels or {})},
            sessions={"backend": sessions},
            **(sections or {}),
        )
        self.env = {"NANOBOT_CONFIG": str(self.config_path), "NANOBOT_LOG_LEVEL": "INFO"}
        self.redis = redis.Redis.from_url(self.redis_url, decode_responses=True)
        self.workers: list[Process] = []
        self.gateway: Process | None = None
        self.gateways: list[Process] = []  # every gateway started, the first one included
        self.base = f"http://127.0.0.1:{self.port}"
        self._logs = 0

    @property
    def config(self) -> Any:
        return load_config(self.config_path)

    def _log(self, name: str) -> Path:
        self._logs += 1
        return self.tmp_path / f"{self._logs:02d}-{name}.log"

    def start_worker(self, metrics_port: int | None = None, env: dict[str, str] | None = None,
                     **options: Any) -> Process:
        """A worker; with `metrics_port` its main process serves /metrics and /health there. In a threads-pool
        cluster, `autoscale="N,M"` becomes N threads."""
        name = options.pop("name", f"w{len(self.workers)}-{uuid.uuid4().hex[:4]}@%h")
        if self.pool == "threads" and "pool" not in options:
            options["pool"] = "threads"
            autoscale = options.pop("autoscale", None)
            if autoscale and "concurrency" not in options:
                options["concurrency"] = int(autoscale.split(",")[0])
        argv = worker_argv(self.config, name=name, **options)
        extra = {"NANOBOT_BUS__WORKER__METRICS_PORT": str(metrics_port)} if metrics_port else {}
        proc = Process(argv, self._log("worker"), env={**self.env, **extra, **(env or {})})
        self.workers.append(proc)
        wait_until(lambda: " ready." in proc.log(), 60, "worker ready", proc)
        return proc

    def start_gateway(self, *extra: str) -> Process:
        self.gateway = Process(nanobot("gateway", *extra), self._log("gateway"), env=self.env)
        self.gateways.append(self.gateway)
        wait_http_ok(f"{self.base}/health", 60, self.gateway)
        return self.gateway

    def start_another_gateway(self, name: str, *extra: str) -> tuple[Process, str]:
        """One more gateway on the same Redis, with its own `bus.gatewayName` and API port; returns it and its
        API base URL."""
        port = free_port()
        env = {**self.env, "NANOBOT_BUS__GATEWAY_NAME": name, "NANOBOT_CHANNELS__API__PORT": str(port)}
        proc = Process(nanobot("gateway", *extra), self._log(f"gateway-{name}"), env=env)
        self.gateways.append(proc)
        base = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{base}/health", 60, proc)
        return proc, base

    def chat(self, content: str, session_id: str, key: str | None = None, timeout: float = 60,
             base: str | None = None, api_key: str = API_KEY) -> httpx.Response:
        """One chat completion as the API client whose key is `api_key`; `key` is an Idempotency-Key."""
        headers = {"Authorization": f"Bearer {api_key}"}
        if key:
            headers["Idempotency-Key"] = key
        body = {"messages": [{"role": "user", "content": content}], "session_id": session_id}
        url = f"{base or self.base}/v1/chat/completions"
        return httpx.post(url, json=body, headers=headers, timeout=timeout, trust_env=False)

    def chat_in_background(self, content: str, session_id: str, key: str | None = None) -> dict[str, Any]:
        """Send a chat request from a thread; the dict gets "response" (or "error") and holds the "thread"."""
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                result["response"] = self.chat(content, session_id, key=key, timeout=90)
            except httpx.HTTPError as exc:
                result["error"] = exc

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        result["thread"] = thread
        return result

    def kill_holder(self, session_key: str, sig: int = signal.SIGKILL) -> Process:
        """Signal the whole worker (main process and pool) whose child holds this conversation's lock."""
        pid = self.lock_owner_pid(session_key)
        assert pid is not None, f"nobody holds {session_key}"
        group = os.getpgid(pid)
        owner = next(w for w in self.workers if w.proc.pid == group)
        os.killpg(group, sig)
        return owner

    def lock_owner_pid(self, session_key: str) -> int | None:
        value = self.redis.get(f"{self.prefix}:lock:{session_key}")
        return int(value.split(":")[2]) if value else None

    def history(self, session_key: str) -> list[dict[str, Any]]:
        path = self.tmp_path / "workspace" / "sessions" / session_filename(session_key)
        if self.config.sessions.backend == "redis":
            text = self.redis.get(f"{self.prefix}:session:{session_key}") or ""
        else:
            text = path.read_text() if path.exists() else ""
        return [json.loads(line) for line in text.splitlines()[1:] if line.strip()]

    def outbound(self) -> list[dict[str, Any]]:
        """Every reply ever published on the outbound streams (the shared one and each gateway's), by time."""
        streams = [f"{self.prefix}:outbound", *self.redis.scan_iter(f"{self.prefix}:outbound:gw:*")]
        entries = [entry for stream in streams for entry in self.redis.xrange(stream)]
        entries.sort(key=lambda entry: tuple(int(part) for part in entry[0].split("-")))
        return [json.loads(fields["m"]) for _id, fields in entries]

    def stop(self) -> None:
        for proc in [*self.gateways, *self.workers]:
            if proc is not None:
                if proc.alive:
                    try:
                        os.killpg(proc.proc.pid, signal.SIGCONT)
                    except ProcessLookupError:
                        pass
                proc.stop(timeout=15)
        try:
            self.redis.flushdb()
        except redis.RedisError:
            pass
        self.redis.close()

    def dump_logs(self) -> str:
        logs = sorted(self.tmp_path.glob("*.log"))
        return "\n".join(f"==== {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in logs)


def redis_available() -> bool:
    try:
        return bool(redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture
def cluster_factory(tmp_path: Path, fake_llm: FakeLLM, request: pytest.FixtureRequest) -> Iterator[Any]:
    if not redis_available():
        pytest.fail(f"Redis does not answer at {REDIS_HOST}:{REDIS_PORT} (scripts/test starts one)")
    made: list[Cluster] = []

    def make(**options: Any) -> Cluster:
        c = Cluster(tmp_path, fake_llm, **options)
        c.redis.flushdb()
        made.append(c)
        return c

    yield make
    failed = getattr(request.node, "rep_call", None)
    for c in made:
        if failed is not None and failed.failed:
            print(c.dump_logs())
        c.stop()


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
