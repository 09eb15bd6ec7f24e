"""The mailbox: each conversation's ordered queue of accepted messages in Redis.

The gateway appends (`enqueue`, which also drops duplicates); the worker that holds the conversation
lock moves the head to an in-flight list (`claim`), runs the turn, and `commit`s: the reply goes to the
outbound channel, the message is marked done and leaves the in-flight list — all in one Lua script that
first checks the lock is still ours. A holder that dies leaves its message in flight, where the next
holder finds it first. Celery tasks only ring the doorbell: they carry the session key, never a message.

Each claim counts a delivery of the message (`keys.deliveries`, with the error its last attempt recorded);
commit forgets the count. Past `bus.maxDeliveries`, `dead_letter` sets the message aside instead of
committing a reply (nanobot_celery/deadletters.py), fenced like commit.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from nanobot.bus.events import InboundMessage, OutboundMessage
from nanobot.config.schema import BusConfig
from nanobot.session.locks import LockLease, LockLost
from nanobot.session.redis_keys import RedisKeys

log = logging.getLogger(__name__)

# KEYS: message record, mailbox, busy set, rung. ARGV: payload, dedup ttl s, session key, rung ttl ms.
_ENQUEUE = """
if not redis.call('SET', KEYS[1], 'queued', 'NX', 'EX', ARGV[2]) then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('SET', KEYS[4], '1', 'PX', ARGV[4])
return 1
"""
# The one rule for leaving the busy set (what the sweeper walks): a conversation whose mailbox and in-flight list are
# both empty. Shared by claim, commit and forget-if-idle; returns true when it was forgotten.
_FORGET_IF_IDLE_FN = """
local function forget_if_idle(mailbox, inflight, busy, session_key)
  if redis.call('LLEN', mailbox) == 0 and redis.call('LLEN', inflight) == 0 then
    redis.call('SREM', busy, session_key)
    return true
  end
  return false
end
"""
# KEYS: lock, inflight, mailbox, deliveries, busy set. ARGV: token, deliveries ttl s, session key.
# Returns {item, recovered, deliveries, last error}, or {} when both lists are empty: the conversation then
# leaves the busy set in the same step (no separate forget-if-idle round trip). Each claim of a message counts
# one delivery (field = its message id); the error its previous attempt recorded is handed over once and forgotten.
_CLAIM = _FORGET_IF_IDLE_FN + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('NANOBOT_LOCK_LOST') end
local recovered = 1
local item = redis.call('LINDEX', KEYS[2], 0)
if not item then
  recovered = 0
  item = redis.call('LMOVE', KEYS[3], KEYS[2], 'LEFT', 'RIGHT')
end
if not item then
  forget_if_idle(KEYS[3], KEYS[2], KEYS[5], ARGV[3])
  return {}
end
local count, err = 0, ''
local ok, data = pcall(cjson.decode, item)
if ok and type(data) == 'table' and (type(data['message_id']) == 'string' or type(data['message_id']) == 'number') then
  local id = tostring(data['message_id'])
  count = redis.call('HINCRBY', KEYS[4], id, 1)
  err = redis.call('HGET', KEYS[4], 'error:' .. id) or ''
  if err ~= '' then redis.call('HDEL', KEYS[4], 'error:' .. id) end
  redis.call('EXPIRE', KEYS[4], ARGV[2])
end
return {item, recovered, count, err}
"""
# Shared tail of commit and dead-letter: publish the reply, mark the message done, drop it from flight, forget
# its delivery count. KEYS: lock, inflight, message record, outbound, deliveries.
# ARGV: token, item, reply ('' = none), maxlen, ttl, mode, message id.
_FINISH = """
if ARGV[3] ~= '' then
  if ARGV[6] == 'pubsub' then
    redis.call('PUBLISH', KEYS[4], ARGV[3])
  else
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*', 'm', ARGV[3])
  end
end
redis.call('SET', KEYS[3], 'done', 'EX', ARGV[5])
redis.call('LREM', KEYS[2], 1, ARGV[2])
redis.call('HDEL', KEYS[5], ARGV[7], 'error:' .. ARGV[7])
"""
# Commit also tells whether the conversation is now idle (KEYS[6] mailbox and the in-flight list empty): it then
# leaves KEYS[7], the busy set (ARGV[8]: session key), and the drain needs no further claim to learn it.
_COMMIT = _FORGET_IF_IDLE_FN + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
""" + _FINISH + """
if forget_if_idle(KEYS[6], KEYS[2], KEYS[7], ARGV[8]) then return 2 end
return 1
"""
COMMIT_LOST, COMMITTED, COMMITTED_IDLE = 0, 1, 2
# As commit (the reply is the apology), after adding the message to the dead letters. KEYS: commit's, dead
# letters. ARGV: commit's, then dead-letter maxlen, session key, channel, chat id, error, deliveries, dead_at.
# Returns the dead-letter entry id, or 0 if the lock is no longer ours.
_DEAD_LETTER = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local id = redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[8], '*',
  'session_key', ARGV[9], 'message_id', ARGV[7], 'channel', ARGV[10], 'chat_id', ARGV[11],
  'error', ARGV[12], 'deliveries', ARGV[13], 'dead_at', ARGV[14], 'entry', ARGV[2])
""" + _FINISH + """
return id
"""
# KEYS: mailbox, inflight, busy set. ARGV: session key. Forget an idle conversation.
_FORGET_IF_IDLE = _FORGET_IF_IDLE_FN + """
return forget_if_idle(KEYS[1], KEYS[2], KEYS[3], ARGV[1]) and 1 or 0
"""

