"""Conversation histories as JSONL files: one metadata line, then one OpenAI-style message per line."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from nanobot.session.locks import LockLost

log = logging.getLogger(__name__)

# The keys of a stored message that the LLM sees again; the rest (timestamp, ...) is for people and tools.
LLM_KEYS = ("role", "content", "tool_calls", "tool_call_id", "name")


@dataclass
class Session:
    key: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    created_at: datetime = field(default_factory=datetime.now)
    updated_at: datetime = field(default_factory=datetime.now)
    metadata: dict[str, Any] = field(default_factory=dict)
    last_consolidated: int = 0  # messages before this index are summarised in memory

    def add_message(self, role: str, content: Any, **extra: Any) -> dict[str, Any]:
        message: dict[str, Any] = {"role": role, "content": content, "timestamp": datetime.now().isoformat()}
        message.update({k: v for k, v in extra.items() if v is not None})
        self.messages.append(message)
        self.updated_at = datetime.now()
        return message

    def get_history(self, max_messages: int = 500) -> list[dict[str, Any]]:
        """The unconsolidated tail in LLM format, at most `max_messages`, starting at a user message
        (so no tool result is left without the call that asked for it)."""
        tail = self.messages[self.last_consolidated :][-max_messages:] if max_messages > 0 else []
        start = next((i for i, m in enumerate(tail) if m.get("role") == "user"), len(tail))
        return [{k: m[k] for k in LLM_KEYS if k in m} for m in tail[start:]]

    def recorded_reply(self, message_id: str) -> str | None:
        """The final answer stored for the user message `message_id`, if that turn is in the history.

        Lets a new lock holder finish a turn whose history was saved but whose reply was never sent
        (the previous holder died in between) without running it twice."""
        start = next((i for i, m in enumerate(self.messages) if m.get("message_id") == message_id), None)
        if start is None:
            return None
        reply = None
        for m in self.messages[start + 1 :]:
            if m.get("role") == "user":
                break
            if m.get("role") == "assistant" and not m.get("tool_calls"):
                reply = m.get("content")
        return reply if isinstance(reply, str) else None

    def clear(self) -> None:
        self.messages = []
        self.last_consolidated = 0
        self.updated_at = datetime.now()

    # ------------------------------------------------------------ the JSONL form
    def metadata_record(self) -> dict[str, Any]:
        return {
            "_type": "metadata",
            "key": self.key,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "metadata": self.metadata,
            "last_consolidated": self.last_consolidated,
        }

    def to_jsonl(self) -> str:
        lines = [json.dumps(self.metadata_record(), ensure_ascii=False)]
        lines.extend(json.dumps(m, ensure_ascii=False) for m in self.messages)
        return "\n".join(lines) + "\n"

    @classmethod
    def from_records(cls, key: str, records: list[dict[str, Any]]) -> Session:
        session = cls(key=key)
        for record in records:
            if record.get("_type") == "metadata":
                session.created_at = _parse_time(record.get("created_at")) or session.created_at
                session.updated_at = _parse_time(record.get("updated_at")) or session.updated_at
                session.metadata = dict(record.get("metadata") or {})
                session.last_consolidated = int(record.get("last_consolidated") or 0)
            else:
                session.messages.append(record)
        session.last_consolidated = min(session.last_consolidated, len(session.messages))
        return session


def _parse_time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


# `channel:chat` keys made of these characters keep upstream's file name (`telegram:123` -> `telegram_123`).
_PLAIN_KEY = re.compile(r"[A-Za-z0-9.@+=-]+:[A-Za-z0-9.@+=-]*")
_UNSAFE_CHAR = re.compile(r"[^A-Za-z0-9.@+=-]")
_MAX_STEM = 200


def session_stem(key: str) -> str:
    """A file name stem that no other key shares (so two conversations never share a file).

    Plain `channel:chat` keys keep upstream's `channel_chat` (exactly one `_`); every other key is
    percent-encoded, `_` and `:` included (no `_` at all), so the two kinds never meet either."""
    if _PLAIN_KEY.fullmatch(key):
        stem = key.replace(":", "_")
    else:
        stem = _UNSAFE_CHAR.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), key)
    if len(stem) > _MAX_STEM:  # file names are at most 255 bytes: keep a head and a digest (no other name has `~`)
        stem = stem[: _MAX_STEM - 65] + "~" + hashlib.sha256(key.encode()).hexdigest()
    return stem


def session_filename(key: str) -> str:
    return session_stem(key) + ".jsonl"


def _legacy_filename(key: str) -> str:
    """The name older versions used (several keys could share it: `api:a/b` and `api:a_b`)."""
    return re.sub(r"[:/\\<>|?*\"\x00-\x1f]", "_", key) + ".jsonl"


def _lock_file(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


def _malformed_copy(path: Path, stamp: int | str) -> Path:
    return path.with_name(f"{path.name}.malformed-{stamp}")


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with _lock_file(path).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def parse_jsonl(text: str, source: str) -> tuple[list[dict[str, Any]], int]:
    """Records of a session file, and how many malformed lines were skipped."""
    records: list[dict[str, Any]] = []
    bad = 0
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            bad += 1
            log.warning("session file %s: line %d is not a JSON object; skipped", source, number)
            continue
        records.append(record)
    return records, bad


# Given (session_key, fence), says whether that fence is still the newest holder's.
FenceCheck = Callable[[str, int], bool]


class SessionCache:
    """A bounded LRU of loaded sessions in front of a store's `load` (shared by the file and Redis stores)."""

    def __init__(self, cache_size: int) -> None:
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Session] = OrderedDict()

    def load(self, key: str) -> Session | None:
        raise NotImplementedError

    def get_or_create(self, key: str) -> Session:
        session = self._cache.get(key)
        if session is not None:
            self._cache.move_to_end(key)
            return session
        session = self.load(key) or Session(key=key)
        self._remember(session)
        return session

    def invalidate(self, key: str) -> None:
        """Forget the cached copy; the next get_or_create reads the store again."""
        self._cache.pop(key, None)

    def _remember(self, session: Session) -> None:
        self._cache[session.key] = session
        self._cache.move_to_end(session.key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)


