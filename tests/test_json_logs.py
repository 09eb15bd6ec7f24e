"""Structured logs: the JSON and text formatters, and one turn of a real distributed cluster (gateway and
prefork worker processes, real Redis, the fake LLM) logged as JSON lines that carry the turn's session key
and message id, tool and provider lines included."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from nanobot.logs import (
    JsonFormatter,
    StderrHandler,
    TextFormatter,
    chosen_format,
    chosen_level,
    iso_utc,
    log_context,
    set_default_log_fields,
    setup_logging,
)
from nanobot.testing.llm_server import FakeLLM, Rule
from nanobot.testing.processes import Process, nanobot, wait_http_ok, wait_until
from nanobot_celery.worker import worker_argv
from tests.cluster import Cluster
from tests.conftest import write_config

SECRET_TEXT = "zebra-quartz-7731"


# ---------------------------------------------------------------------------- formatter units
def _record(msg: str, *args: Any, level: int = logging.INFO, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("bad välue")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("nanobot.test", level, __file__, 1, msg, args, exc_info)


def test_json_line_has_the_fields_the_exception_and_unicode() -> None:
    with log_context(session_key="api:ümlaut", message_id="m-1", channel="api"):
        line = JsonFormatter().format(_record("héllo %s ✓", "wörld", level=logging.ERROR, exc=True))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "héllo wörld ✓" and "héllo" in line  # UTF-8 kept, not \u-escaped
    assert entry["level"] == "ERROR" and entry["logger"] == "nanobot.test" and entry["process"] == os.getpid()
    assert entry["time"].endswith("Z") and len(entry["time"]) == len("2026-01-31T12:00:00.123Z")
    assert "ValueError: bad välue" in entry["exception"] and "Traceback" in entry["exception"]
    assert (entry["session_key"], entry["message_id"], entry["channel"]) == ("api:ümlaut", "m-1", "api")


def test_json_fields_leave_the_context_with_the_block_and_defaults_stay() -> None:
    set_default_log_fields(worker="w9@host")
    try:
        with log_context(session_key="s", message_id="m"):
            inside = json.loads(JsonFormatter().format(_record("in")))
        outside = json.loads(JsonFormatter().format(_record("out")))
    finally:
        set_default_log_fields(worker=None)
    assert inside["worker"] == outside["worker"] == "w9@host"
    assert inside["session_key"] == "s" and "session_key" not in outside and "message_id" not in outside
    with log_context(message_id="x", level="spoof"):
        entry = json.loads(JsonFormatter().format(_record("core keys win")))
    assert entry["level"] == "INFO" and entry["message_id"] == "x"


def test_text_line_appends_only_the_fields_the_message_lacks() -> None:
    with log_context(session_key="api:a", message_id="m-7", channel="api"):
        line = TextFormatter().format(_record("turn start session=%s", "api:a"))
    assert line.endswith("turn start session=api:a message_id=m-7 channel=api")
    assert "session_key=" not in line
    with log_context(session_key="api:x\nFORGED 2026 ERROR root: fake"):
        line = TextFormatter().format(_record("hello"))
    assert "\n" not in line and line.endswith("session_key='api:x\\nFORGED 2026 ERROR root: fake'")


def test_iso_utc_has_milliseconds() -> None:
    assert iso_utc(0.5) == "1970-01-01T00:00:00.500Z"
    assert iso_utc(86400 + 0.9999) == "1970-01-02T00:00:00.999Z"


def test_env_wins_over_config_and_the_command_line_wins_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    class Settings:
        format = "json"
        level = "warning"

    monkeypatch.delenv("NANOBOT_LOG_FORMAT", raising=False)
    monkeypatch.delenv("NANOBOT_LOG_LEVEL", raising=False)
    assert chosen_format(Settings()) == "json" and chosen_level(None, Settings()) == logging.WARNING
    assert chosen_format() == "text" and chosen_level() == logging.INFO
    monkeypatch.setenv("NANOBOT_LOG_FORMAT", "text")
    monkeypatch.setenv("NANOBOT_LOG_LEVEL", "ERROR")
    assert chosen_format(Settings()) == "text" and chosen_level(None, Settings()) == logging.ERROR
    assert chosen_level("DEBUG", Settings()) == logging.DEBUG
    monkeypatch.setenv("NANOBOT_LOG_FORMAT", "yaml")
    monkeypatch.setenv("NANOBOT_LOG_LEVEL", "LOUD")
    assert chosen_format() == "text" and chosen_level() == logging.INFO


def test_setup_logging_switches_the_one_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    class Settings:
        format = "json"
        level = "INFO"

    monkeypatch.delenv("NANOBOT_LOG_FORMAT", raising=False)
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    try:
        setup_logging("WARNING", hold=True)
        logging.getLogger("nanobot.test").warning("while the config loads")
        (ours,) = [h for h in root.handlers if isinstance(h, StderrHandler)]
        assert ours.held is not None and [r.getMessage() for r in ours.held] == ["while the config loads"]
        stream = io.StringIO()
        ours.setStream(stream)
        setup_logging("WARNING", Settings())
        assert [h for h in root.handlers if isinstance(h, StderrHandler)] == [ours] and ours.held is None
        assert isinstance(ours.formatter, JsonFormatter) and root.level == logging.WARNING
        assert json.loads(stream.getvalue())["message"] == "while the config loads"
    finally:
        for handler in root.handlers[:]:
            if handler not in before:
                root.removeHandler(handler)
        root.setLevel(level)


def test_context_reaches_to_thread_and_tasks() -> None:
    def in_thread() -> str:
        return json.loads(JsonFormatter().format(_record("t")))["message_id"]

    async def main() -> tuple[str, str]:
        with log_context(message_id="m-thread"):
            task = asyncio.create_task(asyncio.sleep(0, result=None))
            await task
            inner = asyncio.create_task(asyncio.to_thread(in_thread))
            return await asyncio.to_thread(in_thread), await inner

    assert asyncio.run(main()) == ("m-thread", "m-thread")


def test_cli_lines_follow_the_config_format_from_the_first_line(tmp_path: Path, fake_llm: FakeLLM) -> None:
    """`logging.format: json` in the config only: what is logged while the config loads is held, then written
    as JSON too; stdout keeps the reply."""
    config = write_config(tmp_path, fake_llm.base_url, logging={"format": "json"})
    env = {**os.environ, "NANOBOT_CONFIG": str(config), "NANOBOT_NOT_A_CONFIG_KEY": "1"}
    env.pop("NANOBOT_LOG_FORMAT", None)
    done = subprocess.run(nanobot("agent", "-m", f"hi {SECRET_TEXT}", "--logs"), env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"echo: hi {SECRET_TEXT}" in done.stdout
    entries = _json_lines(done.stderr, "cli")
    assert any("NANOBOT_NOT_A_CONFIG_KEY" in e["message"] and e["level"] == "WARNING" for e in entries)
    assert any(e["message"].startswith("direct turn") for e in entries)
    assert SECRET_TEXT not in done.stderr


# ---------------------------------------------------------------------------- a real cluster
class StderrApart(Process):
    """A Process whose stderr (the log lines) goes to `log_path` and stdout (banners) to a `.out` file."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log_path = log_path
        self._log = log_path.open("ab")
        self._out = log_path.with_suffix(".out").open("ab")
        self.proc = subprocess.Popen(args, stdout=self._out, stderr=self._log, env={**os.environ, **(env or {})},
                                     start_new_session=True)

    def stop(self, timeout: float = 10.0) -> int:
        code = super().stop(timeout)
        self._out.close()
        return code


