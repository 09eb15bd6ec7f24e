"""The `nanobot` command line, run as a real process."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from nanobot.testing.llm_server import FakeLLM
from nanobot.testing.processes import nanobot
from tests.conftest import write_config


def run(config: Path, *args: str, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NANOBOT_CONFIG": str(config), "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(nanobot(*args), env=env, capture_output=True, text=True, timeout=60, input=input_text)


def test_onboard_creates_config_and_workspace(tmp_path: Path) -> None:
    config = tmp_path / "home" / "config.json"
    first = run(config, "onboard")
    assert first.returncode == 0, first.stderr
    data = json.loads(config.read_text())
    assert data["agents"]["defaults"]["maxTokens"] == 8192 and data["bus"]["backend"] == "local"
    data["agents"]["defaults"]["workspace"] = str(tmp_path / "ws")
    data["agents"]["defaults"]["model"] = "kept-model"
    config.write_text(json.dumps(data))
    again = run(config, "onboard")
    assert again.returncode == 0 and "updated" in again.stdout
    assert json.loads(config.read_text())["agents"]["defaults"]["model"] == "kept-model"
    for name in ("AGENTS.md", "SOUL.md", "USER.md", "TOOLS.md", "HEARTBEAT.md", "memory/MEMORY.md"):
        assert (tmp_path / "ws" / name).is_file(), name


def test_agent_one_message_and_session_flag(tmp_path: Path, fake_llm: FakeLLM) -> None:
    config = write_config(tmp_path, fake_llm.base_url)
    result = run(config, "agent", "-m", "hello cli", "--no-markdown")
    assert result.returncode == 0, result.stderr
    assert "echo: hello cli" in result.stdout
    result = run(config, "agent", "-m", "in my session", "-s", "cli:work", "--no-markdown")
    assert "echo: in my session" in result.stdout
    sessions = tmp_path / "workspace" / "sessions"
    assert "in my session" in (sessions / "cli_work.jsonl").read_text()
    assert "in my session" not in (sessions / "cli_direct.jsonl").read_text()


def test_agent_interactive(tmp_path: Path, fake_llm: FakeLLM) -> None:
    config = write_config(tmp_path, fake_llm.base_url)
    result = run(config, "agent", "--no-markdown", input_text="first line\nsecond line\nexit\n")
    assert result.returncode == 0, result.stderr
    assert "echo: first line" in result.stdout and "echo: second line" in result.stdout
    assert "Goodbye" in result.stdout


def test_status_and_channels_status(tmp_path: Path, fake_llm: FakeLLM) -> None:
    config = write_config(tmp_path, fake_llm.base_url, channels={"api": {"enabled": True, "port": 9999}})
    status = run(config, "status")
    assert status.returncode == 0
    assert "provider:  custom" in status.stdout and "test-model" in status.stdout
    channels = run(config, "channels", "status")
    assert channels.returncode == 0 and "9999" in channels.stdout


def test_cron_commands(tmp_path: Path, fake_llm: FakeLLM) -> None:
    config = write_config(tmp_path, fake_llm.base_url)
    added = run(
        config, "cron", "add", "-n", "daily", "-m", "summarise my day", "--cron", "0 9 * * *", "--tz", "Europe/Madrid"
    )
    assert added.returncode == 0, added.stderr
    job_id = added.stdout.split("(")[-1].split(")")[0]
    listed = run(config, "cron", "list")
    assert job_id in listed.stdout and "Europe/Madrid" in listed.stdout
    assert run(config, "cron", "enable", job_id, "--disable").returncode == 0
    assert job_id not in run(config, "cron", "list").stdout
    assert job_id in run(config, "cron", "list", "--all").stdout
    assert run(config, "cron", "run", job_id).returncode != 0  # disabled
    ran = run(config, "cron", "run", job_id, "--force")
    assert ran.returncode == 0, ran.stderr
    assert "echo: summarise my day" in ran.stdout
    assert (tmp_path / "workspace" / "sessions" / f"cron_{job_id}.jsonl").exists()
    assert run(config, "cron", "remove", job_id).returncode == 0
    assert run(config, "cron", "remove", job_id).returncode != 0
    bad = run(config, "cron", "add", "-n", "x", "-m", "y", "--cron", "not a cron")
    assert bad.returncode == 2 and "cron" in bad.stderr.lower()
    both = run(config, "cron", "add", "-n", "x", "-m", "y", "--every", "5", "--at", "2030-01-01T00:00:00")
    assert both.returncode == 2 and "exactly one" in both.stderr


def test_malformed_config_exits_with_the_key(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"channels": {"api": {"port": "eighty"}}}))
    result = run(config, "status")
    assert result.returncode == 2
    assert "channels.api.port" in result.stderr


def test_gateway_without_provider_fails_clearly(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"agents": {"defaults": {"workspace": str(tmp_path / "ws")}}}))
    result = run(config, "gateway")
    assert result.returncode == 1 and "apiKey" in result.stderr


def test_celery_mode_without_redis_fails_in_one_line(tmp_path: Path, fake_llm: FakeLLM) -> None:
    config = write_config(tmp_path, fake_llm.base_url, bus={"redisUrl": "redis://:secret@127.0.0.1:1/0"})
    for args in (("gateway", "--bus", "celery"), ("worker",), ("sessions", "export")):
        result = run(config, *args)
        assert result.returncode == 1, args
        assert "cannot reach Redis at redis://:**@127.0.0.1:1/0" in result.stderr  # kombu's mask, as Celery logs
        assert "secret" not in result.stderr + result.stdout


def test_gateway_whose_http_port_is_taken_fails_clearly(tmp_path: Path, fake_llm: FakeLLM) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, fake_llm.base_url, gateway={"heartbeat": {"enabled": False}, "port": port})
        result = run(config, "gateway")
    assert result.returncode == 1
    assert f"cannot listen on gateway.host:gateway.port = 127.0.0.1:{port}" in result.stderr


def test_channels_status_and_whatsapp_login(tmp_path: Path, fake_llm: FakeLLM) -> None:
    cloud = {"phoneNumberId": "1002003", "accessToken": "EAAG-secret", "appSecret": "s", "verifyToken": "v"}
    config = write_config(tmp_path, fake_llm.base_url, channels={
        "telegram": {"enabled": True, "token": "123:secret-token", "mode": "webhook",
                     "webhookUrl": "https://bot.example.com/telegram"},
        "whatsapp": {"enabled": True, "cloud": cloud},
    })
    status = run(config, "channels", "status")
    assert status.returncode == 0, status.stderr
    assert "webhook https://bot.example.com/telegram token set" in status.stdout
    assert "cloud: phone number 1002003" in status.stdout and "gateway not running" in status.stdout
    assert "secret" not in status.stdout
    login = run(config, "channels", "login", "whatsapp")
    assert login.returncode == 0 and "Cloud API" in login.stdout and "/whatsapp" in login.stdout
    assert "EAAG-secret" not in login.stdout
    bridge = write_config(tmp_path / "bridge", fake_llm.base_url, channels={"whatsapp": {"enabled": True}})
    assert "QR code" in run(bridge, "channels", "login", "whatsapp").stdout
    assert run(config, "channels", "login", "telegram").returncode == 2
