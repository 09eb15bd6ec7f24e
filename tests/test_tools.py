"""Tests for the agent tools: schema validation, the registry, files and exec (web tools: test_web_tools.py)."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from nanobot.agent.tools.base import Tool
from nanobot.agent.tools.registry import ToolRegistry
from nanobot.agent.tools.shell import ExecTool, check_denied, check_outside_workspace
from nanobot.agent.tools.validation import validate


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# ---------------------------------------------------------------- validation

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "path": {"type": "string", "minLength": 1, "maxLength": 10},
        "count": {"type": "integer", "minimum": 1, "maximum": 5},
        "ratio": {"type": "number"},
        "flag": {"type": "boolean"},
        "mode": {"type": "string", "enum": ["fast", "slow"]},
        "note": {"type": ["string", "null"]},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        "options": {
            "type": "object",
            "properties": {"depth": {"type": "integer"}},
            "required": ["depth"],
            "additionalProperties": False,
        },
    },
    "required": ["path"],
    "additionalProperties": False,
}


def test_validate_accepts_a_valid_value() -> None:
    value = {
        "path": "a.txt",
        "count": 3,
        "ratio": 0.5,
        "flag": False,
        "mode": "fast",
        "note": None,
        "tags": ["x", "y"],
        "options": {"depth": 2},
    }
    assert validate(SCHEMA, value) == []
    assert validate(SCHEMA, {"path": "a", "ratio": 2, "note": "n"}) == []  # an integer is a number


def test_validate_reports_type_errors_with_path() -> None:
    assert validate(SCHEMA, {"path": 5}) == ["path: expected string, got integer"]
    assert validate(SCHEMA, "nope") == ["expected object, got string"]
    assert validate(SCHEMA, {"path": "a", "tags": ["ok", 7]}) == ["tags[1]: expected string, got integer"]
    assert validate(SCHEMA, {"path": "a", "options": {"depth": "deep"}}) == [
        "options.depth: expected integer, got string"
    ]
    assert validate(SCHEMA, {"path": "a", "note": 1}) == ["note: expected string or null, got integer"]


def test_validate_bool_is_not_an_integer_or_number() -> None:
    assert validate({"type": "integer"}, True) == ["expected integer, got boolean"]
    assert validate({"type": "number"}, False) == ["expected number, got boolean"]
    assert validate({"type": "integer"}, 2.5) == ["expected integer, got number"]
    assert validate({"type": "boolean"}, 1) == ["expected boolean, got integer"]
    assert validate({"enum": [1, 2]}, True) != []


def test_validate_required_and_additional_properties() -> None:
    assert validate(SCHEMA, {}) == ["missing required argument 'path'"]
    assert validate(SCHEMA, {"path": "a", "colour": "red"}) == ["unexpected argument 'colour'"]
    errors = validate(SCHEMA, {"path": "a", "options": {}})
    assert errors == ["missing required argument 'depth' in options"]


def test_validate_constraints() -> None:
    assert validate(SCHEMA, {"path": ""}) == ["path: must be at least 1 characters long"]
    assert "path: must be at most 10 characters long" in validate(SCHEMA, {"path": "x" * 11})
    assert validate(SCHEMA, {"path": "a", "count": 0}) == ["count: must be >= 1, got 0"]
    assert validate(SCHEMA, {"path": "a", "count": 9}) == ["count: must be <= 5, got 9"]
    assert validate(SCHEMA, {"path": "a", "mode": "medium"}) == ["mode: 'medium' is not one of: 'fast', 'slow'"]
    assert validate(SCHEMA, {"path": "a", "tags": []}) == ["tags: must have at least 1 items, got 0"]
    assert validate(SCHEMA, {"path": "a", "tags": ["a"] * 4}) == ["tags: must have at most 3 items, got 4"]


def test_validate_collects_several_errors() -> None:
    errors = validate(SCHEMA, {"count": "many", "extra": 1})
    assert len(errors) == 3
    assert "missing required argument 'path'" in errors


# ---------------------------------------------------------------- registry


class EchoTool(Tool):
    name = "echo"
    description = "Echo text back."
    parameters = {
        "type": "object",
        "properties": {"text": {"type": "string"}, "times": {"type": "integer", "minimum": 1}},
        "required": ["text"],
    }

    async def execute(self, **kwargs: Any) -> str:
        return kwargs["text"] * kwargs.get("times", 1)


class BoomTool(Tool):
    name = "boom"
    description = "Always fails."
    parameters = {"type": "object", "properties": {}}

    async def execute(self, **kwargs: Any) -> str:
        raise ValueError("kaboom")


class CancelledTool(Tool):
    name = "cancelled"
    description = "Gets cancelled."
    parameters = {"type": "object", "properties": {}}

    async def execute(self, **kwargs: Any) -> str:
        raise asyncio.CancelledError


@pytest.fixture
def registry() -> ToolRegistry:
    reg = ToolRegistry()
    for tool in (EchoTool(), BoomTool(), CancelledTool()):
        reg.register(tool)
    return reg


def test_registry_bookkeeping(registry: ToolRegistry) -> None:
    assert registry.names == ["echo", "boom", "cancelled"]
    assert "echo" in registry and "nope" not in registry
    assert isinstance(registry.get("echo"), EchoTool)
    assert registry.get("nope") is None
    definitions = registry.definitions()
    assert definitions[0] == {
        "type": "function",
        "function": {"name": "echo", "description": "Echo text back.", "parameters": EchoTool.parameters},
    }
    registry.unregister("boom")
    registry.unregister("never-registered")
    assert registry.names == ["echo", "cancelled"]


def test_registry_executes_dict_and_json_arguments(registry: ToolRegistry) -> None:
    assert run(registry.execute("echo", {"text": "ab", "times": 2})) == "abab"
    assert run(registry.execute("echo", '{"text": "hi"}')) == "hi"


def test_registry_unknown_tool(registry: ToolRegistry) -> None:
    result = run(registry.execute("nope", {}))
    assert result == "Error: unknown tool 'nope'. Available: echo, boom, cancelled"


def test_registry_bad_json(registry: ToolRegistry) -> None:
    result = run(registry.execute("echo", '{"text": '))
    assert result.startswith("Error: invalid arguments for tool 'echo': arguments are not valid JSON")
    result = run(registry.execute("echo", "[1, 2]"))
    assert result == "Error: invalid arguments for tool 'echo': arguments must be a JSON object, got array"


def test_registry_schema_errors(registry: ToolRegistry) -> None:
    result = run(registry.execute("echo", {"text": 3}))
    assert result == "Error: invalid arguments for tool 'echo': text: expected string, got integer"
    result = run(registry.execute("echo", {}))
    assert result == "Error: invalid arguments for tool 'echo': missing required argument 'text'"
    result = run(registry.execute("echo", {"text": "a", "times": True}))
    assert "times: expected integer, got boolean" in result


def test_registry_tool_exception_becomes_text(registry: ToolRegistry, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        result = run(registry.execute("boom", {}))
    assert result == "Error: tool 'boom' failed: ValueError: kaboom"
    assert any("boom" in record.getMessage() and record.exc_info for record in caplog.records)


def test_registry_lets_cancellation_through(registry: ToolRegistry) -> None:
    with pytest.raises(asyncio.CancelledError):
        run(registry.execute("cancelled", {}))


# ---------------------------------------------------------------- exec (the file tools: test_file_tools.py)


def test_exec_captures_stdout_and_stderr(tmp_path: Path) -> None:
    result = run(ExecTool(tmp_path).execute(command="echo out; echo err >&2"))
    assert result == "STDOUT:\nout\nSTDERR:\nerr"


def test_exec_runs_in_working_dir(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    assert run(ExecTool(tmp_path).execute(command="pwd")) == f"STDOUT:\n{tmp_path.resolve()}"
    result = run(ExecTool(tmp_path).execute(command="pwd", working_dir="sub"))
    assert result == f"STDOUT:\n{(tmp_path / 'sub').resolve()}"
    assert "does not exist" in run(ExecTool(tmp_path).execute(command="pwd", working_dir="nope"))


def test_exec_reports_nonzero_exit_code(tmp_path: Path) -> None:
    result = run(ExecTool(tmp_path).execute(command="echo failing; exit 3"))
    assert result == "STDOUT:\nfailing\nExit code: 3"
    assert run(ExecTool(tmp_path).execute(command="true")) == "(no output)"


def test_exec_caps_output(tmp_path: Path) -> None:
    command = f"{sys.executable} -c \"print('x' * 5000)\""
    result = run(ExecTool(tmp_path, max_output_chars=200).execute(command=command))
    assert "characters cut" in result
    assert len(result) < 300
    assert result.startswith("STDOUT:\nxxx")


def _alive(pid: int) -> bool:
    """Whether `pid` is a running (not zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_exec_timeout_kills_the_process_group(tmp_path: Path) -> None:
    command = "sleep 30 & echo $! > child.pid; echo started; wait"
    start = time.monotonic()
    result = run(ExecTool(tmp_path, timeout_s=1).execute(command=command))
    assert time.monotonic() - start < 10
    assert result.startswith("Error: command timed out after 1s and was killed.")
    assert "started" in result  # output produced before the timeout is kept
    child = int((tmp_path / "child.pid").read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the background sleep survived the timeout"


def test_exec_does_not_wait_for_background_children(tmp_path: Path) -> None:
    start = time.monotonic()
    result = run(ExecTool(tmp_path, timeout_s=20).execute(command="sleep 5 & echo quick"))
    assert time.monotonic() - start < 4
    assert result == "STDOUT:\nquick"


@pytest.mark.parametrize(
    "command",
    [
        "rm -rf /",
        "rm -rf ~",
        "rm -fr *",
        "sudo rm -r -f /",
        "cd x && rm -Rf ~/",
        "rm --recursive --force $HOME",
        "rm -rf --no-preserve-root /",
        "mkfs.ext4 /dev/sda1",
        "dd if=/dev/zero of=/dev/sda bs=1M",
        "echo x > /dev/sda",
        "shutdown -h now",
        "sudo reboot",
        "poweroff",
        "echo done; halt",
        ":(){ :|:& };:",
        "format c:",
        "chmod -R 777 /",
        "systemctl reboot",
    ],
)
def test_exec_deny_list_refuses(command: str) -> None:
    assert check_denied(command) is not None


def test_exec_tool_applies_the_deny_list(tmp_path: Path) -> None:
    # Even if the deny-list failed, this command could only delete the files of this temporary directory.
    (tmp_path / "keep.txt").write_text("still here")
    result = run(ExecTool(tmp_path).execute(command="rm -rf *"))
    assert result.startswith("Error: command refused by the safety policy (recursively deleting")
    assert (tmp_path / "keep.txt").exists()


@pytest.mark.parametrize(
    "command",
    [
        "rm -rf build",
        "rm -f *.pyc",
        "rm -rf ./dist/",
        "echo hello",
        "docker run --rm -it alpine ls",
        "dd if=/dev/zero of=out.img bs=1k count=1",
        "chmod -R 755 ./scripts",
        "git log --format=oneline",
        "grep -r halting .",
    ],
)
def test_exec_deny_list_allows_ordinary_commands(command: str) -> None:
    assert check_denied(command) is None


def test_exec_restriction(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "sub").mkdir(parents=True)
    (ws / "f.txt").write_text("inside")
    tool = ExecTool(ws, restrict_to_workspace=True)

    assert run(tool.execute(command="cat f.txt")) == "STDOUT:\ninside"
    assert run(tool.execute(command=f"cat {ws / 'f.txt'}")) == "STDOUT:\ninside"
    assert run(tool.execute(command="echo hi > /dev/null")) == "(no output)"
    assert run(tool.execute(command="pwd", working_dir="sub")) == f"STDOUT:\n{(ws / 'sub').resolve()}"

    refused = {
        "cat ../secret": "'..' path traversal",
        "ls sub/../..": "'..' path traversal",
        "cat /etc/passwd": "outside the workspace",
        f"ls {tmp_path}": "outside the workspace",
        "ls ~root": "another user's home",
        "cp f.txt $HOME/../f.txt": "'..' path traversal",
    }
    for command, reason in refused.items():
        result = run(tool.execute(command=command))
        assert result.startswith("Error: command refused because"), command
        assert reason in result, command

    assert "outside the workspace" in run(tool.execute(command="pwd", working_dir=".."))
    assert "outside the workspace" in run(tool.execute(command="pwd", working_dir="/tmp"))
    # Without the restriction the same commands run.
    assert run(ExecTool(ws).execute(command="ls ..")) == "STDOUT:\nws"


def test_outside_workspace_heuristic_ignores_urls_and_plain_slashes(tmp_path: Path) -> None:
    assert check_outside_workspace("curl -s https://example.com/a/b", tmp_path) is None
    assert check_outside_workspace("python -c 'print(1/2)'", tmp_path) is None
    assert check_outside_workspace("git log main..HEAD", tmp_path) is None
    assert check_outside_workspace("ls > /dev/null 2>&1", tmp_path) is None
    assert check_outside_workspace("cmake -DPREFIX=/usr/local", tmp_path) is not None

