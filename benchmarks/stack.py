"""The processes of one benchmark layout: the SIMULATED LLM, the gateway with its API channel, and
the Celery workers (`celery -A nanobot_celery worker ...`), each a real process with its own log."""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from nanobot.config import load_config
from nanobot.session.redis_keys import RedisKeys
from nanobot.testing.llm_server import RecordedRequest, RemoteFakeLLM
from nanobot.testing.processes import Process, free_port, nanobot, wait_http_ok, wait_until
from nanobot_celery.worker import worker_argv

# How long the API channel waits for a reply. Long: under --scale the card's prefork command queues a thousand
# users behind 30 slots of 10 s turns, and the last of them is answered after about six minutes.
REPLY_TIMEOUT_S = 1200


@dataclass(frozen=True)
class Layout:
    """How the assistant is deployed for one measurement."""

    bus: str = "local"  # local: one gateway process runs every turn; celery: turns run on workers
    workers: int = 0
    pool: str = "prefork"  # prefork (autoscaled processes) or threads
    slots: int = 17  # per worker: the autoscale maximum (prefork) or the thread count (threads)
    min_slots: int = 4  # prefork: the autoscale minimum

    @property
    def name(self) -> str:
        if self.bus == "local":
            return "local"
        return f"celery {self.workers}w {self.pool}"

    @property
    def worker_flag(self) -> str:
        if self.pool == "prefork":
            return f"--autoscale={self.slots},{self.min_slots}"
        return f"--pool={self.pool} --concurrency={self.slots}"

    def capacity(self, users: int) -> int:
        """Turns that can run at once: one per user in local mode, the workers' slots in celery mode."""
        return users if self.bus == "local" else min(users, self.workers * self.slots)


class SimulatedLLM:
    """The SIMULATED OpenAI-compatible LLM (nanobot.testing.llm_server) in its own process, so its
    threads do not compete with the load generator for one interpreter."""

    def __init__(self, workdir: Path, latency_s: float, jitter: float) -> None:
        port_file = workdir / "llm.port"
        argv = [sys.executable, "-m", "nanobot.testing.llm_server", "--port-file", str(port_file),
                "--latency", str(latency_s), "--jitter", str(jitter), "--seed", "1"]
        self.process = Process(argv, workdir / "simulated-llm.log")
        wait_until(port_file.exists, 30, "simulated LLM port file", self.process)
        self.remote = RemoteFakeLLM(f"http://127.0.0.1:{port_file.read_text().strip()}", timeout=60)
        self.base_url = self.remote.base_url

    def reset(self, latency_s: float, jitter: float) -> None:
        self.remote.reset()
        self.remote.configure(latency_s=latency_s, jitter=jitter, seed=1)

    def records(self) -> list[RecordedRequest]:
        return self.remote.requests()

    def stop(self) -> None:
        self.remote.close()
        self.process.stop()


