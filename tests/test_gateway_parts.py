"""Gateway wiring in one process: cron delivery, progress filtering, skills, the cron tool."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nanobot.agent.loop import AgentLoop
from nanobot.agent.skills import SkillsLoader
from nanobot.bus.events import OutboundMessage
from nanobot.bus.queue import MessageBus
from nanobot.channels.manager import ChannelManager
from nanobot.config.schema import ChannelsConfig
from nanobot.cron.service import CronService
from nanobot.testing.llm_server import FakeLLM, Rule
from tests.conftest import make_provider


def test_cron_job_fires_in_its_session_and_delivers(fake_llm: FakeLLM, workspace: Path, tmp_path: Path) -> None:
    from nanobot.gateway.service import cron_job_runner

    async def scenario() -> OutboundMessage:
        bus = MessageBus()
        cron = CronService(tmp_path / "cron" / "jobs.json")
        agent = AgentLoop(bus, make_provider(fake_llm), workspace, cron_service=cron)
        cron.on_job = cron_job_runner(agent, bus)
        await cron.start()
        try:
            from nanobot.cron.types import CronSchedule

            job = cron.add_job(
                name="water",
                schedule=CronSchedule(kind="every", every_ms=200),
                message="drink water",
                deliver=True,
                channel="telegram",
                to="777",
            )
            out = await asyncio.wait_for(bus.consume_outbound(), 10)
            assert (workspace / "sessions" / f"cron_{job.id}.jsonl").exists()
            return out
        finally:
            await cron.stop()
            await agent.close()

    out = asyncio.run(scenario())
    assert (out.channel, out.chat_id, out.content) == ("telegram", "777", "echo: drink water")


def test_agent_schedules_with_the_cron_tool(fake_llm: FakeLLM, workspace: Path, tmp_path: Path) -> None:
    fake_llm.add_rule(
        Rule(
            match="remind me",
            tool_calls=[{"name": "cron", "arguments": {"action": "add", "message": "stretch", "every_seconds": 3600}}],
        )
    )
    fake_llm.add_rule(Rule(match="remind me", when_last_role="tool", content="Done."))

    async def scenario() -> CronService:
        cron = CronService(tmp_path / "jobs.json")
        agent = AgentLoop(MessageBus(), make_provider(fake_llm), workspace, cron_service=cron)
        try:
            await agent.process_direct("remind me hourly", session_key="api:x", channel="api", chat_id="x")
        finally:
            await agent.close()
        return cron

    jobs = asyncio.run(scenario()).list_jobs()
    assert len(jobs) == 1
    job = jobs[0]
    assert (job.payload.message, job.payload.channel, job.payload.to, job.payload.deliver) == (
        "stretch",
        "api",
        "x",
        True,
    )
    assert job.schedule.every_ms == 3_600_000


def test_progress_and_tool_hints_follow_the_config() -> None:
    progress = OutboundMessage("api", "c", "thinking", metadata={"_progress": True, "_tool_hint": False})
    hint = OutboundMessage("api", "c", 'read_file("x")', metadata={"_progress": True, "_tool_hint": True})
    final = OutboundMessage("api", "c", "answer")
    default = ChannelManager(ChannelsConfig(), MessageBus(), channels={})
    assert default.wants(progress) and not default.wants(hint) and default.wants(final)
    quiet = ChannelManager(ChannelsConfig(send_progress=False, send_tool_hints=True), MessageBus(), channels={})
    assert not quiet.wants(progress) and quiet.wants(hint) and quiet.wants(final)


def test_skills_workspace_overrides_builtin_and_always_skills_are_inlined(workspace: Path) -> None:
    custom = workspace / "skills" / "weather"
    custom.mkdir(parents=True)
    (custom / "SKILL.md").write_text("---\nname: weather\ndescription: my own weather\n---\nUse my station.\n")
    loader = SkillsLoader(workspace)
    skills = {s.name: s for s in loader.list_skills()}
    assert skills["weather"].source == "workspace" and skills["weather"].description == "my own weather"
    assert {"memory", "cron", "skill-creator"} <= set(skills)
    summary = loader.summary()
    assert "### Skill: memory" in summary  # always-on: inlined
    assert 'name="weather"' in summary and "my own weather" in summary
