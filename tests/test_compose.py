"""docker-compose.yml and the Dockerfile agree with the code they run.

No Docker engine runs here, so nothing is built or started: instead every NANOBOT_* variable must be a real
config key, every command line must parse with the real CLI (nanobot's typer app, Celery's worker command,
Flower's options), and the image must install everything pyproject.toml packages. Nothing unauthenticated is
published, no secret is on a command line, and Redis's entrypoint and healthcheck run here as written, with
the installed redis-server; so do the gateway's (/ready, against the real GatewayHttp) and the workers'
(`python -m nanobot_celery.probe`).
"""

from __future__ import annotations

import asyncio
import fnmatch
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer.main

from nanobot.cli.commands import app as nanobot_cli
from nanobot.config.loader import _NOT_OVERRIDES, ENV_CONFIG_PATH, ENV_PREFIX, apply_env_overrides, unknown_keys
from nanobot.config.schema import Config
from nanobot.gateway.http import GatewayHttp
from nanobot.testing.processes import free_port

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

# What a user would export before `docker compose up`; the secrets are required, the rest have defaults.
USER_ENV = {
    "NANOBOT_API_KEY": "test-api-key",
    "FLOWER_PASSWORD": "test-flower-password",
    "REDIS_PASSWORD": "test-redis-password",
}
NANOBOT_SERVICES = ("gateway", "worker", "flower")

_VAR = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, `${VAR?error}`, `$$`."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group("name"), m.group("op"), m.group("arg")
        current = env.get(name)
        missing = current is None or (op is not None and op.startswith(":") and current == "")
        if op in (":-", "-"):
            return arg if missing else current
        if op in (":?", "?") and missing:
            raise ValueError(f"{name}: {arg}")
        return current or ""

    return _VAR.sub(sub, value)


def load_compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    return interpolate(yaml.safe_load(COMPOSE.read_text(encoding="utf-8")), USER_ENV if env is None else env)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    services = compose.get("services") or {}
    assert name in services, f"docker-compose.yml has no {name!r} service"
    return services[name]


def command(svc: dict[str, Any]) -> list[str]:
    cmd = svc.get("command")
    assert cmd, "service has no command"
    return shlex.split(cmd) if isinstance(cmd, str) else [str(part) for part in cmd]


def environment(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def overrides(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(ENV_PREFIX) and k not in _NOT_OVERRIDES}


def config_of(svc: dict[str, Any]) -> Config:
    raw: dict[str, Any] = {}
    apply_env_overrides(raw, overrides(environment(svc)))
    return Config.model_validate(raw)


def seconds(duration: str | int) -> float:
    """Compose durations: `90s`, `1m30s`, `1h`."""
    if isinstance(duration, int | float):
        return float(duration)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[u] for n, u in parts)


def bindings(svc: dict[str, Any]) -> list[tuple[str, int]]:
    """(host address, container port) of each port a service publishes; "" for every address of the host."""
    found = []
    for entry in svc.get("ports") or []:
        if isinstance(entry, dict):
            found.append((str(entry.get("host_ip") or ""), int(entry["target"])))
            continue
        spec = str(entry).split("/")[0]
        host = ""
        if spec.startswith("["):  # [::1]:5555:5555
            host, _, spec = spec[1:].partition("]:")
        parts = spec.split(":")
        if len(parts) == 3:
            host = parts[0]
        found.append((host, int(parts[-1])))
    return found


def published(svc: dict[str, Any]) -> set[int]:
    """The container ports a service publishes."""
    return {port for _, port in bindings(svc)}