class Stack:
    """One deployment: its config file, gateway and workers. `stop()` ends every process it started
    and deletes its Redis keys."""

    def __init__(
        self,
        layout: Layout,
        llm: SimulatedLLM,
        workdir: Path,
        redis_url: str,
        *,
        sessions: str = "file",
        lock_ttl_ms: int | None = None,
    ) -> None:
        self.layout = layout
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.redis_url = redis_url
        self.prefix = f"nbbench{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.gateway_port = free_port()
        self.worker_metrics_ports: list[int] = []
        bus: dict[str, Any] = {
            "backend": layout.bus, "redisUrl": redis_url, "keyPrefix": self.prefix, "runEmbeddedWorker": False,
        }
        if lock_ttl_ms is not None:
            bus["lock"] = {"ttlMs": lock_ttl_ms}
        self.config_data: dict[str, Any] = {
            "agents": {"defaults": {"workspace": str(workdir / "workspace"), "model": "simulated-model",
                                    "provider": "custom"}},
            "providers": {"custom": {"apiKey": "simulated", "apiBase": llm.base_url}},
            "channels": {"api": {"enabled": True, "port": self.port, "timeoutS": REPLY_TIMEOUT_S}},
            "gateway": {"heartbeat": {"enabled": False}, "port": self.gateway_port},
            "sessions": {"backend": sessions},
            "bus": bus,
        }
        self.config_path = workdir / "config.json"
        self.write_config()
        self.env = {"NANOBOT_CONFIG": str(self.config_path)}
        self.gateway: Process | None = None
        self.workers: list[Process] = []
        self._started = 0

    def write_config(self) -> None:
        self.config_path.write_text(json.dumps(self.config_data, indent=2))

    def start(self) -> Stack:
        for _ in range(self.layout.workers if self.layout.bus == "celery" else 0):
            self.start_worker()
        for worker in self.workers:
            wait_until(lambda w=worker: " ready." in w.log(), 90, "worker ready", worker)  # type: ignore[misc]
        self.start_gateway()
        return self

    def start_worker(self, wait: bool = False) -> Process:
        layout = self.layout
        self._started += 1
        options: dict[str, Any] = {"pool": layout.pool, "name": f"bench{self._started}@%h"}
        if layout.pool == "prefork":
            options["autoscale"] = f"{layout.slots},{layout.min_slots}"
        else:
            options["concurrency"] = layout.slots
        argv = worker_argv(load_config(self.config_path), **options)
        port = free_port()
        self.worker_metrics_ports.append(port)
        env = {**self.env, "NANOBOT_BUS__WORKER__METRICS_PORT": str(port)}
        worker = Process(argv, self.workdir / f"worker{self._started}.log", env=env)
        self.workers.append(worker)
        if wait:
            wait_until(lambda: " ready." in worker.log(), 90, "worker ready", worker)
        return worker

    @property
    def gateway_metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}/metrics"

    def turn_metrics_urls(self) -> list[str]:
        """The /metrics of every process that runs turns: the live workers, or the gateway in local mode."""
        if self.layout.bus == "local":
            return [self.gateway_metrics_url]
        live = [port for port, w in zip(self.worker_metrics_ports, self.workers, strict=True) if w.alive]
        return [f"http://127.0.0.1:{port}/metrics" for port in live]

    def kill_random_worker(self, rng: random.Random) -> Process:
        """SIGKILL a live worker's main process and its whole pool at once."""
        victim = rng.choice([w for w in self.workers if w.alive])
        victim.kill()
        return victim

    def start_gateway(self) -> Process:
        self.gateway = Process(nanobot("gateway"), self.workdir / "gateway.log", env=self.env)
        wait_http_ok(f"{self.url}/health", 60, self.gateway)
        return self.gateway

    def restart_gateway(self) -> float:
        """Stop the gateway (SIGTERM, as a deploy would) and start it again; returns seconds until it is healthy."""
        started = time.monotonic()
        if self.gateway is not None:
            self.gateway.stop(timeout=30)
        self.start_gateway()
        return time.monotonic() - started

    def dead_letters(self) -> int:
        """Messages this stack set aside after `bus.maxDeliveries` failed attempts."""
        client = redis.Redis.from_url(self.redis_url)
        try:
            return int(client.xlen(RedisKeys(self.prefix).dead_letters))
        finally:
            client.close()

    def roots(self) -> list[tuple[str, int]]:
        """(role, pid) of every live process this stack runs."""
        found = [("gateway", self.gateway.proc.pid)] if self.gateway and self.gateway.alive else []
        return found + [("worker", w.proc.pid) for w in self.workers if w.alive]

    def logs(self) -> list[Path]:
        return sorted(self.workdir.glob("*.log"))

    def stop(self, forget: bool = True) -> None:
        """Stop every process; `forget` also deletes this stack's Redis keys."""
        if self.gateway is not None:
            self.gateway.stop(timeout=30)
        for worker in self.workers:
            if worker.alive:
                os.kill(worker.proc.pid, signal.SIGTERM)
        for worker in self.workers:
            worker.stop(timeout=40)
        if forget:
            forget_keys(self.redis_url, self.prefix)


def forget_keys(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(f"{prefix}:*", count=1000):
            client.delete(key)
    finally:
        client.close()


def redis_cpu_seconds(redis_url: str) -> float:
    """CPU the Redis server has used so far (it is shared: only the difference over a run means anything)."""
    client = redis.Redis.from_url(redis_url)
    try:
        info = client.info("cpu")
    finally:
        client.close()
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
