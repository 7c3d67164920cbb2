"""The scheduler: enqueues each due tick of the periodic schedules, exactly once across every worker.

How "exactly once" holds (the database decides which scheduler wins a tick) is told in
``_periodic.py``, beside the schedules.
"""

from __future__ import annotations

import datetime as dt
import logging
import random

import anyio
import attrs

from .._backoff import ServiceBackoff
from .._driver import Driver
from .._errors import RETRYABLE_ERRORS
from .._periodic import Schedule

logger = logging.getLogger("nursery_worker.periodic")


@attrs.frozen(kw_only=True)
class SchedulerResult:
    """What one :meth:`Scheduler.run_once` did.

    Attributes:
        enqueued: jobs this scheduler inserted (ticks it won).
        held: ticks it claimed without a job, because the task's unique twin was still queued or running.
        missed: due ticks older than their catch-up window, left alone.
        now: the database's clock at the start of the pass.
        next_tick: the earliest next tick of its schedules after ``now``, or None.
    """

    enqueued: int = 0
    held: int = 0
    missed: int = 0
    now: dt.datetime
    next_tick: dt.datetime | None = None


@attrs.define
class Scheduler:
    """Enqueues the due ticks of *schedules*; any number of schedulers may run at once.

    ``run_once`` makes one pass (tests call it directly); ``serve`` loops, sleeping until the next
    tick by the database's clock (at most ``max_sleep``, with a little jitter so that many workers
    do not all arrive in the same millisecond).
    """

    driver: Driver
    schedules: tuple[Schedule, ...]
    max_sleep: float = 60.0
    _registered: bool = False
    _missed: dict[str, dt.datetime] = attrs.field(factory=dict)

    async def run_once(self) -> SchedulerResult:
        """Register the schedules (first pass only), then enqueue every due tick once; return the counts."""
        if not self._registered:
            # Once per scheduler, not per pass: two versions of a schedule running side by side (a
            # rolling deploy) would otherwise rewrite its row, and its active_since, back and forth.
            await self.driver.register_periodic([s.entry() for s in self.schedules])
            self._registered = True
        snapshot = await self.driver.periodic_state([s.name for s in self.schedules])
        now, states = snapshot.now, snapshot.states
        missing = [s for s in self.schedules if s.name not in states]
        if missing:  # the row was deleted under us: put it back; it is active from now on
            await self.driver.register_periodic([s.entry() for s in missing])
        enqueued = held = missed = 0
        for schedule in self.schedules:
            state = states.get(schedule.name)
            tick = None if state is None or state.paused else schedule.due(now, state)
            if tick is None:
                continue
            late = (now - tick).total_seconds()
            if late > schedule.catch_up:
                missed += 1
                if self._missed.get(schedule.name) != tick:
                    self._missed[schedule.name] = tick
                    logger.warning(
                        "periodic %s: tick %s was missed by %.0fs, more than its catch_up=%gs; skipped",
                        schedule.name,
                        tick.isoformat(),
                        late,
                        schedule.catch_up,
                    )
                continue
            done = await self.driver.enqueue_periodic(
                name=schedule.name, tick=tick, catch_up=schedule.catch_up, spec=schedule.job_for(tick)
            )
            if done is None:
                continue  # another scheduler enqueued it first (or it just left the window)
            if done.held:
                held += 1
                logger.info(
                    "periodic %s: tick %s skipped: job %d of its unique key is still queued or running",
                    schedule.name,
                    tick.isoformat(),
                    done.job_id,
                )
            else:
                enqueued += 1
                logger.debug("periodic %s: enqueued job %d for tick %s", schedule.name, done.job_id, tick.isoformat())
        upcoming = [t for t in (s.cron.next_after(now) for s in self.schedules) if t is not None]
        return SchedulerResult(
            enqueued=enqueued, held=held, missed=missed, now=now, next_tick=min(upcoming) if upcoming else None
        )

    def sleep_after(self, result: SchedulerResult) -> float:
        """Seconds until the pass after *result*: the next tick (database clock) plus a little jitter."""
        if result.next_tick is None:
            return self.max_sleep
        wait = (result.next_tick - result.now).total_seconds() + random.uniform(0.002, 0.05)
        return min(self.max_sleep, max(0.002, wait))

    async def serve(self) -> None:
        """Run passes until cancelled; a database error is logged and retried with backoff."""
        logger.info(
            "scheduler: %d periodic schedule(s): %s", len(self.schedules), ", ".join(s.name for s in self.schedules)
        )
        backoff = ServiceBackoff(cap=5.0)
        while True:
            try:
                result = await self.run_once()
            except RETRYABLE_ERRORS as exc:
                delay = backoff.next()
                logger.warning("scheduler: %s; retrying in %.1fs", exc, delay)
                await anyio.sleep(delay)
                continue
            backoff.reset()
            await anyio.sleep(self.sleep_after(result))
