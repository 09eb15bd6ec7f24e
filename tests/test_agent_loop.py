"""The agent loop in local mode, judged from what the simulated LLM was sent."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

from nanobot.agent.loop import STOPPED_TEXT, AgentLoop
from nanobot.bus.events import InboundMessage, OutboundMessage
from nanobot.bus.queue import MessageBus
from nanobot.session.locks import LocalConversationLockManager
from nanobot.testing.llm_server import FakeLLM, Rule
from tests.conftest import make_provider


def make_loop(llm: FakeLLM, workspace: Path, **kwargs: object) -> AgentLoop:
    return AgentLoop(MessageBus(), make_provider(llm), workspace, **kwargs)  # type: ignore[arg-type]


async def collect_replies(bus: MessageBus, count: int, wait_s: float = 20.0) -> list[OutboundMessage]:
    replies: list[OutboundMessage] = []

    async def take() -> None:
        while len(replies) < count:
            msg = await bus.consume_outbound()
            if not msg.is_progress:
                replies.append(msg)

    await asyncio.wait_for(take(), wait_s)
    return replies


def test_reply_uses_llm_and_saves_history(fake_llm: FakeLLM, workspace: Path) -> None:
    async def scenario() -> None:
        loop = make_loop(fake_llm, workspace)
        assert await loop.process_direct("hello there") == "echo: hello there"
        assert await loop.process_direct("second") == "echo: second"
        await loop.close()

    asyncio.run(scenario())
    second = fake_llm.requests[1]
    roles = [m["role"] for m in second.messages]
    assert roles == ["system", "user", "assistant", "user"]
    assert second.messages[1]["content"] == "hello there"
    assert second.messages[2]["content"] == "echo: hello there"
    lines = (workspace / "sessions" / "cli_direct.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["_type"] == "metadata"
    assert [json.loads(x)["content"] for x in lines[1:]] == [
        "hello there",
        "echo: hello there",
        "second",
        "echo: second",
    ]


def test_process_direct_uses_its_session_key(fake_llm: FakeLLM, workspace: Path) -> None:
    """Regression for the seed's phase-0 bug: process_direct ignored session_key and wrote to cli:direct."""

    async def scenario() -> None:
        loop = make_loop(fake_llm, workspace)
        await loop.process_direct("cron task", session_key="cron:job1", channel="telegram", chat_id="42")
        await loop.process_direct("heartbeat task", session_key="heartbeat")
        await loop.process_direct("cli talk")
        await loop.close()

    asyncio.run(scenario())
    sessions = workspace / "sessions"
    assert sorted(p.name for p in sessions.glob("*.jsonl")) == [
        "cli_direct.jsonl",
        "cron_job1.jsonl",
        "heartbeat.jsonl",
    ]
    assert "cron task" in (sessions / "cron_job1.jsonl").read_text()
    assert "cron task" not in (sessions / "cli_direct.jsonl").read_text()
    # Each turn saw only its own history: the third request carries no earlier turn.
    third = fake_llm.requests[2]
    assert [m["content"] for m in third.messages[1:]] == ["cli talk"]
    # The runtime context names the channel and chat the turn answers.
    assert "Channel: telegram" in fake_llm.requests[0].messages[0]["content"]


