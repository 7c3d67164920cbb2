"""Model-based test of the real engines: a Hypothesis state machine drives each driver (PostgreSQL, SQLite).

``test_state_machine.py`` checks the pure state machine (``_state.py``); this one runs the same kind
of story against the driver's real statements on a real database: enqueue, fetch, finish with every
outcome (complete, fail, snooze, release, cancel), late writes of stale claims, app.cancel, the
rescue of dead workers' jobs, promotion and pruning, with three fake workers that die (their row
goes, as when peers declare them dead) and come back. A plain in-memory model predicts every
statement's answer, and after every step the jobs table must equal the model:

* no job is lost (every enqueued job is in the table, unless pruned once finished);
* no finished job ever changes (state, attempt, finish time);
* attempts never decrease, except by one when an attempt is handed back (released, snoozed);
* an executing job is held by exactly one worker: only one claim ever made passes the guard of the
  finish statement (worker, attempt, lease), however many workers still believe they run it.

It runs on both engines, so the SQLite engine's hand-written guards (Python and SQL, where PostgreSQL
has PL/pgSQL) answer to the same model. Each driver call is made from the test's (synchronous) thread
through a blocking portal into an event loop of the backend under test. One migrated schema (or
SQLite file) per test; each example starts from empty tables. The test reads and ages rows behind the
driver's back through a :class:`Table` of its engine.
"""

from __future__ import annotations

import datetime as dt
import functools
import socket
import sqlite3
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import anyio.from_thread
import attrs
import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from nursery_worker import App, JobState
from nursery_worker._models import Completion, WorkerInfo
from nursery_worker._state import Cancelled, ErrorInfo, Failed, Outcome, Released, Snoozed, Succeeded, decide

from .conftest import EngineDatabase

WORKERS = ("w1", "w2", "w3")
FAR = 3600.0  # a delay that never passes during a test: only the time_passes rule makes such a job due
ERROR_CAP = 20
MAX_JOBS = 14
MAX_OPEN_JOBS = 5
WAITING = (JobState.SCHEDULED, JobState.RETRYABLE)
REQUEUE = (JobState.AVAILABLE, JobState.RETRYABLE, JobState.SCHEDULED)

#: Any error text, NUL and lone surrogates included: the driver stores them escaped (``error_entry``).
_errors = st.builds(
    ErrorInfo,
    type=st.sampled_from(["ValueError", "TimeoutError"]),
    message=st.text(max_size=10),
)
#: Every outcome of an attempt; delays are 0 (due at once) or FAR (due only when time_passes says so).
outcomes: st.SearchStrategy[Outcome] = st.one_of(
    st.builds(Succeeded),
    st.builds(Failed, error=_errors, permanent=st.just(False)),
    st.builds(Failed, error=_errors, permanent=st.just(False)),
    st.builds(Failed, error=_errors, permanent=st.just(True)),
    st.builds(Released),
    st.builds(Snoozed, delay=st.sampled_from([0.0, FAR])),
    st.builds(Cancelled, abandoned=st.booleans()),
)
delays = st.sampled_from([0.0, FAR])


@attrs.frozen
class Claim:
    """One successful fetch, as the fetching worker remembers it."""

    serial: int
    job: int
    worker: str
    attempt: int
    lease: dt.datetime


@attrs.define
class ModelJob:
    """What the model expects of one row."""

    state: JobState
    max_attempts: int
    attempt: int = 0
    worker: str | None = None
    lease: dt.datetime | None = None
    due: bool = True
    cancel_requested: bool = False
    errors: int = 0


class Row(NamedTuple):
    """One row of the jobs table as the invariant reads it, in the same Python types on both engines."""

    id: int
    state: JobState
    attempt: int
    max_attempts: int
    worker: str | None
    lease: dt.datetime | None
    finished_at: dt.datetime | None
    requested: bool
    errors: int
    due: bool


class Table(Protocol):
    """The jobs table behind the driver's back: what the test reads and changes without a statement of
    the driver."""

    def reset(self) -> None:
        """Empty the tables (jobs, workers, queues) and restart the job ids at 1."""

    def rows(self) -> list[Row]:
        """Every job, by id."""

    def make_due(self, job_id: int) -> None:
        """Move the job's scheduled_at one second into the past."""


