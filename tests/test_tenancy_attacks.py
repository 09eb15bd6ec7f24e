"""Two people on one deployment, one of them hostile: a real gateway polling the loopback Telegram server, two
real Celery workers (exec under bubblewrap, the distributed default, conversations isolated by default), and the
simulated LLM calling the tools as each person talked it into.

Alice keeps secrets in her conversation (a file written by `write_file`, one by `exec echo >`, a reminder), and
reads them back herself. Bob, in his own chat, goes after them every way he can think of: relative, `..`,
absolute and guessed paths, `cat`, `ls -R`, `find /`, `grep -r`, the cron tool's list and remove, and the message
tool aimed at Alice's chat. Nothing of Alice's may reach what the LLM reads for Bob, nor Bob's words her chat."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nanobot.agent.workspace import conversation_folder
from nanobot.testing.llm_server import FakeLLM, Rule
from nanobot.testing.processes import wait_until
from nanobot.testing.telegram_server import FakeTelegram
from tests.cluster import Cluster
from tests.test_security_attacks import bwrap_refusal

ALICE, BOB = 111, 222
FILE_SECRET = "alice-file-CANARY-19ab"
EXEC_SECRET = "alice-exec-CANARY-82cd"
REMINDER_SECRET = "alice-reminder-CANARY-5e0f"
SECRETS = (FILE_SECRET, EXEC_SECRET, REMINDER_SECRET)


@pytest.fixture
def telegram() -> Iterator[FakeTelegram]:
    fake = FakeTelegram().start()
    try:
        yield fake
    finally:
        fake.stop()


class Person:
    """One Telegram user talking to the bot; each message waits for its answer, then returns what the tool the LLM
    was asked to call gave back to the LLM."""

    def __init__(self, chat: int, telegram: FakeTelegram, llm: FakeLLM) -> None:
        self.chat, self.telegram, self.llm = chat, telegram, llm

    def replies(self) -> list[str]:
        return [m.get("text", "") for m in self.telegram.sent_messages(self.chat)]

    def asks(self, prompt: str, tool: str, arguments: dict[str, Any]) -> str:
        self.llm.add_rule(Rule(match=prompt, tool_calls=[{"name": tool, "arguments": arguments}]))
        before = len(self.replies())
        self.telegram.user_message(self.chat, prompt)
        wait_until(lambda: len(self.replies()) > before, 60, f"the answer to {prompt!r}")
        outputs = [
            str(r.messages[-1].get("content")) for r in self.llm.requests
            if r.last_user_text == prompt and r.messages and r.messages[-1].get("role") == "tool"
        ]
        assert outputs, f"the tool never ran for {prompt!r}"
        return outputs[-1]


def test_one_person_cannot_read_change_or_message_into_anothers_conversation(
    cluster_factory: Any, fake_llm: FakeLLM, telegram: FakeTelegram, tmp_path: Path
) -> None:
    if reason := bwrap_refusal():
        pytest.skip(reason)
    cluster: Cluster = cluster_factory(channels={"telegram": {
        "enabled": True, "token": telegram.token, "apiBase": telegram.api_base, "pollLeaseS": 3,
        "allowFrom": [str(ALICE), str(BOB)],
    }}, sections={"limits": {"messagesPerMinute": 0}})  # each person writes a few dozen messages in a minute
    cluster.start_worker(autoscale="2,1")
    cluster.start_worker(autoscale="2,1")
    cluster.start_gateway()
    workspace = tmp_path / "workspace"
    alice, bob = Person(ALICE, telegram, fake_llm), Person(BOB, telegram, fake_llm)

    # Alice keeps her secrets, and gets each back (the controls: the tools work).
    assert alice.asks("keep this note", "write_file", {"path": "notes.txt", "content": FILE_SECRET}).startswith("Wrote")
    alice.asks("keep this too", "exec", {"command": f"echo {EXEC_SECRET} > vault.txt"})
    scheduled = alice.asks("remind me tomorrow", "cron", {"action": "add", "message": REMINDER_SECRET,
                                                          "every_seconds": 86_400})
    job_id = scheduled.split()[2]
    assert alice.asks("read my note", "read_file", {"path": "notes.txt"}) == FILE_SECRET
    assert EXEC_SECRET in alice.asks("show my vault", "exec", {"command": "cat vault.txt"})
    assert job_id in alice.asks("list my reminders", "cron", {"action": "list"})
    alice_folder = conversation_folder(workspace, f"telegram:{ALICE}")
    assert (alice_folder / "notes.txt").read_text() == FILE_SECRET
    assert (alice_folder / "vault.txt").read_text().strip() == EXEC_SECRET
    alice_replies = alice.replies()

    # Bob goes after them.
    guesses = [
        "notes.txt", "vault.txt", f"../{alice_folder.name}/notes.txt",
        f"../../conversations/{alice_folder.name}/vault.txt",
        str(alice_folder / "notes.txt"), str(workspace / "notes.txt"), "/root/.nanobot/workspace/notes.txt",
        str(workspace / "sessions" / f"telegram_{ALICE}.jsonl"),
    ]
    outputs = {f"read {path}": bob.asks(f"read {path}", "read_file", {"path": path}) for path in guesses}
    for path in ("..", "../..", str(workspace), str(workspace / "conversations"), "/"):
        outputs[f"list {path}"] = bob.asks(f"list {path}", "list_dir", {"path": path})
    commands = [
        "cat notes.txt vault.txt ../*/notes.txt ../*/vault.txt",
        "ls -R ..; ls -la ../..",
        "find / -name 'vault*' -o -name 'notes*' 2>/dev/null; echo searched",
        "grep -rs CANARY / --exclude-dir=usr --exclude-dir=proc --exclude-dir=sys; echo grepped",
        f"cat {alice_folder}/vault.txt; cat {workspace}/sessions/*",
    ]
    for command in commands:
        outputs[command] = bob.asks(f"run {command}", "exec", {"command": command})
    outputs["cron list"] = bob.asks("what reminders are there", "cron", {"action": "list"})
    outputs["cron remove"] = bob.asks("drop that reminder", "cron", {"action": "remove", "job_id": job_id})
    outputs["message alice"] = bob.asks("write to alice", "message", {
        "content": "hello alice, this is bob", "channel": "telegram", "chat_id": str(ALICE)})

    for what, output in outputs.items():
        assert [s for s in SECRETS if s in output] == [], (what, output)
    assert outputs["cron list"] == "No scheduled jobs." and outputs["cron remove"] == f"Error: no job {job_id}"
    assert outputs["message alice"].startswith("Error: the message tool sends only to the chat of this conversation")
    assert "searched" in outputs[commands[2]] and "grepped" in outputs[commands[3]], "the commands really ran"
    for what in ("read notes.txt", "read vault.txt", "list ..", "list /"):
        assert outputs[what].startswith("Error"), (what, outputs[what])

    seen_by_llm_for_bob = json.dumps([r.messages for r in fake_llm.requests if f"Chat: {BOB}" in str(r.messages[0])])
    assert [s for s in SECRETS if s in seen_by_llm_for_bob] == []
    assert alice.replies() == alice_replies, "nothing reached Alice's chat from Bob's turns"
    assert not any("bob" in text for text in alice.replies())
    assert job_id in alice.asks("list my reminders again", "cron", {"action": "list"}), "her reminder is still there"
    assert (alice_folder / "notes.txt").read_text() == FILE_SECRET