def _json_lines(text: str, who: str) -> list[dict[str, Any]]:
    entries = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"{who}: not a JSON line: {line!r}") from None
        assert isinstance(entry, dict), f"{who}: {line!r}"
        assert {"time", "level", "logger", "message", "process"} <= entry.keys(), f"{who}: {line!r}"
        entries.append(entry)
    return entries


def _turn_lines(entries: list[dict[str, Any]], message_id: str) -> list[dict[str, Any]]:
    """The lines one pool process logged from this turn's "turn start" to its "turn done"."""
    start = next(i for i, e in enumerate(entries)
                 if e["message"].startswith("turn start") and message_id in e["message"])
    pid = entries[start]["process"]
    done = next(i for i, e in enumerate(entries) if i > start and e["process"] == pid
                and e["message"].startswith("turn done") and message_id in e["message"])
    return [e for e in entries[start:done + 1] if e["process"] == pid]


def test_one_turn_logs_json_lines_that_carry_its_ids(cluster_factory: Any, fake_llm: FakeLLM) -> None:
    fake_llm.add_rule(Rule(match=SECRET_TEXT, tool_calls=[{"name": "list_dir", "arguments": {}}], times=None,
                           when_last_role="user"))
    fake_llm.fail_next(1, status=500)  # one retried LLM call: a provider line inside the turn
    # The gateway is told by $NANOBOT_LOG_FORMAT, the worker by the config; both warn about an unknown variable
    # while they load the config, before they know the format: that line must be JSON too.
    cluster: Cluster = cluster_factory(sections={"logging": {"format": "json"}})
    env = {**cluster.env, "NANOBOT_NOT_A_CONFIG_KEY": "1"}
    name = f"wjson-{uuid.uuid4().hex[:4]}"
    worker = StderrApart(worker_argv(cluster.config, name=f"{name}@%h"), cluster.tmp_path / "01-worker.log", env)
    env["NANOBOT_LOG_FORMAT"] = "json"
    cluster.workers.append(worker)
    wait_until(lambda: " ready." in worker.log(), 60, "worker ready", worker)
    gateway = StderrApart(nanobot("gateway"), cluster.tmp_path / "02-gateway.log", env)
    cluster.gateway = gateway
    cluster.gateways.append(gateway)
    wait_http_ok(f"{cluster.base}/health", 60, gateway)

    response = cluster.chat(f"please list the files; my passphrase is {SECRET_TEXT}", "jsonlogs")
    assert response.status_code == 200, response.text
    session_key = "api:jsonlogs"
    (user,) = [m for m in cluster.history(session_key) if m["role"] == "user"]
    message_id = user["message_id"]
    assert any(m["role"] == "tool" for m in cluster.history(session_key))
    gateway.stop()
    worker.stop()

    gateway_lines = _json_lines(gateway.log(), "gateway")
    worker_lines = _json_lines(worker.log(), "worker")
    assert "[queues]" not in worker.log_path.with_suffix(".out").read_text(), "the worker printed its banner"
    for lines in (gateway_lines, worker_lines):
        assert any("NANOBOT_NOT_A_CONFIG_KEY" in e["message"] for e in lines)

    for entry in worker_lines:
        assert entry.get("worker", "").startswith(f"{name}@"), entry
    turn = _turn_lines(worker_lines, message_id)
    for entry in turn:
        assert (entry.get("session_key"), entry.get("message_id")) == (session_key, message_id), entry
    assert any("tool=list_dir" in e["message"] for e in turn), "no tool line inside the turn"
    assert any(e["logger"].startswith("nanobot.providers") for e in turn), "no provider line inside the turn"
    assert any("received" in e["message"] and "process_turn" in e["message"] for e in worker_lines)

    named = [e for e in gateway_lines if message_id in e["message"] or e.get("message_id") == message_id]
    assert named, "no gateway line names the turn's message id"
    for entry in named:
        assert (entry.get("session_key"), entry.get("message_id")) == (session_key, message_id), entry

    for entry in [*gateway_lines, *worker_lines]:
        if logging.getLevelName(entry["level"]) >= logging.INFO:
            assert SECRET_TEXT not in json.dumps(entry, ensure_ascii=False), entry


def test_text_format_keeps_celery_lines_and_appends_the_turn_fields(cluster_factory: Any, fake_llm: FakeLLM) -> None:
    fake_llm.fail_next(1, status=500)
    cluster: Cluster = cluster_factory()
    worker = cluster.start_worker(autoscale="1,1")
    cluster.start_gateway()
    assert cluster.chat("hello in text", "textlogs").status_code == 200
    wait_until(lambda: "succeeded in" in worker.log(), 30, "the task's success line", worker)
    lines = worker.log().splitlines()
    assert not any(line.startswith("{") for line in lines)
    (received,) = [line for line in lines if "process_turn" in line and line.endswith("received")]
    assert received.startswith("[") and "INFO/MainProcess]" in received
    (retry,) = [line for line in lines if "llm provider=custom" in line]
    assert retry.endswith(" channel=api") and " session_key=api:textlogs message_id=" in retry
    assert " worker=" not in retry
    (start,) = [line for line in lines if "turn start session=api:textlogs" in line]
    assert "session_key=" not in start and "message_id=" in start
