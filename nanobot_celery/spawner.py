"""Subagents in distributed mode: each runs as its own Celery task and reports back through the mailbox."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict

from nanobot.agent.subagent import SubagentTask
from nanobot.config.schema import Config
from nanobot_celery.routing import subagent_queue

log = logging.getLogger(__name__)

RUN_SUBAGENT = "nanobot.run_subagent"


class CelerySpawner:
    def __init__(self, config: Config) -> None:
        self.config = config

    async def spawn(
        self, task: str, label: str | None, channel: str, chat_id: str, session_key: str,
        workspace_key: str | None = None,
    ) -> str:
        from nanobot_celery.app import app

        job = SubagentTask.new(task, label, channel, chat_id, session_key, workspace_key)
        queue = subagent_queue(self.config.bus.key_prefix)
        await asyncio.to_thread(app.send_task, RUN_SUBAGENT, args=[asdict(job)], queue=queue)
        log.info("subagent=%s session=%s queued", job.id, session_key)
        return f"Subagent '{job.label}' started (id {job.id}); it will report back when done."
