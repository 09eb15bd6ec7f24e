"""Every Redis key nanobot uses, in one place. `prefix` separates installations (and test runs)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RedisKeys:
    prefix: str = "nanobot"

    # conversation lock (nanobot/session/locks.py)
    def lock(self, session_key: str) -> str:
        return f"{self.prefix}:lock:{session_key}"

    def fence(self, session_key: str) -> str:
        """Counter bumped by every acquisition of the lock: the fencing token's source."""
        return f"{self.prefix}:fence:{session_key}"

    # shared sessions (nanobot/session/redis_manager.py)
    def session(self, session_key: str) -> str:
        return f"{self.prefix}:session:{session_key}"

    @property
    def session_index(self) -> str:
        return f"{self.prefix}:sessions"

    # distributed mode (nanobot_celery)
    def mailbox(self, session_key: str) -> str:
        return f"{self.prefix}:mailbox:{session_key}"

    def inflight(self, session_key: str) -> str:
        return f"{self.prefix}:inflight:{session_key}"

    def message(self, session_key: str, message_id: str) -> str:
        """Idempotency record of one accepted message: 'queued', then 'done'."""
        return f"{self.prefix}:msg:{session_key}:{message_id}"

    def deliveries(self, session_key: str) -> str:
        """Hash: message id -> times its turn was claimed; `error:<message id>` -> why its last attempt failed."""
        return f"{self.prefix}:deliveries:{session_key}"

    @property
    def dead_letters(self) -> str:
        """Stream of messages set aside after `bus.maxDeliveries` failed attempts (`nanobot deadletters`)."""
        return f"{self.prefix}:deadletters"

    def rung(self, session_key: str) -> str:
        """Present while a doorbell for this conversation is probably still queued."""
        return f"{self.prefix}:rung:{session_key}"

    @property
    def busy_sessions(self) -> str:
        """Sessions whose mailbox may hold work (the sweeper's to-do list)."""
        return f"{self.prefix}:mailboxes"

    @property
    def outbound(self) -> str:
        """Replies any gateway may send (no known origin)."""
        return f"{self.prefix}:outbound"

    def outbound_for(self, gateway: str | None) -> str:
        """Replies to messages a gateway accepted go back to that gateway (it may hold the HTTP request)."""
        return f"{self.prefix}:outbound:gw:{gateway}" if gateway else self.outbound

    def cancel(self, session_key: str) -> str:
        return f"{self.prefix}:cancel:{session_key}"

    def leader(self, role: str) -> str:
        return f"{self.prefix}:leader:{role}"

    def cron_fired(self, job_id: str, due_ms: int) -> str:
        return f"{self.prefix}:cronfired:{job_id}:{due_ms}"
