"""A redis-server of a test's own: a free loopback port, a password, TLS with a self-signed certificate if
asked. Started from the installed `redis-server`, always stopped; skips the test (with the reason) when it
cannot be started here."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from nanobot.testing.processes import free_port


@dataclass
class PrivateRedis:
    port: int
    password: str
    cert: Path | None  # self-signed, for localhost and 127.0.0.1; its own CA

    def url(self, query: str = "", host: str = "127.0.0.1", db: int = 0) -> str:
        scheme = "rediss" if self.cert else "redis"
        return f"{scheme}://:{self.password}@{host}:{self.port}/{db}" + (f"?{query}" if query else "")


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """(certificate, key) for CN=localhost with localhost and 127.0.0.1 as names, made by the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl CLI to make a test certificate (and the cryptography package is not installed)")
    cert, key = directory / "redis.crt", directory / "redis.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )
    return cert, key


@contextmanager
def private_redis(directory: Path, password: str, tls: bool = False) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = ["redis-server", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(directory)]
    cert = None
    if tls:
        cert, key = self_signed_certificate(directory)
        argv += ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                 "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"]
    else:
        argv += ["--port", str(port)]
    log = (directory / "redis.log").open("wb")
    # The password as configuration on stdin (`-`), as docker-compose.yml does.
    proc = subprocess.Popen([*argv, "-"], stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT)
    assert proc.stdin is not None
    proc.stdin.write(f"requirepass {password}\n".encode())
    proc.stdin.close()
    server = PrivateRedis(port, password, cert)
    try:
        _wait_ready(server, proc, directory / "redis.log")
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def _wait_ready(server: PrivateRedis, proc: subprocess.Popen[bytes], log: Path) -> None:
    tls = {"ssl": True, "ssl_ca_certs": str(server.cert)} if server.cert else {}
    client = redis.Redis(port=server.port, password=server.password, socket_timeout=2, retry=Retry(NoBackoff(), 0),
                         **tls)  # type: ignore[arg-type]
    deadline = time.monotonic() + 15
    try:
        while True:
            if proc.poll() is not None:
                output = log.read_text(errors="replace")
                if "TLS" in output and server.cert:
                    pytest.skip(f"this redis-server cannot serve TLS: {output[-300:]}")
                raise AssertionError(f"redis-server exited: {output[-2000:]}")
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                pass
            assert time.monotonic() < deadline, f"redis-server not ready: {log.read_text(errors='replace')[-2000:]}"
            time.sleep(0.05)
    finally:
        client.close()


class StoppableRedis:
    """A redis-server without password or TLS, with an append-only file, so a test can stop it and start it again
    (same port, data kept) to see what nanobot does while Redis is gone."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--maxmemory-policy", "noeviction"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self._answers():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the test's redis-server on port {self.port} did not answer in 10 s")
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.2).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # redis-server flushes its append-only file on SIGTERM
            self.proc.wait(10)

    def kill(self) -> None:
        """SIGKILL, as an OOM kill or a crashed node: no flush beyond what its `appendfsync always` already wrote."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@contextmanager
def stoppable_redis_server(directory: Path) -> Iterator[StoppableRedis]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is needed for this test (scripts/redis installs it)")
    server = StoppableRedis(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