def option_value(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
    return None


@pytest.fixture
def celery_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """nanobot_celery imported against an empty config file, never ~/.nanobot."""
    config = tmp_path / "config.json"
    config.write_text("{}", encoding="utf-8")
    monkeypatch.setenv(ENV_CONFIG_PATH, str(config))
    import nanobot_celery

    return nanobot_celery


# ---------------------------------------------------------------------------- interpolation and secrets
def test_secrets_are_required_not_defaulted() -> None:
    for missing in USER_ENV:
        env = {k: v for k, v in USER_ENV.items() if k != missing}
        with pytest.raises(ValueError, match=missing):
            load_compose(env)
        with pytest.raises(ValueError, match=missing):
            load_compose({**env, missing: ""})
    text = COMPOSE.read_text(encoding="utf-8")
    for value in USER_ENV.values():
        assert value not in text


def test_nanobot_services_share_one_image(compose: dict[str, Any]) -> None:
    images = {name: service(compose, name).get("image") for name in NANOBOT_SERVICES}
    builds = {name: service(compose, name).get("build") for name in NANOBOT_SERVICES}
    assert len(set(images.values())) == 1 and None not in images.values(), images
    assert all(
        build in (".", "./") or (isinstance(build, dict) and build.get("context") in (".", "./"))
        for build in builds.values()
    ), builds


# ---------------------------------------------------------------------------- env -> config
@pytest.mark.parametrize("name", NANOBOT_SERVICES)
def test_every_nanobot_variable_is_a_config_key(compose: dict[str, Any], name: str) -> None:
    env = environment(service(compose, name))
    variables = overrides(env)
    assert variables, f"{name} sets no NANOBOT_ overrides"
    for var, value in variables.items():
        raw: dict[str, Any] = {}
        apply_env_overrides(raw, {var: value})
        assert unknown_keys(Config, raw) == [], f"{name}: {var} is not a config key"
    config = config_of(service(compose, name))
    assert config.bus.backend == "celery"
    assert env.get(ENV_CONFIG_PATH) == "/data/config.json"


def test_gateway_config(compose: dict[str, Any]) -> None:
    gateway = service(compose, "gateway")
    config = config_of(gateway)
    assert config.bus.backend == "celery"
    assert config.bus.run_embedded_worker is False
    assert config.sessions.backend == "redis"
    api = config.channels.api
    assert api.enabled is True
    assert api.host == "0.0.0.0"
    assert api.api_key == USER_ENV["NANOBOT_API_KEY"]
    assert api.port in published(gateway), f"API port {api.port} not published: {gateway.get('ports')}"
    assert config.agents.defaults.model == "anthropic/claude-opus-4-5"
    assert config.workspace_path.is_relative_to("/data")
    assert urlsplit(config.bus.redis_url).hostname == "redis" and "redis" in compose["services"]


def test_workers_and_gateway_agree(compose: dict[str, Any]) -> None:
    """A turn must see the same bus, sessions, workspace and model on any worker as the gateway expects."""
    gateway, worker, flower = (config_of(service(compose, n)) for n in NANOBOT_SERVICES)
    assert worker.bus == gateway.bus
    assert worker.sessions == gateway.sessions
    assert worker.agents == gateway.agents
    assert worker.providers == gateway.providers
    assert flower.bus.redis_url == gateway.bus.redis_url


def test_optional_values_default_sensibly() -> None:
    compose = load_compose({**USER_ENV, "NANOBOT_MODEL": "openai/gpt-4o", "OPENROUTER_API_KEY": "sk-or-x"})
    config = config_of(service(compose, "gateway"))
    assert config.agents.defaults.model == "openai/gpt-4o"
    assert config.providers.openrouter.api_key == "sk-or-x"


# ---------------------------------------------------------------------------- commands
def test_gateway_command_parses(compose: dict[str, Any]) -> None:
    argv = command(service(compose, "gateway"))
    assert argv[0] == "nanobot", argv
    assert "nanobot" in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    group = typer.main.get_command(nanobot_cli)
    sub = group.commands[argv[1]]
    ctx = sub.make_context(argv[1], argv[2:])
    assert ctx.params["bus"] == "celery"
    assert ctx.params["embedded_worker"] is False


def test_worker_command(compose: dict[str, Any], celery_app: Any) -> None:
    worker = service(compose, "worker")
    argv = command(worker)
    assert argv[:4] == ["celery", "-A", "nanobot_celery", "worker"], argv
    assert "--pool=threads" in argv and "--concurrency=100" in argv
    assert hasattr(celery_app, "app")

    from celery.bin.worker import worker as celery_worker

    opts = {opt for param in celery_worker.params for opt in param.opts}
    assert {"--pool", "--concurrency", "--without-gossip", "--without-mingle", "--loglevel"} <= opts
    ctx = celery_worker.make_context("worker", argv[4:], obj=SimpleNamespace(app=celery_app.app))
    # The I/O-bound mode: many turns per process on one shared event loop (nanobot_celery/runtime.py).
    assert ctx.params["pool"].__module__.endswith("thread"), ctx.params["pool"]
    assert ctx.params["concurrency"] == 100 and ctx.params["autoscale"] is None
    assert ctx.params["without_gossip"] and ctx.params["without_mingle"]
    assert ctx.params["queues"] is None, "without -Q a worker consumes every turn queue"

    # The same fixed flags `nanobot worker` uses.
    from nanobot_celery.worker import worker_argv

    fixed = [a for a in worker_argv(config_of(worker)) if a.startswith("--without")]
    assert fixed and set(fixed) <= set(argv), fixed

    replicas = (worker.get("deploy") or {}).get("replicas")
    assert isinstance(replicas, int) and replicas >= 1
    assert "container_name" not in worker, "a container_name forbids --scale"

    import celeryconfig

    grace = seconds(worker.get("stop_grace_period", "10s"))
    assert grace > celeryconfig.worker_soft_shutdown_timeout, "Docker would SIGKILL during the soft shutdown"


# ---------------------------------------------------------------------------- healthchecks
def healthcheck_argv(svc: dict[str, Any]) -> list[str]:
    test = (svc.get("healthcheck") or {}).get("test")
    assert isinstance(test, list) and test[0] == "CMD", f"healthcheck must be exec form: {test!r}"
    return [str(part) for part in test[1:]]


async def run_healthcheck(argv: list[str], env: dict[str, str] | None = None) -> int:
    """Run a healthcheck here (`python` = this interpreter), in the event loop that serves its target."""
    if argv[0] == "python":
        argv = [sys.executable, *argv[1:]]
    proc = await asyncio.create_subprocess_exec(*argv, env=env, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL)
    try:
        return await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_gateway_healthcheck_is_readiness(compose: dict[str, Any]) -> None:
    """The gateway's healthcheck GETs /ready on gateway.port: it passes on 200 and fails on the 503 a gateway
    answers when Redis, the outbound reader or a channel is down (run here against the real GatewayHttp)."""
    gateway = service(compose, "gateway")
    config = config_of(gateway)
    argv = healthcheck_argv(gateway)
    url = f"http://127.0.0.1:{config.gateway.port}/ready"
    assert argv[:2] == ["python", "-c"] and url in argv[2], argv
    assert config.gateway.host == "0.0.0.0", "reachable by a Prometheus inside the compose network"
    assert config.gateway.port not in published(gateway), "/metrics and /ready are not published"

    async def scenario() -> tuple[int, int, int]:
        reasons: list[str] = []

        async def ready() -> list[str]:
            return list(reasons)

        server = GatewayHttp("127.0.0.1", 0, ready=ready)
        await server.start()
        try:
            here = [argv[0], argv[1], argv[2].replace(f":{config.gateway.port}/", f":{server.port}/")]
            healthy = await run_healthcheck(here)
            reasons.append("redis: unreachable")
            unready = await run_healthcheck(here)
        finally:
            await server.stop()
        gone = await run_healthcheck(here)
        return healthy, unready, gone

    healthy, unready, gone = asyncio.run(scenario())
    assert healthy == 0 and unready != 0 and gone != 0


def test_worker_healthcheck_is_the_probe(compose: dict[str, Any], tmp_path: Path) -> None:
    """The workers' healthcheck is `python -m nanobot_celery.probe`, which reads the metrics port from the config
    (the service's environment); their /health and /metrics listen on the compose network, not on the host."""
    worker = service(compose, "worker")
    argv = healthcheck_argv(worker)
    assert argv == ["python", "-m", "nanobot_celery.probe"], argv
    config = config_of(worker)
    assert config.bus.worker.metrics_port and config.bus.worker.metrics_host == "0.0.0.0"
    assert config.bus.worker.metrics_port not in published(worker)
    assert seconds(worker["healthcheck"]["start_period"]) >= 10, "give the worker time to connect first"

    # With the worker's variables (its metrics port moved to a free one here): no worker listening -> unhealthy.
    port = free_port()
    config_file = tmp_path / "config.json"
    config_file.write_text("{}", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(overrides(environment(worker)))
    env.update({ENV_CONFIG_PATH: str(config_file), "NANOBOT_BUS__WORKER__METRICS_PORT": str(port)})
    assert asyncio.run(run_healthcheck(argv, env)) == 1


def test_flower_command(compose: dict[str, Any]) -> None:
    flower_svc = service(compose, "flower")
    argv = command(flower_svc)
    assert argv[:4] == ["celery", "-A", "nanobot_celery", "flower"], argv
    assert option_value(argv, "--basic-auth") is None, "a password on the command line shows in `ps`"
    port = int(option_value(argv, "--port") or 5555)
    assert port == 5555 and port in published(flower_svc)

    import flower  # noqa: F401  (installed by the celery extra)
    from flower.options import options

    defined = set(options._options)
    for arg in argv[4:]:
        assert arg.startswith("--") and arg[2:].split("=", 1)[0] in defined, f"not a Flower option: {arg}"
    env = environment(flower_svc)
    assert env.get("NANOBOT_BUS__REDIS_URL") == f"redis://:{USER_ENV['REDIS_PASSWORD']}@redis:6379/0"


def test_flower_auth_comes_from_its_environment(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """FLOWER_BASIC_AUTH, applied by Flower's own start-up code, turns basic auth on with the compose password."""
    from flower.command import apply_env_options
    from flower.options import options

    auth = environment(service(compose, "flower")).get("FLOWER_BASIC_AUTH")
    assert auth == f"admin:{USER_ENV['FLOWER_PASSWORD']}", "Flower must not be open without auth"
    for name in [n for n in os.environ if n.startswith("FLOWER_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("FLOWER_BASIC_AUTH", auth)
    before = options.basic_auth
    try:
        apply_env_options()
        assert options.basic_auth == [auth]
    finally:
        options.basic_auth = before


def test_redis(compose: dict[str, Any]) -> None:
    redis = service(compose, "redis")
    assert str(redis.get("image", "")).startswith("redis:7")
    argv = command(redis)
    pairs = set(itertools.pairwise(argv))
    assert ("--appendonly", "yes") in pairs, argv
    assert ("--maxmemory-policy", "noeviction") in pairs, argv
    test = (redis.get("healthcheck") or {}).get("test")
    joined = " ".join(test) if isinstance(test, list) else str(test)
    assert "redis-cli" in joined and "ping" in joined
    volumes = [str(v).split(":")[0] for v in redis.get("volumes") or []]
    assert any(v in (compose.get("volumes") or {}) for v in volumes), "Redis data must be on a named volume"
    for name in ("gateway", "worker"):
        depends = service(compose, name).get("depends_on") or {}
        assert isinstance(depends, dict) and depends.get("redis", {}).get("condition") == "service_healthy", name


def test_data_volume_is_shared(compose: dict[str, Any]) -> None:
    named = compose.get("volumes") or {}
    mounts = {}
    for name in ("gateway", "worker"):
        found = [str(v).split(":") for v in service(compose, name).get("volumes") or []]
        data = [parts[0] for parts in found if len(parts) >= 2 and parts[1] == "/data"]
        assert len(data) == 1 and data[0] in named, f"{name}: /data must be a named volume"
        mounts[name] = data[0]
    assert mounts["gateway"] == mounts["worker"]


# ---------------------------------------------------------------------------- exposure and secrets
def test_only_authenticated_ports_are_published(compose: dict[str, Any]) -> None:
    """The gateway's API (every request needs a key; /health says only whether it is up) on any address;
    Flower (basic auth) on the host's loopback only; nothing else, and no service on the host's network."""
    api_port = config_of(service(compose, "gateway")).channels.api.port
    allowed = {("gateway", api_port), ("flower", 5555)}
    for name, svc in compose["services"].items():
        assert svc.get("network_mode") != "host", f"{name} would expose every port it opens"
        for host, port in bindings(svc):
            assert (name, port) in allowed, f"{name} publishes {port} ({host or 'every address'})"
            if name == "flower":
                assert host == "127.0.0.1", f"Flower must be bound to the host's loopback, not {host or 'all'}"
    assert api_port in published(service(compose, "gateway"))
    assert published(service(compose, "flower")) == {5555}


def command_lines(svc: dict[str, Any]) -> list[str]:
    """What `ps` can show of a service: its entrypoint, command and healthcheck."""
    found = []
    for part in (svc.get("entrypoint"), svc.get("command"), (svc.get("healthcheck") or {}).get("test")):
        if part:
            found.append(part if isinstance(part, str) else " ".join(str(p) for p in part))
    return found


def test_no_secret_on_a_command_line() -> None:
    env = {**USER_ENV, "OPENROUTER_API_KEY": "sk-or-test-secret-key"}
    compose = load_compose(env)
    secrets = [v for k, v in env.items() if re.search(r"KEY|PASSWORD", k)]
    for name, svc in compose["services"].items():
        for line in command_lines(svc):
            for secret in secrets:
                assert secret not in line, f"{name}: a secret is on a command line: {line!r}"


def test_redis_requires_the_password(compose: dict[str, Any]) -> None:
    """Redis reads REDIS_PASSWORD from a compose secret; the nanobot services use the same password."""
    redis = service(compose, "redis")
    assert "redis_password" in [s if isinstance(s, str) else s.get("source") for s in redis.get("secrets") or []]
    assert (compose.get("secrets") or {}).get("redis_password") == {"environment": "REDIS_PASSWORD"}
    script = " ".join(command_lines(redis))
    assert "requirepass" in script and "/run/secrets/redis_password" in script
    test = " ".join(command_lines({"healthcheck": redis["healthcheck"]}))
    assert "REDISCLI_AUTH=" in test and " -a " not in test
    for name in NANOBOT_SERVICES:
        url = environment(service(compose, name))["NANOBOT_BUS__REDIS_URL"]
        assert urlsplit(url).password == USER_ENV["REDIS_PASSWORD"], name


@pytest.fixture
def redis_entrypoint(compose: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """Compose's redis entrypoint and healthcheck, to run here with the real redis-server: the image's
    docker-entrypoint.sh (which drops to the redis user) stood in for by one that execs its arguments."""
    if not (shutil.which("redis-server") and shutil.which("redis-cli")):
        pytest.skip("redis-server and redis-cli are not installed")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "docker-entrypoint.sh").write_text('#!/bin/sh\nexec "$@"\n')
    (bindir / "docker-entrypoint.sh").chmod(0o755)
    secret = tmp_path / "redis_password"
    secret.write_text(USER_ENV["REDIS_PASSWORD"])
    redis = service(compose, "redis")
    port = free_port()
    argv = [*redis["entrypoint"], *command(redis), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)]
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "REDIS_PASSWORD_FILE": str(secret)}
    test = redis["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    # The container's redis-cli reaches the default port; this one, the test's.
    healthcheck = ["sh", "-c", test[1].replace("redis-cli", f"redis-cli -p {port}")]
    return {"argv": argv, "env": env, "port": port, "secret": secret, "healthcheck": healthcheck}


def test_redis_entrypoint_starts_redis_with_the_password_off_its_command_line(redis_entrypoint: dict[str, Any]) -> None:
    import redis as redis_py
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    r = redis_entrypoint
    proc = subprocess.Popen(r["argv"], env=r["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def connect(password: str | None) -> redis_py.Redis:  # no retries: redis-py 8 retries refusals with backoff
            return redis_py.Redis(port=r["port"], password=password, socket_timeout=2, retry=Retry(NoBackoff(), 0))

        client = connect(USER_ENV["REDIS_PASSWORD"])
        deadline = time.monotonic() + 10
        while True:
            try:
                assert client.ping()
                break
            except redis_py.ConnectionError:
                assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
                assert time.monotonic() < deadline, "redis did not start"
                time.sleep(0.05)
        with pytest.raises(redis_py.AuthenticationError):
            connect(None).ping()
        with pytest.raises(redis_py.AuthenticationError):
            connect("wrong").ping()
        # exec all the way: the process started is redis-server, and the password is on no command line.
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert b"redis-server" in cmdline and USER_ENV["REDIS_PASSWORD"].encode() not in cmdline
        assert subprocess.run(r["healthcheck"], env=r["env"], timeout=10).returncode == 0
        r["secret"].write_text("wrong")
        assert subprocess.run(r["healthcheck"], env=r["env"], timeout=10).returncode != 0
        client.close()
    finally:
        proc.terminate()
        proc.wait(10)


def test_redis_entrypoint_refuses_a_password_unfit_for_a_url(redis_entrypoint: dict[str, Any]) -> None:
    r = redis_entrypoint
    for bad in ("", "has space", "a/b@c"):
        r["secret"].write_text(bad)
        done = subprocess.run(r["argv"], env=r["env"], capture_output=True, text=True, timeout=10)
        assert done.returncode == 2 and "REDIS_PASSWORD" in done.stderr, (bad, done.stderr)


# ---------------------------------------------------------------------------- Dockerfile
def dockerfile_instructions() -> list[tuple[str, str]]:
    lines: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    result = []
    for line in lines:
        instruction, _, args = line.partition(" ")
        result.append((instruction.upper(), args.strip()))
    return result


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, args in dockerfile_instructions():
        if instruction == "ENV":
            for token in shlex.split(args):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def exec_form(args: str) -> list[str]:
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def test_dockerfile_installs_the_project() -> None:
    steps = dockerfile_instructions()
    assert steps[0] == ("FROM", "python:3.11-slim"), steps[0]
    install = re.compile(r"pip install ['\"]?\.\[celery\]")
    runs = [i for i, (ins, args) in enumerate(steps) if ins == "RUN" and install.search(args)]
    assert runs, 'the image must `pip install ".[celery]"`'
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "celery" in pyproject["project"]["optional-dependencies"]

    copied: set[str] = set()
    for ins, args in steps[: runs[0]]:
        if ins == "COPY":
            sources = [s for s in exec_form(args)[:-1] if not s.startswith("--")]
            copied.update(s.rstrip("/").removeprefix("./") for s in sources)
    setuptools = pyproject["tool"]["setuptools"]
    needed = {f"{m}.py" for m in setuptools.get("py-modules", [])}
    patterns = setuptools["packages"]["find"]["include"]
    needed |= {
        d.name
        for d in ROOT.iterdir()
        if d.is_dir() and (d / "__init__.py").exists() and any(fnmatch.fnmatch(d.name, p) for p in patterns)
    }
    needed |= {"pyproject.toml", pyproject["project"]["readme"]}
    assert {"nanobot", "nanobot_celery", "celeryconfig.py"} <= needed
    assert needed <= copied, f"not copied before pip install: {sorted(needed - copied)}"


def test_dockerfile_runtime(compose: dict[str, Any]) -> None:
    steps = dockerfile_instructions()
    env = dockerfile_env()
    assert env.get(ENV_CONFIG_PATH) == "/data/config.json"
    assert env.get(ENV_CONFIG_PATH) == environment(service(compose, "gateway")).get(ENV_CONFIG_PATH)
    raw: dict[str, Any] = {}
    apply_env_overrides(raw, overrides(env))
    assert unknown_keys(Config, raw) == []
    assert Config.model_validate(raw).workspace_path.is_relative_to("/data")

    users = [args for ins, args in steps if ins == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must run as a non-root user"
    volumes = [exec_form(args) for ins, args in steps if ins == "VOLUME"]
    assert ["/data"] in volumes
    exposed = {p.split("/")[0] for ins, args in steps if ins == "EXPOSE" for p in args.split()}
    assert {"8900", "5555"} <= exposed
    cmds = [exec_form(args) for ins, args in steps if ins == "CMD"]
    assert cmds and cmds[-1] == ["nanobot", "gateway"]


def test_no_secrets_in_the_image() -> None:
    secret = re.compile(r"KEY|TOKEN|PASSWORD|SECRET", re.IGNORECASE)
    for key, value in dockerfile_env().items():
        assert not (secret.search(key) and value), f"secret baked into the image: {key}"
    for ins, args in dockerfile_instructions():
        if ins == "ARG":
            assert not secret.search(args), f"build arg for a secret: {args}"


def test_dockerfile_installs_bubblewrap() -> None:
    """The exec tool's sandbox, from Debian, without recommends and without leaving the package lists."""
    runs = [args for ins, args in dockerfile_instructions() if ins == "RUN" and "bubblewrap" in args]
    assert runs, "the image must install bubblewrap"
    install = runs[0]
    assert re.search(r"apt-get install -y --no-install-recommends bubblewrap\b", install), install
    assert "apt-get update" in install and "rm -rf /var/lib/apt/lists/*" in install, install
    users = [i for i, (ins, _) in enumerate(dockerfile_instructions()) if ins == "USER"]
    installed = next(i for i, (ins, args) in enumerate(dockerfile_instructions()) if args == install)
    assert installed < users[-1], "apt-get needs root: install before USER"
