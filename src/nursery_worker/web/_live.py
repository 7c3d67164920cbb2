"""Live updates: a server-sent events stream driven by the engine's notifications.

Each open page holds one ``GET /events`` stream. It listens on the app's channel (PostgreSQL's
LISTEN/NOTIFY, or the embedded engine's events table) and sends one ``change`` event for a burst
of notifications: after an event it waits :data:`DEBOUNCE` seconds before the next, so a thousand
jobs finishing in a second refresh a page a few times, not a thousand. A comment line every
keepalive keeps proxies from closing the stream. ``static/live.js`` refreshes the page's live
region on each event, and polls every few seconds instead when the stream is refused or broken
(more than ``live_connections`` streams, a database without notifications, a proxy that buffers).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import anyio

from .._errors import RETRYABLE_ERRORS
from ._request import PageRequest

logger = logging.getLogger("nursery_worker.web")

#: Seconds between two change events of one stream (the debounce).
DEBOUNCE = 0.3
#: Seconds of quiet before a keepalive comment.
KEEPALIVE = 15.0


class StreamCounter:
    """How many event streams are open, so that a crowd of tabs cannot take every connection."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def try_acquire(self) -> bool:
        """Take a slot; False when all are taken (the page then polls)."""
        if self.open >= self.limit:
            return False
        self.open += 1
        return True

    def release(self) -> None:
        """Give a slot back."""
        self.open -= 1


async def change_events(req: PageRequest, counter: StreamCounter) -> AsyncIterator[str]:
    """The stream's text: ``retry``, then ``event: change`` per burst of notifications.

    The caller has taken a slot of *counter*; it is released when the stream ends. Ends quietly
    when the database goes away (the page falls back to polling and reconnects later).
    """
    listener = req.app.driver.listener()
    try:
        try:
            await listener.connect()
        except RETRYABLE_ERRORS as exc:
            logger.info("live updates unavailable, pages poll instead: %s", type(exc).__name__)
            return
        yield "retry: 5000\n\n"
        yield "event: ready\ndata: {}\n\n"
        while True:
            try:
                notes = await listener.wait(keepalive=KEEPALIVE)
            except RETRYABLE_ERRORS:
                return
            if not notes:
                yield ": keepalive\n\n"
                continue
            kinds = sorted({note.kind for note in notes})
            yield f"event: change\ndata: {','.join(kinds)}\n\n"
            await anyio.sleep(DEBOUNCE)
    finally:
        counter.release()
        with anyio.CancelScope(shield=True):
            await listener.aclose()
