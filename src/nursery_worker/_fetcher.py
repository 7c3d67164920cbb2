"""The fetch loop: claims available jobs while the worker has free slots, and hands each to a starter.

It runs in the worker's fetch scope, so a soft stop is cancelling that scope. It claims when a slot
is free and either there may be more work (``JobBoard.more``: a notification, a full claim, a
failed fetch) or the poll is due; otherwise it sleeps until woken or the next poll.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING

import anyio

from ._backoff import ServiceBackoff
from ._errors import RETRYABLE_ERRORS
from ._models import Job, TaskLimits

if TYPE_CHECKING:
    from ._board import JobBoard
    from ._config import WorkerConfig
    from ._driver import Driver

# The worker's own log lines: the fetcher is a part of it.
logger = logging.getLogger("nursery_worker.worker")

#: How many batches of unwritten outcomes (of `concurrency` each) may wait for the completer while
#: their slots run new jobs. 0 frees a slot only once its outcome is written (a serial cycle: claim,
#: run, write, claim); 1 overlaps the claim with the write (docs/performance.md has both).
_OVERLAP = 1
#: Whether the completer's writes also claim for the free slots (``Fetcher.reserve``): one statement
#: a cycle instead of two (docs/performance.md). Off only for the benchmarks' lever experiment.
_COMBINE = True


class Fetcher:
    """Claims jobs for one worker: limited tasks through the limited claim, the rest directly.

    Attributes:
        breakers_open: tasks whose open circuit breaker held jobs back at the last limited claim.
    """

    def __init__(
        self,
        driver: Driver,
        config: WorkerConfig,
        *,
        worker_id: str,
        board: JobBoard,
        pending: Collection[tuple[int, int]],
        limits: Mapping[str, TaskLimits],
        promote: Callable[[], Awaitable[object]],
    ) -> None:
        self.driver = driver
        self.config = config
        self.worker_id = worker_id
        self.board = board
        #: Outcomes submitted to the completer and not yet written (their rows are still executing).
        self.pending = pending
        #: The task limits the limited claim enforces, from the registry (see ``_flow``).
        self.limits = limits
        self.limited_tasks = tuple(sorted(limits))
        #: In once-mode, what makes due scheduled and retryable jobs available before giving up.
        self.promote = promote
        self.breakers_open: frozenset[str] = frozenset()
        #: Whether the last limited claim found limited work (queue limits are only in the database).
        self._limited_seen = False
        #: When the last limited claim said capacity frees by time (the next poll is no later).
        self._next_limited = math.inf
        #: Slots promised to a claim in flight (this loop's, or one riding on a completer's write).
        self.reserved = 0
        #: Starts claimed jobs while the loop runs and the worker has not been told to stop.
        self._start: Callable[[Sequence[Job]], None] | None = None
        self._closed = False

    @property
    def queues(self) -> Sequence[str]:
        """The queues this worker claims from."""
        return self.config.queues

    def _free(self) -> int:
        # A slot is free again when its job returns, so the next claim overlaps the completer's
        # write of the last outcomes (two statements in flight, not one after the other). The rows
        # of unwritten outcomes are still executing: at most `concurrency` of them may wait for the
        # completer beside the running jobs, so a completer that cannot write (the database is
        # away) stops the claims too. Slots reserved for a claim in flight are not free.
        c = self.config
        unwritten = max(0, len(self.pending) - c.concurrency * _OVERLAP)
        return c.concurrency - len(self.board.running) - self.reserved - unwritten

    def close(self) -> None:
        """The worker is stopping: no more claims ride on the completer's writes."""
        self._closed = True

    def _rides(self) -> bool:
        """Whether the completer's writes claim for this worker (plain claims only)."""
        return _COMBINE and not self._closed and not self.limits and not self._limited_seen

    def reserve(self) -> int:
        """Reserve the free slots for a claim riding on the completer's next write; how many (0: none).

        Only plain claims ride, and not while the worker has limited work (the fetch loop claims
        that first, through the limited claim). A reservation is given back by :meth:`deliver`.
        """
        if self._start is None or not self._rides():
            return 0
        free = self._free()
        if free <= 0:
            return 0
        self.reserved += free
        return free

    def deliver(self, jobs: Sequence[Job], reserved: int) -> list[Job]:
        """Give back the *reserved* slots and start the *jobs* claimed with them.

        Returns:
            The jobs that could not start because the worker is stopping: the caller hands them back.
        """
        self.reserved -= reserved
        if not jobs:
            return []
        if self._start is None or self._closed:
            return list(jobs)
        self._start(jobs)
        if len(jobs) >= reserved:
            self.board.more = True
        return []

    async def run(self, start: Callable[[Sequence[Job]], None]) -> None:
        """Claim jobs and ``start(jobs)`` each claim until cancelled (or, in once-mode, until none is left)."""
        c = self.config
        board = self.board
        backoff = ServiceBackoff()
        next_poll = 0.0
        next_adopt = 0.0
        promoted_while_empty = False
        self._start = start
        try:
            while True:
                free = self._free()
                now = anyio.current_time()
                # Slots freed by jobs whose outcomes are not written yet are claimed by the
                # completer's write of those outcomes (one statement, ``reserve``); the poll still
                # claims here, which is how the worker learns of limited work.
                deferred = now < next_poll and bool(self.pending) and self._rides()
                if not (free > 0 and (board.more or now >= next_poll)) or deferred:
                    await board.wait_wakeup(next_poll - now if free > 0 else math.inf)
                    continue
                board.more = False
                adopt = bool(self.limits) and now >= next_adopt
                if adopt:
                    next_adopt = now + c.reap_interval
                try:
                    # Reserved while in flight: a claim riding on the completer's write meanwhile
                    # must not take the same slots.
                    self.reserved += free
                    try:
                        fetched = await self._claim(free, polling=now >= next_poll, adopt=adopt)
                    finally:
                        self.reserved -= free
                except RETRYABLE_ERRORS as exc:
                    delay = backoff.next()
                    logger.warning("fetch failed: %s; retrying in %.1fs", exc, delay)
                    board.more = True
                    await anyio.sleep(delay)
                    continue
                backoff.reset()
                next_poll = min(anyio.current_time() + c.poll_interval, self._next_limited)
                self._next_limited = math.inf
                if fetched:
                    start(fetched)
                if len(fetched) >= free:
                    board.more = True
                if fetched:
                    promoted_while_empty = False
                elif c.once and not board.running and not self.pending and not self.reserved:
                    if promoted_while_empty:
                        return
                    # Work off what is due now, including scheduled and retryable jobs.
                    await self.promote()
                    promoted_while_empty = board.more = True
        finally:
            self._start = None

    async def _claim(self, free: int, *, polling: bool, adopt: bool) -> list[Job]:
        """One claim of up to *free* jobs: limited ones first where they may be, then the rest."""
        c = self.config
        fetched: list[Job] = []
        # Limited jobs first (the limits bound them anyway): on every fetch when the app has
        # limited tasks or the last claim found limited work, else once per poll, which is how a
        # worker learns of queue limits set in the database.
        if self.limits or self._limited_seen or polling:
            claim = await self.driver.fetch_limited(
                worker_id=self.worker_id, queues=c.queues, limit=free, config=self.limits, adopt=adopt
            )
            fetched.extend(claim.jobs)
            self._limited_seen = bool(claim.jobs) or claim.wake is not None
            if claim.wake is not None:
                self._next_limited = anyio.current_time() + claim.wake
            self._note_breakers(claim.breakers_open)
        if free - len(fetched) > 0:
            fetched.extend(
                await self.driver.fetch_jobs(
                    worker_id=self.worker_id,
                    queues=c.queues,
                    limit=free - len(fetched),
                    exclude_tasks=self.limited_tasks,
                )
            )
        return fetched

    def _note_breakers(self, open_now: Sequence[str]) -> None:
        """Log each circuit breaker this worker finds holding jobs back, and when it lets them go."""
        current = frozenset(open_now)
        for task in sorted(current - self.breakers_open):
            logger.warning("circuit breaker of task %s is open: its jobs are held back until the cooldown ends", task)
        for task in sorted(self.breakers_open - current):
            logger.info("circuit breaker of task %s no longer holds jobs back", task)
        self.breakers_open = current
