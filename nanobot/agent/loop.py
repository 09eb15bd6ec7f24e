"""The agent loop: take a message, run its turn under the conversation lock, send the reply.

One turn = load the conversation's history, ask the LLM (running the tools it calls), publish the reply,
save the history. Turns of one conversation run one at a time and in arrival order; different
conversations run concurrently (see nanobot/session/locks.py).

Every turn is measured (`TurnMeter`): queue and lock wait, duration, turns running, and its outcome in
`nanobot_turns_total` (ok, error, lock_lost here; stopped for a /stop in local mode; distributed mode's drain
counts the rest).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from nanobot.agent.context import ContextBuilder
from nanobot.agent.runner import ProgressCallback, run_tool_loop
from nanobot.agent.subagent import SubagentManager
from nanobot.agent.tools.message import MessageTool
from nanobot.agent.tools.registry import ToolRegistry
from nanobot.agent.tools.spawn import Spawner, SpawnTool
from nanobot.agent.toolset import agent_tools_config, is_isolated, workspace_tools
from nanobot.agent.turn import TurnContext, current_turn
from nanobot.agent.workspace import init_workspace
from nanobot.bus.events import InboundMessage, OutboundMessage
from nanobot.bus.queue import MessageBus
from nanobot.config.schema import Config, ToolsConfig
from nanobot.cron.types import CRON_OWNER_KEY
from nanobot.logs import log_context
from nanobot.metrics.instruments import LOCK_WAIT, QUEUE_WAIT, TURN_DURATION, TURNS_RUNNING, count_turn
from nanobot.providers.base import LLMProvider
from nanobot.session.factory import SessionStore
from nanobot.session.locks import ConversationLockManager, LocalConversationLockManager, LockLease, LockLost
from nanobot.session.manager import Session, SessionManager

if TYPE_CHECKING:
    from nanobot.admission.gate import Admission
    from nanobot.cron.service import CronService

log = logging.getLogger(__name__)

HELP_TEXT = (
    "nanobot commands:\n"
    "/new — archive this conversation to memory and start a fresh one\n"
    "/stop — stop the turn that is running in this conversation\n"
    "/help — this list"
)
STOPPED_TEXT = "⏹ Stopped."
ERROR_TEXT = "Sorry, something went wrong while handling your message ({error}). Please try again."

# The turn outcomes this module records (drain records the others).
TURN_OK, TURN_ERROR, TURN_STOPPED, TURN_LOCK_LOST = "ok", "error", "stopped", "lock_lost"


def queue_wait_s(msg: InboundMessage) -> float:
    """Seconds from the message's arrival at its channel until now (never negative: clocks may step)."""
    stamp = msg.timestamp
    return max(0.0, (datetime.now(stamp.tzinfo) - stamp).total_seconds())


class TurnMeter:
    """The metrics of one turn: created when it starts (queue and lock wait, turns running), `finish`ed once
    on every exit (duration, and the outcome when there is one to count)."""

    __slots__ = ("_done", "started")

    def __init__(self, msg: InboundMessage, lock_wait_s: float) -> None:
        QUEUE_WAIT.observe(queue_wait_s(msg))
        LOCK_WAIT.observe(lock_wait_s)
        TURNS_RUNNING.inc()
        self.started = time.monotonic()
        self._done = False

    def finish(self, outcome: str | None) -> float:
        """Record the end of the turn and return its duration; a second call records nothing."""
        duration = time.monotonic() - self.started
        if not self._done:
            self._done = True
            TURN_DURATION.observe(duration)
            TURNS_RUNNING.dec()
            if outcome is not None:
                count_turn(outcome)
        return duration


