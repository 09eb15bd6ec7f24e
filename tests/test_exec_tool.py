"""The `exec` tool's confinement: scrubbed environment, resource limits, operator patterns and the real
bubblewrap sandbox, attacked the way a hostile user would; plus how the sandbox is chosen."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from nanobot.agent.tools import sandbox as sandbox_module
from nanobot.agent.tools import shell
from nanobot.agent.tools.sandbox import bwrap_problem, choose_sandbox
from nanobot.agent.tools.shell import ExecTool, ResourceLimits
from nanobot.agent.toolset import agent_tools_config, workspace_tools
from nanobot.config.schema import Config, ToolsConfig

SECRETS = {
    "NANOBOT_PROVIDERS__OPENAI__API_KEY": "sk-secret-provider-4242",
    "OPENAI_API_KEY": "sk-secret-openai-1717",
    "NANOBOT_BUS__REDIS_URL": "redis://:hunter2-secret@127.0.0.1:6379/0",
}
CONFIG_SECRET = "sk-secret-in-config-9090"
SSH_SECRET = "PRIVATE-KEY-secret-3131"
HISTORY_SECRET = "other-user-history-secret-5656"
ALL_SECRETS = [*SECRETS.values(), "hunter2", CONFIG_SECRET, SSH_SECRET, HISTORY_SECRET]

needs_bwrap = pytest.mark.skipif(bwrap_problem() is not None, reason=f"bubblewrap cannot run here: {bwrap_problem()}")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def assert_no_secret(output: str, command: str) -> None:
    for secret in ALL_SECRETS:
        assert secret not in output, f"{command!r} showed {secret!r}:\n{output}"


@pytest.fixture
def operator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """The default layout with fake secrets: ~/.nanobot/config.json, ~/.nanobot/workspace, ~/.ssh/id_rsa,
    secret variables in the environment and another conversation's history in the workspace."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text(SSH_SECRET)
    config = home / ".nanobot" / "config.json"
    workspace = home / ".nanobot" / "workspace"
    (workspace / "sessions").mkdir(parents=True)
    (workspace / "memory").mkdir()
    (workspace / "sessions" / "telegram_999.jsonl").write_text(json.dumps({"content": HISTORY_SECRET}))
    (workspace / "memory" / "MEMORY.md").write_text(HISTORY_SECRET)
    (home / ".nanobot" / "cron").mkdir()
    config.write_text(json.dumps({"providers": {"openai": {"apiKey": CONFIG_SECRET}}}))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NANOBOT_CONFIG", str(config))
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    return {"home": home, "config": config, "workspace": workspace}


# ---------------------------------------------------------------- environment and limits, no sandbox


def test_environment_is_scrubbed_without_sandbox(operator: dict[str, Path]) -> None:
    tool = ExecTool(operator["workspace"], path_prepend="/opt/first", path_append="/opt/last")
    for command in ("env", "printenv", "cat /proc/self/environ", "sh -c env"):
        assert_no_secret(run(tool.execute(command=command)), command)
    env = dict(line.split("=", 1) for line in run(tool.execute(command="env")).splitlines()[1:])
    assert env["HOME"] == str(operator["workspace"].resolve())
    assert env["PATH"] == "/opt/first:" + sandbox_module.MINIMAL_PATH + ":/opt/last"
    assert env["TERM"] == "dumb" and env["LANG"] == env["LC_ALL"] == "C.UTF-8"
    assert not [name for name in env if name.startswith("NANOBOT_")]


def test_parent_environ_leaks_without_sandbox(operator: dict[str, Path]) -> None:
    """Documents the hole the sandbox closes: without it /proc/$PPID/environ is the worker's environment."""
    worker_env = Path("/proc/self/environ").read_bytes().split(b"\0")[0].decode()
    result = run(ExecTool(operator["workspace"]).execute(command="tr '\\0' '\\n' < /proc/$PPID/environ"))
    assert worker_env in result


