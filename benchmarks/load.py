"""Simulated users: each holds one conversation of T turns with the gateway's API channel, one turn
after the other, all users at once.

The driver is aiohttp's client on one event loop: at a thousand open connections it costs a fraction of
what httpx does (the report shows the driver's own CPU per turn, `driver_cpu_ms_per_turn`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from benchmarks.stack import REPLY_TIMEOUT_S

RETRYABLE_STATUS = {409, 502, 503, 504}  # 409: the same Idempotency-Key is still being answered


@dataclass
class Turn:
    user: int
    index: int
    text: str
    sent_at: float = 0.0  # wall clock, comparable with the simulated LLM's records
    answered_at: float = 0.0
    reply: str | None = None
    error: str | None = None
    attempts: int = 0

    @property
    def latency_s(self) -> float:
        return self.answered_at - self.sent_at


@dataclass
class User:
    index: int
    session_id: str
    turns: list[Turn] = field(default_factory=list)


def turn_text(user: int, turn: int) -> str:
    return f"user {user} turn {turn}"


async def _send(client: aiohttp.ClientSession, url: str, user: User, turn: Turn, key: str | None) -> bool:
    """One attempt; True when it failed in a way worth sending the same message again."""
    body = {"model": "nanobot", "session_id": user.session_id, "messages": [{"role": "user", "content": turn.text}]}
    headers = {"Idempotency-Key": key} if key else {}
    turn.attempts += 1
    try:
        async with client.post(url, json=body, headers=headers) as response:
            if response.status == 200:
                turn.reply = (await response.json())["choices"][0]["message"]["content"]
                turn.error = None
                return False
            turn.error = f"HTTP {response.status}: {(await response.text())[:200]}"
            return response.status in RETRYABLE_STATUS
    except (TimeoutError, aiohttp.ClientError) as exc:
        turn.error = f"{type(exc).__name__}: {exc}"
        return True  # connection refused or reset: the gateway is restarting


async def drive_user(
    client: aiohttp.ClientSession,
    url: str,
    user: User,
    turns: int,
    on_turn: Callable[[Turn], None],
    retry_for_s: float = 0.0,
) -> User:
    """Send the user's next `turns` turns in order. With `retry_for_s`, each turn carries an Idempotency-Key and is
    sent again (the same message, not a new one) after a connection error or a retryable status."""
    first = len(user.turns)
    for index in range(first, first + turns):
        turn = Turn(user.index, index, turn_text(user.index, index), sent_at=time.time())
        user.turns.append(turn)
        key = f"{user.session_id}-{index}" if retry_for_s else None
        deadline = time.monotonic() + retry_for_s
        while True:
            retryable = await _send(client, url, user, turn, key)
            if not retryable or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.5)
        turn.answered_at = time.time()
        on_turn(turn)
    return user


def make_users(count: int, session_prefix: str) -> list[User]:
    return [User(u, f"{session_prefix}-{u}") for u in range(count)]


async def drive_users(
    base_url: str,
    users: list[User],
    turns: int,
    on_turn: Callable[[Turn], None],
    retry_for_s: float = 0.0,
) -> list[User]:
    """Every user sends their next `turns` turns, all users at once."""
    url = f"{base_url}/v1/chat/completions"
    connector = aiohttp.TCPConnector(limit=len(users), limit_per_host=len(users), keepalive_timeout=300)
    timeout = aiohttp.ClientTimeout(total=REPLY_TIMEOUT_S + 60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False) as client:
        await asyncio.gather(*(drive_user(client, url, u, turns, on_turn, retry_for_s) for u in users))
    return users
