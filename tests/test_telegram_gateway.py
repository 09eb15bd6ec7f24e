"""Telegram through real gateway processes: `nanobot gateway` in local mode, and in celery mode with workers
started as `celery -A nanobot_celery worker --autoscale=10,2`; two gateways sharing one bot token; a
config written by upstream nanobot 0.3.5's `onboard`. The Bot API is the loopback fake, the LLM the
simulated one (it answers "echo: <message>")."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nanobot.testing.llm_server import FakeLLM, Rule
from nanobot.testing.processes import Process, free_port, nanobot, wait_http_ok, wait_until
from nanobot.testing.telegram_server import FakeTelegram
from tests.cluster import NO_LIMITS
from tests.conftest import write_config

FIXTURES = Path(__file__).parent / "fixtures"
CODE = "\n".join(f"total_{i} = compute({i})  # step {i}" for i in range(120))
LONG_REPLY = "Here is the plan.\n\n" + ("All good. " * 350) + f"\n\n```python\n{CODE}\n```\n\nDone."


@pytest.fixture
def telegram() -> Iterator[FakeTelegram]:
    fake = FakeTelegram(webhook_retry_s=0.1).start()
    try:
        yield fake
    finally:
        fake.stop()


def telegram_config(fake: FakeTelegram, **extra: Any) -> dict[str, Any]:
    return {"telegram": {"enabled": True, "token": fake.token, "apiBase": fake.api_base, "pollLeaseS": 3,
                         "allowFrom": ["1001", "1002", "@bob"], **extra}}


def replies(fake: FakeTelegram, chat_id: int) -> list[str]:
    return [m.get("text", "") for m in fake.sent_messages(chat_id)]


def converse(fake: FakeTelegram, llm: FakeLLM) -> None:
    """Several chats at once, a burst in one, a long reply with code, allowFrom, a group under "mention"."""
    llm.add_rule(Rule(match="long please", content=LONG_REPLY, times=None))
    burst = [f"burst {i}" for i in range(6)]
    for text in burst:
        fake.user_message(1001, text)
    fake.user_message(1003, "hello from bob", username="bob")
    fake.user_message(1004, "let me in", username="mallory")
    fake.user_message(-2002, "humans talking", chat_type="group", user_id=1002)
    fake.user_message(-2002, f"@{fake.bot_username} are you there?", chat_type="group", user_id=1002)
    fake.user_message(1002, "long please")

    wait_until(lambda: len(replies(fake, 1001)) >= 6, 60, "the burst's replies")
    assert replies(fake, 1001) == [f"echo: {text}" for text in burst]
    wait_until(lambda: len(replies(fake, 1003)) >= 1 and len(replies(fake, -2002)) >= 1, 30, "bob and the group")
    assert replies(fake, 1003) == ["echo: hello from bob"]
    assert replies(fake, -2002) == ["echo: are you there?"]
    wait_until(lambda: any("Done." in text for text in replies(fake, 1002)), 30, "the long reply")
    parts = replies(fake, 1002)
    assert len(parts) >= 2 and all(len(part) <= 4096 for part in parts)
    code_lines = [line for part in parts for line in part.splitlines() if line.startswith("total_")]
    assert code_lines == CODE.splitlines()
    time.sleep(0.5)
    assert replies(fake, 1004) == [], "a sender outside allowFrom gets nothing"
    burst_requests = [r for r in llm.requests if r.last_user_text.startswith("burst")]
    assert [r.last_user_text for r in burst_requests] == burst, "one turn per message, in order"


def test_local_gateway_serves_telegram(tmp_path: Path, fake_llm: FakeLLM, telegram: FakeTelegram) -> None:
    http_port = free_port()
    config = write_config(tmp_path, fake_llm.base_url, channels=telegram_config(telegram),
                          gateway={"heartbeat": {"enabled": False}, "port": http_port})
    gateway = Process(nanobot("gateway"), tmp_path / "gateway.log", env={"NANOBOT_CONFIG": str(config)})
    try:
        wait_http_ok(f"http://127.0.0.1:{http_port}/health", 60, gateway)
        converse(telegram, fake_llm)
        assert telegram.conflicts == 0
    except BaseException:
        print(gateway.log()[-6000:])
        raise
    finally:
        assert gateway.stop() == 0


def test_celery_gateway_and_two_workers_serve_telegram(
    cluster_factory: Any, fake_llm: FakeLLM, telegram: FakeTelegram
) -> None:
    cluster = cluster_factory(channels=telegram_config(telegram), worker={"pool": "prefork", "autoscale": "10,2"},
                              sections=NO_LIMITS)
    for _ in range(2):
        worker = cluster.start_worker()
        assert "--autoscale=10,2" in worker.args
    cluster.start_gateway("--no-embedded-worker")
    converse(telegram, fake_llm)
    assert telegram.conflicts == 0


def test_two_gateways_poll_one_token_in_turn(cluster_factory: Any, fake_llm: FakeLLM, telegram: FakeTelegram) -> None:
    cluster = cluster_factory(channels=telegram_config(telegram), sections=NO_LIMITS)
    cluster.start_worker()
    first = cluster.start_gateway("--no-embedded-worker")
    second, _ = cluster.start_another_gateway("gw2", "--no-embedded-worker")
    gateways = {"gateway": first, "gw2": second}
    wait_until(lambda: any("this gateway polls" in g.log() for g in gateways.values()), 30, "a poller")
    assert sum("this gateway polls" in g.log() for g in gateways.values()) == 1
    sent: list[str] = []

    def send(n: int, start: int) -> None:
        for i in range(start, start + n):
            text = f"message {i}"
            telegram.user_message(1001 + i % 2, text)
            sent.append(text)
            time.sleep(0.05)

    send(10, 0)
    wait_until(lambda: len(replies(telegram, 1001)) + len(replies(telegram, 1002)) >= 10, 60, "first replies")
    poller_name = next(name for name, g in gateways.items() if "this gateway polls" in g.log())
    poller = gateways[poller_name]
    os.killpg(poller.proc.pid, signal.SIGKILL)  # the poller dies without a word
    poller.proc.wait(10)
    send(10, 10)
    survivor = next(g for name, g in gateways.items() if name != poller_name)
    wait_until(lambda: "this gateway polls" in survivor.log(), 30, "the other gateway to take over")
    wait_until(lambda: len(replies(telegram, 1001)) + len(replies(telegram, 1002)) >= 20, 60, "every reply")
    time.sleep(1.0)
    answered = Counter(text.removeprefix("echo: ") for chat in (1001, 1002) for text in replies(telegram, chat))
    assert answered == Counter(sent), "every update answered exactly once across the handover"
    turns = Counter(r.last_user_text for r in fake_llm.requests)
    assert all(turns[text] == 1 for text in sent), turns
    assert telegram.conflicts == 0, "never two getUpdates at once"


def test_upstream_onboard_config_starts_telegram(tmp_path: Path, fake_llm: FakeLLM, telegram: FakeTelegram) -> None:
    """A config.json written by upstream nanobot 0.3.5's `onboard` (nulls, a top-level api block, channels
    we do not have), with only the bot token, the Bot API address and the model's endpoint filled in."""
    raw = json.loads((FIXTURES / "upstream_0_3_5_config.json").read_text())
    assert raw["providers"]["custom"]["apiKey"] is None and "api" in raw  # really upstream's shape
    raw["agents"]["defaults"].update(workspace=str(tmp_path / "workspace"), model="test-model", provider="custom")
    raw["providers"]["custom"].update(apiKey="test-key", apiBase=fake_llm.base_url)
    raw["channels"]["telegram"].update(enabled=True, token=telegram.token, apiBase=telegram.api_base)
    http_port = free_port()
    raw["gateway"]["port"] = http_port
    raw["gateway"]["heartbeat"]["enabled"] = False
    config = tmp_path / "config.json"
    config.write_text(json.dumps(raw, indent=2, ensure_ascii=False))
    gateway = Process(nanobot("gateway"), tmp_path / "gateway.log", env={"NANOBOT_CONFIG": str(config)})
    try:
        wait_http_ok(f"http://127.0.0.1:{http_port}/health", 60, gateway)
        telegram.user_message(4242, "hi from an upstream user", username="someone")
        wait_until(lambda: replies(telegram, 4242) == ["echo: hi from an upstream user"], 30, "the reply", gateway)
        assert gateway.log().count("ignoring unknown keys") == 1
    except BaseException:
        print(gateway.log()[-6000:])
        raise
    finally:
        assert gateway.stop() == 0


def test_two_gateways_each_get_their_own_api_replies(cluster_factory: Any, fake_llm: FakeLLM) -> None:
    """Replies go back to the gateway that accepted the message, which holds the HTTP request."""
    from concurrent.futures import ThreadPoolExecutor

    cluster = cluster_factory()
    cluster.start_worker()
    cluster.start_gateway("--no-embedded-worker")
    _, second = cluster.start_another_gateway("gw2", "--no-embedded-worker")
    jobs = [(f"question {i}", f"s{i}", cluster.base if i % 2 else second) for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda job: cluster.chat(job[0], job[1], base=job[2], timeout=30), jobs))
    for (question, _session, _base), response in zip(jobs, results, strict=True):
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == f"echo: {question}"
