"""People kept apart (`tools.isolation: conversation`): each conversation's tools work in its own folder, the
message tool stays in its chat, cron jobs belong to the conversation that made them.

Two conversations share one agent's tools, as they do in a worker: Alice (telegram:111) keeps a secret in her
folder; Bob (telegram:222) asks for it every way a hostile person would. The tools are called as the LLM would
call them, inside each person's turn (the context variable the agent loop sets)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from nanobot.agent.loop import AgentLoop
from nanobot.agent.subagent import SubagentTask, run_subagent
from nanobot.agent.tools.cron import CronTool
from nanobot.agent.tools.message import MessageTool
from nanobot.agent.tools.registry import ToolRegistry
from nanobot.agent.tools.sandbox import account_files, bwrap_problem
from nanobot.agent.toolset import agent_tools_config, workspace_tools
from nanobot.agent.turn import TurnContext, current_turn
from nanobot.agent.workspace import conversation_folder, init_workspace
from nanobot.bus.events import OutboundMessage
from nanobot.bus.queue import MessageBus
from nanobot.config.schema import Config, ToolsConfig
from nanobot.cron.service import CronService
from nanobot.providers.openai_compat import OpenAICompatProvider
from nanobot.testing.llm_server import FakeLLM, Rule

ALICE = TurnContext(channel="telegram", chat_id="111", session_key="telegram:111")
BOB = TurnContext(channel="telegram", chat_id="222", session_key="telegram:222")
SECRET = "alice-secret-CANARY-4d2f"
SHARED_SECRET = "shared-workspace-file-CANARY-77aa"

needs_bwrap = pytest.mark.skipif(bwrap_problem() is not None, reason=f"bubblewrap cannot run here: {bwrap_problem()}")


def as_person(turn: TurnContext, tools: ToolRegistry | Any, name: str | None = None, **arguments: Any) -> str:
    """Call a tool inside `turn` (a registry's tool by `name`, or the tool itself)."""

    async def call() -> str:
        token = current_turn.set(turn)
        try:
            tool = tools.get(name) if name else tools
            return await tool.execute(**arguments)
        finally:
            current_turn.reset(token)

    return asyncio.run(call())


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A workspace made from the templates, with the operator's instructions and a file of the shared workspace."""
    monkeypatch.setenv("NANOBOT_CONFIG", str(tmp_path / "config.json"))
    ws = tmp_path / "workspace"
    init_workspace(ws)
    (ws / "AGENTS.md").write_text("Be kind to everyone.")
    (ws / "skills" / "greet").mkdir(parents=True)
    (ws / "skills" / "greet" / "SKILL.md").write_text("---\nname: greet\ndescription: greet\n---\nSay hi.")
    (ws / "shared-notes.txt").write_text(SHARED_SECRET)
    return ws


def isolated_tools(workspace: Path, sandbox: str = "none") -> ToolRegistry:
    config = ToolsConfig.model_validate(
        {"isolation": "conversation", "readOnlyInstructions": True, "exec": {"sandbox": sandbox}}
    )
    return workspace_tools(workspace, config)


# ---------------------------------------------------------------- the settings


def test_isolation_defaults_follow_the_bus_and_carry_memory_along() -> None:
    local, distributed = Config(), Config.model_validate({"bus": {"backend": "celery"}})
    assert (local.isolation, local.memory_scope) == ("shared", "shared")
    assert (distributed.isolation, distributed.memory_scope) == ("conversation", "conversation")
    chosen = Config.model_validate({"tools": {"isolation": "conversation"}})
    assert (chosen.isolation, chosen.memory_scope) == ("conversation", "conversation")
    assert Config.model_validate({"bus": {"backend": "celery"}, "tools": {"isolation": "shared"}}).isolation == "shared"
    assert agent_tools_config(distributed).isolation == "conversation"
    assert distributed.tools.isolation == "" and "isolation" in distributed.to_json_dict()["tools"]
    assert Config().tools.message.allow_other_chats is False
    assert Config.model_validate({"tools": {"message": {"allowOtherChats": True}}}).tools.message.allow_other_chats


def test_conversation_folders_never_collide() -> None:
    keys = ["telegram:1", "telegram_1", "api:a/b", "api:a_b", "api:a%2Fb", "x" * 300, "x" * 301]
    folders = {conversation_folder(Path("/ws"), key) for key in keys}
    assert len(folders) == len(keys)
    assert all(folder.parent == Path("/ws/conversations") and len(folder.name) <= 200 for folder in folders)


# ---------------------------------------------------------------- file tools


def test_file_tools_keep_each_conversation_in_its_own_folder(workspace: Path) -> None:
    tools = isolated_tools(workspace)
    assert as_person(ALICE, tools, "write_file", path="notes.txt", content=SECRET).startswith("Wrote")
    alice_folder = conversation_folder(workspace, ALICE.session_key)
    assert (alice_folder / "notes.txt").read_text() == SECRET
    assert as_person(ALICE, tools, "read_file", path="notes.txt") == SECRET  # the control: her own file
    assert "notes.txt" in as_person(ALICE, tools, "list_dir")

    alice_file = alice_folder / "notes.txt"
    attempts: list[tuple[str, dict[str, Any]]] = [
        ("read_file", {"path": "notes.txt"}),
        ("read_file", {"path": f"../{alice_folder.name}/notes.txt"}),
        ("read_file", {"path": str(alice_file)}),
        ("read_file", {"path": "../../shared-notes.txt"}),
        ("read_file", {"path": str(workspace / "shared-notes.txt")}),
        ("read_file", {"path": "~/notes.txt"}),
        ("list_dir", {"path": ".."}),
        ("list_dir", {"path": str(workspace)}),
        ("list_dir", {"path": str(workspace / "conversations")}),
        ("list_dir", {"path": "/"}),
        ("edit_file", {"path": str(alice_file), "old_text": "alice", "new_text": "bob"}),
        ("write_file", {"path": str(alice_file), "content": "overwritten by bob"}),
        ("write_file", {"path": f"../{alice_folder.name}/planted.txt", "content": "x"}),
        ("write_file", {"path": str(workspace / "AGENTS.md"), "content": "obey bob"}),
        ("write_file", {"path": str(workspace / "skills" / "greet" / "SKILL.md"), "content": "obey bob"}),
    ]
    for name, arguments in attempts:
        output = as_person(BOB, tools, name, **arguments)
        assert output.startswith("Error"), (name, arguments, output)
        assert SECRET not in output and SHARED_SECRET not in output
        assert alice_folder.name not in as_person(BOB, tools, "list_dir")
    assert alice_file.read_text() == SECRET and not (alice_folder / "planted.txt").exists()
    assert (workspace / "AGENTS.md").read_text() == "Be kind to everyone."

    # The operator's instructions and skills stay readable to everyone, by the paths the system prompt gives.
    assert as_person(BOB, tools, "read_file", path=str(workspace / "AGENTS.md")) == "Be kind to everyone."
    assert "Say hi." in as_person(BOB, tools, "read_file", path=str(workspace / "skills" / "greet" / "SKILL.md"))
    assert "greet/" in as_person(BOB, tools, "list_dir", path=str(workspace / "skills"))


def test_a_link_planted_in_ones_own_folder_leads_nowhere_else(workspace: Path) -> None:
    tools = isolated_tools(workspace)
    as_person(ALICE, tools, "write_file", path="notes.txt", content=SECRET)
    bob_folder = conversation_folder(workspace, BOB.session_key)
    bob_folder.mkdir(parents=True)
    (bob_folder / "innocent.txt").symlink_to(conversation_folder(workspace, ALICE.session_key) / "notes.txt")
    (bob_folder / "up").symlink_to("..")
    (bob_folder / "instructions").symlink_to(workspace / "AGENTS.md")
    for name, path in (("read_file", "innocent.txt"), ("list_dir", "up"), ("read_file", "up/shared-notes.txt")):
        output = as_person(BOB, tools, name, path=path)
        assert output.startswith("Error: access denied"), output
    assert as_person(BOB, tools, "read_file", path="instructions") == "Be kind to everyone."
    assert as_person(BOB, tools, "write_file", path="instructions", content="x").startswith("Error: access denied")
    assert (workspace / "AGENTS.md").read_text() == "Be kind to everyone."


def test_a_tool_call_outside_any_conversation_is_refused_under_isolation(workspace: Path) -> None:
    tools = isolated_tools(workspace)
    output = asyncio.run(tools.get("read_file").execute(path="shared-notes.txt"))
    assert output.startswith("Error") and SHARED_SECRET not in output


def test_a_conversations_folder_replaced_by_a_link_is_refused(workspace: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (workspace / "conversations").mkdir(exist_ok=True)
    conversation_folder(workspace, BOB.session_key).symlink_to(outside)
    output = as_person(BOB, isolated_tools(workspace), "write_file", path="x.txt", content="x")
    assert output.startswith("Error") and "link" in output
    assert list(outside.iterdir()) == []


def test_shared_workspace_tools_cannot_reach_the_conversations_folders(workspace: Path) -> None:
    as_person(ALICE, isolated_tools(workspace), "write_file", path="notes.txt", content=SECRET)
    shared = workspace_tools(workspace, ToolsConfig())
    folder = conversation_folder(workspace, ALICE.session_key)
    for path in (str(folder / "notes.txt"), f"conversations/{folder.name}/notes.txt"):
        output = as_person(BOB, shared, "read_file", path=path)
        assert output.startswith("Error: access denied") and SECRET not in output


def test_the_turn_of_a_cron_job_works_in_its_owners_folder(workspace: Path) -> None:
    tools = isolated_tools(workspace)
    as_person(ALICE, tools, "write_file", path="notes.txt", content=SECRET)
    job_turn = TurnContext(channel="telegram", chat_id="111", session_key="cron:abc", workspace_key="telegram:111")
    assert as_person(job_turn, tools, "read_file", path="notes.txt") == SECRET


# ---------------------------------------------------------------- exec


@needs_bwrap
def test_exec_in_the_sandbox_sees_only_its_own_conversation(workspace: Path) -> None:
    tools = isolated_tools(workspace, sandbox="bwrap")
    written = as_person(ALICE, tools, "exec", command=f"echo {SECRET} > secret.txt; cat secret.txt; echo $HOME")
    alice_folder = conversation_folder(workspace, ALICE.session_key)
    assert SECRET in written and str(alice_folder) in written, written
    assert (alice_folder / "secret.txt").read_text().strip() == SECRET

    bob_folder = conversation_folder(workspace, BOB.session_key)
    attacks = [
        "cat ../*/secret.txt",
        "ls -R ..; ls -la ../..",
        f"cat {alice_folder}/secret.txt",
        "find / -name 'secret*' 2>/dev/null; echo searched",
        f"grep -rs {SECRET[:10]} / --exclude-dir=usr --exclude-dir=proc --exclude-dir=sys; echo grepped",
        f"cat {workspace}/shared-notes.txt",
        "python3 -c \"import os;print(sorted(os.listdir(os.path.dirname(os.getcwd()))))\"",
    ]
    for command in attacks:
        output = as_person(BOB, tools, "exec", command=command)
        assert SECRET not in output and SHARED_SECRET not in output, (command, output)
        assert alice_folder.name in command or alice_folder.name not in output, (command, output)
    listing = as_person(BOB, tools, "exec", command=attacks[-1])
    assert listing.strip().endswith(f"['{bob_folder.name}']"), listing

    # Writable: its own folder only; the operator's instructions readable, not writable.
    assert "Be kind" in as_person(BOB, tools, "exec", command=f"cat {workspace}/AGENTS.md")
    refused = as_person(BOB, tools, "exec", command=f"echo obey > {workspace}/AGENTS.md")
    assert "Read-only file system" in refused and "Exit code" in refused
    # Anything else it writes outside its folder stays in the sandbox (its /tmp is a tmpfs of its own).
    as_person(BOB, tools, "exec", command=f"touch {workspace}/new.txt {workspace}/conversations/new.txt")
    assert not (workspace / "new.txt").exists() and not (workspace / "conversations" / "new.txt").exists()
    assert (workspace / "AGENTS.md").read_text() == "Be kind to everyone."
    assert as_person(BOB, tools, "exec", command="touch mine.txt && echo ok").strip().endswith("ok")
    assert (bob_folder / "mine.txt").exists() and not (workspace / "mine.txt").exists()
    assert not (bob_folder / "sessions").exists() and not (bob_folder / "memory").exists(), "no mount points made"
    assert "is outside this conversation's folder" in as_person(BOB, tools, "exec", command="ls", working_dir="..")


@needs_bwrap
def test_exec_in_the_sandbox_sees_no_host_account(workspace: Path) -> None:
    host_names = {line.split(":")[0] for line in Path("/etc/passwd").read_text().splitlines() if line}
    output = as_person(BOB, isolated_tools(workspace, sandbox="bwrap"), "exec",
                       command="python3 -c \"print(open(chr(47)+'etc/passwd').read())\"; cat /etc/group; id; whoami")
    names = {line.split(":")[0] for line in output.splitlines() if line.count(":") >= 3}
    assert names <= {"root", "nanobot", "nobody", "nogroup"}, output
    assert host_names - {"root", "nanobot", "nobody"}, "the host has accounts to hide"
    assert not (host_names - {"root", "nanobot", "nobody"}) & set(output.replace(":", " ").split())
    passwd, group = account_files("/h", uid=1000, gid=1000)
    assert passwd.decode().splitlines()[0] == "nanobot:x:1000:1000:nanobot:/h:/bin/sh"
    assert group.decode().splitlines() == ["nanobot:x:1000:", "nogroup:x:65534:"]


def test_exec_without_sandbox_stays_in_its_folder_as_far_as_text_can_tell(workspace: Path) -> None:
    tools = isolated_tools(workspace)
    as_person(ALICE, tools, "exec", command=f"echo {SECRET} > secret.txt")
    folder = conversation_folder(workspace, ALICE.session_key)
    assert (folder / "secret.txt").exists()
    for command in ("cat ../*/secret.txt", f"cat {folder}/secret.txt"):
        output = as_person(BOB, tools, "exec", command=command)
        assert output.startswith("Error: command refused") and SECRET not in output, output
    assert "is outside" in as_person(BOB, tools, "exec", command="ls", working_dir="..")


# ---------------------------------------------------------------- the message tool


def message_tool(workspace: Path, **options: Any) -> tuple[MessageTool, list[OutboundMessage]]:
    sent: list[OutboundMessage] = []

    async def send(message: OutboundMessage) -> None:
        sent.append(message)

    return MessageTool(send, workspace, **options), sent


def test_the_message_tool_stays_in_its_conversation(workspace: Path) -> None:
    tool, sent = message_tool(workspace, isolated=True)
    for target in ({"channel": "telegram", "chat_id": "111"}, {"chat_id": "111"}, {"channel": "whatsapp"}):
        output = as_person(BOB, tool, content="hello from bob", **target)
        assert output.startswith("Error: the message tool sends only to the chat of this conversation"), output
    assert sent == []
    assert as_person(BOB, tool, content="to myself").startswith("Message sent to telegram:222")
    assert as_person(BOB, tool, content="named", channel="telegram", chat_id="222").startswith("Message sent")
    assert [(m.channel, m.chat_id) for m in sent] == [("telegram", "222")] * 2
    assert asyncio.run(tool.execute(content="no turn", channel="telegram", chat_id="111")).startswith("Error")

    open_tool, sent = message_tool(workspace, allow_other_chats=True)
    assert as_person(BOB, open_tool, content="allowed", channel="telegram", chat_id="111").startswith("Message sent")
    assert [(m.channel, m.chat_id, m.reply_to) for m in sent] == [("telegram", "111", None)]


def test_the_message_tool_sends_files_only_from_its_own_folder(workspace: Path) -> None:
    files = isolated_tools(workspace)
    as_person(ALICE, files, "write_file", path="secret.txt", content=SECRET)
    as_person(BOB, files, "write_file", path="mine.txt", content="bob's own")
    tool, sent = message_tool(workspace, isolated=True)
    alice_file = conversation_folder(workspace, ALICE.session_key) / "secret.txt"
    for path in (str(alice_file), f"../{alice_file.parent.name}/secret.txt", str(workspace / "shared-notes.txt")):
        output = as_person(BOB, tool, content="here", media=[path])
        assert output.startswith("Error: access denied"), output
    assert as_person(BOB, tool, content="here", media=["mine.txt"]).startswith("Message sent")
    (copy,) = sent[0].media
    assert Path(copy).is_relative_to(conversation_folder(workspace, BOB.session_key) / "media" / "outbox")
    assert Path(copy).read_text() == "bob's own"


# ---------------------------------------------------------------- cron


def test_cron_jobs_belong_to_the_conversation_that_made_them(tmp_path: Path) -> None:
    service = CronService(tmp_path / "cron" / "jobs.json")
    tool = CronTool(service, isolated=True)
    made = as_person(ALICE, tool, action="add", message=f"remind me of {SECRET}", every_seconds=3600)
    job_id = made.split()[2]
    assert service.get_job(job_id).owner == "telegram:111"  # type: ignore[union-attr]
    assert job_id in as_person(ALICE, tool, action="list")

    assert as_person(BOB, tool, action="list") == "No scheduled jobs."
    assert as_person(BOB, tool, action="remove", job_id=job_id) == f"Error: no job {job_id}"
    assert service.get_job(job_id) is not None
    bob_job = as_person(BOB, tool, action="add", message="water the plants", every_seconds=60).split()[2]
    assert [j.id for j in service.list_jobs()] == [bob_job, job_id] or {j.id for j in service.list_jobs()} == {
        bob_job, job_id}
    assert SECRET not in as_person(BOB, tool, action="list")
    job = service.get_job(bob_job)
    assert job is not None and (job.payload.channel, job.payload.to) == ("telegram", "222")

    # A job's own turn manages its owner's jobs; an operator's job (no owner) belongs to no conversation.
    job_turn = TurnContext("telegram", "111", session_key=f"cron:{job_id}", workspace_key="telegram:111")
    assert job_id in as_person(job_turn, tool, action="list")
    operator_job = service.add_job("ops", service.get_job(job_id).schedule, "operator's")  # type: ignore[union-attr]
    assert operator_job.id not in as_person(ALICE, tool, action="list")
    assert as_person(ALICE, tool, action="remove", job_id=operator_job.id).startswith("Error")
    assert as_person(ALICE, tool, action="remove", job_id=job_id) == f"Removed job {job_id}"

    shared = CronTool(service)  # the shared workspace's way (upstream): one list for everybody
    assert operator_job.id in as_person(BOB, shared, action="list")
    stored = json.loads((tmp_path / "cron" / "jobs.json").read_text())["jobs"]
    assert {j["id"]: j.get("owner") for j in stored} == {bob_job: "telegram:222", operator_job.id: None}
    assert "owner" not in next(j for j in stored if j["id"] == operator_job.id), "operator's jobs written as before"


# ---------------------------------------------------------------- through the agent loop


def test_agent_turns_and_subagents_of_two_people_stay_apart(fake_llm: FakeLLM, workspace: Path) -> None:
    """Local mode with `tools.isolation: conversation`: the whole loop, the simulated LLM asking for the tools."""
    fake_llm.add_rule(Rule(match="keep my secret", tool_calls=[
        {"name": "write_file", "arguments": {"path": "notes.txt", "content": SECRET}}]))
    fake_llm.add_rule(Rule(match="what is in notes.txt", tool_calls=[
        {"name": "read_file", "arguments": {"path": "notes.txt"}}]))
    fake_llm.add_rule(Rule(match="research in the background", tool_calls=[
        {"name": "spawn", "arguments": {"task": "subagent: write the report"}}]))
    fake_llm.add_rule(Rule(match="subagent: write the report", tool_calls=[
        {"name": "write_file", "arguments": {"path": "report.txt", "content": "the report"}}]))
    fake_llm.add_rule(Rule(match="", when_last_role="tool", content="done", times=None))
    config = Config.model_validate({"tools": {"isolation": "conversation"},
                                    "agents": {"defaults": {"workspace": str(workspace)}}})
    provider = OpenAICompatProvider(api_key="k", api_base=fake_llm.base_url, default_model="m")

    async def scenario() -> None:
        loop = AgentLoop.from_config(config, MessageBus(), provider)
        try:
            await loop.process_direct("keep my secret", session_key="telegram:111", channel="telegram", chat_id="111")
            await loop.process_direct("what is in notes.txt", session_key="telegram:222", channel="telegram",
                                      chat_id="222")
            await loop.process_direct("research in the background", session_key="telegram:222",
                                      channel="telegram", chat_id="222")
            report = await asyncio.wait_for(loop.bus.consume_inbound(), 20)  # the subagent's, when it is done
            assert report.channel == "system"
        finally:
            await loop.close()

    asyncio.run(scenario())
    assert (conversation_folder(workspace, "telegram:111") / "notes.txt").read_text() == SECRET
    bob_read = next(r for r in fake_llm.requests if r.last_user_text == "what is in notes.txt"
                    and r.messages[-1].get("role") == "tool")
    assert SECRET not in json.dumps(bob_read.messages) and "file not found" in bob_read.messages[-1]["content"]
    assert (conversation_folder(workspace, "telegram:222") / "report.txt").read_text() == "the report"
    alice_prompt = next(r for r in fake_llm.requests if r.last_user_text == "keep my secret").messages[0]["content"]
    assert f"Workspace: {conversation_folder(workspace.resolve(), 'telegram:111')} " in alice_prompt
    assert not (workspace / "notes.txt").exists() and not (workspace / "report.txt").exists()


def test_a_subagent_task_on_a_worker_works_in_its_conversations_folder(fake_llm: FakeLLM, workspace: Path) -> None:
    fake_llm.add_rule(Rule(match="subagent job", tool_calls=[
        {"name": "write_file", "arguments": {"path": "found.txt", "content": "found"}}]))
    fake_llm.add_rule(Rule(match="subagent job", when_last_role="tool", content="wrote it"))
    provider = OpenAICompatProvider(api_key="k", api_base=fake_llm.base_url, default_model="m")
    job = SubagentTask.new("subagent job", None, "telegram", "111", "cron:j1", workspace_key="telegram:111")
    config = ToolsConfig.model_validate({"isolation": "conversation"})

    async def scenario() -> str:
        try:
            report = await run_subagent(job, provider, workspace, config, model="m")
            return report.content
        finally:
            await provider.close()

    assert "wrote it" in asyncio.run(scenario())
    assert (conversation_folder(workspace, "telegram:111") / "found.txt").read_text() == "found"
    system_prompt = next(r for r in fake_llm.requests if r.last_user_text == "subagent job").messages[0]["content"]
    assert str(conversation_folder(workspace, "telegram:111")) in system_prompt
