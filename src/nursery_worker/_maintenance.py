"""The worker's periodic services. Each has ``run_once()`` (returns what it did, so tests call it
directly) and ``serve()`` (loops with a jittered interval; a database error is logged and retried,
never fatal)."""

from __future__ import annotations

import datetime as dt
import logging
import random
from collections.abc import Awaitable, Callable

import anyio
import attrs

from ._backoff import ServiceBackoff
from ._driver import Driver
from ._errors import RETRYABLE_ERRORS
from ._models import RescueResult, WorkerInfo, WorkerLoad

logger = logging.getLogger("nursery_worker.maintenance")


async def serve_periodically(
    name: str,
    interval: float,
    run_once: Callable[[], Awaitable[object]],
    *,
    jitter: float = 0.1,
    first_after: float = 0.0,
) -> None:
    """Call *run_once* every *interval* seconds (± *jitter*), the first time after *first_after*."""
    backoff = ServiceBackoff(cap=max(interval, 1.0))
    await anyio.sleep(first_after)
    while True:
        try:
            await run_once()
        except RETRYABLE_ERRORS as exc:
            delay = backoff.next()
            logger.warning("%s: %s; retrying in %.1fs", name, exc, delay)
            await anyio.sleep(delay)
            continue
        backoff.reset()
        await anyio.sleep(interval * random.uniform(1 - jitter, 1 + jitter))


@attrs.define
class Heartbeat:
    """Proves this worker alive by refreshing its row in the workers table."""

    driver: Driver
    info: WorkerInfo
    last: dt.datetime | None = None
    #: What to record with each beat (state and counters, for `nursery-worker status`).
    load: Callable[[], WorkerLoad] | None = None

    async def run_once(self) -> bool:
        """Beat once; return False if the row had vanished (peers had declared this worker dead)."""
        alive = await self.driver.heartbeat(self.info, None if self.load is None else self.load())
        self.last = dt.datetime.now(dt.UTC)
        if not alive:
            logger.warning(
                "worker %s was declared dead by a peer (no heartbeat within the rescue window); its jobs "
                "may have been rescued and their late results will be ignored. Re-registered.",
                self.info.id,
            )
        return alive


@attrs.define
class Rescuer:
    """Rescues executing jobs of workers that stopped beating, and removes their rows."""

    driver: Driver
    rescuer_id: str
    rescue_after: float
    error_cap: int = 20
    batch: int = 1000

    async def run_once(self) -> RescueResult:
        """Rescue orphans in batches until none are left; return the totals."""
        total = RescueResult()
        while True:
            result = await self.driver.rescue_orphans(
                rescuer_id=self.rescuer_id, rescue_after=self.rescue_after, limit=self.batch, error_cap=self.error_cap
            )
            total = RescueResult(
                retryable=total.retryable + result.retryable,
                discarded=total.discarded + result.discarded,
                cancelled=total.cancelled + result.cancelled,
                workers_removed=total.workers_removed + result.workers_removed,
            )
            if result.rescued < self.batch:
                break
        if total.rescued:
            logger.warning(
                "rescued %d job(s) from dead workers (%d retryable, %d discarded, %d cancelled)",
                total.rescued,
                total.retryable,
                total.discarded,
                total.cancelled,
            )
        return total


@attrs.define
class Promoter:
    """Makes due scheduled and retryable jobs available (and notifies their queues)."""

    driver: Driver
    batch: int = 1000

    async def run_once(self) -> int:
        """Promote every due job, in batches; return how many."""
        total = 0
        while True:
            n = await self.driver.promote_due(limit=self.batch)
            total += n
            if n < self.batch:
                return total


#: Default retention of finished jobs, in seconds, by final state (None: keep forever).
DEFAULT_RETENTION: dict[str, float | None] = {
    "completed": 24 * 3600.0,
    "discarded": 7 * 24 * 3600.0,
    "cancelled": 7 * 24 * 3600.0,
}


@attrs.define
class Pruner:
    """Deletes finished jobs older than their state's retention, in bounded batches.

    Results and errors go with their jobs. A retention of None keeps that state's jobs forever.
    """

    driver: Driver
    retention: dict[str, float | None] = attrs.field(factory=lambda: dict(DEFAULT_RETENTION))
    batch: int = 1000
    max_batches: int = 20  # per run: one pass never holds the reaper for long

    async def run_once(self) -> dict[str, int]:
        """Prune every state once (at most ``max_batches`` batches each); return the counts by state."""
        counts: dict[str, int] = {}
        for state, age in self.retention.items():
            if age is None:
                continue
            total = 0
            for _ in range(self.max_batches):
                n = await self.driver.prune_jobs(state=state, older_than=age, limit=self.batch)
                total += n
                if n < self.batch:
                    break
            if total:
                counts[state] = total
        if counts:
            logger.info("pruned finished jobs: %s", counts)
        return counts
