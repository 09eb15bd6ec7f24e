"""Drain one conversation's mailbox under its lock: what a `process_turn` task does.

    take the lock (or return: the holder drains, and re-checks after it lets go)
    repeat: claim the next message (left in flight first), run its turn, commit (fenced)
    release; if work arrived meanwhile, go round again (closes the lost-wakeup race)

A message recovered from flight whose turn is already in the history (its holder died between saving
and committing) is answered from the history instead of being run again. `/stop` reaches the holder on
the conversation's cancel channel; a lost lock stops the turn before it can write.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

from nanobot.agent.loop import STOPPED_TEXT, reply_target
from nanobot.bus.events import InboundMessage, OutboundMessage
from nanobot.session.locks import LockLease, LockLost
from nanobot_celery import outbound
from nanobot_celery.mailbox import Claimed
from nanobot_celery.runtime import WorkerRuntime

log = logging.getLogger(__name__)


@dataclass
class DrainResult:
    handled: int = 0
    busy: bool = False  # another process held the lock


class _Stop(Exception):
    def __init__(self, request: InboundMessage) -> None:
        self.request = request


async def drain(rt: WorkerRuntime, session_key: str) -> DrainResult:
    result = DrainResult()
    mailbox = rt.bus.mailbox
    while True:
        lease = await rt.locks.try_acquire(session_key)
        if lease is None:
            result.busy = result.handled == 0
            return result
        try:
            result.handled += await _drain_locked(rt, lease)
        finally:
            await rt.locks.release(lease)
        if not await mailbox.pending(session_key):
            return result


async def _drain_locked(rt: WorkerRuntime, lease: LockLease) -> int:
    mailbox = rt.bus.mailbox
    sk = lease.session_key
    handled = 0
    channel = rt.bus.keys.cancel(sk)
    cancels = await _listen(rt, channel)
    try:
        while True:
            if lease.lost:
                raise LockLost(f"session {sk}: lock lost")
            claimed = await mailbox.claim(lease)
            if claimed is None:
                await mailbox.forget_if_idle(sk)
                return handled
            msg = _parse(claimed)
            if msg is None:  # malformed entry: logged, dropped so it cannot block the conversation
                await mailbox.commit(lease, claimed, "malformed", None)
                continue
            if claimed.recovered and await mailbox.is_done(sk, msg.message_id):
                await mailbox.commit(lease, claimed, msg.message_id, None)
                continue
            origin = outbound.origin_of(msg)
            token = outbound.turn_origin.set(origin)
            try:
                reply = await _answer(rt, lease, claimed, msg, cancels, channel)
            except _Stop as stop:
                handled += await _stop_queued(rt, lease, claimed, msg, stop.request)
                continue
            finally:
                outbound.turn_origin.reset(token)
            if reply is not None:
                outbound.addressed(reply, origin)
            if not await mailbox.commit(lease, claimed, msg.message_id, reply):
                raise LockLost(f"session {sk}: lock lost before commit; reply dropped")
            handled += 1
    finally:
        await _unlisten(rt, channel)


async def _listen(rt: WorkerRuntime, channel: str) -> Any:
    """Subscribe to a conversation's /stop channel on the runtime's one pub/sub connection, kept open
    between drains (a connection per drain cost a connect and handshake per turn)."""
    if rt.cancels is None:
        rt.cancels = rt.bus.redis.pubsub(ignore_subscribe_messages=True)
    try:
        await rt.cancels.subscribe(channel)
    except BaseException:
        await _forget_listener(rt)
        raise
    return rt.cancels


async def _unlisten(rt: WorkerRuntime, channel: str) -> None:
    if rt.cancels is None:
        return
    try:
        await rt.cancels.unsubscribe(channel)
    except Exception as exc:  # a broken connection: the next drain opens a fresh one
        log.debug("cancel listener dropped: %s", exc)
        await _forget_listener(rt)


async def _forget_listener(rt: WorkerRuntime) -> None:
    cancels, rt.cancels = rt.cancels, None
    if cancels is not None:
        try:
            await cancels.aclose()
        except Exception as exc:
            log.debug("closing the cancel listener: %s", exc)


def _parse(claimed: Claimed) -> InboundMessage | None:
    try:
        return claimed.message()
    except (ValueError, json.JSONDecodeError) as exc:
        log.error("malformed mailbox entry rejected: %s: %.200s", exc, claimed.raw)
        return None


async def _answer(
    rt: WorkerRuntime, lease: LockLease, claimed: Claimed, msg: InboundMessage, cancels: Any, channel: str
) -> OutboundMessage | None:
    if claimed.recovered:
        session = rt.agent.sessions.load(msg.session_key)
        recorded = session.recorded_reply(msg.message_id) if session else None
        if recorded is not None:
            log.info("session=%s message_id=%s recovered: reply taken from history", msg.session_key, msg.message_id)
            channel, chat_id = reply_target(msg)
            return OutboundMessage(channel, chat_id, recorded, reply_to=msg.message_id)
        log.info("session=%s message_id=%s recovered: running it again", msg.session_key, msg.message_id)
    turn = asyncio.create_task(rt.agent.run_turn(msg, lease))
    watch = asyncio.create_task(_watch(lease, cancels, channel))
    try:
        await asyncio.wait({turn, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (turn, watch):
            if not task.done():
                task.cancel()
        await asyncio.gather(turn, watch, return_exceptions=True)
    if not turn.cancelled():
        failure = turn.exception()
        if failure is None:
            return turn.result()
        raise failure  # LockLost: the turn found its lock gone; anything else run_turn lets out
    stop = None if watch.cancelled() else watch.result()
    if lease.lost or stop is None:
        raise LockLost(f"session {lease.session_key}: lock lost during the turn")
    raise _Stop(stop)


async def _watch(lease: LockLease, cancels: Any, channel: str) -> InboundMessage | None:
    """Returns the /stop request when one arrives; returns None when the lock is lost."""
    while not lease.lost:
        message = await cancels.get_message(timeout=0.2)
        # The connection is reused between drains: a late message for an earlier conversation is skipped.
        if message is not None and message.get("channel") == channel:
            try:
                return InboundMessage.from_dict(json.loads(message["data"]))
            except (ValueError, TypeError) as exc:
                log.error("malformed /stop request ignored: %s", exc)
    return None


async def _stop_queued(
    rt: WorkerRuntime, lease: LockLease, claimed: Claimed, msg: InboundMessage, request: InboundMessage
) -> int:
    """/stop: the running turn was cancelled; answer it and every message queued behind it with
    'Stopped', then answer the /stop itself."""
    mailbox = rt.bus.mailbox
    stopped = [(claimed, msg)]
    waiting = int(await rt.bus.redis.llen(rt.bus.keys.mailbox(lease.session_key)))
    for _ in range(waiting):
        nxt = await mailbox.claim(lease)
        if nxt is None:
            break
        parsed = _parse(nxt)
        if parsed is None:
            await mailbox.commit(lease, nxt, "malformed", None)
            continue
        stopped.append((nxt, parsed))
    for item, m in stopped:
        channel, chat_id = reply_target(m)
        reply = outbound.addressed(OutboundMessage(channel, chat_id, STOPPED_TEXT, reply_to=m.message_id),
                                   outbound.origin_of(m))
        if not await mailbox.commit(lease, item, m.message_id, reply):
            raise LockLost(f"session {lease.session_key}: lock lost while stopping")
    log.info("session=%s message_id=%s /stop: %d turn(s)", lease.session_key, request.message_id, len(stopped))
    done = OutboundMessage(
        request.channel, request.chat_id, f"⏹ Stopped {len(stopped)} task(s).", reply_to=request.message_id
    )
    await rt.bus.publish_outbound(outbound.addressed(done, outbound.origin_of(request)))
    return len(stopped)
