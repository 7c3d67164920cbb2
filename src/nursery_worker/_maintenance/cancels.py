"""The cancel watcher: the durable side of cancellation, so that a lost NOTIFY never loses a cancel request."""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
import attrs

from .._backoff import ServiceBackoff
from .._driver import Driver
from .._errors import RETRYABLE_ERRORS

# A service of the worker's own jobs: it logs as the worker.
logger = logging.getLogger("nursery_worker.worker")


@attrs.define
class CancelWatcher:
    """Asks the database which of this worker's executing jobs have a cancel request, and cancels them.

    The listener cancels at once on a ``cancel`` notification; this catches the requests whose
    notification was lost (the listener was reconnecting, or ``listen=False``).
    """

    driver: Driver
    worker_id: str
    interval: float
    #: Whether the worker runs any job now (no query while it runs none).
    busy: Callable[[], bool]
    #: Cancel the worker's running attempt of a job: ``cancel(job_id, attempt)``.
    cancel: Callable[[int, int], None]

    async def run_once(self) -> int:
        """Relay every cancel request of this worker's executing jobs; return how many it found."""
        if not self.busy():
            return 0
        requested = await self.driver.cancel_requested(worker_id=self.worker_id)
        for request in requested:
            self.cancel(request.job_id, request.attempt)
        return len(requested)

    async def serve(self) -> None:
        """Check every ``interval`` seconds until cancelled; a database error is logged and retried."""
        backoff = ServiceBackoff(cap=max(self.interval, 1.0))
        while True:
            await anyio.sleep(self.interval)
            try:
                await self.run_once()
            except RETRYABLE_ERRORS as exc:
                delay = backoff.next()
                logger.warning("cancel check: %s; retrying in %.1fs", exc, delay)
                await anyio.sleep(delay)
                continue
            backoff.reset()