class PostgresTable:
    """The test's schema through a plain autocommit connection."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def reset(self) -> None:
        self.conn.execute("TRUNCATE jobs, steps, durable_events, workers, queues RESTART IDENTITY")

    def rows(self) -> list[Row]:
        rows = self.conn.execute(
            "SELECT id, state, attempt, max_attempts, worker_id, attempted_at, finished_at, "
            "cancel_requested_at IS NOT NULL, jsonb_array_length(errors), scheduled_at <= now() FROM jobs ORDER BY id"
        ).fetchall()
        return [Row(int(r[0]), JobState(r[1]), *r[2:]) for r in rows]

    def make_due(self, job_id: int) -> None:
        self.conn.execute("UPDATE jobs SET scheduled_at = now() - interval '1 second' WHERE id = %s", [job_id])


#: SQLite times are INTEGER microseconds since 1970 (UTC); 'now' as the engine reads it.
_SQLITE_NOW = "(CAST(round((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER) * 1000)"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _from_us(value: int | None) -> dt.datetime | None:
    return None if value is None else _EPOCH + dt.timedelta(microseconds=value)


class SqliteTable:
    """The test's SQLite file through a connection of its own (autocommit: no read holds a snapshot)."""

    def __init__(self, conn: sqlite3.Connection, prefix: str) -> None:
        self.conn = conn
        self.jobs = f'"{prefix}jobs"'
        self.prefix = prefix

    def reset(self) -> None:
        for table in ("jobs", "workers", "queues"):
            self.conn.execute(f'DELETE FROM "{self.prefix}{table}"')
        self.conn.execute("DELETE FROM sqlite_sequence WHERE name = ?", [f"{self.prefix}jobs"])

    def rows(self) -> list[Row]:
        rows = self.conn.execute(
            "SELECT id, state, attempt, max_attempts, worker_id, attempted_at, finished_at, "
            f"cancel_requested_at IS NOT NULL, json_array_length(errors), scheduled_at <= {_SQLITE_NOW} "
            f"FROM {self.jobs} ORDER BY id"
        ).fetchall()
        return [
            Row(r[0], JobState(r[1]), r[2], r[3], r[4], _from_us(r[5]), _from_us(r[6]), bool(r[7]), r[8], bool(r[9]))
            for r in rows
        ]

    def make_due(self, job_id: int) -> None:
        self.conn.execute(f"UPDATE {self.jobs} SET scheduled_at = {_SQLITE_NOW} - 1000000 WHERE id = ?", [job_id])


