"""Tests for the agent tools: schema validation, the registry, files, exec and the web tools."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from nanobot.agent.tools.base import Tool
from nanobot.agent.tools.filesystem import (
    MAX_READ_BYTES,
    EditFileTool,
    ListDirTool,
    ReadFileTool,
    WriteFileTool,
)
from nanobot.agent.tools.registry import ToolRegistry
from nanobot.agent.tools.shell import ExecTool, check_denied, check_outside_workspace
from nanobot.agent.tools.validation import validate
from nanobot.agent.tools.web import WebFetchTool, WebSearchTool, html_to_text


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


# ---------------------------------------------------------------- filesystem


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    (tmp_path / "secret.txt").write_text("top secret")
    return ws


def test_write_then_read(workspace: Path) -> None:
    result = run(WriteFileTool(workspace).execute(path="notes/deep/a.txt", content="héllo\n"))
    assert result.startswith("Wrote 7 bytes to ")  # 'é' is two bytes in UTF-8
    assert (workspace / "notes/deep/a.txt").read_text(encoding="utf-8") == "héllo\n"
    assert run(ReadFileTool(workspace).execute(path="notes/deep/a.txt")) == "héllo\n"


def test_read_errors(workspace: Path) -> None:
    read = ReadFileTool(workspace)
    assert run(read.execute(path="missing.txt")) == "Error: file not found: missing.txt"
    (workspace / "sub").mkdir()
    assert "is a directory" in run(read.execute(path="sub"))
    (workspace / "image.bin").write_bytes(b"\x89PNG\x00\x00\x01\x02")
    assert "binary" in run(read.execute(path="image.bin"))


def test_read_truncates_large_files(workspace: Path) -> None:
    (workspace / "big.txt").write_text("a" * (MAX_READ_BYTES + 500))
    result = run(ReadFileTool(workspace).execute(path="big.txt"))
    assert result.startswith("a" * 1000)
    assert f"[truncated: showing the first {MAX_READ_BYTES} of {MAX_READ_BYTES + 500} bytes]" in result
    assert len(result) < MAX_READ_BYTES + 200


def test_tilde_expands_to_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    run(WriteFileTool(tmp_path / "ws").execute(path="~/x.txt", content="hi"))
    assert (home / "x.txt").read_text() == "hi"


def test_unrestricted_tools_may_leave_the_workspace(workspace: Path) -> None:
    assert run(ReadFileTool(workspace).execute(path="../secret.txt")) == "top secret"


def test_restriction_refuses_dotdot_absolute_and_symlink_escapes(workspace: Path) -> None:
    secret = workspace.parent / "secret.txt"
    (workspace / "link.txt").symlink_to(secret)
    (workspace / "linkdir").symlink_to(workspace.parent)
    read = ReadFileTool(workspace, allowed_dir=workspace)
    write = WriteFileTool(workspace, allowed_dir=workspace)
    for path in ("../secret.txt", str(secret), "link.txt", "linkdir/secret.txt", "sub/../../secret.txt"):
        result = run(read.execute(path=path))
        assert result.startswith("Error: access denied"), path
        assert "top secret" not in result
    result = run(write.execute(path="linkdir/new.txt", content="x"))
    assert result.startswith("Error: access denied")
    assert not (workspace.parent / "new.txt").exists()
    edit = EditFileTool(workspace, allowed_dir=workspace)
    assert run(edit.execute(path="link.txt", old_text="top", new_text="no")).startswith("Error: access denied")
    assert secret.read_text() == "top secret"
    listing = ListDirTool(workspace, allowed_dir=workspace)
    assert run(listing.execute(path="..")).startswith("Error: access denied")


def test_restriction_allows_paths_inside(workspace: Path) -> None:
    (workspace / "inner").mkdir()
    (workspace / "inner" / "f.txt").write_text("ok")
    (workspace / "alias.txt").symlink_to(workspace / "inner" / "f.txt")
    read = ReadFileTool(workspace, allowed_dir=workspace)
    assert run(read.execute(path="inner/../inner/f.txt")) == "ok"
    assert run(read.execute(path=str(workspace / "alias.txt"))) == "ok"


def test_edit_file_requires_exactly_one_occurrence(workspace: Path) -> None:
    target = workspace / "code.py"
    target.write_text("x = 1\ny = 1\nx = 1\n")
    edit = EditFileTool(workspace)

    result = run(edit.execute(path="code.py", old_text="z = 1", new_text="z = 2"))
    assert result.startswith("Error: old_text was not found in code.py")
    assert "z = 1" in result

    result = run(edit.execute(path="code.py", old_text="x = 1", new_text="x = 2"))
    assert "occurs 2 times" in result
    assert target.read_text() == "x = 1\ny = 1\nx = 1\n"

    result = run(edit.execute(path="code.py", old_text="y = 1", new_text="y = 2"))
    assert result.startswith("Edited")
    assert target.read_text() == "x = 1\ny = 2\nx = 1\n"

    assert "not found" in run(edit.execute(path="nope.py", old_text="a", new_text="b"))


def test_list_dir(workspace: Path) -> None:
    (workspace / "b.txt").write_text("b")
    (workspace / "a_dir").mkdir()
    (workspace / "c.md").write_text("c")
    listing = ListDirTool(workspace)
    assert run(listing.execute()) == "a_dir/\nb.txt\nc.md"
    assert run(listing.execute(path="a_dir")).endswith("is empty")
    assert "not found" in run(listing.execute(path="missing"))
    assert "is a file" in run(listing.execute(path="b.txt"))


def test_file_tools_through_registry_validate_arguments(workspace: Path) -> None:
    reg = ToolRegistry()
    reg.register(ReadFileTool(workspace))
    assert "missing required argument 'path'" in run(reg.execute("read_file", {}))
    assert "unexpected argument 'paht'" in run(reg.execute("read_file", {"path": "a", "paht": "a"}))


# ---------------------------------------------------------------- exec


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
        "ls ~": "outside the workspace",
        "cp f.txt $HOME/f.txt": "outside the workspace",
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


# ---------------------------------------------------------------- web


PAGE = """<!DOCTYPE html>
<html><head><title>The  Test &amp; Page</title>
<style>body { color: red; }</style>
<script>var hidden = "script text";</script></head>
<body>
<nav><a href="/">Home</a> | <a href="/about">About</a></nav>
<h1>Main   heading</h1>
<p>First paragraph with
a line break in the source and <b>bold</b> text.</p>
<p>Fish &amp; Chips &lt;3 &eacute;t&eacute;</p>
<ul><li>one</li><li>two</li></ul>
<div>Line one<br>Line two</div>
</body></html>"""


class FakeServer(BaseHTTPRequestHandler):
    requests: list[dict[str, Any]] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlparse(self.path)
        if url.path == "/page.html":
            self._send(200, PAGE.encode(), "text/html; charset=utf-8")
        elif url.path == "/redirect":
            self._send(302, b"", "text/plain", {"Location": "/page.html"})
        elif url.path == "/big.txt":
            self._send(200, ("0123456789" * 1000).encode(), "text/plain")
        elif url.path == "/data.json":
            self._send(200, b'{"name":"nanobot","tags":["a","b"]}', "application/json")
        elif url.path == "/image.png":
            self._send(200, b"\x89PNG\x00\x00", "image/png")
        elif url.path == "/search":
            self._search(url.query)
        else:
            self._send(404, b"no such page", "text/plain")

    def _search(self, query: str) -> None:
        params = parse_qs(query)
        FakeServer.requests.append({"params": params, "token": self.headers.get("X-Subscription-Token")})
        if self.headers.get("X-Subscription-Token") != "test-key":
            self._send(401, b'{"error": "bad token"}', "application/json")
            return
        count = int(params["count"][0])
        results = [
            {
                "title": f"Result <strong>{n}</strong> for {params['q'][0]}",
                "url": f"https://example.com/{n}",
                "description": f"Snippet &amp; <strong>text</strong> {n}",
            }
            for n in range(1, count + 1)
        ]
        self._send(200, json.dumps({"web": {"results": results}}).encode(), "application/json")


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_html_to_text() -> None:
    page = html_to_text(PAGE)
    assert page.title == "The Test & Page"
    assert "script text" not in page.text and "color: red" not in page.text
    assert "Home" not in page.text and "About" not in page.text  # navigation is dropped
    assert "# Main heading" in page.text
    assert "First paragraph with a line break in the source and bold text." in page.text
    assert "Fish & Chips <3 été" in page.text
    assert "- one\n- two" in page.text
    assert "Line one\nLine two" in page.text
    assert "\n\n\n" not in page.text


def test_web_fetch_html(server_url: str) -> None:
    result = run(WebFetchTool().execute(url=f"{server_url}/redirect"))
    assert result.startswith(f"URL: {server_url}/page.html\nStatus: 200 OK\nTitle: The Test & Page\n\n")
    assert "Fish & Chips" in result
    assert "<p>" not in result and "script text" not in result


def test_web_fetch_json_and_status(server_url: str) -> None:
    result = run(WebFetchTool().execute(url=f"{server_url}/data.json"))
    assert '{\n  "name": "nanobot",\n  "tags": [\n    "a",' in result
    result = run(WebFetchTool().execute(url=f"{server_url}/missing"))
    assert "Status: 404" in result and "no such page" in result
    result = run(WebFetchTool().execute(url=f"{server_url}/image.png"))
    assert "binary content (image/png, 6 bytes)" in result


def test_web_fetch_truncates(server_url: str) -> None:
    result = run(WebFetchTool(max_chars=100).execute(url=f"{server_url}/big.txt"))
    body = result.split("\n\n", 1)[1]
    assert body.startswith("0123456789" * 10 + "\n\n[truncated: showing 100 of 10000 characters]")
    assert run(WebFetchTool().execute(url=f"{server_url}/big.txt")).endswith("0123456789")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x", "not a url", "http://"])
def test_web_fetch_refuses_non_http_urls(url: str) -> None:
    result = run(WebFetchTool().execute(url=url))
    assert result.startswith("Error: ")


def test_web_fetch_connection_error_is_text() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run(WebFetchTool(timeout_s=5).execute(url=f"http://127.0.0.1:{port}/"))
    assert result.startswith(f"Error: could not fetch http://127.0.0.1:{port}/: ConnectError")


def test_web_search_formats_results(server_url: str) -> None:
    FakeServer.requests.clear()
    tool = WebSearchTool(api_key="test-key", max_results=2, endpoint=f"{server_url}/search")
    result = run(tool.execute(query="nanobot tools"))
    assert result == (
        "Results for: nanobot tools\n"
        "\n1. Result 1 for nanobot tools\n   https://example.com/1\n   Snippet & text 1\n"
        "\n2. Result 2 for nanobot tools\n   https://example.com/2\n   Snippet & text 2"
    )
    assert FakeServer.requests[-1] == {
        "params": {"q": ["nanobot tools"], "count": ["2"]},
        "token": "test-key",
    }
    result = run(tool.execute(query="x", count=3))
    assert "3. Result 3" in result


def test_web_search_errors(server_url: str) -> None:
    result = run(WebSearchTool(api_key="").execute(query="x"))
    assert result.startswith("Error:") and "tools.web.search.apiKey" in result
    bad_key = WebSearchTool(api_key="wrong", endpoint=f"{server_url}/search")
    assert run(bad_key.execute(query="x")).startswith("Error: web search failed with HTTP 401")
