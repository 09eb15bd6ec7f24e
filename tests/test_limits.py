"""Fair limits per sender (`limits`): which apply where, how they count (in memory and in real Redis, shared by
two gateways), and a flood through a real gateway and workers: the API answers 429 with Retry-After, Telegram
sends one notice, the LLM never sees what was refused, and another person is still answered."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
import uuid
from typing import Any

import httpx
import pytest
import redis
from limits.aio.storage import MemoryStorage, RedisStorage

from nanobot.admission.gate import Admission
from nanobot.admission.rules import SenderLimits, limits_for
from nanobot.bus.events import InboundMessage
from nanobot.config.schema import Config
from nanobot.testing.llm_server import FakeLLM
from nanobot.testing.processes import free_port, wait_until
from nanobot.testing.telegram_server import FakeTelegram
from tests.cluster import API_KEY, REDIS_DB, REDIS_HOST, REDIS_PORT, Cluster

DISTRIBUTED = {"bus": {"backend": "celery"}}


def message(content: str = "hi", sender: str = "42", chat: str = "42", channel: str = "telegram") -> InboundMessage:
    return InboundMessage(channel=channel, sender_id=sender, chat_id=chat, content=content)


# ---------------------------------------------------------------- which limits apply


def test_limits_are_off_locally_and_on_for_chat_channels_in_distributed_mode() -> None:
    assert limits_for(Config(), "telegram") == SenderLimits()
    distributed = Config.model_validate(DISTRIBUTED)
    assert limits_for(distributed, "telegram") == SenderLimits(20, 5, 20, 0)
    assert limits_for(distributed, "whatsapp") == SenderLimits(20, 5, 20, 0)
    assert limits_for(distributed, "api") == SenderLimits(), "an API client often carries many people"
    assert limits_for(distributed, "telegram").burst_window_s == 15

    explicit = Config.model_validate({"limits": {"messagesPerMinute": 6, "llmTokensPerDay": 1000}})
    assert limits_for(explicit, "api") == SenderLimits(6, 5, 0, 1000), "set keys apply everywhere, locally too"
    assert limits_for(explicit, "api").burst_window_s == 50
    off = Config.model_validate({**DISTRIBUTED, "limits": {"messagesPerMinute": 0, "maxQueuedPerConversation": 0}})
    assert not limits_for(off, "telegram").any
    saved = Config.model_validate(Config().to_json_dict())  # what `nanobot onboard` writes leaves them unset
    assert limits_for(saved, "api") == SenderLimits() and saved.limits.messages_per_minute is None
    with pytest.raises(ValueError, match=r"messagesPerMinute|messages_per_minute"):
        Config.model_validate({"limits": {"messagesPerMinute": -1}})


# ---------------------------------------------------------------- how they count


def admit_all(admission: Admission, messages: list[InboundMessage]) -> list[Any]:
    async def run() -> list[Any]:
        return [await admission.admit(m) for m in messages]

    return asyncio.run(run())


def test_a_burst_passes_then_the_sender_waits_and_others_are_untouched() -> None:
    admission = Admission(Config.model_validate(DISTRIBUTED), MemoryStorage())
    results = admit_all(admission, [message(f"m{i}") for i in range(8)] + [message("other", sender="7", chat="7")])
    assert results[:5] == [None] * 5
    refused = results[5:8]
    assert all(r is not None and r.limit == "rate" and 1 <= r.retry_after_s <= 15 for r in refused), refused
    assert "please wait" in refused[0].text
    assert results[8] is None, "another sender has a budget of their own"
    assert admit_all(admission, [message("/stop")]) == [None], "/stop is never refused"

    async def notices() -> list[bool]:
        return [await admission.should_notify(message(), r) for r in refused]

    assert asyncio.run(notices()) == [True, False, False], "one notice per window"


def test_queue_and_token_limits() -> None:
    config = Config.model_validate({"limits": {"maxQueuedPerConversation": 2, "llmTokensPerDay": 100}})
    waiting = {"telegram:42": 2, "telegram:7": 1}

    async def count(session_key: str) -> int:
        return waiting.get(session_key, 0)

    admission = Admission(config, MemoryStorage(), waiting=count)

    async def scenario() -> list[Any]:
        full = await admission.admit(message())
        room = await admission.admit(message(sender="7", chat="7"))
        await admission.spend("telegram", "7", 60)
        still = await admission.admit(message(sender="7", chat="7"))
        await admission.spend("telegram", "7", 60)
        spent = await admission.admit(message(sender="7", chat="7"))
        other_channel = await admission.admit(message(sender="7", chat="7", channel="whatsapp"))
        return [full, room, still, spent, other_channel]

    full, room, still, spent, other_channel = asyncio.run(scenario())
    assert full is not None and full.limit == "queue" and full.retry_after_s > 0
    assert room is None and still is None
    assert spent is not None and spent.limit == "tokens" and "resets in" in spent.text
    assert 23 * 3600 < spent.retry_after_s <= 24 * 3600
    assert other_channel is None, "per sender per channel"


def test_two_gateways_count_one_sender_together_in_redis() -> None:
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
    prefix = f"nbtest-limits-{uuid.uuid4().hex[:8]}"
    config = Config.model_validate(DISTRIBUTED)

    async def scenario() -> list[Any]:
        gateways = [Admission(config, RedisStorage("async+" + url, implementation="redispy", key_prefix=prefix))
                    for _ in range(2)]
        return [await gateways[i % 2].admit(message(f"m{i}")) for i in range(7)]

    client = redis.Redis.from_url(url)
    try:
        results = asyncio.run(scenario())
        assert results[:5] == [None] * 5 and all(r is not None for r in results[5:])
        assert client.keys(f"{prefix}*"), "the counts are in Redis"
    finally:
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)


def test_limits_admit_when_their_storage_is_down() -> None:
    storage = RedisStorage("async+redis://127.0.0.1:1/0", implementation="redispy", socket_connect_timeout=0.2)
    admission = Admission(Config.model_validate(DISTRIBUTED), storage)
    assert admit_all(admission, [message(f"m{i}") for i in range(7)]) == [None] * 7


# ---------------------------------------------------------------- a flood through the real service


def test_a_flooding_sender_is_refused_before_the_llm_and_others_are_answered(
    cluster_factory: Any, fake_llm: FakeLLM
) -> None:
    telegram = FakeTelegram().start()
    try:
        flood_through_the_service(cluster_factory, fake_llm, telegram)
    finally:
        telegram.stop()


def flood_through_the_service(cluster_factory: Any, fake_llm: FakeLLM, telegram: FakeTelegram) -> None:
    keys = {"key-flooder": "flooder", "key-calm": "calm"}
    api_port, gateway_port = free_port(), free_port()
    cluster: Cluster = cluster_factory(
        channels={
            "telegram": {"enabled": True, "token": telegram.token, "apiBase": telegram.api_base, "pollLeaseS": 3},
            "api": {"enabled": True, "port": api_port, "apiKey": API_KEY, "keys": keys},
        },
        # Set explicitly, so the API channel is limited too (20 a minute, bursts of 5) and so is the day's budget.
        sections={"limits": {"messagesPerMinute": 20, "llmTokensPerDay": 100_000},
                  "gateway": {"heartbeat": {"enabled": False}, "port": gateway_port}},
    )
    cluster.base = f"http://127.0.0.1:{api_port}"
    cluster.start_worker(autoscale="4,2")
    cluster.start_worker(autoscale="4,2")
    cluster.start_gateway()

    def post(key: str, content: str, session: str) -> httpx.Response:
        return cluster.chat(content, session, api_key=key)

    # 40 requests at once from one client, in 40 conversations: 5 pass, 35 get 429 with Retry-After.
    with concurrent.futures.ThreadPoolExecutor(max_workers=40) as pool:
        flood = list(pool.map(lambda i: post("key-flooder", f"flood {i}", f"s{i}"), range(40)))
        calm_started = time.monotonic()
        calm = post("key-calm", "a calm question", "c1")
        calm_s = time.monotonic() - calm_started
    statuses = sorted(r.status_code for r in flood)
    assert statuses == [200] * 5 + [429] * 35, statuses
    refused = [r for r in flood if r.status_code == 429]
    assert all(1 <= int(r.headers["Retry-After"]) <= 15 for r in refused)
    error = refused[0].json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded" and "wait" in error["message"]
    assert calm.status_code == 200 and calm.json()["choices"][0]["message"]["content"] == "echo: a calm question"
    assert len([r for r in fake_llm.requests if r.last_user_text.startswith("flood")]) == 5, "refused before the LLM"

    # The completion carries the turn's real usage (what the simulated provider reported).
    usage = calm.json()["usage"]
    calm_request = next(r for r in fake_llm.requests if r.last_user_text == "a calm question")
    assert usage["total_tokens"] > 0 and usage == calm_request.usage

    # Telegram: 40 messages at once from one person: 5 turns, one notice, the rest dropped without a word.
    for i in range(40):
        telegram.user_message(1001, f"tg flood {i}")
    telegram.user_message(1002, "a calm telegram question")
    wait_until(lambda: len(telegram.sent_messages(1001)) >= 6, 60, "the flood's answers and notice")
    wait_until(lambda: len(telegram.sent_messages(1002)) >= 1, 60, "the other person's answer")
    time.sleep(1.0)
    texts = [m.get("text", "") for m in telegram.sent_messages(1001)]
    notices = [t for t in texts if t.startswith("Too many messages")]
    assert len(notices) == 1 and len(texts) == 6, texts
    assert [m.get("text") for m in telegram.sent_messages(1002)] == ["echo: a calm telegram question"]
    assert len([r for r in fake_llm.requests if r.last_user_text.startswith("tg flood")]) == 5

    metrics = httpx.get(f"http://127.0.0.1:{gateway_port}/metrics", timeout=10, trust_env=False).text
    assert 'nanobot_limited_total{channel="api",limit="rate"} 35.0' in metrics
    assert 'nanobot_limited_total{channel="telegram",limit="rate"} 35.0' in metrics
    print(f"calm API turn during the flood: {calm_s * 1000:.0f} ms")


def test_a_daily_token_budget_stops_a_sender_with_the_time_it_resets(cluster_factory: Any, fake_llm: FakeLLM) -> None:
    keys = {"key-spender": "spender", "key-other": "other"}
    api_port = free_port()
    cluster: Cluster = cluster_factory(
        channels={"api": {"enabled": True, "port": api_port, "apiKey": API_KEY, "keys": keys}},
        sections={"limits": {"llmTokensPerDay": 150}},
    )
    cluster.base = f"http://127.0.0.1:{api_port}"
    cluster.start_worker(autoscale="2,1")
    cluster.start_gateway()

    def post(key: str, content: str) -> httpx.Response:
        return cluster.chat(content, "s", api_key=key)

    spent = 0
    answered = 0
    while True:
        response = post("key-spender", f"question {answered}")
        if response.status_code != 200:
            break
        spent += response.json()["usage"]["total_tokens"]
        answered += 1
        assert answered < 20, "the budget never ran out"
    assert response.status_code == 429 and spent >= 150 and answered >= 1
    error = response.json()["error"]
    assert error["code"] == "tokens_limit_exceeded" and "resets in 2" in error["message"], error
    assert int(response.headers["Retry-After"]) > 23 * 3600
    assert post("key-other", "my own budget").status_code == 200
