"""A fix to Celery 5.7 + kombu's Redis transport, applied where the app is imported (workers and gateways).

What kills a worker when Redis restarts: on a lost broker connection Celery 5.7's consumer
(`Consumer.on_connection_error_after_connected`) first calls `connection.collect()`, then `connection.close()`
(new in 5.7; 5.6 only collected). With the broker down, `collect()` cannot close the default channel (its
close raises a connection error, which is swallowed) but detaches the transport from the connection
(`transport.client = None`) and keeps the channel. `close()` then closes that channel again: it restores its
unacked messages through a new Redis pool, built from `transport.client.hostname`, and raises
`AttributeError: 'NoneType' object has no attribute 'hostname'`, which `ignore_errors` does not ignore, and
the worker stops ("Unrecoverable error"). Seen as celery/celery#9250-style reconnection failures.

The fix, small enough to send upstream to kombu: a collected connection forgets its default channel too, as it
forgets its transport. The channel's unacked deliveries stay in Redis's unacked index (restored by Redis's
visibility timeout), and nanobot's own recovery does not wait for that: the mailbox keeps every accepted
message and the gateway's sweeper rings a conversation whose work has no lock holder.
"""

from __future__ import annotations

from typing import Any

from kombu import Connection

_applied = False


def forget_default_channel_on_collect() -> None:
    """Patch `kombu.Connection.collect` once per process (idempotent)."""
    global _applied
    if _applied:
        return
    original = Connection.collect

    def collect(self: Connection, *args: Any, **kwargs: Any) -> None:
        try:
            original(self, *args, **kwargs)
        finally:
            self._default_channel = None  # its transport is gone: it must never be closed or used again

    collect.__doc__ = original.__doc__
    Connection.collect = collect  # type: ignore[method-assign]
    _applied = True
