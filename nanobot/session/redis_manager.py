"""Sessions in Redis, for several processes and hosts: SessionManager's API, the same JSONL records.

Each session is one string key holding exactly the text its JSONL file would hold, so export and import
are byte-for-byte moves. A save with a `fence` is written only while that fence is still the newest
holder's (checked in the same Lua script as the write); otherwise it raises `LockLost`.
"""

from __future__ import annotations

import logging
from typing import Any

from nanobot.session.locks import LockLost
from nanobot.session.manager import Session, SessionCache, parse_jsonl
from nanobot.session.redis_keys import RedisKeys

log = logging.getLogger(__name__)

# KEYS: session, fence counter, index. ARGV: text, fence ('' = unfenced), session key.
_SAVE = """
if ARGV[2] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[3])
return 1
"""


class RedisSessionManager(SessionCache):
    def __init__(self, redis: Any, keys: RedisKeys | None = None, cache_size: int = 256) -> None:
        super().__init__(cache_size)
        self.redis = redis  # a sync redis.Redis with decode_responses=True
        self.keys = keys or RedisKeys()
        self._save = redis.register_script(_SAVE)

    def load(self, key: str) -> Session | None:
        text = self.load_text(key)
        if text is None:
            return None
        records, bad = parse_jsonl(text, f"redis:{self.keys.session(key)}")
        if bad:
            log.warning("session %s: %d malformed record(s) skipped", key, bad)
        return Session.from_records(key, records)

    def load_text(self, key: str) -> str | None:
        value = self.redis.get(self.keys.session(key))
        return value if value is None or isinstance(value, str) else value.decode()

    def save(self, session: Session, fence: int | None = None) -> None:
        keys = [self.keys.session(session.key), self.keys.fence(session.key), self.keys.session_index]
        args = [session.to_jsonl(), "" if fence is None else str(fence), session.key]
        if not self._save(keys=keys, args=args):
            self.invalidate(session.key)
            raise LockLost(f"session {session.key}: fence {fence} is stale; history not written")
        self._remember(session)

    def delete(self, key: str) -> bool:
        self.invalidate(key)
        removed = self.redis.delete(self.keys.session(key))
        self.redis.srem(self.keys.session_index, key)
        return bool(removed)

    def list_sessions(self) -> list[dict[str, Any]]:
        found = []
        for key in sorted(self.redis.smembers(self.keys.session_index)):
            key = key if isinstance(key, str) else key.decode()
            text = self.load_text(key)
            if text is None:
                continue
            records, _ = parse_jsonl(text.split("\n", 1)[0], key)
            meta = records[0] if records and records[0].get("_type") == "metadata" else {}
            found.append({"key": key, "created_at": meta.get("created_at"), "updated_at": meta.get("updated_at"),
                          "path": f"redis:{self.keys.session(key)}"})
        return sorted(found, key=lambda s: s.get("updated_at") or "", reverse=True)