def test_allowed_env_keys_are_copied_and_secret_looking_ones_warned(
    operator: dict[str, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(shell, "_warned_env_keys", set())
    monkeypatch.setenv("MY_TOOL_MODE", "fast")
    with caplog.at_level(logging.WARNING, logger="nanobot.agent.tools.shell"):
        tool = ExecTool(operator["workspace"], allowed_env_keys=["MY_TOOL_MODE", "OPENAI_API_KEY", "ABSENT_VAR"])
        ExecTool(operator["workspace"], allowed_env_keys=["OPENAI_API_KEY"])
    warnings = [r.getMessage() for r in caplog.records if "looks like a secret" in r.getMessage()]
    assert len(warnings) == 1 and "OPENAI_API_KEY" in warnings[0]
    result = run(tool.execute(command="env"))
    assert "MY_TOOL_MODE=fast" in result
    assert f"OPENAI_API_KEY={SECRETS['OPENAI_API_KEY']}" in result  # the operator chose it
    assert "ABSENT_VAR" not in result and "NANOBOT_" not in result


def test_cpu_limit_kills_a_busy_loop(tmp_path: Path) -> None:
    tool = ExecTool(tmp_path, timeout_s=20, limits=ResourceLimits(cpu_seconds=1))
    start = time.monotonic()
    result = run(tool.execute(command="while :; do :; done"))
    assert result.startswith("Error: command killed: it reached the CPU time limit (1s of CPU)."), result
    assert time.monotonic() - start < 10


def test_memory_limit_fails_a_big_allocation(tmp_path: Path) -> None:
    tool = ExecTool(tmp_path, limits=ResourceLimits(memory_mb=200))
    result = run(tool.execute(command="python3 -c 'b = bytearray(600 * 1024 * 1024); print(\"allocated\")'"))
    assert "MemoryError" in result and "allocated" not in result
    small = "python3 -c 'b = bytearray(50 * 1024 * 1024); print(\"small\")'"
    assert "STDOUT:\nsmall" in run(tool.execute(command=small))


def test_file_size_limit_stops_a_big_file(tmp_path: Path) -> None:
    tool = ExecTool(tmp_path, limits=ResourceLimits(file_size_mb=1))
    result = run(tool.execute(command="head -c 3000000 /dev/zero > big.bin"))
    assert result.startswith("Error: command killed: it reached the file size limit (1 MB per file)."), result
    assert (tmp_path / "big.bin").stat().st_size <= 1024 * 1024


def test_limits_are_set_in_the_child(tmp_path: Path) -> None:
    limits = ResourceLimits(cpu_seconds=7, memory_mb=300, file_size_mb=5, max_processes=33)
    result = run(ExecTool(tmp_path, limits=limits).execute(command="cat /proc/self/limits"))
    rows = {line[:26].strip(): line[26:].split()[:2] for line in result.splitlines()[2:]}
    assert rows["Max cpu time"] == ["7", "9"]
    assert rows["Max address space"] == [str(300 * 1024 * 1024)] * 2
    assert rows["Max file size"] == [str(5 * 1024 * 1024)] * 2
    assert rows["Max processes"] == ["33", "33"]
    assert rows["Max core file size"] == ["0", "0"]


def test_output_cap_holds(tmp_path: Path) -> None:
    result = run(ExecTool(tmp_path, max_output_chars=300).execute(command="seq 1 100000"))
    assert len(result) < 400 and "characters cut" in result and result.rstrip().endswith("100000")


# ---------------------------------------------------------------- operator patterns


def test_deny_and_allow_patterns(tmp_path: Path) -> None:
    denied = ExecTool(tmp_path, deny_patterns=[r"\bcurl\b", r"^\s*nc\s"])
    assert "pattern the operator denied" in run(denied.execute(command="echo x; CURL http://example.com"))
    assert "pattern the operator denied" in run(denied.execute(command="nc -l 80"))
    assert run(denied.execute(command="echo curly")) == "STDOUT:\ncurly"

    allowed = ExecTool(tmp_path, allow_patterns=[r"^echo [a-z]+$", r"^git status$"])
    assert run(allowed.execute(command="echo fine")) == "STDOUT:\nfine"
    assert "none of the command patterns the operator allowed" in run(allowed.execute(command="ls"))
    assert "none of the command patterns" in run(allowed.execute(command="echo fine; cat /etc/passwd"))
    # The built-in deny-list still applies on top of an allow-list.
    result = run(ExecTool(tmp_path, allow_patterns=["^rm"]).execute(command="rm -rf *"))
    assert "safety policy (recursively deleting" in result


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"deny_patterns": ["ok", "(unclosed"]}, "tools.exec.denyPatterns[1]"),
        ({"allow_patterns": ["*star"]}, "tools.exec.allowPatterns[0]"),
        ({"sandbox_ro_binds": ["relative/path"]}, "tools.exec.sandboxRoBinds[0]"),
        ({"sandbox_rw_binds": ["/ok", "/src:dst"]}, "tools.exec.sandboxRwBinds[1]"),
        ({"sandbox": "docker"}, "'docker'"),
    ],
)
def test_bad_settings_fail_at_construction(tmp_path: Path, kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=key.replace("[", r"\[").replace("]", r"\]")):
        ExecTool(tmp_path, **kwargs)