class SessionManager(SessionCache):
    """Sessions in `<workspace>/sessions/*.jsonl`, with a bounded in-memory cache.

    With a `fence_check` (distributed mode), `save(session, fence=...)` writes only while `fence` is still
    the newest lock holder's, under an exclusive file lock so the check and the rename cannot be split by
    another process; otherwise it raises `LockLost`.
    """

    def __init__(self, workspace: Path, cache_size: int = 256, fence_check: FenceCheck | None = None) -> None:
        super().__init__(cache_size)
        self.workspace = Path(workspace)
        self.sessions_dir = self.workspace / "sessions"
        self.sessions_dir.mkdir(parents=True, exist_ok=True)
        self.fence_check = fence_check

    def get_or_create(self, key: str) -> Session:
        """The cached session, unless its file was removed since it was saved (`nanobot conversations forget`
        while this process runs): then a new one, so a forgotten history is never written back."""
        cached = self._cache.get(key)
        if cached is not None and cached.messages and not self.path_for(key).exists():
            self.invalidate(key)
        return super().get_or_create(key)

    def path_for(self, key: str) -> Path:
        path = self.sessions_dir / session_filename(key)
        if not path.exists():
            self._adopt_legacy_file(key, path)
        return path

    def _adopt_legacy_file(self, key: str, path: Path) -> None:
        """Rename a file of an older version to `path` when it records this very key (never another's)."""
        legacy = self.sessions_dir / _legacy_filename(key)
        if legacy == path:
            return
        try:
            with legacy.open(encoding="utf-8") as fh:
                first = json.loads(fh.readline() or "{}")
        except (OSError, json.JSONDecodeError):
            return
        if isinstance(first, dict) and first.get("_type") == "metadata" and first.get("key") == key:
            os.replace(legacy, path)
            log.info("session %s: file renamed from %s to %s", key, legacy.name, path.name)

    def load(self, key: str) -> Session | None:
        """Read a session from its file (bypassing the cache); None when there is none."""
        path = self.path_for(key)
        if not path.exists():
            return None
        records, bad = parse_jsonl(path.read_text(encoding="utf-8"), str(path))
        if bad:
            keep = _malformed_copy(path, int(time.time()))
            keep.write_bytes(path.read_bytes())
            log.warning("session %s: %d malformed line(s); original kept at %s", key, bad, keep)
        return Session.from_records(key, records)

    def save(self, session: Session, fence: int | None = None) -> None:
        """Write the whole session atomically (temp file, then rename); fenced when `fence` is given."""
        path = self.path_for(session.key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(session.to_jsonl(), encoding="utf-8")
        if fence is None or self.fence_check is None:
            os.replace(tmp, path)
        else:
            with _file_lock(path):
                if not self.fence_check(session.key, fence):
                    tmp.unlink(missing_ok=True)
                    self.invalidate(session.key)
                    raise LockLost(f"session {session.key}: fence {fence} is stale; history not written")
                os.replace(tmp, path)
        self._remember(session)

    def load_text(self, key: str) -> str | None:
        """The session file's text as stored, or None when there is none."""
        path = self.path_for(key)
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else None

    def delete(self, key: str) -> list[Path]:
        """Remove the session's file, its lock file and the copies kept of malformed versions; returns those
        removed (empty: there was nothing)."""
        self.invalidate(key)
        path = self.path_for(key)
        removed = []
        for file in (path, _lock_file(path), *path.parent.glob(_malformed_copy(path, "*").name)):
            if file.is_file() or file.is_symlink():
                file.unlink()
                removed.append(file)
        return removed

    def list_sessions(self) -> list[dict[str, Any]]:
        """Every stored session's key, times and path, most recently updated first."""
        found: list[dict[str, Any]] = []
        for path in self.sessions_dir.glob("*.jsonl"):
            try:
                with path.open(encoding="utf-8") as fh:
                    first = json.loads(fh.readline() or "{}")
            except (OSError, json.JSONDecodeError):
                continue
            if not isinstance(first, dict) or first.get("_type") != "metadata":
                first = {}
            found.append(
                {
                    "key": first.get("key") or unquote(path.stem.replace("_", ":", 1)),
                    "created_at": first.get("created_at"),
                    "updated_at": first.get("updated_at"),
                    "path": str(path),
                }
            )
        return sorted(found, key=lambda s: s.get("updated_at") or "", reverse=True)
