"""`nanobot conversations list` and `nanobot conversations forget KEY | --sender CHANNEL:ID`: who the agent talks
with, and removing every trace of one of them (files: nanobot/privacy/traces.py; Redis: nanobot_celery/forget.py).
Works in both modes; running `forget` again removes nothing and says so."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from nanobot.admission.gate import person
from nanobot.admission.rules import CHAT_CHANNELS
from nanobot.cli.output import console, fail
from nanobot.cli.preflight import require_redis
from nanobot.config.loader import ConfigError, cron_store_path, load_config
from nanobot.config.schema import Config
from nanobot.cron.service import CronService
from nanobot.privacy.traces import Removed, forget, keys_of_sender, list_conversations, session_keys_of

conversations_app = typer.Typer(help="Conversations: list them, forget one person.", no_args_is_help=True)

T = TypeVar("T")


def _config() -> Config:
    try:
        return load_config()
    except ConfigError as exc:
        raise fail(f"config: {exc}", 2) from exc


def _ready(config: Config) -> None:
    """Fail in one line when the Redis this config uses does not answer."""
    if config.bus.backend == "celery" or config.sessions.backend == "redis":
        require_redis(config)


@conversations_app.command("list")
def conversations_list() -> None:
    """Every conversation kept: key, last activity, messages, bytes (history, folder and memory), cron jobs."""
    config = _config()
    _ready(config)
    conversations = list_conversations(config, CronService(cron_store_path()))
    if not conversations:
        console.print("No conversations are stored.")
        return
    table = Table(title="Conversations")
    for column in ("key", "last activity", "messages", "bytes", "jobs"):
        table.add_column(column, overflow="fold")
    for c in conversations:
        table.add_row(escape(c.key), c.last_activity or "-", str(c.messages), str(c.bytes), str(c.jobs))
    console.print(table)


@conversations_app.command("forget")
def conversations_forget(
    key: Annotated[str | None, typer.Argument(help="The conversation's session key, e.g. telegram:123.")] = None,
    sender: Annotated[str | None, typer.Option(
        "--sender", help="Every conversation of one person, CHANNEL:ID: their own chat (telegram:123), or every "
        "session of an API client (api:alice).")] = None,
) -> None:
    """Delete every trace of a conversation: its history in every store, memory, folder, cron jobs, dead letters,
    messages still queued, replies not yet delivered and fair-limit counters; prints what was removed."""
    if (key is None) == (sender is None):
        raise fail("give a conversation KEY or --sender CHANNEL:ID (one of them)", 2)
    config = _config()
    _ready(config)
    cron = CronService(cron_store_path())
    if sender is not None:
        try:
            known = {c.key for c in list_conversations(config, cron)}
            if config.bus.backend == "celery":
                known |= _redis(config, lambda traces: traces.known_keys())
            keys = keys_of_sender(sender, known)
        except ValueError as exc:
            raise fail(str(exc), 2) from exc
        channel, _, ident = sender.partition(":")
        senders = [(channel, person(ident))]
    else:
        assert key is not None
        keys = [key]
        channel, _, chat = key.partition(":")
        senders = [(channel, person(chat))] if channel in CHAT_CHANNELS and chat else []
    removed = Removed()
    session_keys = [k for each in keys for k in session_keys_of(cron, each)]
    if config.bus.backend == "celery":  # first: it refuses a conversation whose turn is running, removing nothing
        _forget_in_redis(config, session_keys, removed, senders)
    for each in keys:
        forget(config, cron, each, removed)
    who = sender or key
    if not removed:
        console.print(f"Nothing of {escape(str(who))} is stored: nothing to remove.")
        return
    console.print(f"Forgot {escape(str(who))}:")
    for line in removed.lines:
        console.print(f"  - {escape(line)}")


def _forget_in_redis(config: Config, session_keys: list[str], removed: Removed, senders: list[tuple[str, str]]) -> None:
    """The Redis traces (nanobot_celery/forget.py); a conversation whose turn is running fails in one line."""
    _redis(config, lambda traces: traces.forget(session_keys, removed, senders))


def _redis(config: Config, work: Callable[[Any], Awaitable[T]]) -> T:
    """`work(RedisTraces)` on the configured Redis; a busy conversation fails in one line."""
    import redis.asyncio as aioredis

    from nanobot.bus.factory import distributed

    module = distributed("forget")

    async def run() -> T:
        client = aioredis.Redis.from_url(config.bus.redis_url, decode_responses=True, socket_connect_timeout=5)
        try:
            return await work(module.RedisTraces(config, client))
        finally:
            await client.aclose()

    try:
        return asyncio.run(run())
    except module.Busy as exc:
        raise fail(str(exc)) from exc