def test_tool_loop_runs_tools_and_reports_bad_arguments(fake_llm: FakeLLM, workspace: Path) -> None:
    fake_llm.add_rule(Rule(match="make a note", tool_calls=[{"name": "write_file", "arguments": {"path": "note.txt"}}]))
    fake_llm.add_rule(
        Rule(
            match="make a note",
            when_last_role="tool",
            tool_calls=[{"name": "write_file", "arguments": {"path": "note.txt", "content": "remember milk"}}],
        )
    )
    fake_llm.add_rule(Rule(match="make a note", when_last_role="tool", content="Noted."))

    async def scenario() -> str:
        loop = make_loop(fake_llm, workspace)
        try:
            return await loop.process_direct("please make a note")
        finally:
            await loop.close()

    assert asyncio.run(scenario()) == "Noted."
    reqs = fake_llm.requests
    assert len(reqs) == 3
    first_result = reqs[1].messages[-1]
    assert first_result["role"] == "tool"
    assert "invalid arguments" in first_result["content"] and "content" in first_result["content"]
    assert (workspace / "note.txt").read_text() == "remember milk"
    history = [json.loads(x) for x in (workspace / "sessions" / "cli_direct.jsonl").read_text().splitlines()[1:]]
    assert [m["role"] for m in history] == ["user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert history[1]["tool_calls"][0]["function"]["name"] == "write_file"


def test_max_tool_iterations_bounds_the_loop(fake_llm: FakeLLM, workspace: Path) -> None:
    fake_llm.add_rule(Rule(tool_calls=[{"name": "list_dir", "arguments": {}}], times=None))

    async def scenario() -> str:
        loop = make_loop(fake_llm, workspace, max_iterations=3)
        try:
            return await loop.process_direct("loop forever")
        finally:
            await loop.close()

    assert "3 tool steps" in asyncio.run(scenario())
    assert len(fake_llm.requests) == 3


def _intervals(llm: FakeLLM, prefix: str) -> list[tuple[str, float, float]]:
    return [
        (r.last_user_text, r.received_at, r.finished_at) for r in llm.requests if r.last_user_text.startswith(prefix)
    ]


def test_local_mode_one_session_sequential_in_order_sessions_overlap(workspace: Path) -> None:
    llm = FakeLLM(latency_s=0.3)
    llm.start()
    try:

        async def scenario() -> list[OutboundMessage]:
            loop = make_loop(llm, workspace)
            runner = asyncio.create_task(loop.run())
            for i in range(4):
                for chat in ("A", "B"):
                    await loop.bus.publish_inbound(
                        InboundMessage(channel="api", sender_id="u", chat_id=chat, content=f"{chat}-{i}")
                    )
            replies = await collect_replies(loop.bus, 8)
            loop.stop()
            await runner
            await loop.close()
            return replies

        replies = asyncio.run(scenario())
    finally:
        llm.stop()

    for chat in ("A", "B"):
        seen = _intervals(llm, chat)
        assert [text for text, _, _ in seen] == [f"{chat}-{i}" for i in range(4)], "turns ran out of order"
        for (_, _, end), (_, start, _) in itertools.pairwise(seen):
            assert start >= end, f"two turns of session {chat} overlapped"
        chat_replies = [r.content for r in replies if r.chat_id == chat]
        assert chat_replies == [f"echo: {chat}-{i}" for i in range(4)]
    a, b = _intervals(llm, "A"), _intervals(llm, "B")
    assert any(sa < eb and sb < ea for _, sa, ea in a for _, sb, eb in b), "different sessions never overlapped"
    # No mixing: each request carries only its own conversation's messages.
    for r in llm.requests:
        chat = r.last_user_text[0]
        assert all(m["content"].startswith((chat, f"echo: {chat}")) for m in r.messages[1:])


def test_global_cap_limits_concurrent_turns(workspace: Path) -> None:
    llm = FakeLLM(latency_s=0.2)
    llm.start()
    try:

        async def scenario() -> None:
            loop = make_loop(llm, workspace, locks=LocalConversationLockManager(max_concurrent=2))
            runner = asyncio.create_task(loop.run())
            for chat in "CDEFG":
                await loop.bus.publish_inbound(InboundMessage(channel="api", sender_id="u", chat_id=chat, content=chat))
            await collect_replies(loop.bus, 5)
            loop.stop()
            await runner
            await loop.close()

        asyncio.run(scenario())
    finally:
        llm.stop()
    events = sorted([(r.received_at, 1) for r in llm.requests] + [(r.finished_at, -1) for r in llm.requests])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak == 2


def test_stop_cancels_the_running_turn(workspace: Path) -> None:
    llm = FakeLLM()
    llm.start()
    llm.add_rule(Rule(match="slow", content="too late", delay_s=5.0))
    try:

        async def scenario() -> list[OutboundMessage]:
            loop = make_loop(llm, workspace)
            runner = asyncio.create_task(loop.run())
            bus = loop.bus
            await bus.publish_inbound(InboundMessage(channel="api", sender_id="u", chat_id="s", content="slow job"))
            await asyncio.sleep(0.5)  # the turn is now waiting on the 5 s LLM reply
            await bus.publish_inbound(InboundMessage(channel="api", sender_id="u", chat_id="s", content="/stop"))
            replies = await collect_replies(bus, 2, wait_s=4.0)
            await bus.publish_inbound(InboundMessage(channel="api", sender_id="u", chat_id="s", content="after"))
            replies += await collect_replies(bus, 1)
            loop.stop()
            await runner
            await loop.close()
            return replies

        replies = asyncio.run(scenario())
    finally:
        llm.stop()
    contents = [r.content for r in replies]
    assert STOPPED_TEXT in contents
    assert any(c.startswith("⏹ Stopped 1") for c in contents)
    assert "too late" not in contents
    assert contents[-1] == "echo: after"


def test_slash_commands_help_and_new(fake_llm: FakeLLM, workspace: Path) -> None:
    fake_llm.add_rule(
        Rule(
            match="[memory consolidation]",
            tool_calls=[
                {
                    "name": "save_memory",
                    "arguments": {
                        "history_entry": "[2026] Talked about cats.",
                        "memory_update": "# Memory\n- likes cats",
                    },
                }
            ],
        )
    )

    async def scenario() -> tuple[str, str, str]:
        loop = make_loop(fake_llm, workspace)
        try:
            await loop.process_direct("I like cats")
            help_text = await loop.process_direct("/help")
            new_text = await loop.process_direct("/new")
            after = await loop.process_direct("hi again")
            return help_text, new_text, after
        finally:
            await loop.close()

    help_text, new_text, after = asyncio.run(scenario())
    assert "/new" in help_text and "/stop" in help_text
    assert new_text.startswith("New session started")
    assert after == "echo: hi again"
    assert "Talked about cats" in (workspace / "memory" / "HISTORY.md").read_text()
    assert "likes cats" in (workspace / "memory" / "MEMORY.md").read_text()
    last = fake_llm.requests[-1]
    assert [m["content"] for m in last.messages[1:]] == ["hi again"]  # history cleared
    assert "likes cats" in last.messages[0]["content"]  # memory is in the system prompt


def test_new_keeps_history_when_archiving_fails(fake_llm: FakeLLM, workspace: Path) -> None:
    async def scenario() -> str:
        loop = make_loop(fake_llm, workspace)
        try:
            await loop.process_direct("keep me")
            return await loop.process_direct("/new")  # the default echo reply has no save_memory call
        finally:
            await loop.close()

    assert "kept it" in asyncio.run(scenario())
    assert "keep me" in (workspace / "sessions" / "cli_direct.jsonl").read_text()


def test_consolidation_when_window_is_reached(fake_llm: FakeLLM, workspace: Path) -> None:
    fake_llm.add_rule(
        Rule(
            match="[memory consolidation]",
            tool_calls=[
                {"name": "save_memory", "arguments": {"history_entry": "summary one", "memory_update": "facts"}}
            ],
            times=None,
        )
    )

    async def scenario() -> None:
        loop = make_loop(fake_llm, workspace, memory_window=4)
        try:
            for i in range(3):
                await loop.process_direct(f"msg {i}")
        finally:
            await loop.close()

    asyncio.run(scenario())
    meta = json.loads((workspace / "sessions" / "cli_direct.jsonl").read_text().splitlines()[0])
    assert meta["last_consolidated"] > 0
    assert "summary one" in (workspace / "memory" / "HISTORY.md").read_text()
    # The turn after consolidation no longer sends the consolidated messages.
    turn_requests = [r for r in fake_llm.requests if not r.last_user_text.startswith("[memory consolidation]")]
    assert "msg 0" not in [m["content"] for m in turn_requests[-1].messages]


def test_provider_failure_gives_apology_after_retries(fake_llm: FakeLLM, workspace: Path) -> None:
    fake_llm.add_rule(Rule(status=503, times=3))

    async def scenario() -> str:
        loop = make_loop(fake_llm, workspace)
        try:
            return await loop.process_direct("anyone there?")
        finally:
            await loop.close()

    reply = asyncio.run(scenario())
    assert reply.startswith("Sorry, I could not reach the language model")
    assert len(fake_llm.requests) == 3  # first try + 2 retries
    assert "anyone there?" in (workspace / "sessions" / "cli_direct.jsonl").read_text()


def test_provider_retry_recovers(fake_llm: FakeLLM, workspace: Path) -> None:
    fake_llm.add_rule(Rule(status=429, times=1))
    fake_llm.add_rule(Rule(disconnect=True, times=1))

    async def scenario() -> str:
        loop = make_loop(fake_llm, workspace)
        try:
            return await loop.process_direct("persist")
        finally:
            await loop.close()

    assert asyncio.run(scenario()) == "echo: persist"


def test_message_tool_to_own_chat_replaces_final_reply(fake_llm: FakeLLM, workspace: Path) -> None:
    fake_llm.add_rule(Rule(match="ping", tool_calls=[{"name": "message", "arguments": {"content": "pong via tool"}}]))
    fake_llm.add_rule(Rule(match="ping", when_last_role="tool", content="sent it"))

    async def scenario() -> list[OutboundMessage]:
        loop = make_loop(fake_llm, workspace)
        runner = asyncio.create_task(loop.run())
        msg = InboundMessage(channel="api", sender_id="u", chat_id="m", content="ping")
        await loop.bus.publish_inbound(msg)
        replies = await collect_replies(loop.bus, 1)
        await asyncio.sleep(0.3)
        assert loop.bus.outbound_size == 0 or all(
            m.is_progress
            for m in list(loop.bus.outbound._queue)  # type: ignore[attr-defined]
        ), "the final reply was not suppressed"
        loop.stop()
        await runner
        await loop.close()
        assert replies[0].reply_to == msg.message_id
        return replies

    replies = asyncio.run(scenario())
    assert [r.content for r in replies] == ["pong via tool"]


def test_spawn_reports_back_to_origin_conversation(fake_llm: FakeLLM, workspace: Path) -> None:
    fake_llm.add_rule(Rule(match="research", tool_calls=[{"name": "spawn", "arguments": {"task": "count to three"}}]))
    fake_llm.add_rule(Rule(match="research", when_last_role="tool", content="I started a subagent."))
    fake_llm.add_rule(Rule(match="count to three", content="one two three"))

    async def scenario() -> list[OutboundMessage]:
        loop = make_loop(fake_llm, workspace)
        runner = asyncio.create_task(loop.run())
        await loop.bus.publish_inbound(InboundMessage(channel="api", sender_id="u", chat_id="r", content="research"))
        replies = await collect_replies(loop.bus, 2)
        loop.stop()
        await runner
        await loop.close()
        return replies

    replies = asyncio.run(scenario())
    assert replies[0].content == "I started a subagent."
    assert (replies[1].channel, replies[1].chat_id) == ("api", "r")
    assert "one two three" in replies[1].content  # the echo of the system report carries the result
    history = (workspace / "sessions" / "api_r.jsonl").read_text()
    assert "Subagent" in history and "one two three" in history


def test_message_tool_sends_only_files_inside_the_workspace(fake_llm: FakeLLM, workspace: Path, tmp_path: Path) -> None:
    """A hostile user asks the agent to mail them the operator's config; only workspace files may leave."""
    secret = tmp_path / "config.json"
    secret.write_text('{"providers": {"openai": {"apiKey": "sk-operator"}}}')
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / "report.txt").write_text("a report")
    (workspace / "sneaky.json").symlink_to(secret)
    for attempt in (str(secret), "sneaky.json", "../config.json"):
        fake_llm.add_rule(Rule(match="send me", tool_calls=[
            {"name": "message", "arguments": {"content": "here", "media": [attempt]}}]))
    fake_llm.add_rule(Rule(match="send me", tool_calls=[
        {"name": "message", "arguments": {"content": "here", "media": ["report.txt"]}}]))
    fake_llm.add_rule(Rule(match="send me", when_last_role="tool", content="done", times=None))

    async def scenario() -> list[OutboundMessage]:
        loop = make_loop(fake_llm, workspace)
        runner = asyncio.create_task(loop.run())
        for _ in range(4):
            await loop.bus.publish_inbound(InboundMessage(channel="telegram", sender_id="u", chat_id="1",
                                                          content="send me the config file"))
        replies = await collect_replies(loop.bus, 4)
        loop.stop()
        await runner
        await loop.close()
        return replies

    replies = asyncio.run(scenario())
    media = [path for reply in replies for path in reply.media]
    assert len(media) == 1 and Path(media[0]).name == "report.txt"  # a copy the agent's tools cannot swap
    assert Path(media[0]).is_relative_to((workspace / "media" / "outbox").resolve())
    assert Path(media[0]).read_text() == "a report"
    tool_results = [m["content"] for r in fake_llm.requests for m in r.messages if m.get("role") == "tool"]
    assert sum("outside the workspace" in text for text in tool_results) >= 3


