"""`nanobot deadletters list | show ID | retry ID | drop ID | drop --all`: the operator's hands on the messages
set aside after failing `bus.maxDeliveries` times (distributed mode only; nanobot_celery/deadletters.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from nanobot.cli.output import console, fail
from nanobot.config.loader import ConfigError, load_config
from nanobot.config.schema import Config

deadletters_app = typer.Typer(
    help="Messages set aside after failing bus.maxDeliveries times (bus.backend celery).", no_args_is_help=True
)

T = TypeVar("T")


def _config() -> Config:
    try:
        config = load_config()
    except ConfigError as exc:
        raise fail(f"config: {exc}", 2) from exc
    if config.bus.backend != "celery":
        raise fail("dead letters exist only in distributed mode (bus.backend celery); this config uses "
                    f"bus.backend {config.bus.backend!r}")
    return config


def _with_store(action: Callable[[Any], Awaitable[T]]) -> T:
    """Run `action(store)` on a DeadLetters store of the configured Redis; fails in one line when Redis is down
    or the id is unknown."""
    from nanobot.bus.factory import BusUnavailableError, check_distributed_ready, distributed

    config = _config()
    try:
        check_distributed_ready(config)
        module = distributed("deadletters")
    except BusUnavailableError as exc:
        raise fail(str(exc)) from exc

    async def run() -> T:
        store = module.DeadLetters(config)
        try:
            return await action(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except module.UnknownDeadLetter as exc:
        raise fail(f"no dead letter has the id {exc.args[0]!r} (see `nanobot deadletters list`)") from exc


def _when(unix_s: int) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if unix_s else "-"


@deadletters_app.command("list")
def list_letters(
    limit: Annotated[int, typer.Option("--limit", "-n", help="Show the newest N.", min=1)] = 100,
) -> None:
    """The dead letters, oldest first: id, time, session, channel, deliveries, error (never the message)."""

    async def fetch(store: Any) -> tuple[int, list[Any]]:
        return await store.count(), await store.list(limit)

    total, letters = _with_store(fetch)
    if not letters:
        console.print("no dead letters")
        return
    table = Table(title=f"Dead letters ({len(letters)} of {total})")
    for column in ("id", "dead at", "session", "channel", "deliveries", "error"):
        table.add_column(column, overflow="fold")
    for letter in letters:
        table.add_row(letter.id, _when(letter.dead_at), escape(letter.session_key), escape(letter.channel),
                      str(letter.deliveries), escape(letter.error))
    console.print(table)


@deadletters_app.command("show")
def show(entry_id: Annotated[str, typer.Argument(help="The dead letter's id (from `list`).")]) -> None:
    """The whole dead letter, the user's message included."""

    async def fetch(store: Any) -> Any:
        return await store.get(entry_id)

    letter = _with_store(fetch)
    try:
        entry: Any = json.loads(letter.entry)
    except ValueError:
        entry = letter.entry
    record = {
        "id": letter.id, "session_key": letter.session_key, "message_id": letter.message_id,
        "channel": letter.channel, "chat_id": letter.chat_id, "deliveries": letter.deliveries,
        "dead_at": _when(letter.dead_at), "error": letter.error, "entry": entry,
    }
    console.print_json(json.dumps(record, ensure_ascii=False))


@deadletters_app.command("retry")
def retry(entry_id: Annotated[str, typer.Argument(help="The dead letter's id (from `list`).")]) -> None:
    """Put the message back in its conversation's mailbox (with a fresh delivery count) and remove the letter."""

    async def requeue(store: Any) -> Any:
        return await store.retry(entry_id)

    letter = _with_store(requeue)
    console.print(f"requeued message {escape(letter.message_id)} of session {escape(letter.session_key)}",
                  highlight=False)


@deadletters_app.command("drop")
def drop(
    entry_id: Annotated[str | None, typer.Argument(help="The dead letter's id (from `list`).")] = None,
    everything: Annotated[bool, typer.Option("--all", help="Drop every dead letter.")] = False,
) -> None:
    """Delete a dead letter (or all of them with --all): its message is not answered again."""
    if (entry_id is None) == (not everything):
        raise fail("give one dead letter's id, or --all", 2)

    async def delete(store: Any) -> int:
        if everything:
            return int(await store.drop_all())
        await store.drop(entry_id)
        return 1

    dropped = _with_store(delete)
    console.print(f"dropped {dropped} dead letter(s)")