def test_home_in_the_restriction_heuristic_is_the_workspace(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("in")
    tool = ExecTool(tmp_path, restrict_to_workspace=True)
    assert run(tool.execute(command="cat ~/f.txt")) == "STDOUT:\nin"
    assert run(tool.execute(command="cat $HOME/f.txt")) == "STDOUT:\nin"
    assert "another user's home" in run(tool.execute(command="ls ~root"))
    assert "outside the workspace" in run(tool.execute(command="cat /etc/passwd"))


# ---------------------------------------------------------------- the bubblewrap sandbox


@needs_bwrap
def test_sandbox_attacks_show_no_secret(operator: dict[str, Path]) -> None:
    tool = ExecTool(operator["workspace"], sandbox="bwrap", timeout_s=20)
    config, home = operator["config"], operator["home"]
    must_fail = {
        f"cat {config}": "No such file",
        "cat ../config.json": "No such file",
        f"cat {home}/.ssh/id_rsa": "No such file",
        "cd; ls -a; cat ~/.ssh/id_rsa": "No such file",
        "ls -a /root": "No such file",
        "cat /etc/shadow": "No such file",
        "python3 -c \"print(open('/etc/shadow').read())\"": "FileNotFoundError",
        "cat sessions/telegram_999.jsonl": "No such file",
        "cat memory/MEMORY.md": "No such file",
    }
    for command, failure in must_fail.items():
        result = run(tool.execute(command=command))
        assert_no_secret(result, command)
        assert failure in result, f"{command!r}:\n{result}"
    for command in (
        "env", "printenv", "cat /proc/self/environ", "cat /proc/$PPID/environ", "cat /proc/1/environ",
        "cat /proc/*/environ", "ps -ef; ls /proc", "ls -aR ..", "ls -A sessions memory", "grep -rs secret /tmp /etc",
    ):
        result = run(tool.execute(command=command))
        assert_no_secret(result, command)
        assert not result.startswith("Error:"), result
    # Only the sandbox's own processes exist: bwrap's init, the shell and ps.
    processes = run(tool.execute(command="ls /proc | grep -c '^[0-9]'"))
    assert int(processes.split()[-1]) <= 4, processes


@needs_bwrap
def test_sandbox_filesystem(operator: dict[str, Path]) -> None:
    workspace = operator["workspace"]
    tool = ExecTool(workspace, sandbox="bwrap")
    result = run(tool.execute(command="echo made > out.txt && cat out.txt; touch /usr/x; touch /etc/x; pwd"))
    assert "STDOUT:\nmade\n" + str(workspace.resolve()) in result
    assert "'/usr/x': Read-only file system" in result and "'/etc/x': Read-only file system" in result
    assert (workspace / "out.txt").read_text() == "made\n"
    assert run(tool.execute(command="ls -A sessions memory")) == "STDOUT:\nmemory:\n\nsessions:"
    result = run(tool.execute(command="echo x > sessions/telegram_999.jsonl"))
    assert "Read-only file system" in result
    assert HISTORY_SECRET in (workspace / "sessions" / "telegram_999.jsonl").read_text()
    assert run(tool.execute(command="echo $TMPDIR; echo t > /tmp/t && cat /tmp/t")) == "STDOUT:\n/tmp\nt"


@needs_bwrap
def test_sandbox_keeps_the_operators_instructions_read_only(tmp_path: Path) -> None:
    from nanobot.agent.tools.protected_paths import instruction_paths

    workspace = tmp_path / "ws"
    (workspace / "skills").mkdir(parents=True)
    (workspace / "AGENTS.md").write_text("Be kind.")
    tool = ExecTool(workspace, sandbox="bwrap", read_only_paths=instruction_paths(workspace))
    result = run(tool.execute(command="echo evil > AGENTS.md; mkdir skills/evil; echo mine > notes.md; cat AGENTS.md"))
    assert "AGENTS.md: Read-only file system" in result and "skills/evil" in result
    assert (workspace / "AGENTS.md").read_text() == "Be kind." and not (workspace / "skills" / "evil").exists()
    assert (workspace / "notes.md").read_text() == "mine\n" and "Be kind." in result


@needs_bwrap
def test_sandbox_binds_and_hidden_paths(
    operator: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "data.txt").write_text("shared data")
    out = tmp_path / "out"
    out.mkdir()
    tool = ExecTool(
        operator["workspace"], sandbox="bwrap",
        sandbox_ro_binds=[str(shared), f"{tmp_path}:/opt/all"], sandbox_rw_binds=[f"{out}:/srv/out"],
    )
    result = run(tool.execute(command=f"cat {shared}/data.txt; echo w > {shared}/new; echo w > /srv/out/new"))
    assert "shared data" in result and "Read-only file system" in result
    assert (out / "new").read_text() == "w\n" and not (shared / "new").exists()
    # A bind around the operator's home shows it empty.
    result = run(tool.execute(command="cat /opt/all/shared/data.txt; ls -A /opt/all/home; cat /opt/all/home/.ssh/*"))
    assert_no_secret(result, "bound home")
    assert result.startswith("STDOUT:\nshared data\nSTDERR:\ncat: '/opt/all/home/.ssh/*': No such file"), result
    # A config file elsewhere (and the cron store beside it) reads empty through a bind.
    etc = tmp_path / "etc"
    (etc / "cron").mkdir(parents=True)
    (etc / "cron" / "jobs.json").write_text(CONFIG_SECRET)
    (etc / "config.json").write_text(CONFIG_SECRET)
    monkeypatch.setenv("NANOBOT_CONFIG", str(etc / "config.json"))
    result = run(tool.execute(command="ls -A /opt/all/etc/cron; cat /opt/all/etc/config.json"))
    assert_no_secret(result, "bound config")
    assert result == "STDERR:\ncat: /opt/all/etc/config.json: Permission denied\nExit code: 1"


@needs_bwrap
def test_sandbox_hides_a_config_file_inside_the_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "config.json").write_text(CONFIG_SECRET)
    monkeypatch.setenv("NANOBOT_CONFIG", str(workspace / "config.json"))
    result = run(ExecTool(workspace, sandbox="bwrap").execute(command="cat config.json; echo end"))
    assert result == "STDOUT:\nend\nSTDERR:\ncat: config.json: Permission denied"


