"""Session files: the JSONL format, continuing upstream files, atomic writes, the bounded cache."""

from __future__ import annotations

import json
from pathlib import Path

from nanobot.session.manager import Session, SessionManager

UPSTREAM_FILE = (
    "\n".join(
        json.dumps(r)
        for r in [
            {
                "_type": "metadata",
                "key": "telegram:12345",
                "created_at": "2026-01-02T10:00:00",
                "updated_at": "2026-01-02T10:05:00",
                "metadata": {"lang": "es"},
                "last_consolidated": 2,
            },
            {"role": "user", "content": "old question", "timestamp": "2026-01-02T10:00:00"},
            {"role": "assistant", "content": "old answer", "timestamp": "2026-01-02T10:00:01"},
            {"role": "user", "content": "what is in notes.txt?", "timestamp": "2026-01-02T10:04:00"},
            {
                "role": "assistant",
                "content": "",
                "timestamp": "2026-01-02T10:04:01",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "read_file", "arguments": '{"path": "notes.txt"}'},
                    }
                ],
            },
            {
                "role": "tool",
                "content": "buy milk",
                "tool_call_id": "call_1",
                "name": "read_file",
                "timestamp": "2026-01-02T10:04:02",
            },
            {"role": "assistant", "content": "It says: buy milk", "timestamp": "2026-01-02T10:04:03"},
        ]
    )
    + "\n"
)


def test_file_format_and_path(tmp_path: Path) -> None:
    manager = SessionManager(tmp_path)
    session = manager.get_or_create("telegram:42")
    session.add_message("user", "hi")
    session.add_message("assistant", "hello")
    manager.save(session)
    path = tmp_path / "sessions" / "telegram_42.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines[0]["_type"] == "metadata"
    assert set(lines[0]) == {"_type", "key", "created_at", "updated_at", "metadata", "last_consolidated"}
    assert lines[0]["key"] == "telegram:42"
    assert [(m["role"], m["content"]) for m in lines[1:]] == [("user", "hi"), ("assistant", "hello")]
    assert all("timestamp" in m for m in lines[1:])
    assert not list((tmp_path / "sessions").glob("*.tmp"))


def test_upstream_file_is_read_and_continued(tmp_path: Path) -> None:
    (tmp_path / "sessions").mkdir(parents=True)
    path = tmp_path / "sessions" / "telegram_12345.jsonl"
    path.write_text(UPSTREAM_FILE)
    manager = SessionManager(tmp_path)
    session = manager.get_or_create("telegram:12345")
    assert session.metadata == {"lang": "es"} and session.last_consolidated == 2
    history = session.get_history()
    assert [m["role"] for m in history] == ["user", "assistant", "tool", "assistant"]
    assert history[1]["tool_calls"][0]["function"]["name"] == "read_file"
    assert "timestamp" not in history[0]
    session.add_message("user", "new question")
    manager.save(session)
    lines = path.read_text().splitlines()
    records = [json.loads(x) for x in lines]
    assert records[0]["created_at"] == "2026-01-02T10:00:00"
    assert [r.get("content") for r in records[1:7]] == [
        json.loads(x).get("content") for x in UPSTREAM_FILE.splitlines()[1:]
    ]
    assert records[-1]["content"] == "new question"


def test_history_window_starts_at_a_user_message() -> None:
    session = Session("k")
    session.add_message("user", "q1")
    session.add_message(
        "assistant", "", tool_calls=[{"id": "c", "type": "function", "function": {"name": "x", "arguments": "{}"}}]
    )
    session.add_message("tool", "r", tool_call_id="c", name="x")
    session.add_message("assistant", "a1")
    session.add_message("user", "q2")
    session.add_message("assistant", "a2")
    assert [m["content"] for m in session.get_history(4)] == ["q2", "a2"]  # no orphaned tool result
    assert len(session.get_history(100)) == 6


def test_cache_is_bounded_and_invalidate_rereads(tmp_path: Path) -> None:
    manager = SessionManager(tmp_path, cache_size=3)
    for i in range(10):
        s = manager.get_or_create(f"api:{i}")
        s.add_message("user", str(i))
        manager.save(s)
    assert len(manager._cache) == 3
    other = SessionManager(tmp_path)
    s = other.get_or_create("api:9")
    s.add_message("user", "written elsewhere")
    other.save(s)
    assert len(manager.get_or_create("api:9").messages) == 1  # cached copy
    manager.invalidate("api:9")
    assert len(manager.get_or_create("api:9").messages) == 2


def test_list_sessions_and_malformed_lines_are_kept_aside(tmp_path: Path) -> None:
    manager = SessionManager(tmp_path)
    for key in ("cli:direct", "cron:abc"):
        s = manager.get_or_create(key)
        s.add_message("user", key)
        manager.save(s)
    assert {s["key"] for s in manager.list_sessions()} == {"cli:direct", "cron:abc"}
    path = tmp_path / "sessions" / "cli_direct.jsonl"
    path.write_text(path.read_text() + "{not json\n")
    fresh = SessionManager(tmp_path)
    assert [m["content"] for m in fresh.get_or_create("cli:direct").messages] == ["cli:direct"]
    assert list((tmp_path / "sessions").glob("cli_direct.jsonl.malformed-*"))


def test_every_session_key_has_its_own_file(tmp_path: Path) -> None:
    """Keys that older versions mapped to one file (`api:a/b`, `api:a_b`, `api:a:b`) never share one now."""
    from nanobot.session.manager import session_filename

    keys = ["api:a/b", "api:a_b", "api:a:b", "api_a:b", "api:a%2Fb", "api:a\\b", "telegram:1", "telegram_1", "x" * 300]
    assert len({session_filename(k) for k in keys}) == len(keys)
    assert session_filename("telegram:123") == "telegram_123.jsonl"  # upstream's name for plain keys
    assert all(len(session_filename(k).encode()) <= 255 for k in keys)
    manager = SessionManager(tmp_path)
    for key in keys:
        session = manager.get_or_create(key)
        session.add_message("user", f"said in {key}")
        manager.save(session)
    fresh = SessionManager(tmp_path)
    for key in keys:
        assert [m["content"] for m in fresh.get_or_create(key).messages] == [f"said in {key}"]
    assert {s["key"] for s in fresh.list_sessions()} == set(keys)


def test_file_named_by_an_older_version_is_adopted_only_by_its_own_key(tmp_path: Path) -> None:
    old = SessionManager(tmp_path)
    session = Session(key="api:user_1")
    session.add_message("user", "from before the upgrade")
    (tmp_path / "sessions" / "api_user_1.jsonl").write_text(session.to_jsonl())
    # Another key that older versions mapped to the same file does not get it.
    assert SessionManager(tmp_path).get_or_create("api:user/1").messages == []
    assert [m["content"] for m in old.get_or_create("api:user_1").messages] == ["from before the upgrade"]
    assert not (tmp_path / "sessions" / "api_user_1.jsonl").exists()
