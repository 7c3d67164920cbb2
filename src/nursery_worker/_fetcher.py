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

    async def run(self, start: Callable[[Sequence[Job]], None]) -> None:
        """Claim jobs and ``start(jobs)`` each claim until cancelled (or, in once-mode, until none is left)."""
        c = self.config
        board = self.board
        driver = self.driver
        backoff = ServiceBackoff()
        next_poll = 0.0
        next_limited = math.inf
        next_adopt = 0.0
        promoted_while_empty = False
        while True:
            # A slot is free again when its job returns, so the next claim overlaps the completer's
            # write of the last outcomes (two statements in flight, not one after the other). The
            # rows of unwritten outcomes are still executing: at most `concurrency` of them may wait
            # for the completer beside the running jobs, so a completer that cannot write (the
            # database is away) stops the claims too.
            running = len(board.running)
            free = c.concurrency - running - max(0, len(self.pending) - c.concurrency * _OVERLAP)
            now = anyio.current_time()
            if free > 0 and (board.more or now >= next_poll):
                board.more = False
                try:
                    fetched: list[Job] = []
                    # Limited jobs first (the limits bound them anyway): on every fetch when the app has
                    # limited tasks or the last claim found limited work, else once per poll, which is
                    # how a worker learns of queue limits set in the database.
                    if self.limits or self._limited_seen or now >= next_poll:
                        adopt = bool(self.limits) and now >= next_adopt
                        if adopt:
                            next_adopt = now + c.reap_interval
                        claim = await driver.fetch_limited(
                            worker_id=self.worker_id, queues=c.queues, limit=free, config=self.limits, adopt=adopt
                        )
                        fetched.extend(claim.jobs)
                        self._limited_seen = bool(claim.jobs) or claim.wake is not None
                        if claim.wake is not None:
                            next_limited = anyio.current_time() + claim.wake
                        self._note_breakers(claim.breakers_open)
                    if free - len(fetched) > 0:
                        fetched.extend(
                            await driver.fetch_jobs(
                                worker_id=self.worker_id,
                                queues=c.queues,
                                limit=free - len(fetched),
                                exclude_tasks=self.limited_tasks,
                            )
                        )
                except RETRYABLE_ERRORS as exc:
                    delay = backoff.next()
                    logger.warning("fetch failed: %s; retrying in %.1fs", exc, delay)
                    board.more = True
                    await anyio.sleep(delay)
                    continue
                backoff.reset()
                next_poll = min(anyio.current_time() + c.poll_interval, next_limited)
                next_limited = math.inf
                if fetched:
                    start(fetched)
                if len(fetched) >= free:
                    board.more = True
                if fetched:
                    promoted_while_empty = False
                elif c.once and not board.running and not self.pending:
                    if promoted_while_empty:
                        return
                    # Work off what is due now, including scheduled and retryable jobs.
                    await self.promote()
                    promoted_while_empty = board.more = True
                continue
            await board.wait_wakeup(next_poll - now if free > 0 else math.inf)

    def _note_breakers(self, open_now: Sequence[str]) -> None:
        """Log each circuit breaker this worker finds holding jobs back, and when it lets them go."""
        current = frozenset(open_now)
        for task in sorted(current - self.breakers_open):
            logger.warning("circuit breaker of task %s is open: its jobs are held back until the cooldown ends", task)
        for task in sorted(self.breakers_open - current):
            logger.info("circuit breaker of task %s no longer holds jobs back", task)
        self.breakers_open = current