@needs_bwrap
def test_sandbox_network(operator: dict[str, Path]) -> None:
    with socket.create_connection(("127.0.0.1", 6379), timeout=2):
        pass  # Redis answers on the host, so a refusal below is the sandbox's doing
    connect = (
        "python3 -c \"import socket; socket.create_connection(('127.0.0.1', 6379), timeout=2); print('connected')\""
    )
    isolated = ExecTool(operator["workspace"], sandbox="bwrap")
    for command in (connect, "curl -sS --max-time 2 http://127.0.0.1:6379/ || echo curl-failed"):
        result = run(isolated.execute(command=command))
        assert "connected" not in result and ("Error" in result or "curl-failed" in result), result
    shared = ExecTool(operator["workspace"], sandbox="bwrap", sandbox_network=True)
    assert run(shared.execute(command=connect)) == "STDOUT:\nconnected"


@needs_bwrap
def test_sandbox_limits_and_timeout(tmp_path: Path) -> None:
    tool = ExecTool(tmp_path, sandbox="bwrap", timeout_s=2, limits=ResourceLimits(cpu_seconds=1, memory_mb=200))
    assert run(tool.execute(command="sh -c 'while :; do :; done'")).startswith(
        "Error: command killed: it reached the CPU time limit"
    )
    assert "MemoryError" in run(tool.execute(command="python3 -c 'bytearray(600 * 1024 * 1024)'"))
    assert "Operation not permitted" in run(tool.execute(command="ulimit -t unlimited"))
    result = run(tool.execute(command="sleep 41.375 & echo started; wait"))
    assert result.startswith("Error: command timed out after 2s") and "started" in result
    deadline = time.monotonic() + 5
    while "41.375" in _host_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "41.375" not in _host_processes(), "the sandboxed sleep survived the timeout"
    capped = ExecTool(tmp_path, sandbox="bwrap", max_output_chars=300)
    assert "characters cut" in run(capped.execute(command="seq 1 100000"))


