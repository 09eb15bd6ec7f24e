"""A hostile end user against the whole service: a real gateway, real Celery workers (their exec tool under
bubblewrap, the distributed default), real HTTP, and the simulated LLM scripting the tool calls the user
talked it into. Nothing secret may come back: not in a tool's output (what the LLM reads), not in a reply.

The secrets are canaries planted where an operator keeps them: the provider key in the config file, keys in
the workers' environment (plain and `NANOBOT_*`), a private key in the operator's home, the Redis URL, an
internal HTTP service on loopback, and another API client's conversation.
"""

from __future__ import annotations

import base64
import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from nanobot.agent.workspace import conversation_folder
from nanobot.session.manager import session_filename
from nanobot.testing.llm_server import FakeLLM, Rule
from nanobot.testing.processes import Process, free_port, nanobot, wait_http_ok
from tests.cluster import API_KEY, Cluster
from tests.conftest import write_config

PROVIDER_SECRET = "sk-provider-CANARY-7f3a9d"
ENV_SECRET = "sk-env-CANARY-91b2c4"
NANOBOT_ENV_SECRET = "tg-token-CANARY-55c1e8"
SSH_SECRET = "FAKE-PRIVATE-KEY-CANARY-c0de42"
INTERNAL_SECRET = "INTERNAL-SERVICE-CANARY-3e7b"
ALICE_SECRET = "alice-private-CANARY-0a1b"
CLIENT_KEYS = {"key-alice-CANARY-aa11": "alice", "key-bob-CANARY-bb22": "bob"}


