"""The listener service: LISTEN for notifications, wake the fetch loop, relay cancel requests.

Started with ``task_group.start()``: it reports started once LISTEN is active, so a worker that is
RUNNING hears of new jobs at once. If the first attempt fails it reports started all the same and
keeps reconnecting with backoff: polling (every ``poll_interval``) covers the gap, and the first
fetch after a reconnect picks up whatever was notified meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from ._backoff import ServiceBackoff
from ._errors import RETRYABLE_ERRORS

if TYPE_CHECKING:
    from ._board import JobBoard
    from ._driver import Driver

# The worker's own log lines: the listener is a part of it.
logger = logging.getLogger("nursery_worker.worker")


class Listener:
    """Listens for ``available`` notifications of *queues* and ``cancel`` notifications of any job.

    Attributes:
        connected: whether LISTEN is active now.
    """

    def __init__(
        self,
        driver: Driver,
        *,
        queues: Collection[str],
        poll_interval: float,
        board: JobBoard,
        cancel: Callable[[int], None],
    ) -> None:
        self.driver = driver
        self.queues = frozenset(queues)
        self.poll_interval = poll_interval
        self.board = board
        #: Cancel this worker's running attempt of a job, if it runs one (a no-op otherwise).
        self.cancel = cancel
        self.connected = False

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled, reconnecting with backoff; started once LISTEN is active (or first failed)."""
        listener = self.driver.listener()
        backoff = ServiceBackoff(cap=max(5.0, self.poll_interval))
        board = self.board
        started = False
        try:
            while True:
                try:
                    await listener.connect()
                    if not self.connected:
                        self.connected = True
                        # Anything notified while we were deaf is found by fetching now.
                        board.more = True
                        board.wake()
                    backoff.reset()
                    if not started:
                        started = True
                        task_status.started()
                    while True:
                        for note in await listener.wait(keepalive=15.0):
                            if note.kind == "available" and note.value in self.queues:
                                board.more = True
                                board.wake()
                            elif note.kind == "cancel" and note.value.isdigit():
                                self.cancel(int(note.value))
                except RETRYABLE_ERRORS as exc:
                    self.connected = False
                    delay = backoff.next()
                    logger.warning(
                        "listener: %s; polling every %gs, reconnecting in %.1fs", exc, self.poll_interval, delay
                    )
                    if not started:
                        started = True
                        task_status.started()
                    await anyio.sleep(delay)
        finally:
            self.connected = False
            with anyio.CancelScope(shield=True):
                await listener.aclose()
