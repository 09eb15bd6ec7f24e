"""The limits in force for one channel: the `limits` block with its unset keys settled by mode and channel."""

from __future__ import annotations

import math
from dataclasses import dataclass

from nanobot.config.schema import Config, LimitsConfig

# Channels where one sender is one person: distributed mode limits them by default. The API channel's sender
# is a client, which often carries many people: it is limited only by keys the operator sets.
CHAT_CHANNELS = frozenset({"telegram", "whatsapp"})
DEFAULTS = LimitsConfig(messages_per_minute=20, burst=5, max_queued_per_conversation=20, llm_tokens_per_day=0)


@dataclass(frozen=True)
class SenderLimits:
    """What one sender of one channel may do; 0 is off."""

    messages_per_minute: int = 0
    burst: int = 0
    max_queued: int = 0
    tokens_per_day: int = 0

    @property
    def any(self) -> bool:
        return bool(self.messages_per_minute or self.max_queued or self.tokens_per_day)

    @property
    def burst_window_s(self) -> int:
        """The window in which at most `burst` messages pass: the time `burst` messages take at the steady rate."""
        return max(1, math.ceil(self.burst * 60 / self.messages_per_minute)) if self.messages_per_minute else 0


def limits_for(config: Config, channel: str) -> SenderLimits:
    """The limits of `channel`'s senders: each key as set, else its default where many people share a deployment
    (distributed mode) on a chat channel, else off."""
    defaults = DEFAULTS if config.bus.backend == "celery" and channel in CHAT_CHANNELS else LimitsConfig()
    given = config.limits

    def pick(name: str) -> int:
        value = getattr(given, name)
        if value is None:
            value = getattr(defaults, name)
        return int(value or 0)

    per_minute = pick("messages_per_minute")
    burst = min(pick("burst") or (DEFAULTS.burst or 1), per_minute) if per_minute else 0
    return SenderLimits(per_minute, burst, pick("max_queued_per_conversation"), pick("llm_tokens_per_day"))