def _host_processes() -> str:
    return subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True, timeout=5).stdout


# ---------------------------------------------------------------- which sandbox


def test_choose_sandbox() -> None:
    assert choose_sandbox("none", prefer_bwrap=True) == "none"
    assert choose_sandbox("bwrap", prefer_bwrap=False) == "bwrap"
    assert choose_sandbox("", prefer_bwrap=False) == "none"
    with pytest.raises(ValueError, match=r"tools\.exec\.sandbox"):
        choose_sandbox("docker", prefer_bwrap=True)


def test_local_mode_default_is_unsandboxed_and_enable_flags(tmp_path: Path) -> None:
    tools = workspace_tools(tmp_path, ToolsConfig())
    exec_tool = tools.get("exec")
    assert isinstance(exec_tool, ExecTool) and exec_tool.sandbox == "none"
    assert {"read_file", "write_file", "exec", "web_fetch"} <= set(tools.tool_names)
    config = ToolsConfig.model_validate(
        {"exec": {"enable": False}, "file": {"enable": False}, "web": {"enable": False}}
    )
    assert workspace_tools(tmp_path, config).tool_names == []


@needs_bwrap
def test_distributed_default_is_bwrap(tmp_path: Path) -> None:
    config = Config.model_validate({"bus": {"backend": "celery"}, "agents": {"defaults": {"workspace": str(tmp_path)}}})
    tools = agent_tools_config(config)
    assert tools.exec.sandbox == "bwrap" and config.tools.exec.sandbox == ""  # derived, the config keeps ""
    exec_tool = workspace_tools(tmp_path, tools).get("exec")
    assert isinstance(exec_tool, ExecTool) and exec_tool.sandbox == "bwrap"
    explicit = Config.model_validate({"bus": {"backend": "celery"}, "tools": {"exec": {"sandbox": "none"}}})
    assert agent_tools_config(explicit).exec.sandbox == "none"


@needs_bwrap
def test_worker_runtime_builds_a_sandboxed_exec(tmp_path: Path) -> None:
    from nanobot_celery.runtime import build_runtime

    config = Config.model_validate({
        "bus": {"backend": "celery", "redisUrl": "redis://127.0.0.1:6379/14", "keyPrefix": "test-exec-sandbox"},
        "agents": {"defaults": {"workspace": str(tmp_path / "ws"), "provider": "custom", "model": "m"}},
        "providers": {"custom": {"apiKey": "k", "apiBase": "http://127.0.0.1:9/v1"}},
    })
    runtime = build_runtime(config)
    try:
        exec_tool = runtime.agent.tools.get("exec")
        assert isinstance(exec_tool, ExecTool) and exec_tool.sandbox == "bwrap"
    finally:
        runtime.close()


def test_broken_bwrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A bwrap that cannot create namespaces (as under Docker's seccomp profile): the default falls back to no
    sandbox with one warning; an explicit "bwrap" refuses every command."""
    fake = tmp_path / "bin" / "bwrap"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:/usr/bin:/bin")
    monkeypatch.setattr(sandbox_module, "_warned_unsandboxed", False)
    bwrap_problem.cache_clear()
    try:
        assert "No permissions to create new namespace" in (bwrap_problem() or "")
        with caplog.at_level(logging.WARNING):
            for _ in range(2):
                config = Config.model_validate({"bus": {"backend": "celery"}})
                assert agent_tools_config(config).exec.sandbox == "none"
        warnings = [r.getMessage() for r in caplog.records if "exec runs without a sandbox" in r.getMessage()]
        assert len(warnings) == 1 and "No permissions" in warnings[0]
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            tool = ExecTool(tmp_path, sandbox="bwrap")
        assert any("refuses every command" in r.getMessage() for r in caplog.records)
        (tmp_path / "marker").write_text("")
        result = run(tool.execute(command="rm marker"))
        assert result.startswith("Error: commands must run in the bubblewrap sandbox, which cannot run here")
        assert (tmp_path / "marker").exists()
    finally:
        bwrap_problem.cache_clear()
