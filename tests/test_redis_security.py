"""Redis with a password and over TLS: URLs never shown with their secrets, rediss:// verified by default.

Real parts: a redis-server of the test's own (password, TLS with a self-signed certificate), our Redis clients,
a Celery app configured by `settings_from`, and `nanobot status`, gateway, worker and Flower as processes.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from celery import Celery
from kombu.exceptions import OperationalError

import celeryconfig
from nanobot.cli.commands import _redis_location
from nanobot.config import Config
from nanobot.session.factory import sync_redis
from nanobot.testing.processes import Process, free_port, nanobot, wait_http_ok, wait_until
from nanobot_celery import preflight
from nanobot_celery.bus import CeleryMessageBus
from nanobot_celery.redis_url import UNPARSEABLE, redact, tls_options
from nanobot_celery.worker import worker_argv
from tests.private_redis import PrivateRedis, private_redis

SECRET = "s3cr3t-Pa55word"

INVALID = "(not a valid Redis URL; URL-encode special characters in its password)"
# (a URL holding the secret, what redact() shows in logs, what `nanobot status` shows)
URLS = [
    (f"redis://:{SECRET}@redis:6379/0", "redis://:**@redis:6379/0", "redis://redis:6379/0"),
    (f"redis://nanobot:{SECRET}@redis:6379/0", "redis://nanobot:**@redis:6379/0", "redis://redis:6379/0"),
    (f"redis://redis:6379/0?password={SECRET}", "redis://redis:6379/0", "redis://redis:6379/0"),
    (f"rediss://:{SECRET}@redis:6380/0?ssl_cert_reqs=required", "rediss://:**@redis:6380/0", "rediss://redis:6380/0"),
    (f"rediss://redis:6380/1?ssl_ca_certs=/c/ca.crt&password={SECRET}", "rediss://redis:6380/1", "rediss://redis:6380/1"),
    (f"unix:///run/redis.sock?password={SECRET}", "unix:///run/redis.sock", "unix:///run/redis.sock"),
    (f"redis://:{SECRET}@h1:6379/0;redis://:{SECRET}@h2:6379/0", "redis://:**@h1:6379/0;redis://:**@h2:6379/0",
     INVALID),
    # A password with an unencoded / ? or #: the URL splits inside it, and pieces of it would show.
    ("redis://:1234/s3cr3t@redis:6379/0", UNPARSEABLE, INVALID),
    ("redis://:1234?s3cr3t@redis:6379/0", UNPARSEABLE, INVALID),
    ("redis://:1234#s3cr3t@redis:6379/0", UNPARSEABLE, INVALID),
    (f"redis://:{SECRET}@redis:port/0", UNPARSEABLE, INVALID),
    (f"{SECRET}@redis:6379", UNPARSEABLE, INVALID),
]


# ---------------------------------------------------------------------------- redaction
@pytest.mark.parametrize(("url", "logged", "location"), URLS)
def test_redact_hides_every_form_of_password(url: str, logged: str, location: str) -> None:
    assert redact(url) == logged
    for piece in (SECRET, "s3cr3t", "1234"):
        assert piece not in redact(url)


@pytest.mark.parametrize(("url", "logged", "location"), URLS)
def test_the_cli_shows_where_redis_is_never_who(url: str, logged: str, location: str) -> None:
    assert _redis_location(url) == location


def test_redact_leaves_urls_without_secrets_alone() -> None:
    for url in ("redis://redis:6379/0", "rediss://localhost:6380/2", "redis://user@redis/0"):
        assert redact(url) == url


# ---------------------------------------------------------------------------- TLS options
def test_tls_options_verify_certificates_by_default() -> None:
    assert tls_options("redis://redis:6379/0") is None
    assert tls_options("rediss://redis:6380/0") == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert tls_options("rediss://redis:6380/0?ssl_cert_reqs=none") == {"ssl_cert_reqs": ssl.CERT_NONE}
    assert tls_options("rediss://h/0?ssl_ca_certs=/c/ca.crt&ssl_check_hostname=false&health_check_interval=5") == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/c/ca.crt", "ssl_check_hostname": False,
    }
    # Anything else is left for redis-py to refuse (test_a_bad_tls_option_fails_the_start_up_check_in_one_line).
    assert tls_options("rediss://redis:6380/0?ssl_cert_reqs=CERT_NONE") == {"ssl_cert_reqs": "CERT_NONE"}


def bus_config(url: str, **bus: Any) -> Config:
    return Config.model_validate({"bus": {"backend": "celery", "redisUrl": url, "keyPrefix": "nbtls", **bus}})


def test_settings_from_passes_tls_options_for_rediss_only() -> None:
    tls = celeryconfig.settings_from(bus_config("rediss://redis:6380/0?ssl_ca_certs=/c/ca.crt"))
    expected = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/c/ca.crt"}
    assert tls["broker_use_ssl"] == expected and tls["redis_backend_use_ssl"] == expected
    plain = celeryconfig.settings_from(bus_config("redis://redis:6379/0"))
    assert plain["broker_use_ssl"] is False and plain["redis_backend_use_ssl"] is None


# ---------------------------------------------------------------------------- rediss:// against a real server
@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    with private_redis(tmp_path_factory.mktemp("tls-redis"), SECRET, tls=True) as server:
        yield server


def celery_app(config: Config) -> Celery:
    app = Celery("tls-test", set_as_current=False)
    app.conf.update(celeryconfig.settings_from(config))
    return app


def broker_round_trip(config: Config) -> Any:
    """Connect as Celery would, and put and get one message through the broker."""
    with celery_app(config).connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.1)
        with conn.SimpleQueue("nanobot-tls-test") as queue:
            queue.put({"over": "tls"})
            message = queue.get(timeout=5)
            message.ack()
            queue.clear()
            return message.payload


def test_rediss_with_the_ca_works_for_our_clients_and_celery(tls_redis: PrivateRedis) -> None:
    url = tls_redis.url(f"ssl_ca_certs={tls_redis.cert}", host="localhost")
    config = bus_config(url)
    preflight.check_redis(url)
    client = sync_redis(config)
    try:
        assert client.ping() and client.connection_pool.connection_class is redis.SSLConnection
    finally:
        client.close()

    async def async_ping() -> bool:
        bus = CeleryMessageBus(config)
        try:
            return bool(await bus.redis.ping())
        finally:
            await bus.close()

    assert asyncio.run(async_ping())
    assert broker_round_trip(config) == {"over": "tls"}


def test_rediss_verifies_the_certificate_by_default(tls_redis: PrivateRedis) -> None:
    """The test's CA is not trusted by the system: without `ssl_ca_certs`, connecting must fail."""
    url = tls_redis.url(host="localhost")
    with pytest.raises(preflight.RedisUnreachable, match="certificate verify failed") as failed:
        preflight.check_redis(url, timeout_s=2)
    assert SECRET not in str(failed.value) and "rediss://:**@localhost" in str(failed.value)
    with pytest.raises(OperationalError):
        broker_round_trip(bus_config(url))


