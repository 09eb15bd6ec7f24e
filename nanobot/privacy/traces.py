"""What nanobot keeps of each conversation in files (and in the Redis session store), and how to remove it all.

A conversation (its session key) leaves traces in:
* its history: `<workspace>/sessions/<stem>.jsonl` (plus its lock file, an older version's file name, copies of
  malformed files), or the Redis session store;
* its memory: `<workspace>/memory/conversations/<stem>/`;
* its own folder (`tools.isolation: conversation`): `<workspace>/conversations/<stem>/` (its files, the message
  tool's outbox copies);
* its cron jobs (`CronJob.owner`) and the histories and memory of their turns (`cron:<job id>`).
Distributed mode keeps more in Redis (mailbox, dead letters, outbound streams, limits): `nanobot_celery.forget`.

`forget` removes what it finds and says what it removed; run again, it finds nothing. `list_conversations` is
what an operator (or a privacy request) sees first: every conversation with its last activity and size.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from nanobot.agent.memory import MemoryStore
from nanobot.agent.workspace import conversation_folder
from nanobot.config.schema import Config
from nanobot.cron.service import CronService
from nanobot.session.factory import SessionStore, create_session_store
from nanobot.session.manager import SessionManager, parse_jsonl
from nanobot.session.redis_manager import RedisSessionManager


@dataclass
class Conversation:
    key: str
    last_activity: str | None = None
    messages: int = 0
    bytes: int = 0
    jobs: int = 0


@dataclass
class Removed:
    """What `forget` removed, one line per thing, for the operator."""

    lines: list[str] = field(default_factory=list)

    def add(self, what: str) -> None:
        self.lines.append(what)

    def __bool__(self) -> bool:
        return bool(self.lines)


def stores(config: Config) -> list[SessionStore]:
    """Every session store a history may be in: the files always, Redis where this config uses it."""
    found: list[SessionStore] = [create_session_store(config, "file")]
    if config.sessions.backend == "redis":
        found.append(create_session_store(config, "redis"))
    return found


def folder_bytes(path: Path) -> int:
    """The size of the files under `path` (links not followed); 0 when it does not exist."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def list_conversations(config: Config, cron: CronService) -> list[Conversation]:
    """Every conversation with a history, or with jobs, most recently active first."""
    found: dict[str, Conversation] = {}
    for store in stores(config):
        for info in store.list_sessions():
            key = info["key"]
            conversation = found.setdefault(key, Conversation(key))
            conversation.last_activity = max(filter(None, (conversation.last_activity, info.get("updated_at"))),
                                             default=None)
            text = store.load_text(key)
            if text is not None:
                records, _ = parse_jsonl(text, key)
                conversation.messages = max(conversation.messages, sum(1 for r in records if "role" in r))
                conversation.bytes += len(text.encode("utf-8"))
    for job in cron.list_jobs(include_disabled=True):
        if job.owner:
            found.setdefault(job.owner, Conversation(job.owner)).jobs += 1
    workspace = config.workspace_path
    for conversation in found.values():
        conversation.bytes += folder_bytes(conversation_folder(workspace, conversation.key))
        conversation.bytes += folder_bytes(MemoryStore.for_conversation(workspace, conversation.key).dir)
    return sorted(found.values(), key=lambda c: c.last_activity or "", reverse=True)


def keys_of_sender(sender: str, known: Iterable[str]) -> list[str]:
    """The conversations of one person, `CHANNEL:ID`: their own chat (`telegram:123`, `whatsapp:34600...`), and for
    an API client every session it named (`api:<client>/...`). Group chats are not theirs alone: not included."""
    channel, _, ident = sender.partition(":")
    if not channel or not ident:
        raise ValueError(f"--sender must be CHANNEL:ID (telegram:123, api:alice), not {sender!r}")
    own = {f"{channel}:{ident}"}
    if channel == "api":
        own |= {key for key in known if key.startswith(f"api:{ident}/")}
    return sorted(own)


def session_keys_of(cron: CronService, key: str) -> list[str]:
    """The sessions that hold a conversation's traces: its own, and its cron jobs' turns (`cron:<job id>`)."""
    return [key, *(f"cron:{job.id}" for job in cron.list_jobs(include_disabled=True) if job.owner == key)]


def forget(config: Config, cron: CronService, key: str, removed: Removed) -> None:
    """Remove the conversation `key`'s files, history, memory and cron jobs (with their own turns' histories)."""
    keys = session_keys_of(cron, key)
    for job in cron.list_jobs(include_disabled=True):
        if job.owner == key and cron.remove_job(job.id):
            removed.add(f"cron job {job.id} ({job.name!r})")
    workspace = config.workspace_path
    for each in keys:
        for store in stores(config):
            _delete_history(store, each, removed)
        _remove_folder(MemoryStore.for_conversation(workspace, each).dir, f"memory of {each}", removed)
    _remove_folder(conversation_folder(workspace, key), f"folder of {key}", removed)


def _delete_history(store: SessionStore, key: str, removed: Removed) -> None:
    if isinstance(store, SessionManager):  # the file, its lock file and malformed copies: each is listed
        for path in store.delete(key):
            removed.add(f"history file {path}")
    elif isinstance(store, RedisSessionManager) and store.delete(key):
        removed.add(f"history of {key} in Redis")


def _remove_folder(path: Path, what: str, removed: Removed) -> None:
    """Remove `path` and everything under it without following links (a link in its place is removed itself)."""
    if path.is_symlink():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)  # fd-based on Linux: a link planted inside is removed, never followed
    else:
        return
    removed.add(f"{what}: {path}")