class AgentLoop:
    def __init__(
        self,
        bus: MessageBus,
        provider: LLMProvider,
        workspace: Path,
        *,
        model: str | None = None,
        max_iterations: int = 40,
        temperature: float = 0.1,
        max_tokens: int = 8192,
        memory_window: int = 100,
        memory_scope: Literal["shared", "conversation"] = "shared",
        tools_config: ToolsConfig | None = None,
        cron_service: CronService | None = None,
        sessions: SessionStore | None = None,
        locks: ConversationLockManager | None = None,
        spawner: Spawner | None = None,
        reload_history: bool = False,
        admission: Admission | None = None,
    ) -> None:
        self.bus = bus
        self.provider = provider
        self.workspace = Path(workspace).expanduser()
        init_workspace(self.workspace)
        self.model = model or provider.get_default_model()
        self.max_iterations = max_iterations
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.memory_window = memory_window
        self.tools_config = tools_config or ToolsConfig()
        self.context = ContextBuilder(self.workspace, memory_scope, isolated=is_isolated(self.tools_config))
        self.sessions: SessionStore = sessions or SessionManager(self.workspace)
        self.locks = locks or LocalConversationLockManager()
        # With several processes sharing history, re-read it under the lock on every turn.
        self.reload_history = reload_history
        # Counts each sender's LLM tokens against `limits.llmTokensPerDay` (None: nothing counted).
        self.admission = admission
        self.subagents = SubagentManager(provider, self.workspace, bus, self.tools_config, self.model)
        self.tools = self._build_tools(spawner or self.subagents, cron_service)
        self._running = False
        self._active: dict[str, set[asyncio.Task[Any]]] = {}  # session key -> its turn tasks
        self._stopped: set[asyncio.Task[Any]] = set()  # tasks cancelled by /stop (not by shutdown)

    @classmethod
    def from_config(cls, config: Config, bus: MessageBus, provider: LLMProvider, **kwargs: Any) -> AgentLoop:
        d = config.agents.defaults
        kwargs.setdefault("locks", LocalConversationLockManager(d.max_concurrent_turns))
        return cls(
            bus,
            provider,
            config.workspace_path,
            max_iterations=d.max_tool_iterations,
            temperature=d.temperature,
            max_tokens=d.max_tokens,
            memory_window=d.memory_window,
            memory_scope=config.memory_scope,
            tools_config=agent_tools_config(config),
            **kwargs,
        )

    def _build_tools(self, spawner: Spawner, cron_service: CronService | None) -> ToolRegistry:
        tools = workspace_tools(self.workspace, self.tools_config)
        tools.register(MessageTool(
            self.bus.publish_outbound, self.workspace,
            allow_other_chats=self.tools_config.message.allow_other_chats, isolated=is_isolated(self.tools_config),
        ))
        tools.register(SpawnTool(spawner))
        if cron_service is not None:
            from nanobot.agent.tools.cron import CronTool

            tools.register(CronTool(cron_service, isolated=is_isolated(self.tools_config)))
        return tools

    # ------------------------------------------------------------------ the bus loop
    async def run(self) -> None:
        """Consume inbound messages until `stop()`; each turn runs as its own task."""
        self._running = True
        log.info("agent loop started (model=%s)", self.model)
        try:
            while self._running:
                try:
                    msg = await asyncio.wait_for(self.bus.consume_inbound(), timeout=1.0)
                except TimeoutError:
                    continue
                if msg.content.strip().lower() == "/stop":
                    await self._handle_stop(msg)
                    continue
                # The task asks for the conversation lock before it awaits anything else, so turns of one
                # conversation queue on the lock in the order they were consumed here.
                self._track(msg.session_key, asyncio.create_task(self._dispatch(msg)))
        finally:
            await self._cancel_all()

    def stop(self) -> None:
        self._running = False

    async def waiting(self, session_key: str) -> int:
        """How many of a conversation's messages wait behind its running turn (`limits.maxQueuedPerConversation`)."""
        return max(0, len(self._active.get(session_key, ())) - 1)

    def _track(self, session_key: str, task: asyncio.Task[Any]) -> None:
        tasks = self._active.setdefault(session_key, set())
        tasks.add(task)

        def forget(t: asyncio.Task[Any]) -> None:
            tasks.discard(t)
            self._stopped.discard(t)
            if not tasks and self._active.get(session_key) is tasks:
                del self._active[session_key]

        task.add_done_callback(forget)

    async def _cancel_all(self) -> None:
        tasks = [t for ts in self._active.values() for t in ts]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _handle_stop(self, msg: InboundMessage) -> None:
        tasks = [t for t in self._active.get(msg.session_key, ()) if not t.done()]
        for t in tasks:
            self._stopped.add(t)
            t.cancel()
        subagents = self.subagents.cancel_session(msg.session_key)
        log.info("session=%s message_id=%s /stop: %d turn(s), %d subagent(s)",
                 msg.session_key, msg.message_id, len(tasks), subagents)
        stopped = len(tasks) + subagents
        text = f"⏹ Stopped {stopped} task(s)." if stopped else "Nothing is running in this conversation."
        await self.bus.publish_outbound(
            OutboundMessage(channel=msg.channel, chat_id=msg.chat_id, content=text, reply_to=msg.message_id)
        )

    async def _dispatch(self, msg: InboundMessage) -> None:
        """Run one bus turn under its conversation lock and publish what it answers."""
        counted = False  # run_turn counted the turn's outcome
        try:
            async with self.locks.hold(msg.session_key) as lease:
                reply = await self.run_turn(msg, lease)
                counted = True
                if reply is not None:
                    await self.bus.publish_outbound(reply)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task not in self._stopped:
                raise
            if not counted:  # stopped while queued for the lock or running (not while publishing its reply)
                count_turn(TURN_STOPPED)
            channel, chat_id = reply_target(msg)
            await self.bus.publish_outbound(
                OutboundMessage(channel=channel, chat_id=chat_id, content=STOPPED_TEXT, reply_to=msg.message_id)
            )

    # ------------------------------------------------------------------ one turn
    async def run_turn(self, msg: InboundMessage, lease: LockLease | None = None) -> OutboundMessage | None:
        """Process a message whose conversation lock is held. Never raises, except cancellation: an error
        becomes an apology reply, so a person always gets an answer. Every line it logs carries the turn's
        session key and message id."""
        with log_context(session_key=msg.session_key, message_id=msg.message_id, channel=msg.channel):
            return await self._metered_turn(msg, lease)

    async def _metered_turn(self, msg: InboundMessage, lease: LockLease | None) -> OutboundMessage | None:
        waited = lease.waited_s if lease else 0.0
        log.info("turn start session=%s message_id=%s channel=%s lock_wait_ms=%.1f",
                 msg.session_key, msg.message_id, msg.channel, waited * 1000)
        meter = TurnMeter(msg, waited)
        outcome: str | None = None  # stays None on cancellation: whoever cancelled counts it
        try:
            reply, failed = await self._run_message(msg, lease=lease)
            outcome = TURN_ERROR if failed else TURN_OK
        except asyncio.CancelledError:
            log.info("turn cancelled session=%s message_id=%s", msg.session_key, msg.message_id)
            raise
        except LockLost:
            outcome = TURN_LOCK_LOST
            log.warning("turn abandoned session=%s message_id=%s: lock lost", msg.session_key, msg.message_id)
            raise
        except Exception as exc:
            outcome = TURN_ERROR
            log.exception("turn failed session=%s message_id=%s", msg.session_key, msg.message_id)
            channel, chat_id = reply_target(msg)
            reply = OutboundMessage(
                channel=channel, chat_id=chat_id, content=ERROR_TEXT.format(error=type(exc).__name__),
                reply_to=msg.message_id,
            )
        finally:
            duration = meter.finish(outcome)
        log.info("turn done session=%s message_id=%s duration_ms=%.1f",
                 msg.session_key, msg.message_id, duration * 1000)
        return reply

    async def _run_message(
        self, msg: InboundMessage, on_progress: ProgressCallback | None = None, lease: LockLease | None = None
    ) -> tuple[OutboundMessage | None, bool]:
        """The turn's reply, and whether it is the provider's apology (the model could not be reached)."""
        channel, chat_id = reply_target(msg)
        key = msg.session_key
        if self.reload_history:
            self.sessions.invalidate(key)
        session = self.sessions.get_or_create(key)

        command = msg.content.strip().lower()
        if msg.channel != "system" and command in ("/new", "/help"):
            text = HELP_TEXT if command == "/help" else await self._start_new_session(session, lease)
            return OutboundMessage(channel=channel, chat_id=chat_id, content=text, reply_to=msg.message_id), False

        turn = TurnContext(channel=channel, chat_id=chat_id, session_key=key, message_id=msg.message_id,
                           workspace_key=cron_owner(msg))
        token = current_turn.set(turn)
        try:
            messages = self.context.build_messages(
                session.get_history(self.memory_window), msg.content, channel, chat_id, msg.media, session_key=key,
                workspace_key=turn.workspace_key,
            )
            result = await run_tool_loop(
                self.provider,
                messages,
                self.tools,
                model=self.model,
                max_iterations=self.max_iterations,
                max_tokens=self.max_tokens,
                temperature=self.temperature,
                on_progress=on_progress or self._progress_publisher(msg, channel, chat_id),
                log_prefix=f"session={key} message_id={msg.message_id} ",
            )
        finally:
            current_turn.reset(token)
        if self.admission is not None and msg.channel != "system":
            await self.admission.spend(msg.channel, msg.sender_id, result.usage.get("total_tokens", 0))

        content = result.content or "I have nothing to add."
        session.add_message("user", msg.content, media=msg.media or None, message_id=msg.message_id)
        for m in result.new_messages:
            session.add_message(**m)
        session.add_message("assistant", content, tools_used=result.tools_used or None)
        await self._maybe_consolidate(session)
        self._save(session, lease)

        if turn.replied_in_turn:
            return None, result.error
        reply = OutboundMessage(channel=channel, chat_id=chat_id, content=content, reply_to=msg.message_id,
                                metadata={"_usage": result.usage} if result.usage else {})
        return reply, result.error

    def _progress_publisher(self, msg: InboundMessage, channel: str, chat_id: str) -> ProgressCallback:
        async def publish(text: str, is_tool_hint: bool) -> None:
            await self.bus.publish_outbound(
                OutboundMessage(
                    channel=channel,
                    chat_id=chat_id,
                    content=text,
                    reply_to=msg.message_id,
                    metadata={"_progress": True, "_tool_hint": is_tool_hint},
                )
            )

        return publish

    def _save(self, session: Session, lease: LockLease | None) -> None:
        """Save history; under a shared lock (one with a token) the write is fenced by the lease."""
        if lease is not None and lease.lost:
            raise LockLost(f"session {session.key}: lock lost before saving")
        self.sessions.save(session, fence=lease.fence if lease is not None and lease.token else None)

    async def _start_new_session(self, session: Session, lease: LockLease | None) -> str:
        ok = await self.context.memory_for(session.key).consolidate(
            session, self.provider, self.model, keep_last=0, archive_all=True
        )
        if not ok:
            return "I could not archive this conversation to memory, so I kept it. Please try /new again."
        session.clear()
        self._save(session, lease)
        return "New session started. The previous conversation is archived in memory."

    async def _maybe_consolidate(self, session: Session) -> None:
        if len(session.messages) - session.last_consolidated < self.memory_window:
            return
        try:
            await self.context.memory_for(session.key).consolidate(
                session, self.provider, self.model, keep_last=self.memory_window // 2
            )
        except Exception:
            log.exception("session=%s memory consolidation failed; history kept as is", session.key)

    # ------------------------------------------------------------------ direct use (CLI, cron, heartbeat)
    async def process_direct(
        self,
        content: str,
        session_key: str = "cli:direct",
        channel: str = "cli",
        chat_id: str = "direct",
        on_progress: ProgressCallback | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """Run one turn outside the bus, in session `session_key`, under that conversation's lock."""
        msg = InboundMessage(
            channel=channel, sender_id="user", chat_id=chat_id, content=content, session_key_override=session_key,
            metadata=metadata or {},
        )
        with log_context(session_key=session_key, message_id=msg.message_id, channel=channel):
            async with self.locks.hold(session_key) as lease:
                log.info("direct turn session=%s message_id=%s lock_wait_ms=%.1f",
                         session_key, msg.message_id, lease.waited_s * 1000)
                meter = TurnMeter(msg, lease.waited_s)
                outcome: str | None = TURN_ERROR  # an exception propagates to the caller, as before
                try:
                    reply, failed = await self._run_message(msg, on_progress=on_progress, lease=lease)
                    outcome = TURN_ERROR if failed else TURN_OK
                except asyncio.CancelledError:
                    outcome = None
                    raise
                except LockLost:
                    outcome = TURN_LOCK_LOST
                    raise
                finally:
                    meter.finish(outcome)
        return reply.content if reply else ""

    async def close(self) -> None:
        await self.provider.close()


def cron_owner(msg: InboundMessage) -> str | None:
    """The conversation that made the cron job whose turn `msg` starts (None for any other turn): the job's turn
    works in that conversation's folder. Only the cron runner makes `cron:` sessions; no channel can."""
    owner = msg.metadata.get(CRON_OWNER_KEY) if msg.session_key.startswith("cron:") else None
    return owner if isinstance(owner, str) and owner else None


def reply_target(msg: InboundMessage) -> tuple[str, str]:
    """Where the answer to `msg` goes: its own chat, or for a system message the chat it reports to."""
    if msg.channel == "system":
        origin_channel = msg.metadata.get("origin_channel")
        origin_chat = msg.metadata.get("origin_chat_id")
        if origin_channel and origin_chat:
            return str(origin_channel), str(origin_chat)
        channel, _, chat_id = msg.chat_id.partition(":")
        return (channel, chat_id) if chat_id else ("cli", msg.chat_id)
    return msg.channel, msg.chat_id