class EngineModel(RuleBasedStateMachine):
    """A few jobs and three fake workers driven through the driver's statements, in any order."""

    def __init__(self, portal: anyio.from_thread.BlockingPortal, app: App, table: Table) -> None:
        super().__init__()
        self.portal = portal
        self.app = app
        self.driver = app.driver
        self.table = table
        table.reset()
        self.jobs: dict[int, ModelJob] = {}
        self.pruned: set[int] = set()
        self.enqueued = 0
        self.alive: set[str] = set()
        self.held: dict[str, dict[int, Claim]] = {w: {} for w in WORKERS}
        self.claims: list[Claim] = []
        self.finished: dict[int, tuple[Any, ...]] = {}  # job -> (state, attempt, finished_at) once finished
        self.before: dict[int, tuple[JobState, int]] = {}
        self.given_back: set[int] = set()  # jobs whose attempt a write of this step handed back
        for worker in WORKERS:
            self._register(worker)

    # --- helpers ----------------------------------------------------------------------------------

    def call(self, method: Callable[..., Any], **kwargs: Any) -> Any:
        return self.portal.call(functools.partial(method, **kwargs))

    def _register(self, worker: str) -> None:
        info = WorkerInfo(id=worker, hostname=socket.gethostname(), pid=0, queues=("default",), concurrency=10)
        self.call(self.driver.register_worker, info=info)
        self.alive.add(worker)

    def _current(self, claim: Claim) -> bool:
        """Whether *claim* is the one the row belongs to now (what the finish guard checks)."""
        job = self.jobs.get(claim.job)
        return (
            job is not None
            and job.state is JobState.EXECUTING
            and (job.worker, job.attempt, job.lease) == (claim.worker, claim.attempt, claim.lease)
        )

    def _open(self) -> int:
        return sum(not j.state.is_terminal for j in self.jobs.values())

    def _write(self, claim: Claim, outcome: Outcome, delay: float) -> None:
        """The completer's finish statement for *claim*; the model predicts the rows it changes."""
        job = self.jobs.get(claim.job)
        max_attempts = job.max_attempts if job is not None else 1
        transition = decide(outcome, attempt=claim.attempt, max_attempts=max_attempts, backoff=lambda _: delay)
        completion = Completion(
            job_id=claim.job, attempt=claim.attempt, attempted_at=claim.lease, transition=transition
        )
        current = self._current(claim)
        changed = len(
            self.call(self.driver.finish_jobs, worker_id=claim.worker, completions=[completion], error_cap=ERROR_CAP)
        )
        assert changed == int(current), f"finish of {claim} ({outcome}) changed {changed} row(s); expected {current}"
        if not current:
            return
        assert job is not None
        # A job whose cancel was requested never runs again: where it would, it is cancelled instead.
        cancelled_instead = job.cancel_requested and transition.state in REQUEUE
        job.state = JobState.CANCELLED if cancelled_instead else transition.state
        if transition.give_back_attempt and not cancelled_instead:
            job.attempt -= 1
            self.given_back.add(claim.job)
        job.errors += int(transition.error is not None or cancelled_instead)
        job.worker = None
        job.due = not (job.state in WAITING and (transition.delay or 0) > 0)

    # --- rules ------------------------------------------------------------------------------------

    @precondition(lambda self: self.enqueued < MAX_JOBS and self._open() < MAX_OPEN_JOBS)
    @rule(max_attempts=st.integers(min_value=1, max_value=3), later=st.booleans())
    def enqueue(self, max_attempts: int, later: bool) -> None:
        """Insert a job: available now, or scheduled for later."""
        spec = self.app.tasks["model.job"].configure(max_attempts=max_attempts, delay=FAR if later else None).job()
        (job,) = self.call(self.driver.insert_jobs, specs=[spec])
        self.enqueued += 1
        expected = JobState.SCHEDULED if later else JobState.AVAILABLE
        assert (job.id, job.state, job.attempt) == (self.enqueued, expected, 0)
        self.jobs[job.id] = ModelJob(state=expected, max_attempts=max_attempts, due=not later)

    @precondition(lambda self: self.alive and any(j.state is JobState.AVAILABLE for j in self.jobs.values()))
    @rule(data=st.data(), limit=st.integers(min_value=1, max_value=3))
    def fetch(self, data: st.DataObject, limit: int) -> None:
        """A live worker claims up to *limit* available jobs, each exactly once (one queue or several)."""
        worker = data.draw(st.sampled_from(sorted(self.alive)), label="worker")
        self._fetch(worker, limit, data.draw(st.sampled_from([("default",), ("other", "default")]), label="queues"))

    def _fetch(self, worker: str, limit: int, queues: tuple[str, ...] = ("default",)) -> None:
        available = {i for i, j in self.jobs.items() if j.state is JobState.AVAILABLE}
        fetched = self.call(self.driver.fetch_jobs, worker_id=worker, queues=list(queues), limit=limit)
        assert len(fetched) == min(limit, len(available))
        assert {j.id for j in fetched} <= available
        for row in fetched:
            model = self.jobs[row.id]
            assert (row.state, row.attempt, row.worker_id) == (JobState.EXECUTING, model.attempt + 1, worker)
            assert row.attempted_at is not None
            # A fresh lease at every claim, never one of this job's before.
            assert row.attempted_at not in {c.lease for c in self.claims if c.job == row.id}
            model.state, model.attempt, model.worker, model.lease = (
                JobState.EXECUTING,
                row.attempt,
                worker,
                row.attempted_at,
            )
            claim = Claim(
                serial=len(self.claims), job=row.id, worker=worker, attempt=row.attempt, lease=row.attempted_at
            )
            self.claims.append(claim)
            self.held[worker][row.id] = claim

    @precondition(lambda self: any(self.held.values()))
    @rule(data=st.data(), outcome=outcomes, delay=delays, reclaim=st.booleans(), repeat=st.booleans())
    def finish(self, data: st.DataObject, outcome: Outcome, delay: float, reclaim: bool, repeat: bool) -> None:
        """A worker (a dead one too: its task ran on) writes the outcome of a claim it holds."""
        worker = data.draw(st.sampled_from(sorted(w for w, held in self.held.items() if held)), label="worker")
        claim = data.draw(st.sampled_from(sorted(self.held[worker].values(), key=lambda c: c.serial)), label="claim")
        del self.held[worker][claim.job]
        self._write(claim, outcome, delay)
        job = self.jobs.get(claim.job)
        if reclaim and worker in self.alive and job is not None and job.state is JobState.AVAILABLE:
            # Its next poll claims the job straight back: same worker, and after a hand-back the same
            # attempt number; only the lease tells this claim from the one just written.
            self._fetch(worker, 1)
        if repeat:
            # The completer retries a batch whose first try committed: the second write changes nothing.
            self._write(claim, outcome, delay)

    @precondition(lambda self: any(not self._current(c) for c in self.claims))
    @rule(data=st.data(), outcome=outcomes, delay=delays, pick=st.sampled_from([0, 0, 1, 2]))
    def late_finish(self, data: st.DataObject, outcome: Outcome, delay: float, pick: int) -> None:
        """A stale claim (rescued, handed back, re-claimed since, finished, pruned) writes again: no row changes."""
        stale = [c for c in self.claims if not self._current(c)]
        # The dangerous ones first: an old claim of a job executing again now, and among those one with
        # the same worker and attempt as the current claim (a hand-back and a re-claim).
        rerun = [c for c in stale if self.jobs.get(c.job) is not None and self.jobs[c.job].state is JobState.EXECUTING]
        twins = [c for c in rerun if (c.worker, c.attempt) == (self.jobs[c.job].worker, self.jobs[c.job].attempt)]
        pool = next(p for p in (twins, rerun, stale)[pick:] if p)
        self._write(data.draw(st.sampled_from(pool), label="stale claim"), outcome, delay)

    @precondition(lambda self: any(w in self.alive for w, held in self.held.items() if held))
    @rule(data=st.data())
    def worker_dies(self, data: st.DataObject) -> None:
        """A worker that runs jobs is declared dead (its row is gone); they go on and may still write."""
        worker = data.draw(st.sampled_from(sorted(w for w in self.alive if self.held[w])), label="dying worker")
        self.call(self.driver.deregister_worker, worker_id=worker)
        self.alive.discard(worker)

    @precondition(lambda self: len(self.alive) < len(WORKERS))
    @rule(data=st.data())
    def worker_returns(self, data: st.DataObject) -> None:
        """A dead worker's heartbeat gets through again: it re-registers, still holding its old claims."""
        self._register(data.draw(st.sampled_from(sorted(set(WORKERS) - self.alive)), label="returning worker"))

    @precondition(
        lambda self: any(j.state is JobState.EXECUTING and j.worker not in self.alive for j in self.jobs.values())
    )
    @rule()
    def rescue(self) -> None:
        """The reaper moves every job executing on a dead worker out of executing, and nothing else."""
        result = self.call(
            self.driver.rescue_orphans, rescuer_id="rescuer", rescue_after=FAR, limit=1000, error_cap=ERROR_CAP
        )
        expected = {"retryable": 0, "discarded": 0, "cancelled": 0}
        for job in self.jobs.values():
            if job.state is not JobState.EXECUTING or job.worker in self.alive:
                continue
            if job.cancel_requested:
                job.state = JobState.CANCELLED
            elif job.attempt >= job.max_attempts:
                job.state = JobState.DISCARDED
            else:
                job.state = JobState.RETRYABLE
            expected[job.state.value] += 1
            job.worker, job.due, job.errors = None, True, job.errors + 1
        assert (result.retryable, result.discarded, result.cancelled) == tuple(expected.values())
        assert result.workers_removed == 0

    @precondition(lambda self: bool(self.jobs) or bool(self.pruned))
    @rule(data=st.data(), action=st.sampled_from(["cancel", "time_passes", "promote", "prune"]))
    def operate(self, data: st.DataObject, action: str) -> None:
        """Operators and the clock, as one rule so that they do not crowd out the workers' steps."""
        getattr(self, f"_{action}")(data)

    def _cancel(self, data: st.DataObject) -> None:
        """app.cancel: a waiting job is cancelled, an executing one asked to stop, a finished one left alone."""
        # Mostly an executing job: its request must survive whatever outcome its attempt ends with.
        executing = sorted(i for i, j in self.jobs.items() if j.state is JobState.EXECUTING)
        anyone = sorted(self.jobs.keys() | self.pruned)
        job_id = data.draw(
            st.sampled_from(executing if executing and data.draw(st.booleans()) else anyone), label="job"
        )
        answer = self.call(self.driver.cancel_job, job_id=job_id, error_cap=ERROR_CAP)
        job = self.jobs.get(job_id)
        if job is None:
            assert answer is None
            return
        status = answer.status
        if job.state in (*WAITING, JobState.AVAILABLE):
            assert status == "cancelled"
            job.state, job.errors = JobState.CANCELLED, job.errors + 1
        elif job.state is JobState.EXECUTING:
            assert status == "requested"
            job.cancel_requested = True
        else:
            assert status == "already_finished"

    def _time_passes(self, data: st.DataObject) -> None:
        """The clock reaches one waiting job's time (its scheduled_at is moved into the past)."""
        waiting = sorted(i for i, j in self.jobs.items() if j.state in WAITING and not j.due)
        if not waiting:
            return
        job_id = data.draw(st.sampled_from(waiting), label="due job")
        self.table.make_due(job_id)
        self.jobs[job_id].due = True

    def _promote(self, data: st.DataObject) -> None:
        """The promoter makes every due scheduled or retryable job available, and nothing else."""
        promoted = self.call(self.driver.promote_due, limit=1000)
        due = [j for j in self.jobs.values() if j.state in WAITING and j.due]
        assert promoted == len(due)
        for job in due:
            job.state = JobState.AVAILABLE

    def _prune(self, data: st.DataObject) -> None:
        """Pruning deletes the finished jobs of one state (older than 0 s), and nothing else."""
        state = data.draw(st.sampled_from([JobState.COMPLETED, JobState.DISCARDED, JobState.CANCELLED]), label="state")
        pruned = self.call(self.driver.prune_jobs, state=state.value, older_than=0.0, limit=1000)
        gone = [i for i, j in self.jobs.items() if j.state is state]
        assert pruned == len(gone)
        for job_id in gone:
            del self.jobs[job_id]
            self.pruned.add(job_id)

    # --- the invariants, against the table --------------------------------------------------------

    @invariant()
    def the_table_is_the_model(self) -> None:
        """Every row equals its model; no job is lost; finished jobs never change; one claim per executing job."""
        table = {r.id: r for r in self.table.rows()}
        # No job lost, none appeared from nowhere.
        assert sorted(table.keys() | self.pruned) == list(range(1, self.enqueued + 1))
        assert table.keys() == self.jobs.keys()
        for job_id, (
            _,
            state,
            attempt,
            max_attempts,
            worker,
            lease,
            finished_at,
            requested,
            errors,
            due,
        ) in table.items():
            model = self.jobs[job_id]
            assert (state, attempt, max_attempts, worker) == (
                model.state,
                model.attempt,
                model.max_attempts,
                model.worker,
            )
            assert (requested, errors) == (model.cancel_requested, min(model.errors, ERROR_CAP))
            if state in WAITING:
                assert due == model.due
            # A finished job never changes again.
            if state.is_terminal:
                assert finished_at is not None
                assert self.finished.setdefault(job_id, (state, attempt, finished_at)) == (state, attempt, finished_at)
            else:
                assert job_id not in self.finished, f"finished job {job_id} moved on to {state}"
            # Attempts never decrease, except by one when an attempt is handed back.
            before = self.before.get(job_id)
            if before is not None and attempt < before[1]:
                assert attempt == before[1] - 1 and job_id in self.given_back
            # Executing on exactly one worker: one claim ever made passes the finish guard, and its
            # worker still holds it; stale holders elsewhere cannot write.
            guard = (worker, attempt, lease)
            passing = [c for c in self.claims if c.job == job_id and (c.worker, c.attempt, c.lease) == guard]
            holders = [w for w, held in self.held.items() if held.get(job_id) in passing]
            if state is JobState.EXECUTING:
                assert lease == model.lease and len(passing) == 1 and holders == [worker]
            else:
                assert holders == []
        self.before = {i: (r.state, r.attempt) for i, r in table.items()}
        self.given_back.clear()


@pytest.fixture
def engine(engine_database: EngineDatabase) -> tuple[App, Table]:
    """An app on a fresh, migrated database of the engine under test, and its jobs table."""
    db = engine_database
    if db.engine == "postgres":
        return db.app, PostgresTable(db.conn)
    return db.app, SqliteTable(db.conn, prefix=db.prefix)


def test_the_engine_matches_the_model(engine: tuple[App, Table], anyio_backend: str) -> None:
    """Driven by any sequence of the workers' and operators' statements, the real tables match the model."""
    app, table = engine

    @app.task(name="model.job")
    async def job() -> None: ...

    with anyio.from_thread.start_blocking_portal(backend=anyio_backend) as portal:
        run_state_machine_as_test(
            lambda: EngineModel(portal, app, table),
            settings=settings(
                # Four runs (two engines, two loops) share what was one engine's budget of 150 examples
                # on two loops: the statements under test are the engine's, the loop barely matters.
                max_examples=40,
                stateful_step_count=40,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
