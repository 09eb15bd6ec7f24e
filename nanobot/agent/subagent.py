"""Subagents: background agents started by the `spawn` tool.

A subagent works alone with the workspace tools, then reports back to the conversation that spawned
it with an inbound `system` message, which runs as a normal turn of that conversation (under its lock,
in order) so the main agent can tell the person what came of it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

from nanobot.agent.runner import run_tool_loop
from nanobot.agent.toolset import workspace_tools
from nanobot.agent.turn import TurnContext, current_turn, workspace_key_of
from nanobot.agent.workspace import conversation_folder
from nanobot.bus.events import InboundMessage
from nanobot.bus.queue import MessageBus
from nanobot.config.schema import ToolsConfig
from nanobot.providers.base import LLMProvider

log = logging.getLogger(__name__)

SUBAGENT_SYSTEM = (
    "You are a subagent of nanobot, working alone on one task in the background. Workspace: {workspace}. "
    "Use your tools, then answer with a clear, complete report of what you did and found. "
    "You cannot talk to the user; your final answer is passed to the main agent."
)


@dataclass(frozen=True)
class SubagentTask:
    id: str
    task: str
    label: str
    channel: str
    chat_id: str
    session_key: str
    # Whose folder its tools work in under `tools.isolation: conversation` (see TurnContext.workspace_key).
    workspace_key: str | None = None

    @classmethod
    def new(
        cls, task: str, label: str | None, channel: str, chat_id: str, session_key: str,
        workspace_key: str | None = None,
    ) -> SubagentTask:
        """A new job with a fresh id; its label defaults to the task's start."""
        return cls(uuid.uuid4().hex[:8], task, label or task[:30], channel, chat_id, session_key, workspace_key)

    def turn(self) -> TurnContext:
        """The turn its tools see: the conversation that spawned it (its chat, and under isolation its folder)."""
        return TurnContext(self.channel, self.chat_id, self.session_key, workspace_key=self.workspace_key)


def report_message(job: SubagentTask, result: str, ok: bool) -> InboundMessage:
    """The inbound system message that brings a subagent's result back to its conversation."""
    status = "finished" if ok else "failed"
    content = (
        f"[Subagent '{job.label}' {status}]\n\nTask: {job.task}\n\nResult:\n{result}\n\n"
        "Tell the user what came of it, briefly and in your own words."
    )
    return InboundMessage(
        channel="system",
        sender_id="subagent",
        chat_id=f"{job.channel}:{job.chat_id}",
        content=content,
        session_key_override=job.session_key,
        metadata={"origin_channel": job.channel, "origin_chat_id": job.chat_id, "subagent_id": job.id},
    )


async def run_subagent(
    job: SubagentTask,
    provider: LLMProvider,
    workspace: Path,
    tools_config: ToolsConfig,
    *,
    model: str,
    max_iterations: int = 15,
    max_tokens: int = 4096,
    temperature: float = 0.1,
) -> InboundMessage:
    """Run one subagent to the end and return its report message (never raises, except cancellation). Its tools
    work where the spawning conversation's do (its own folder under `tools.isolation: conversation`)."""
    tools = workspace_tools(workspace, tools_config)
    if tools_config.isolation == "conversation":
        workspace = conversation_folder(workspace, workspace_key_of(job.turn()))
    messages = [
        {"role": "system", "content": SUBAGENT_SYSTEM.format(workspace=workspace)},
        {"role": "user", "content": job.task},
    ]
    token = current_turn.set(job.turn())
    try:
        result = await run_tool_loop(
            provider, messages, tools, model=model, max_iterations=max_iterations,
            max_tokens=max_tokens, temperature=temperature, log_prefix=f"subagent={job.id} ",
        )
        return report_message(job, result.content, ok=not result.error)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.exception("subagent=%s session=%s failed", job.id, job.session_key)
        return report_message(job, f"{type(exc).__name__}: {exc}", ok=False)
    finally:
        current_turn.reset(token)


class SubagentManager:
    """Runs subagents as asyncio tasks in this process (local mode)."""

    def __init__(
        self, provider: LLMProvider, workspace: Path, bus: MessageBus, tools_config: ToolsConfig, model: str
    ) -> None:
        self.provider = provider
        self.workspace = workspace
        self.bus = bus
        self.tools_config = tools_config
        self.model = model
        self._running: dict[str, tuple[str, asyncio.Task[None]]] = {}  # id -> (session_key, task)

    async def spawn(
        self, task: str, label: str | None, channel: str, chat_id: str, session_key: str,
        workspace_key: str | None = None,
    ) -> str:
        job = SubagentTask.new(task, label, channel, chat_id, session_key, workspace_key)
        runner = asyncio.create_task(self._run(job), name=f"subagent-{job.id}")
        self._running[job.id] = (session_key, runner)
        runner.add_done_callback(lambda _t: self._running.pop(job.id, None))
        log.info("subagent=%s session=%s spawned", job.id, session_key)
        return f"Subagent '{job.label}' started (id {job.id}); it will report back when done."

    async def _run(self, job: SubagentTask) -> None:
        report = await run_subagent(job, self.provider, self.workspace, self.tools_config, model=self.model)
        await self.bus.publish_inbound(report)

    def cancel_session(self, session_key: str) -> int:
        """Cancel this conversation's running subagents; returns how many."""
        tasks = [t for key, t in self._running.values() if key == session_key and not t.done()]
        for t in tasks:
            t.cancel()
        return len(tasks)

    @property
    def running_count(self) -> int:
        return len(self._running)