def test_rediss_with_ssl_cert_reqs_none_skips_verification(tls_redis: PrivateRedis) -> None:
    url = tls_redis.url("ssl_cert_reqs=none")
    preflight.check_redis(url)
    assert broker_round_trip(bus_config(url)) == {"over": "tls"}


def test_a_bad_tls_option_fails_the_start_up_check_in_one_line(tls_redis: PrivateRedis) -> None:
    with pytest.raises(preflight.RedisUnreachable, match="Invalid SSL Certificate Requirements Flag: bogus") as failed:
        preflight.check_redis(tls_redis.url("ssl_cert_reqs=bogus"))
    assert SECRET not in str(failed.value)


# ---------------------------------------------------------------------------- what processes print
def write_config(directory: Path, url: str, **extra: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "agents": {"defaults": {"workspace": str(directory / "workspace"), "model": "m", "provider": "custom"}},
        "providers": {"custom": {"apiKey": "provider-key-not-used", "apiBase": "http://127.0.0.1:9/v1"}},
        "gateway": {"heartbeat": {"enabled": False}, "port": free_port()},
        "bus": {"backend": "celery", "redisUrl": url, "keyPrefix": "nbsecret", "shards": 2,
                "runEmbeddedWorker": False, "worker": {"pool": "solo", "autoscale": None}},
        **extra,
    }
    path = directory / "config.json"
    path.write_text(json.dumps(config))
    return path