OUTBOUND_MAXLEN = 100_000
DEAD_LETTERS_MAXLEN = 100_000
# Metadata key naming the gateway that accepted a message; its replies carry it back to that gateway.
ORIGIN = "_gateway"


@dataclass
class Claimed:
    raw: str  # the exact mailbox entry, needed to remove it from the in-flight list
    recovered: bool  # it was already in flight: a previous holder died or lost the lock while on it
    deliveries: int = 0  # times this message was claimed, this claim included (0: entry without a message id)
    last_error: str = ""  # why its previous attempt failed, when that attempt recorded it

    def message(self) -> InboundMessage:
        """Raises ValueError on a malformed entry."""
        data: Any = json.loads(self.raw)
        if not isinstance(data, dict):
            raise ValueError("mailbox entry is not a JSON object")
        return InboundMessage.from_dict(data)


class Mailbox:
    """Mailbox operations on a redis.asyncio client (decode_responses=True)."""

    def __init__(
        self, redis: Any, keys: RedisKeys, dedup_ttl_s: int, outbound_mode: str = "stream", rung_ttl_ms: int = 15_000
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.dedup_ttl_s = dedup_ttl_s
        self.outbound_mode = outbound_mode
        self.rung_ttl_ms = rung_ttl_ms
        self._enqueue = redis.register_script(_ENQUEUE)
        self._claim = redis.register_script(_CLAIM)
        self._commit = redis.register_script(_COMMIT)
        self._dead_letter = redis.register_script(_DEAD_LETTER)
        self._forget = redis.register_script(_FORGET_IF_IDLE)

    @classmethod
    def for_bus(cls, redis: Any, keys: RedisKeys, bus: BusConfig) -> Mailbox:
        """The mailbox as `bus` configures it: a doorbell counts as still queued for three sweep intervals."""
        return cls(redis, keys, bus.dedup_ttl_s, bus.outbound, rung_ttl_ms=int(bus.sweep_interval_s * 3000))

    async def enqueue(self, msg: InboundMessage) -> bool:
        """Append to the conversation's mailbox; False when this message id was accepted before."""
        sk = msg.session_key
        keys = [
            self.keys.message(sk, msg.message_id), self.keys.mailbox(sk), self.keys.busy_sessions, self.keys.rung(sk)
        ]
        payload = json.dumps(msg.to_dict(), ensure_ascii=False)
        return bool(await self._enqueue(keys=keys, args=[payload, self.dedup_ttl_s, sk, self.rung_ttl_ms]))

    async def claim(self, lease: LockLease) -> Claimed | None:
        """The next message to run: one left in flight first, else the mailbox head (moved in flight). None when
        there is none; the conversation is then no longer busy (as `forget_if_idle`)."""
        sk = lease.session_key
        keys = [self.keys.lock(sk), self.keys.inflight(sk), self.keys.mailbox(sk), self.keys.deliveries(sk),
                self.keys.busy_sessions]
        try:
            result = await self._claim(keys=keys, args=[lease.token, self.dedup_ttl_s, sk])
        except Exception as exc:
            if "NANOBOT_LOCK_LOST" in str(exc):
                raise LockLost(f"session {sk}: lock lost before claiming") from exc
            raise
        if not result:
            return None
        return Claimed(raw=result[0], recovered=bool(int(result[1])), deliveries=int(result[2]),
                       last_error=str(result[3] or ""))

    async def is_done(self, session_key: str, message_id: str) -> bool:
        return await self.redis.get(self.keys.message(session_key, message_id)) == "done"

    async def commit(self, lease: LockLease, claimed: Claimed, message_id: str, reply: OutboundMessage | None) -> int:
        """Publish the reply, mark the message done, drop it from flight. Returns COMMIT_LOST (0) if the lock is no
        longer ours, COMMITTED_IDLE when nothing else waits (the conversation left the busy set), else COMMITTED."""
        keys, args = self._finish_params(lease, claimed, message_id, reply)
        keys += [self.keys.mailbox(lease.session_key), self.keys.busy_sessions]
        args.append(lease.session_key)
        return int(await self._commit(keys=keys, args=args))

    async def dead_letter(
        self, lease: LockLease, claimed: Claimed, msg: InboundMessage, error: str, apology: OutboundMessage
    ) -> str | None:
        """Set the message aside in the dead letters and answer it with `apology`, as one fenced step, like
        commit. Returns the dead-letter entry id; None if the lock is no longer ours."""
        sk = lease.session_key
        keys, args = self._finish_params(lease, claimed, msg.message_id, apology)
        keys.append(self.keys.dead_letters)
        args += [DEAD_LETTERS_MAXLEN, sk, msg.channel, msg.chat_id, error, claimed.deliveries, int(time.time())]
        entry_id = await self._dead_letter(keys=keys, args=args)
        return str(entry_id) if entry_id and entry_id != 0 else None

    def _finish_params(
        self, lease: LockLease, claimed: Claimed, message_id: str, reply: OutboundMessage | None
    ) -> tuple[list[str], list[Any]]:
        sk = lease.session_key
        stream = self.keys.outbound_for(reply.metadata.get(ORIGIN) if reply is not None else None)
        keys = [
            self.keys.lock(sk), self.keys.inflight(sk), self.keys.message(sk, message_id), stream,
            self.keys.deliveries(sk),
        ]
        body = json.dumps(reply.to_dict(), ensure_ascii=False) if reply is not None else ""
        args: list[Any] = [
            lease.token, claimed.raw, body, OUTBOUND_MAXLEN, self.dedup_ttl_s, self.outbound_mode, message_id
        ]
        return keys, args

    async def record_error(self, session_key: str, message_id: str, error: str) -> None:
        """Remember why this message's attempt failed: its next claim hands it over (and a dead letter keeps it)."""
        key = self.keys.deliveries(session_key)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, f"error:{message_id}", error)
            pipe.expire(key, self.dedup_ttl_s)
            await pipe.execute()

    async def forget_if_idle(self, session_key: str) -> None:
        keys = [self.keys.mailbox(session_key), self.keys.inflight(session_key), self.keys.busy_sessions]
        await self._forget(keys=keys, args=[session_key])

    async def pending(self, session_key: str) -> int:
        """Messages waiting or in flight for this conversation."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.llen(self.keys.mailbox(session_key))
            pipe.llen(self.keys.inflight(session_key))
            waiting, flying = await pipe.execute()
        return int(waiting) + int(flying)