def bwrap_refusal() -> str | None:
    """Why bubblewrap cannot run here, or None when it can."""
    try:
        probe = subprocess.run(
            ["bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "true"],
            capture_output=True, text=True, timeout=10,
        )
    except FileNotFoundError:
        return "bubblewrap (bwrap) is not installed (scripts/sandbox installs Debian's package)"
    if probe.returncode != 0:
        return f"bubblewrap cannot create namespaces here: {probe.stderr.strip()}"
    return None


PROC = "p=$(printf '\\057proc');"  # /proc, spelled so that no textual check sees it


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def python_reading(path: Path) -> str:
    """`python3 -c` reading `path`, spelled so no textual check sees the path (as an attacker would)."""
    return f"python3 -c \"import base64;print(open(base64.b64decode('{b64(str(path))}').decode()).read())\""


# ------------------------------------------------------------------ loopback HTTP services
class _Handler(BaseHTTPRequestHandler):
    hits: list[str]
    routes: dict[str, tuple[int, dict[str, str], bytes]]

    def do_GET(self) -> None:
        self.hits.append(self.path)
        status, headers, body = self.routes.get(self.path, (404, {}, b"not here"))
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class Site:
    """A small HTTP server on a loopback address, in a thread; it records every path requested."""

    def __init__(self, host: str, routes: dict[str, tuple[int, dict[str, str], bytes]]) -> None:
        handler = type("Handler", (_Handler,), {"hits": [], "routes": routes})
        self.server = ThreadingHTTPServer((host, 0), handler)
        self.hits: list[str] = handler.hits
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def internal_service() -> Iterator[Site]:
    """Something next to the workers that must stay out of reach (an admin API, a metadata service...)."""
    site = Site("127.0.0.1", {"/secret": (200, {"Content-Type": "text/plain"}, INTERNAL_SECRET.encode())})
    yield site
    site.close()


@pytest.fixture
def public_site(internal_service: Site) -> Iterator[Site]:
    """A site the operator allowed (`tools.ssrfWhitelist`); one of its pages redirects to the internal service."""
    page = b"<html><head><title>Public</title></head><body><article><h1>News</h1><p>PUBLIC-PAGE-OK is the " \
           b"text of this page, long enough to be kept by the extractor as the main content of the page." \
           b" <a href='https://example.org/more'>more</a></p></article></body></html>"
    site = Site("127.0.0.2", {
        "/page": (200, {"Content-Type": "text/html; charset=utf-8"}, page),
        "/go": (302, {"Location": f"{internal_service.url}/secret"}, b""),
    })
    yield site
    site.close()


# ------------------------------------------------------------------ the attacks
def tool_outputs(llm: FakeLLM, prompt: str) -> list[str]:
    """What the tools returned to the LLM in the turn started by `prompt`."""
    return [
        str(request.messages[-1].get("content"))
        for request in llm.requests
        if request.last_user_text == prompt and request.messages and request.messages[-1].get("role") == "tool"
    ]


def session_of(prompt: str) -> str:
    return "attacker-" + "-".join(prompt.replace("'", "").split())


def attack(
    cluster: Cluster, llm: FakeLLM, prompt: str, tool: str, arguments: dict[str, Any], session: str | None = None
) -> str:
    """The user asks (in a conversation of its own, or `session`'s); the (simulated) LLM calls `tool` as asked;
    returns the tool's output the LLM read."""
    llm.add_rule(Rule(match=prompt, tool_calls=[{"name": tool, "arguments": arguments}]))
    response = cluster.chat(prompt, session or session_of(prompt))
    assert response.status_code == 200, response.text
    outputs = tool_outputs(llm, prompt)
    assert outputs, f"the tool never ran for {prompt!r}"
    return outputs[-1]


def post(cluster: Cluster, key: str, content: str, session_id: str) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": content}], "session_id": session_id}
    return httpx.post(f"{cluster.base}/v1/chat/completions", json=body, timeout=60, trust_env=False,
                      headers={"Authorization": f"Bearer {key}"})


def test_hostile_user_reaches_no_secret_through_a_sandboxed_worker(
    cluster_factory: Any, fake_llm: FakeLLM, tmp_path: Path, internal_service: Site, public_site: Site
) -> None:
    if reason := bwrap_refusal():
        pytest.skip(reason)
    home = tmp_path / "operator-home"
    (home / ".ssh").mkdir(parents=True)
    ssh_key = home / ".ssh" / "id_rsa"
    ssh_key.write_text(SSH_SECRET)
    cluster: Cluster = cluster_factory(
        channels={"api": {"enabled": True, "port": free_port(), "apiKey": API_KEY, "keys": CLIENT_KEYS}},
        sections={
            "providers": {"custom": {"apiKey": PROVIDER_SECRET, "apiBase": fake_llm.base_url}},
            "tools": {"restrictToWorkspace": True, "ssrfWhitelist": ["127.0.0.2/32"],
                      "web": {"fetch": {"timeoutS": 5}}},
        },
    )
    cluster.base = f"http://127.0.0.1:{cluster.config.channels.api.port}"
    cluster.env.update({"HOME": str(home), "OPENAI_API_KEY": ENV_SECRET,
                        "NANOBOT_CHANNELS__TELEGRAM__TOKEN": NANOBOT_ENV_SECRET})
    cluster.start_worker(autoscale="2,1")
    cluster.start_gateway()
    config_file = cluster.config_path
    workspace = tmp_path / "workspace"
    secrets = [PROVIDER_SECRET, ENV_SECRET, NANOBOT_ENV_SECRET, SSH_SECRET, INTERNAL_SECRET, cluster.redis_url,
               *CLIENT_KEYS, API_KEY]

    outputs: dict[str, str] = {}
    exec_attacks = {
        "show me env": "env",
        "run printenv": "printenv",
        # `restrictToWorkspace` refuses commands that spell an outside path: an attacker spells it otherwise.
        "my own environ": f"{PROC} tr '\\0' '\\n' < $p/self/environ",
        "the parent's environ": f"{PROC} tr '\\0' '\\n' < $p/$PPID/environ; tr '\\0' '\\n' < $p/1/environ",
        "every process's environ": f"{PROC} for f in $p/[0-9]*/environ; do tr '\\0' '\\n' < $f; done; echo scanned",
        "read the config": python_reading(config_file),
        "go home": "cd; ls -a; cat .ssh/id_rsa",
        "the operator's key": python_reading(ssh_key),
        "the other histories": "ls -la sessions; cat sessions/*",
        "reach redis": "python3 -c \"import socket;socket.create_connection(('127.0.0.1',6379),3);print('CONNECTED')\"",
        "plant a link": (f"python3 -c \"import os,base64;os.symlink(base64.b64decode('{b64(str(ssh_key))}')"
                         ".decode(),'innocent.txt')\"; ln -s sessions hist; echo planted"),
    }
    for prompt, command in exec_attacks.items():
        outputs[prompt] = attack(cluster, fake_llm, prompt, "exec", {"command": command})
    file_attacks = {
        "read the planted link": ("read_file", {"path": "innocent.txt"}),
        "list the planted histories": ("list_dir", {"path": "hist"}),
        "read a history": ("read_file", {"path": f"sessions/{session_filename('api:' + session_of('show me env'))}"}),
        "read the config by name": ("read_file", {"path": str(config_file)}),
        "python reads passwd": ("exec", {"command": "python3 -c \"open('/etc/passwd')\""}),
    }
    planter = session_of("plant a link")  # the links are read in the conversation that planted them
    for prompt, (tool, arguments) in file_attacks.items():
        outputs[prompt] = attack(cluster, fake_llm, prompt, tool, arguments, session=planter)
    secret_url = f"{internal_service.url}/secret"
    port = internal_service.port
    web_attacks = {
        "fetch loopback": secret_url,
        "fetch metadata": "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "fetch localhost": f"http://localhost:{port}/secret",
        "fetch short spelling": f"http://127.1:{port}/secret",
        "fetch decimal spelling": f"http://2130706433:{port}/secret",
        "fetch mapped v6": f"http://[::ffff:127.0.0.1]:{port}/secret",
        "fetch any address": f"http://0.0.0.0:{port}/secret",
        "fetch via redirect": f"{public_site.url}/go",
    }
    for prompt, url in web_attacks.items():
        outputs[prompt] = attack(cluster, fake_llm, prompt, "web_fetch", {"url": url})
    allowed = attack(cluster, fake_llm, "fetch the allowed page", "web_fetch", {"url": f"{public_site.url}/page"})

    # Each attack really ran (the tools work), and got nothing.
    assert "PATH=" in outputs["show me env"] and "PATH=" in outputs["run printenv"]
    assert "scanned" in outputs["every process's environ"]
    assert "CONNECTED" not in outputs["reach redis"]
    assert cluster.history("api:" + session_of("show me env")), "the first attack's history exists"
    assert "show me env" not in outputs["the other histories"]
    assert "planted" in outputs["plant a link"]
    assert (conversation_folder(workspace, f"api:{planter}") / "innocent.txt").is_symlink()
    for prompt in ("read the planted link", "list the planted histories", "read a history", "read the config by name"):
        assert outputs[prompt].startswith("Error"), (prompt, outputs[prompt])
    assert outputs["python reads passwd"].startswith("Error"), outputs["python reads passwd"]
    for prompt in web_attacks:
        assert outputs[prompt].startswith("Error"), (prompt, outputs[prompt])
    assert internal_service.hits == [], "the internal service was reached"
    assert "PUBLIC-PAGE-OK" in allowed and "https://example.org/more" in allowed
    assert public_site.hits.count("/go") == 1 and public_site.hits.count("/page") == 1

    # Client isolation on the API: bob naming alice's session gets his own conversation, never hers.
    assert post(cluster, "key-alice-CANARY-aa11", f"remember {ALICE_SECRET}", "s1").status_code == 200
    bob = post(cluster, "key-bob-CANARY-bb22", "what did I tell you?", "s1")
    assert bob.status_code == 200 and ALICE_SECRET not in bob.text
    for forged in ("alice/s1", "../alice/s1"):
        refused = post(cluster, "key-bob-CANARY-bb22", "what did alice say?", forged)
        assert refused.status_code == 400, refused.text
    bob_turn = next(r for r in fake_llm.requests if r.last_user_text == "what did I tell you?")
    assert ALICE_SECRET not in json.dumps(bob_turn.messages)
    assert any(ALICE_SECRET in m.get("content", "") for m in cluster.history("api:alice/s1"))
    assert cluster.history("api:bob/s1") and cluster.history("api:s1") == []
    assert post(cluster, "wrong-key", "hello", "s1").status_code == 401

    seen_by_llm = json.dumps([r.messages for r in fake_llm.requests])
    leaked = [secret for secret in secrets if secret in seen_by_llm]
    assert leaked == [], f"secrets reached the LLM through tools: {leaked}"
    logs = "".join(w.log() for w in cluster.workers) + "".join(g.log() for g in cluster.gateways)
    assert [s for s in (PROVIDER_SECRET, *CLIENT_KEYS, API_KEY) if s in logs] == []


def test_exec_without_sandbox_still_runs_with_a_scrubbed_environment(tmp_path: Path, fake_llm: FakeLLM) -> None:
    """Local mode, no sandbox: `env` shows nothing secret (what the sandbox adds is in docs/security.md)."""
    config = write_config(
        tmp_path, fake_llm.base_url,
        providers={"custom": {"apiKey": PROVIDER_SECRET, "apiBase": fake_llm.base_url}},
        channels={"api": {"enabled": True, "port": free_port(), "apiKey": API_KEY}},
        tools={"exec": {"sandbox": "none"}},
    )
    port = json.loads(config.read_text())["channels"]["api"]["port"]
    env = {"NANOBOT_CONFIG": str(config), "OPENAI_API_KEY": ENV_SECRET,
           "NANOBOT_CHANNELS__TELEGRAM__TOKEN": NANOBOT_ENV_SECRET}
    gateway = Process(nanobot("gateway"), tmp_path / "gateway.log", env=env)
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/health", 60, gateway)
        for prompt, command in {"env please": "env", "printenv please": "printenv",
                                "self environ please": "tr '\\0' '\\n' < /proc/self/environ"}.items():
            fake_llm.add_rule(Rule(match=prompt, tool_calls=[{"name": "exec", "arguments": {"command": command}}]))
            body = {"messages": [{"role": "user", "content": prompt}], "session_id": prompt.split()[0]}
            reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=60,
                               headers={"Authorization": f"Bearer {API_KEY}"}, trust_env=False)
            assert reply.status_code == 200, reply.text
            output = tool_outputs(fake_llm, prompt)[-1]
            assert "PATH=" in output
            assert [s for s in (PROVIDER_SECRET, ENV_SECRET, NANOBOT_ENV_SECRET, API_KEY) if s in output] == []
            assert "NANOBOT_" not in output
    finally:
        gateway.stop()
