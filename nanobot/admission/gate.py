"""Admitting a message before its turn is queued, and spending a sender's LLM tokens after its turn.

`Admission.admit` runs in the channel, before anything reaches the bus, the mailbox or the LLM, so a flooding
sender costs the others nothing but these checks. Per sender of a channel (`limits_for`):

* `messagesPerMinute` with `burst`: a moving window of a minute, and one of `burst` messages in the time they
  take at that rate (5 in 15 s at 20 a minute); a refused message is not counted.
* `maxQueuedPerConversation`: messages already waiting behind the conversation's running turn (the caller
  says how many: the local agent's tasks, or the mailbox in distributed mode).
* `llmTokensPerDay`: what the provider reported for the sender's turns (`spend`), in a window of a day from the
  first turn that spent.

The counts live in the storage given: the `limits` library's memory storage in one process, Redis in distributed
mode (every gateway and worker counts together). If the storage fails, messages are admitted (fairness is not
worth losing messages over) and a warning is logged. `/stop` is never refused.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from limits import RateLimitItem, RateLimitItemPerDay, RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.aio.storage import Storage
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from nanobot.admission.rules import SenderLimits, limits_for
from nanobot.bus.events import InboundMessage
from nanobot.config.schema import Config
from nanobot.metrics.instruments import count_limited

log = logging.getLogger(__name__)

# How many messages wait behind the running turn of a conversation (its session key).
Waiting = Callable[[str], Awaitable[int]]

RATE, QUEUE, TOKENS = "rate", "queue", "tokens"
QUEUE_RETRY_S = 10  # what Retry-After says when a conversation's queue is full: a turn's usual length
NOTICE_WINDOW_S = 60  # a chat channel tells a limited sender at most once per window and limit


@dataclass(frozen=True)
class Refusal:
    """Why a message was not admitted: which limit (the metric's label), when to try again, what to tell them."""

    limit: str
    retry_after_s: int
    text: str


class Admission:
    def __init__(self, config: Config, storage: Storage, waiting: Waiting | None = None) -> None:
        self.config = config
        self._moving = MovingWindowRateLimiter(storage)
        self._fixed = FixedWindowRateLimiter(storage)
        self._waiting = waiting
        self._rules: dict[str, SenderLimits] = {}

    def rules(self, channel: str) -> SenderLimits:
        rules = self._rules.get(channel)
        if rules is None:
            rules = self._rules[channel] = limits_for(self.config, channel)
        return rules

    async def admit(self, msg: InboundMessage) -> Refusal | None:
        """None when `msg` may be queued; else why not (counted in `nanobot_limited_total`)."""
        rules = self.rules(msg.channel)
        if not rules.any or msg.content.strip().lower() == "/stop":
            return None
        try:
            refusal = await self._check(msg, rules)
        except Exception as exc:
            log.warning("channel=%s session=%s message_id=%s limits not checked (admitted): %s",
                        msg.channel, msg.session_key, msg.message_id, exc)
            return None
        if refusal is not None:
            count_limited(msg.channel, refusal.limit)
            log.info("channel=%s session=%s message_id=%s refused by limit=%s retry_after_s=%d",
                     msg.channel, msg.session_key, msg.message_id, refusal.limit, refusal.retry_after_s)
        return refusal

    async def _check(self, msg: InboundMessage, rules: SenderLimits) -> Refusal | None:
        who = (msg.channel, person(msg.sender_id))
        if rules.max_queued and self._waiting is not None:
            if await self._waiting(msg.session_key) >= rules.max_queued:
                return Refusal(QUEUE, QUEUE_RETRY_S, "Too many of your messages are waiting for an answer here. "
                               "Please wait for the replies before writing more.")
        if rules.tokens_per_day:
            budget = _tokens(rules)
            if not await self._fixed.test(budget, *who):
                wait = await self._seconds_left(self._fixed, budget, who)
                return Refusal(TOKENS, wait, f"You have used today's allowance of the assistant. It resets in "
                               f"{_duration(wait)}.")
        if rules.messages_per_minute:
            for item in _rate_items(rules):
                if not await self._moving.hit(item, *who):
                    wait = await self._seconds_left(self._moving, item, who)
                    return Refusal(RATE, wait, f"Too many messages: please wait {wait} s before writing again.")
        return None

    async def should_notify(self, msg: InboundMessage, refusal: Refusal) -> bool:
        """Whether to tell the sender about `refusal` now: once per NOTICE_WINDOW_S and limit (the rest are
        dropped quietly, or the notices would be a flood of their own)."""
        notice = RateLimitItemPerSecond(1, NOTICE_WINDOW_S, namespace="nanobot-notice")
        try:
            return await self._fixed.hit(notice, msg.channel, person(msg.sender_id), refusal.limit)
        except Exception as exc:
            log.warning("channel=%s limit notice not rate-limited: %s", msg.channel, exc)
            return True

    async def spend(self, channel: str, sender_id: str, tokens: int) -> None:
        """Count the LLM tokens a sender's turn used against its daily allowance (nothing when it has none)."""
        rules = self.rules(channel)
        if not rules.tokens_per_day or tokens <= 0:
            return
        try:
            await self._fixed.hit(_tokens(rules), channel, person(sender_id), cost=tokens)
        except Exception as exc:
            log.warning("channel=%s tokens of a turn not counted: %s", channel, exc)

    @staticmethod
    async def _seconds_left(
        limiter: FixedWindowRateLimiter | MovingWindowRateLimiter, item: RateLimitItem, who: tuple[str, str]
    ) -> int:
        stats = await limiter.get_window_stats(item, *who)
        return max(1, math.ceil(stats.reset_time - time.time()))


def person(sender_id: str) -> str:
    """Who is counted: the stable part of a sender id (Telegram's `<user id>|<username>` counts by the user id, so a
    new username starts no new allowance)."""
    return sender_id.split("|", 1)[0]


def _rate_items(rules: SenderLimits) -> tuple[RateLimitItem, RateLimitItem]:
    """The burst window first (the shorter wait when refused), then the minute."""
    return (
        RateLimitItemPerSecond(rules.burst, rules.burst_window_s, namespace="nanobot-burst"),
        RateLimitItemPerMinute(rules.messages_per_minute, namespace="nanobot-rate"),
    )


def _tokens(rules: SenderLimits) -> RateLimitItem:
    return RateLimitItemPerDay(rules.tokens_per_day, namespace="nanobot-tokens")


def _duration(seconds: int) -> str:
    hours, minutes = divmod(math.ceil(seconds / 60), 60)
    return f"{hours} h {minutes} min" if hours else f"{max(1, minutes)} min"
