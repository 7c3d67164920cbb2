"""Small helpers shared by the worker integration tests (no fixtures, no mocks)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import anyio.to_thread
import psycopg

from nursery_worker import App, Job, JobState

Connection = psycopg.Connection[tuple[Any, ...]]

#: Small intervals that keep worker tests fast; override per test with ``fast(...)``.
FAST: dict[str, Any] = {
    "poll_interval": 0.1,
    "heartbeat_interval": 0.2,
    "rescue_after": 1.0,
    "reap_interval": 0.2,
    "promote_interval": 0.1,
    "shutdown_timeout": 2.0,
}


def fast(**overrides: Any) -> dict[str, Any]:
    """The keyword arguments of ``open_worker`` for a fast test, with *overrides* applied."""
    return {**FAST, **overrides}


async def wait_until(predicate: Callable[[], Any], within: float = 10.0, interval: float = 0.02) -> Any:
    """Poll *predicate* (sync or async) until it returns something truthy, and return that.

    Raises:
        TimeoutError: the condition did not hold within *within* seconds.
    """
    with anyio.fail_after(within):
        while True:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            await anyio.sleep(interval)


async def wait_for_state(app: App, job_id: int, *states: JobState, within: float = 10.0) -> Job:
    """Wait until job *job_id* is in one of *states*; return that snapshot."""

    async def reached() -> Job | None:
        job = await app.get_job(job_id)
        return job if job.state in states else None

    result: Job = await wait_until(reached, within=within)
    return result


async def query(db: Connection, statement: Any, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
    """Run a SELECT on the test's connection in a thread (the event loop keeps running)."""
    return await anyio.to_thread.run_sync(lambda: db.execute(statement, params).fetchall())


async def execute(db: Connection, statement: Any, params: Sequence[Any] | None = None) -> int:
    """Run a statement that returns no rows on the test's connection in a thread; return its rowcount."""
    return await anyio.to_thread.run_sync(lambda: db.execute(statement, params).rowcount)


async def executing_count(db: Connection, worker_id: str | None = None) -> int:
    """How many jobs are executing (on *worker_id*, when given)."""
    if worker_id is None:
        rows = await query(db, "SELECT count(*) FROM jobs WHERE state = 'executing'")
    else:
        rows = await query(db, "SELECT count(*) FROM jobs WHERE state = 'executing' AND worker_id = %s", [worker_id])
    return int(rows[0][0])


async def worker_ids(db: Connection) -> list[str]:
    """The ids in the workers table."""
    return [str(r[0]) for r in await query(db, "SELECT id FROM workers ORDER BY id")]


class LimitedClaims:
    """Every limited claim the workers of one app make, recorded around the real driver call.

    A rate limit's contract can be checked from this record on a loaded machine, where a worker
    may ask late: the spacing of the starts the database stamped, and whether the limiter ever
    refused a claim that came when a slot was surely free. Install it with :meth:`record`.
    """

    def __init__(self, enough: int) -> None:
        #: (asked, answered, claimed jobs) on this process's clock; a call that never answered
        #: (cancelled at shutdown) has answered=inf and jobs=None: it may have claimed any number.
        self.calls: list[tuple[float, float, tuple[Job, ...] | None]] = []
        self.claimed = 0
        #: Set once *enough* jobs have been claimed.
        self.enough = anyio.Event()
        self._enough = enough

    @classmethod
    def record(cls, app: App, monkeypatch: Any, *, enough: int) -> LimitedClaims:
        """Record the limited claims of every worker on *app*'s driver; set ``enough`` after *enough* starts."""
        log = cls(enough)
        real = app.driver.fetch_limited

        async def fetch_limited(*args: Any, **kwargs: Any) -> Any:
            asked = anyio.current_time()
            jobs: tuple[Job, ...] | None = None
            try:
                claim = await real(*args, **kwargs)
                jobs = claim.jobs
                return claim
            finally:
                log.calls.append((asked, anyio.current_time() if jobs is not None else math.inf, jobs))
                log.claimed += len(jobs or ())
                if log.claimed >= log._enough:
                    log.enough.set()

        monkeypatch.setattr(app.driver, "fetch_limited", fetch_limited)
        return log

    def starts(self) -> list[float]:
        """When each claimed attempt started, by the database's stamp (epoch seconds), in order."""
        return sorted(
            job.attempted_at.timestamp() for _, _, jobs in self.calls for job in jobs or () if job.attempted_at
        )

    def refused_with_a_free_slot(self, slot: float) -> list[tuple[float, float]]:
        """The claims that got nothing although a slot was surely free when they were made.

        Slots open every *slot* seconds after the last claim that took one (one slot per job
        claimed). Claims are serialised in the database, so a claim *j* can only have followed
        those that were asked before *j* answered; if each of these that may have taken a slot
        answered at least its slots' length before *j* was asked, the database's clock was past
        the next slot when *j* ran (both clocks tick alike; 2 ms covers their resolution).
        """
        refused = []
        for asked, answered, jobs in self.calls:
            if jobs != ():
                continue
            free = all(
                other_answered + slot * max(1, len(other_jobs or ())) + 0.002 <= asked
                for other_asked, other_answered, other_jobs in self.calls
                if other_asked <= answered and other_jobs != ()
            )
            if free:
                refused.append((asked, answered))
        return refused