def run_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"NANOBOT_CONFIG": str(config), "NANOBOT_LOG_LEVEL": "INFO", "PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    return subprocess.run(nanobot(*args), env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("url", "location"),
    [
        (f"redis://:{SECRET}@127.0.0.1:6399/3", "redis://127.0.0.1:6399/3"),
        (f"redis://nanobot:{SECRET}@127.0.0.1:6399/3", "redis://127.0.0.1:6399/3"),
        (f"redis://127.0.0.1:6399/3?password={SECRET}", "redis://127.0.0.1:6399/3"),
        (f"rediss://:{SECRET}@redis.example:6380/0?ssl_ca_certs=/c/ca.crt", "rediss://redis.example:6380/0"),
    ],
)
def test_nanobot_status_shows_redis_without_the_password(tmp_path: Path, url: str, location: str) -> None:
    done = run_cli(write_config(tmp_path, url), "status")
    assert done.returncode == 0, done.stderr
    assert f"redis:     {location}" in done.stdout
    assert SECRET not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"redis://:{SECRET}@127.0.0.1:{{port}}/0", "cannot reach Redis at redis://:**@127.0.0.1:{port}/0"),
        (f"redis://127.0.0.1:{{port}}/0?password={SECRET}", "cannot reach Redis at redis://127.0.0.1:{port}/0"),
        ("redis://:1234/s3cr3t@127.0.0.1:{port}/0", f"not a valid Redis URL ({UNPARSEABLE})"),
    ],
)
def test_a_gateway_that_cannot_reach_redis_says_so_without_the_password(tmp_path: Path, url: str, shown: str) -> None:
    port = free_port()  # nothing listens there
    done = run_cli(write_config(tmp_path, url.format(port=port)), "gateway")
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert shown.format(port=port) in " ".join(output.split()), output
    for piece in (SECRET, "s3cr3t", "1234"):
        assert piece not in output


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    with private_redis(tmp_path / "redis", SECRET) as server:
        yield server


def test_gateway_worker_and_flower_logs_never_show_the_password(tmp_path: Path, password_redis: PrivateRedis) -> None:
    """The three long-running processes, started as in production against a Redis that needs the password:
    they work, their start-up logs name Redis without the password, and Flower's auth (from its environment)
    is on."""
    url = password_redis.url()
    path = write_config(tmp_path, url)
    config = json.loads(path.read_text())
    env = {"NANOBOT_CONFIG": str(path), "NANOBOT_LOG_LEVEL": "INFO"}
    flower_port = free_port()
    flower_env = {**env, "FLOWER_BASIC_AUTH": f"admin:{SECRET}-flower"}
    processes = [
        Process(nanobot("gateway"), tmp_path / "gateway.log", env=env),
        Process(worker_argv(Config.model_validate(config), name="secret-worker@%h"), tmp_path / "worker.log",
                env=env),
        Process([*worker_argv(Config.model_validate(config))[:5], "flower", f"--port={flower_port}",
                 "--address=127.0.0.1"], tmp_path / "flower.log", env=flower_env),
    ]
    gateway, worker, flower = processes
    try:
        wait_http_ok(f"http://127.0.0.1:{config['gateway']['port']}/health", 60, gateway)
        wait_until(lambda: " ready." in worker.log(), 60, "worker ready", worker)
        base = f"http://127.0.0.1:{flower_port}"
        wait_until(lambda: httpx.get(f"{base}/healthcheck", timeout=1).status_code == 200, 60, "flower", flower)
        assert httpx.get(f"{base}/api/workers", timeout=5).status_code == 401
        assert httpx.get(f"{base}/api/workers", auth=("admin", f"{SECRET}-flower"), timeout=5).status_code == 200
        wait_until(lambda: "Broker:" in flower.log(), 30, "flower's banner", flower)
    finally:
        for proc in processes:
            proc.stop()
    redacted = f"redis://:**@127.0.0.1:{password_redis.port}/0"
    assert redacted in worker.log() and redacted in flower.log()  # Celery and Flower name their broker
    for proc in processes:
        assert SECRET not in proc.log(), proc.log_path.name
