"""The Redis session store, the fenced file store, and moving histories between them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from nanobot.session.factory import copy_sessions, redis_fence_check
from nanobot.session.locks import LockLost
from nanobot.session.manager import SessionManager
from nanobot.session.redis_keys import RedisKeys
from nanobot.session.redis_manager import RedisSessionManager
from tests.cluster import REDIS_DB, REDIS_HOST, REDIS_PORT


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    c = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB, decode_responses=True)
    yield c
    c.flushdb()
    c.close()


@pytest.fixture
def keys() -> RedisKeys:
    return RedisKeys(f"nbtest{uuid.uuid4().hex[:8]}")


def test_redis_store_keeps_the_jsonl_records(client: redis.Redis, keys: RedisKeys, tmp_path: Path) -> None:
    store = RedisSessionManager(client, keys)
    session = store.get_or_create("telegram:1")
    session.add_message("user", "hi", message_id="m1")
    session.add_message("assistant", "hello")
    store.save(session)
    files = SessionManager(tmp_path)
    copy = files.get_or_create("telegram:1")
    for m in session.messages:
        copy.messages.append(dict(m))
    copy.created_at, copy.updated_at = session.created_at, session.updated_at
    files.save(copy)
    assert client.get(keys.session("telegram:1")) == files.path_for("telegram:1").read_text()
    assert RedisSessionManager(client, keys).load("telegram:1").recorded_reply("m1") == "hello"  # type: ignore[union-attr]
    assert [s["key"] for s in store.list_sessions()] == ["telegram:1"]


def test_fenced_saves_refuse_a_stale_holder(client: redis.Redis, keys: RedisKeys, tmp_path: Path) -> None:
    client.set(keys.fence("api:x"), 5)
    fenced_files = SessionManager(tmp_path, fence_check=redis_fence_check(client, keys))
    for store in (RedisSessionManager(client, keys), fenced_files):
        session = store.get_or_create("api:x")
        session.add_message("user", "current holder")
        store.save(session, fence=5)
        client.set(keys.fence("api:x"), 6)  # someone else took the lock
        session.add_message("user", "stale write")
        with pytest.raises(LockLost):
            store.save(session, fence=5)
        assert [m["content"] for m in store.load("api:x").messages] == ["current holder"]  # type: ignore[union-attr]
        client.set(keys.fence("api:x"), 5)


def test_import_and_export_are_idempotent(client: redis.Redis, keys: RedisKeys, tmp_path: Path) -> None:
    files = SessionManager(tmp_path)
    for i in range(3):
        s = files.get_or_create(f"cli:{i}")
        s.add_message("user", f"message {i}")
        files.save(s)
    store = RedisSessionManager(client, keys)
    first = copy_sessions(files, store)
    assert sorted(first.copied) == ["cli:0", "cli:1", "cli:2"]
    again = copy_sessions(files, store)
    assert again.copied == [] and len(again.skipped) == 3
    newer = store.get_or_create("cli:1")
    newer.add_message("assistant", "answered in redis")
    store.save(newer)
    back = copy_sessions(store, files)
    assert back.copied == ["cli:1"]
    assert "answered in redis" in files.path_for("cli:1").read_text()
