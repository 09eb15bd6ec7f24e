"""Drain one conversation's mailbox under its lock: what a `process_turn` task does.

    take the lock (or return: the holder drains, and re-checks after it lets go)
    repeat: claim the next message (left in flight first), run its turn, commit (fenced; it also tells
            when nothing else waits, which ends the loop without another claim)
    release; if work arrived meanwhile, go round again (closes the lost-wakeup race)

A message recovered from flight whose turn is already in the history (its holder died between saving
and committing) is answered from the history instead of being run again. A message claimed more than
`bus.maxDeliveries` times (its turns kept killing their worker or raising) is set aside in the dead letters
(nanobot_celery/deadletters.py), its user gets an apology, and the drain goes on to the next message; what
made an attempt raise is recorded for the next one. `/stop` reaches the holder on
the conversation's cancel channel; a lost lock stops the turn before it can write.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

from nanobot.agent.loop import STOPPED_TEXT, reply_target
from nanobot.bus.events import InboundMessage, OutboundMessage
from nanobot.logs import log_context
from nanobot.metrics.instruments import count_turn
from nanobot.session.locks import LockLease, LockLost
from nanobot_celery import deadletters, outbound
from nanobot_celery.mailbox import COMMIT_LOST, COMMITTED_IDLE, Claimed
from nanobot_celery.metrics import REDELIVERIES
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
    stops = await rt.cancels.listen(channel)
    try:
        while True:
            if lease.lost:
                raise LockLost(f"session {sk}: lock lost")
            claimed = await mailbox.claim(lease)
            if claimed is None:  # the claim also took the conversation out of the busy set
                return handled
            msg = _parse(claimed)
            if msg is None:  # malformed entry: logged, dropped so it cannot block the conversation
                await mailbox.commit(lease, claimed, "malformed", None)
                continue
            # Every line logged while handling it (the turn's task, created inside, included) carries these.
            with log_context(session_key=sk, message_id=msg.message_id, channel=msg.channel):
                try:
                    outcome = await _handle(rt, lease, claimed, msg, stops)
                except LockLost:
                    raise
                except Exception as exc:
                    await _record_failure(rt, msg, exc)
                    raise
            handled += outcome.answered
            if outcome.idle:  # the commit found nothing else waiting: no claim needed to learn that
                return handled
    finally:
        await rt.cancels.unlisten(channel)


@dataclass
class _Handled:
    answered: int  # messages answered (a /stop answers the stopped ones)
    idle: bool = False  # its commit found the conversation with nothing else to do


async def _handle(
    rt: WorkerRuntime, lease: LockLease, claimed: Claimed, msg: InboundMessage, stops: asyncio.Queue[InboundMessage]
) -> _Handled:
    """Answer one claimed message (or set it aside)."""
    mailbox = rt.bus.mailbox
    if claimed.recovered:
        REDELIVERIES.inc()
        if await mailbox.is_done(msg.session_key, msg.message_id):
            await mailbox.commit(lease, claimed, msg.message_id, None)
            return _Handled(0)
    origin = outbound.origin_of(msg)
    token = outbound.turn_origin.set(origin)
    try:
        reply = _recorded_reply(rt, claimed, msg)
        if reply is not None:
            count_turn("recovered")
        elif claimed.deliveries > rt.config.bus.max_deliveries:
            await _set_aside(rt, lease, claimed, msg)
            return _Handled(1)
        else:
            reply = await _answer(rt, lease, msg, stops)
    except _Stop as stop:
        return _Handled(await _stop_queued(rt, lease, claimed, msg, stop.request))
    finally:
        outbound.turn_origin.reset(token)
    if reply is not None:
        outbound.addressed(reply, origin)
    committed = await mailbox.commit(lease, claimed, msg.message_id, reply)
    if committed == COMMIT_LOST:
        raise LockLost(f"session {lease.session_key}: lock lost before commit; reply dropped")
    return _Handled(1, idle=committed == COMMITTED_IDLE)


async def _record_failure(rt: WorkerRuntime, msg: InboundMessage, exc: Exception) -> None:
    """Remember why handling `msg` raised, for its next delivery (and its dead letter, if it comes to that)."""
    error = deadletters.describe_error(exc, msg.content)
    try:
        await rt.bus.mailbox.record_error(msg.session_key, msg.message_id, error)
    except Exception as record_exc:  # Redis is probably what failed: the error is simply not kept
        log.debug("could not record the failure of message_id=%s: %s", msg.message_id, record_exc)


async def _set_aside(rt: WorkerRuntime, lease: LockLease, claimed: Claimed, msg: InboundMessage) -> None:
    """The message failed more than bus.maxDeliveries times: dead letters, apology, and on to the next one."""
    error = claimed.last_error or deadletters.WORKER_DIED
    apology = deadletters.apology(msg, claimed.deliveries)
    entry_id = await rt.bus.mailbox.dead_letter(lease, claimed, msg, error, apology)
    if entry_id is None:
        raise LockLost(f"session {lease.session_key}: lock lost before setting a message aside")
    count_turn("dead_letter")
    # Only the error's type here: its text may quote what the user sent (`nanobot deadletters show` has it all).
    log.warning("session=%s message_id=%s set aside in the dead letters (%s) after %d deliveries: %s",
                msg.session_key, msg.message_id, entry_id, claimed.deliveries, error.partition(":")[0])


def _parse(claimed: Claimed) -> InboundMessage | None:
    try:
        return claimed.message()
    except (ValueError, json.JSONDecodeError) as exc:
        log.error("malformed mailbox entry rejected (%d bytes): %s", len(claimed.raw), type(exc).__name__)
        return None


def _recorded_reply(rt: WorkerRuntime, claimed: Claimed, msg: InboundMessage) -> OutboundMessage | None:
    """For a recovered message whose turn is already in the history: its reply, taken from there."""
    if not claimed.recovered:
        return None
    session = rt.agent.sessions.load(msg.session_key)
    recorded = session.recorded_reply(msg.message_id) if session else None
    if recorded is None:
        log.info("session=%s message_id=%s recovered (delivery %d): its turn did not finish",
                 msg.session_key, msg.message_id, claimed.deliveries)
        return None
    log.info("session=%s message_id=%s recovered: reply taken from history", msg.session_key, msg.message_id)
    channel, chat_id = reply_target(msg)
    return OutboundMessage(channel, chat_id, recorded, reply_to=msg.message_id)


async def _answer(
    rt: WorkerRuntime, lease: LockLease, msg: InboundMessage, stops: asyncio.Queue[InboundMessage]
) -> OutboundMessage | None:
    turn = asyncio.create_task(rt.agent.run_turn(msg, lease))
    watch = asyncio.create_task(_watch(lease, stops))
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
        count_turn("lock_lost")
        raise LockLost(f"session {lease.session_key}: lock lost during the turn")
    raise _Stop(stop)


async def _watch(lease: LockLease, stops: asyncio.Queue[InboundMessage]) -> InboundMessage | None:
    """Returns the /stop request when one arrives (see nanobot_celery/cancels.py); returns None when the
    lock is lost."""
    request = asyncio.ensure_future(stops.get())
    lost = asyncio.ensure_future(lease.wait_lost())
    try:
        await asyncio.wait({request, lost}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in (request, lost):
            waiter.cancel()
    return request.result() if request.done() and not request.cancelled() else None


async def _stop_queued(
    rt: WorkerRuntime, lease: LockLease, claimed: Claimed, msg: InboundMessage, request: InboundMessage
) -> int:
    """/stop: the running turn was cancelled; answer it and every message queued behind it with
    'Stopped', then answer the /stop itself.

    The stopped message leaves flight before the next claim: `claim` hands back what is in flight first."""
    mailbox = rt.bus.mailbox
    await _answer_stopped(rt, lease, claimed, msg)
    stopped = 1
    waiting = int(await rt.bus.redis.llen(rt.bus.keys.mailbox(lease.session_key)))
    for _ in range(waiting):
        nxt = await mailbox.claim(lease)
        if nxt is None:
            break
        parsed = _parse(nxt)
        if parsed is None:
            await mailbox.commit(lease, nxt, "malformed", None)
            continue
        await _answer_stopped(rt, lease, nxt, parsed)
        stopped += 1
    log.info("session=%s message_id=%s /stop: %d turn(s)", lease.session_key, request.message_id, stopped)
    done = OutboundMessage(
        request.channel, request.chat_id, f"⏹ Stopped {stopped} task(s).", reply_to=request.message_id
    )
    await rt.bus.publish_outbound(outbound.addressed(done, outbound.origin_of(request)))
    return stopped


async def _answer_stopped(rt: WorkerRuntime, lease: LockLease, claimed: Claimed, msg: InboundMessage) -> None:
    channel, chat_id = reply_target(msg)
    reply = outbound.addressed(OutboundMessage(channel, chat_id, STOPPED_TEXT, reply_to=msg.message_id),
                               outbound.origin_of(msg))
    if not await rt.bus.mailbox.commit(lease, claimed, msg.message_id, reply):
        raise LockLost(f"session {lease.session_key}: lock lost while stopping")
    count_turn("stopped")