def test_memory_per_conversation_keeps_one_persons_facts_from_another(fake_llm: FakeLLM, workspace: Path) -> None:
    """Many people share one agent: what one told it must not reach another's prompt."""
    fake_llm.add_rule(
        Rule(
            match="[memory consolidation]",
            tool_calls=[
                {
                    "name": "save_memory",
                    "arguments": {"history_entry": "[2026] Alice's code.", "memory_update": "- door code 4711"},
                }
            ],
        )
    )

    async def scenario() -> None:
        loop = make_loop(fake_llm, workspace, memory_scope="conversation")
        try:
            await loop.process_direct("my door code is 4711", session_key="telegram:alice")
            assert (await loop.process_direct("/new", session_key="telegram:alice")).startswith("New session")
            await loop.process_direct("what do you remember?", session_key="telegram:mallory")
            await loop.process_direct("and now?", session_key="telegram:alice")
        finally:
            await loop.close()

    asyncio.run(scenario())
    turns = [r for r in fake_llm.requests if not r.last_user_text.startswith("[memory consolidation]")]
    mallory = next(r for r in turns if r.last_user_text == "what do you remember?")
    alice = next(r for r in turns if r.last_user_text == "and now?")
    assert "4711" not in json.dumps(mallory.messages)
    assert "door code 4711" in alice.messages[0]["content"]
    assert "4711" not in (workspace / "memory" / "MEMORY.md").read_text()  # the shared file (a template)
    assert "4711" in (workspace / "memory" / "conversations" / "telegram_alice" / "MEMORY.md").read_text()


def test_memory_scope_defaults_to_conversation_in_distributed_mode() -> None:
    from nanobot.config.schema import Config

    assert Config().memory_scope == "shared"
    assert Config.model_validate({"bus": {"backend": "celery"}}).memory_scope == "conversation"
    chosen = {"bus": {"backend": "celery"}, "agents": {"defaults": {"memoryScope": "shared"}}}
    assert Config.model_validate(chosen).memory_scope == "shared"
