"""Model-based test of the durable steps (issue 22) on the real engines, PostgreSQL and SQLite.

``test_engine_model.py`` checks the engines' job statements against a model; this one adds the
durable writes: steps that complete or fail, durable sleeps and event waits that end at once or
suspend the job, emits (the first wins; a late waiter receives the payload at once), progress, and
every one of them written again by a stale claim (a worker whose job was rescued, handed back or
suspended and claimed again since). The model is the pure one of ``_state.py``: ``fetch_guarded``,
``finish_guarded``, ``rescue_guarded``, ``promote_guarded``, ``cancel_guarded``, ``retry_guarded``
and the durable ``step_guarded``, ``wait_guarded``, ``emit_guarded`` and ``progress_guarded``.
After every step each job, its steps and the emitted events must equal the model, read through the
driver (``list_jobs``, ``job_steps``) and behind its back (the wait columns, the clock).

Time is abstract, as in the model: a wait's end is either over or not (``delay=0`` or a past
``until``: over; ``delay=3600`` or a future ``until``: not within the test; neither: no end), and
a rule moves one job's times into the past (the clock passes them).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import socket
import sqlite3
from collections.abc import Callable
from typing import Any, Protocol

import anyio.from_thread
import attrs
import hypothesis
import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from nursery_worker import App, JobState
from nursery_worker._models import Completion, Lease, StepWrite, WorkerInfo
from nursery_worker._state import (
    Cancelled,
    ErrorInfo,
    Failed,
    JobRecord,
    Outcome,
    Released,
    Snoozed,
    StepState,
    Succeeded,
    cancel_guarded,
    decide,
    emit_guarded,
    fetch_guarded,
    finish_guarded,
    holds_lease,
    progress_guarded,
    promote_guarded,
    rescue_guarded,
    retry_guarded,
    step_guarded,
    wait_guarded,
)

from .conftest import EngineDatabase

WORKERS = ("w1", "w2")
#: Step and wait names share one pool, so that a wait may meet a step's row and a step a wait's.
NAMES = ("a", "b", "c")
KEYS = ("k1", "k2", "k3")
FAR = 3600.0  # never over during a test, unless a rule moves it into the past
PAST = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
FUTURE = dt.datetime(2200, 1, 1, tzinfo=dt.UTC)
ERROR_CAP = 20
MAX_JOBS = 12
MAX_OPEN_JOBS = 4
WAITING = (JobState.SCHEDULED, JobState.RETRYABLE)

#: A wait's end as the driver is asked for it, and whether it is over (None: it has none).
ENDS: dict[str, tuple[dict[str, Any], bool | None]] = {
    "now": ({"delay": 0.0, "until": None}, True),
    "later": ({"delay": FAR, "until": None}, False),
    "past": ({"delay": None, "until": PAST}, True),
    "future": ({"delay": None, "until": FUTURE}, False),
    "never": ({"delay": None, "until": None}, None),
}

json_values = st.one_of(
    st.none(),
    st.integers(min_value=-5, max_value=5),
    st.text(alphabet="xyé", max_size=3),
    st.lists(st.integers(min_value=0, max_value=3), max_size=2),
    st.dictionaries(st.sampled_from(["p", "q"]), st.booleans(), max_size=2),
)
step_errors = st.builds(
    ErrorInfo, type=st.sampled_from(["ValueError", "OSError"]), message=st.sampled_from(["boom", "x"])
)
outcomes: st.SearchStrategy[Outcome] = st.one_of(
    st.builds(Succeeded),
    st.builds(Failed, error=step_errors, permanent=st.booleans()),
    st.builds(Released),
    st.builds(Snoozed, delay=st.sampled_from([0.0, FAR])),
    st.builds(Cancelled),
)


@attrs.frozen
class Claim:
    """One successful fetch, as the fetching worker remembers it: the model's lease and the row's."""

    serial: int
    job: int
    worker: str
    attempt: int
    lease: int
    attempted_at: dt.datetime

    def as_lease(self) -> Lease:
        return Lease(job_id=self.job, attempt=self.attempt, worker_id=self.worker, attempted_at=self.attempted_at)

    def guard(self) -> dict[str, Any]:
        return {"worker_id": self.worker, "attempt": self.attempt, "lease": self.lease}


class Table(Protocol):
    """What the test reads and changes behind the driver's back."""

    def reset(self) -> None:
        """Empty the tables and restart the job ids at 1."""

    def now(self) -> dt.datetime:
        """The database's clock."""

    def wait_columns(self) -> dict[int, tuple[bool, str | None, str | None]]:
        """Every job's ``scheduled_at <= now``, ``wait_event`` and ``wait_step``, by id."""

    def events(self) -> dict[str, Any]:
        """The emitted events' payloads, by key."""

    def make_due(self, job_id: int) -> None:
        """Move the job's wait times into the past: its scheduled_at if it waits, its waiting steps' ends."""

    def age_events(self) -> None:
        """Move every event's times a day into the past."""


class PostgresTable:
    """The test's schema through a plain autocommit connection."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def reset(self) -> None:
        self.conn.execute("TRUNCATE jobs, steps, durable_events, workers, queues RESTART IDENTITY")

    def now(self) -> dt.datetime:
        row = self.conn.execute("SELECT now()").fetchone()
        assert row is not None
        return row[0]  # type: ignore[no-any-return]

    def wait_columns(self) -> dict[int, tuple[bool, str | None, str | None]]:
        rows = self.conn.execute("SELECT id, scheduled_at <= now(), wait_event, wait_step FROM jobs").fetchall()
        return {int(r[0]): (bool(r[1]), r[2], r[3]) for r in rows}

    def events(self) -> dict[str, Any]:
        rows = self.conn.execute("SELECT key, payload FROM durable_events WHERE emitted_at IS NOT NULL").fetchall()
        return {str(r[0]): r[1] for r in rows}

    def make_due(self, job_id: int) -> None:
        past = "now() - interval '1 second'"
        self.conn.execute(
            f"UPDATE jobs SET scheduled_at = {past} WHERE id = %s AND state IN ('scheduled', 'retryable')", [job_id]
        )
        self.conn.execute(
            f"UPDATE steps SET wake_at = {past} WHERE job_id = %s AND state = 'waiting' AND wake_at IS NOT NULL",
            [job_id],
        )

    def age_events(self) -> None:
        day = "interval '1 day'"
        self.conn.execute(
            f"UPDATE durable_events SET created_at = created_at - {day}, waited_at = waited_at - {day}, "
            f"emitted_at = emitted_at - {day}"
        )


#: SQLite times are INTEGER microseconds since 1970 (UTC); 'now' as the engine reads it.
_SQLITE_NOW = "(CAST(round((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER) * 1000)"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_DAY_US = 86_400_000_000


class SqliteTable:
    """The test's SQLite file through a connection of its own (autocommit: no read holds a snapshot)."""

    def __init__(self, conn: sqlite3.Connection, prefix: str) -> None:
        self.conn = conn
        self.p = prefix

    def reset(self) -> None:
        for table in ("steps", "durable_events", "jobs", "workers", "queues"):
            self.conn.execute(f'DELETE FROM "{self.p}{table}"')
        self.conn.execute("DELETE FROM sqlite_sequence WHERE name = ?", [f"{self.p}jobs"])

    def now(self) -> dt.datetime:
        return _EPOCH + dt.timedelta(microseconds=self.conn.execute(f"SELECT {_SQLITE_NOW}").fetchone()[0])

    def wait_columns(self) -> dict[int, tuple[bool, str | None, str | None]]:
        rows = self.conn.execute(
            f'SELECT id, scheduled_at <= {_SQLITE_NOW}, wait_event, wait_step FROM "{self.p}jobs"'
        ).fetchall()
        return {int(r[0]): (bool(r[1]), r[2], r[3]) for r in rows}

    def events(self) -> dict[str, Any]:
        rows = self.conn.execute(
            f'SELECT key, payload FROM "{self.p}durable_events" WHERE emitted_at IS NOT NULL'
        ).fetchall()
        return {str(r[0]): json.loads(r[1]) for r in rows}

    def make_due(self, job_id: int) -> None:
        past = f"{_SQLITE_NOW} - 1000000"
        self.conn.execute(
            f"UPDATE \"{self.p}jobs\" SET scheduled_at = {past} WHERE id = ? AND state IN ('scheduled', 'retryable')",
            [job_id],
        )
        self.conn.execute(
            f'UPDATE "{self.p}steps" SET wake_at = {past} '
            "WHERE job_id = ? AND state = 'waiting' AND wake_at IS NOT NULL",
            [job_id],
        )

    def age_events(self) -> None:
        self.conn.execute(
            f'UPDATE "{self.p}durable_events" SET created_at = created_at - {_DAY_US}, '
            f"waited_at = waited_at - {_DAY_US}, emitted_at = emitted_at - {_DAY_US}"
        )


class DurableModel(RuleBasedStateMachine):
    """A few jobs, two fake workers and their durable writes, in any order, against the pure model."""

    def __init__(self, portal: anyio.from_thread.BlockingPortal, app: App, table: Table) -> None:
        super().__init__()
        self.portal = portal
        self.app = app
        self.driver = app.driver
        self.table = table
        table.reset()
        self.jobs: dict[int, JobRecord] = {}
        self.events: dict[str, Any] = {}
        self.enqueued = 0
        self.alive: set[str] = set()
        self.claims: list[Claim] = []
        self.aimed: set[int] = set()  # jobs a durable write aimed at since the last check
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
        job = self.jobs.get(claim.job)
        return job is not None and holds_lease(job, **claim.guard())

    def _current_claims(self) -> list[Claim]:
        return [c for c in self.claims if self._current(c)]

    def _stale_claims(self) -> list[Claim]:
        return [c for c in self.claims if not self._current(c)]

    def _ahead(self) -> list[int]:
        """The jobs with a time still ahead: a scheduled_at they wait for, or a waiting step's end."""
        return sorted(
            i
            for i, j in self.jobs.items()
            if (j.state in WAITING and not j.due)
            or any(s.state is StepState.WAITING and s.over is False for s in j.steps.values())
        )

    def _open(self) -> int:
        return sum(not j.state.is_terminal for j in self.jobs.values())

    def _fetch(self, worker: str, limit: int) -> None:
        available = {i for i, j in self.jobs.items() if j.state is JobState.AVAILABLE}
        fetched = self.call(self.driver.fetch_jobs, worker_id=worker, queues=["default"], limit=limit)
        assert len(fetched) == min(limit, len(available))
        assert {j.id for j in fetched} <= available
        for row in fetched:
            model = fetch_guarded(self.jobs[row.id], worker)
            assert (row.state, row.attempt, row.worker_id) == (model.state, model.attempt, worker)
            assert row.attempted_at is not None
            assert row.attempted_at not in {c.attempted_at for c in self.claims if c.job == row.id}
            self.jobs[row.id] = model
            self.claims.append(
                Claim(
                    serial=len(self.claims),
                    job=row.id,
                    worker=worker,
                    attempt=row.attempt,
                    lease=model.lease,
                    attempted_at=row.attempted_at,
                )
            )

    # --- the durable writes, by any claim ---------------------------------------------------------

    def _record(self, claim: Claim, name: str, result: Any, error: ErrorInfo | None, duration: float) -> None:
        self.aimed.add(claim.job)
        job = self.jobs[claim.job]
        model, written = step_guarded(
            job,
            **claim.guard(),
            name=name,
            position=len(job.steps),
            result=result,
            error=error,
            duration=duration,
        )
        record = StepWrite(
            lease=claim.as_lease(),
            name=name,
            position=len(job.steps),
            result_json=None if error is not None else json.dumps(result),
            error=error,
            duration=duration,
        )
        (answer,) = self.call(self.driver.record_steps, records=[record])
        assert answer is written, f"record_steps({name}) by {claim} answered {answer}; expected {written}"
        self.jobs[claim.job] = model

    def _wait(self, claim: Claim, name: str, event: str | None, end: str) -> None:
        self.aimed.add(claim.job)
        job = self.jobs[claim.job]
        asked, over = ENDS[end]
        model, outcome, payload = wait_guarded(
            job, **claim.guard(), name=name, position=len(job.steps), event=event, over=over, events=self.events
        )
        result = self.call(
            self.driver.wait_step, lease=claim.as_lease(), name=name, position=len(job.steps), event=event, **asked
        )
        assert (result.outcome, result.payload) == (outcome, payload), f"wait({name}, {event}, {end}) by {claim}"
        if outcome == "suspended":
            assert result.until is not None
        hypothesis.event(f"wait: {outcome}")
        self.jobs[claim.job] = model

    def _progress(self, claim: Claim, done: float, total: float | None, note: str | None) -> None:
        self.aimed.add(claim.job)
        model, written = progress_guarded(self.jobs[claim.job], **claim.guard(), done=done, total=total, note=note)
        answer = self.call(self.driver.set_progress, lease=claim.as_lease(), done=done, total=total, note=note)
        assert answer is written
        self.jobs[claim.job] = model

    # --- rules ------------------------------------------------------------------------------------

    @precondition(lambda self: self.enqueued < MAX_JOBS and self._open() < MAX_OPEN_JOBS)
    @rule(max_attempts=st.integers(min_value=1, max_value=3), fetch=st.booleans())
    def enqueue(self, max_attempts: int, fetch: bool) -> None:
        """Insert an available job (and maybe a live worker claims it at once)."""
        spec = self.app.tasks["model.durable"].configure(max_attempts=max_attempts).job()
        (job,) = self.call(self.driver.insert_jobs, specs=[spec])
        self.enqueued += 1
        assert (job.id, job.state) == (self.enqueued, JobState.AVAILABLE)
        self.jobs[job.id] = JobRecord(state=JobState.AVAILABLE, max_attempts=max_attempts)
        if fetch and self.alive:
            self._fetch(min(self.alive), 1)

    @precondition(lambda self: self.alive and any(j.state is JobState.AVAILABLE for j in self.jobs.values()))
    @rule(data=st.data(), limit=st.integers(min_value=1, max_value=2))
    def fetch(self, data: st.DataObject, limit: int) -> None:
        """A live worker claims up to *limit* available jobs."""
        self._fetch(data.draw(st.sampled_from(sorted(self.alive)), label="worker"), limit)

    @precondition(lambda self: bool(self._current_claims()))
    @rule(
        data=st.data(),
        name=st.sampled_from(NAMES),
        result=json_values,
        error=st.none() | step_errors,
        duration=st.sampled_from([0.0, 0.25, 1.5]),
    )
    def step(self, data: st.DataObject, name: str, result: Any, error: ErrorInfo | None, duration: float) -> None:
        """A running attempt records a step's run: completed with its result, or failed with its error."""
        claim = data.draw(st.sampled_from(self._current_claims()), label="claim")
        self._record(claim, name, result, error, duration)

    @precondition(lambda self: bool(self._current_claims()))
    @rule(
        data=st.data(),
        name=st.sampled_from(NAMES),
        event=st.none() | st.sampled_from(KEYS),
        end=st.sampled_from(sorted(ENDS)),
    )
    def wait(self, data: st.DataObject, name: str, event: str | None, end: str) -> None:
        """A running attempt sleeps or waits for an event: over at once, or the job is suspended."""
        claim = data.draw(st.sampled_from(self._current_claims()), label="claim")
        self._wait(claim, name, event, end)

    @precondition(lambda self: bool(self._current_claims()))
    @rule(
        data=st.data(),
        done=st.sampled_from([0.0, 1.0, 2.5]),
        total=st.sampled_from([None, 10.0]),
        note=st.sampled_from([None, "half"]),
    )
    def progress(self, data: st.DataObject, done: float, total: float | None, note: str | None) -> None:
        """A running attempt stores its progress."""
        claim = data.draw(st.sampled_from(self._current_claims()), label="claim")
        self._progress(claim, done, total, note)

    @precondition(lambda self: bool(self._current_claims()))
    @rule(data=st.data(), outcome=outcomes, delay=st.sampled_from([0.0, FAR]))
    def finish(self, data: st.DataObject, outcome: Outcome, delay: float) -> None:
        """A running attempt ends: the completer writes its outcome."""
        claim = data.draw(st.sampled_from(self._current_claims()), label="claim")
        job = self.jobs[claim.job]
        transition = decide(outcome, attempt=claim.attempt, max_attempts=job.max_attempts, backoff=lambda _: delay)
        completion = Completion(
            job_id=claim.job, attempt=claim.attempt, attempted_at=claim.attempted_at, transition=transition
        )
        changed = self.call(
            self.driver.finish_jobs, worker_id=claim.worker, completions=[completion], error_cap=ERROR_CAP
        )
        assert len(changed) == 1
        self.jobs[claim.job] = finish_guarded(job, transition=transition, **claim.guard())

    @precondition(lambda self: bool(self._stale_claims()))
    @rule(
        data=st.data(),
        write=st.sampled_from(["step", "wait", "progress", "finish"]),
        name=st.sampled_from(NAMES),
        event=st.none() | st.sampled_from(KEYS),
        end=st.sampled_from(sorted(ENDS)),
        pick=st.sampled_from([0, 0, 1, 2]),
    )
    def stale_write(self, data: st.DataObject, write: str, name: str, event: str | None, end: str, pick: int) -> None:
        """A claim that is no longer the attempt (rescued, suspended, re-claimed) writes: nothing changes."""
        stale = self._stale_claims()
        # The dangerous ones first: an old claim of a job executing again now, and among those one
        # with the same worker and attempt as the current claim (given back and claimed again).
        rerun = [c for c in stale if self.jobs[c.job].state is JobState.EXECUTING]
        twins = [c for c in rerun if (c.worker, c.attempt) == (self.jobs[c.job].worker_id, self.jobs[c.job].attempt)]
        pool = next(p for p in (twins, rerun, stale)[pick:] if p)
        claim = data.draw(st.sampled_from(pool), label="stale claim")
        hypothesis.event(f"stale {write}: {'twin' if claim in twins else 'rerun' if claim in rerun else 'stale'}")
        before = self.jobs[claim.job]
        if write == "step":
            self._record(claim, name, 1, None, 0.5)
        elif write == "wait":
            self._wait(claim, name, event, end)
        elif write == "progress":
            self._progress(claim, 9.0, None, "stale")
        else:
            transition = decide(Succeeded(), attempt=claim.attempt, max_attempts=1, backoff=lambda _: 0.0)
            completion = Completion(
                job_id=claim.job, attempt=claim.attempt, attempted_at=claim.attempted_at, transition=transition
            )
            changed = self.call(
                self.driver.finish_jobs, worker_id=claim.worker, completions=[completion], error_cap=ERROR_CAP
            )
            assert changed == []
        assert self.jobs[claim.job] == before

    @precondition(lambda self: any(w in self.alive for w in {c.worker for c in self._current_claims()}))
    @rule(data=st.data())
    def worker_dies(self, data: st.DataObject) -> None:
        """A worker that runs jobs is declared dead (its row is gone); its attempts go on and may still write."""
        running = sorted({c.worker for c in self._current_claims()} & self.alive)
        worker = data.draw(st.sampled_from(running), label="dying worker")
        self.call(self.driver.deregister_worker, worker_id=worker)
        self.alive.discard(worker)

    @precondition(lambda self: len(self.alive) < len(WORKERS))
    @rule(data=st.data())
    def worker_returns(self, data: st.DataObject) -> None:
        """A dead worker's heartbeat gets through again: it re-registers."""
        self._register(data.draw(st.sampled_from(sorted(set(WORKERS) - self.alive)), label="returning worker"))

    @precondition(
        lambda self: any(j.state is JobState.EXECUTING and j.worker_id not in self.alive for j in self.jobs.values())
    )
    @rule()
    def rescue(self) -> None:
        """The reaper moves every job executing on a dead worker out of executing; its steps stay."""
        result = self.call(
            self.driver.rescue_orphans, rescuer_id="rescuer", rescue_after=FAR, limit=1000, error_cap=ERROR_CAP
        )
        alive = frozenset(self.alive)
        rescued = {i: rescue_guarded(j, alive) for i, j in self.jobs.items()}
        moved = [rescued[i].state.value for i, j in self.jobs.items() if rescued[i] is not j]
        assert (result.retryable, result.discarded, result.cancelled) == (
            moved.count("retryable"),
            moved.count("discarded"),
            moved.count("cancelled"),
        )
        self.jobs = rescued

    @precondition(lambda self: any(j.state in (JobState.EXECUTING, JobState.SCHEDULED) for j in self.jobs.values()))
    @rule(data=st.data(), key=st.sampled_from(KEYS), payload=json_values)
    def emit(self, data: st.DataObject, key: str, payload: Any) -> None:
        """app.emit: the first emit of a key stores its payload and wakes its waiters; later ones change nothing."""
        waited = sorted({j.wait_event for j in self.jobs.values() if j.wait_event is not None})
        if waited and data.draw(st.booleans(), label="a waited key"):
            key = data.draw(st.sampled_from(waited), label="key")
        won = self.call(self.driver.emit_event, key=key, payload_json=json.dumps(payload))
        before = self.jobs
        self.events, self.jobs, expected = emit_guarded(self.events, self.jobs, key=key, payload=payload)
        assert won is expected
        woken = sum(self.jobs[i] is not j for i, j in before.items())
        hypothesis.event(f"emit: {'won' if won else 'lost'}, woke {min(woken, 1)}+")

    @precondition(lambda self: bool(self._ahead()))
    @rule(data=st.data(), promote=st.booleans())
    def time_passes(self, data: st.DataObject, promote: bool) -> None:
        """The clock passes one job's times (then, maybe, the promoter runs)."""
        self._time_passes(data)
        if promote:
            self._promote(data)

    @precondition(lambda self: bool(self.jobs))
    @rule(data=st.data(), action=st.sampled_from(["cancel", "retry", "promote", "prune_events"]))
    def operate(self, data: st.DataObject, action: str) -> None:
        """Operators and the maintenance services, as one rule so they do not crowd out the workers."""
        getattr(self, f"_{action}")(data)

    def _cancel(self, data: st.DataObject) -> None:
        """app.cancel: a waiting (or suspended) job is cancelled, an executing one asked to stop."""
        busy = sorted(i for i, j in self.jobs.items() if j.state in (JobState.EXECUTING, JobState.SCHEDULED))
        prefer_busy: bool = data.draw(st.booleans(), label="busy")
        pool = busy if busy and prefer_busy else sorted(self.jobs)
        job_id = data.draw(st.sampled_from(pool), label="job")
        job = self.jobs[job_id]
        answer = self.call(self.driver.cancel_job, job_id=job_id, error_cap=ERROR_CAP)
        if job.state is JobState.EXECUTING:
            expected = "requested"
        elif job.state.is_terminal:
            expected = "already_finished"
        else:
            expected = "cancelled"
        assert answer is not None and answer.status == expected
        self.jobs[job_id] = cancel_guarded(job)

    def _retry(self, data: st.DataObject) -> None:
        """app.retry: a discarded or cancelled job is available again; any other is left."""
        job_id = data.draw(st.sampled_from(sorted(self.jobs)), label="job")
        answer = self.call(self.driver.retry_job, job_id=job_id)
        model = retry_guarded(self.jobs[job_id])
        assert (answer is not None) is (model is not self.jobs[job_id])
        self.jobs[job_id] = model

    def _time_passes(self, data: st.DataObject) -> None:
        """The clock passes one job's times: its scheduled_at if it waits, and its waiting steps' ends."""
        job_id = data.draw(st.sampled_from(self._ahead()), label="job")
        self.table.make_due(job_id)
        job = self.jobs[job_id]
        steps = {
            name: attrs.evolve(s, over=True) if s.state is StepState.WAITING and s.over is not None else s
            for name, s in job.steps.items()
        }
        self.jobs[job_id] = attrs.evolve(job, due=job.due or job.state in WAITING, steps=steps)

    def _promote(self, data: st.DataObject) -> None:
        """The promoter makes every due scheduled or retryable job available (a suspended one too)."""
        promoted = self.call(self.driver.promote_due, limit=1000)
        after = {i: promote_guarded(j) for i, j in self.jobs.items()}
        assert promoted == sum(after[i] is not j for i, j in self.jobs.items())
        self.jobs = after

    def _prune_events(self, data: st.DataObject) -> None:
        """The pruner deletes old events, but never one a suspended job waits for."""
        self.table.age_events()
        self.call(self.driver.prune_events, older_than=3600.0, limit=1000)
        waited = {j.wait_event for j in self.jobs.values() if j.state is JobState.SCHEDULED}
        self.events = {k: v for k, v in self.events.items() if k in waited}

    # --- the invariant ------------------------------------------------------------------------------

    @invariant()
    def the_database_is_the_model(self) -> None:
        """Each job (state, attempt, worker, cancel, errors, wait, progress), its steps and the events are the model."""
        columns = self.table.wait_columns()
        assert sorted(columns) == sorted(self.jobs)
        now = self.table.now()
        # One read of every job; the steps of those that have some, or that a write just aimed at.
        listed = {j.id: j for j in self.call(self.driver.list_jobs, states=None, queue=None, task=None, limit=100)}
        for job_id, model in self.jobs.items():
            job = listed[job_id]
            seen = (job.state, job.attempt, job.max_attempts, job.worker_id, job.cancel_requested_at is not None)
            assert seen == (model.state, model.attempt, model.max_attempts, model.worker_id, model.cancel_requested)
            assert len(job.errors) == min(model.errors, ERROR_CAP)
            due, wait_event, wait_step = columns[job_id]
            if model.state in WAITING:
                assert due is model.due
            assert (wait_event, wait_step) == (model.wait_event, model.wait_step), f"job {job_id}"
            waiting = None if job.waiting is None else (job.waiting.kind, job.waiting.step, job.waiting.event)
            if model.state is JobState.SCHEDULED and model.wait_step is not None:
                expected_waiting = ("sleep" if model.wait_event is None else "event", model.wait_step, model.wait_event)
                assert job.waiting is not None and job.waiting.until == job.scheduled_at
                assert waiting == expected_waiting
            else:
                assert waiting is None
            progress = None if job.progress is None else (job.progress.done, job.progress.total, job.progress.note)
            assert progress == model.progress
            if not model.steps and job_id not in self.aimed:
                continue
            steps = self.call(self.driver.job_steps, job_id=job_id)
            seen_steps = {
                s.name: (
                    s.position,
                    s.state,
                    s.attempt,
                    s.runs,
                    s.result,
                    None if s.error is None else (s.error.type, s.error.message),
                    s.duration,
                    s.event,
                    None if s.wake_at is None else s.wake_at <= now,
                )
                for s in steps
            }
            expected_steps = {
                name: (
                    s.position,
                    s.state.value,
                    s.attempt,
                    s.runs,
                    s.result,
                    None if s.error is None else (s.error.type, s.error.message),
                    s.duration,
                    s.event,
                    s.over,
                )
                for name, s in model.steps.items()
            }
            assert seen_steps == expected_steps, f"job {job_id}"
        assert self.table.events() == self.events
        self.aimed.clear()


@pytest.fixture
def engine(engine_database: EngineDatabase) -> tuple[App, Table]:
    """An app on a fresh, migrated database of the engine under test, and its tables."""
    db = engine_database
    if db.engine == "postgres":
        return db.app, PostgresTable(db.conn)
    return db.app, SqliteTable(db.conn, prefix=db.prefix)


def test_the_durable_writes_match_the_model(engine: tuple[App, Table], anyio_backend: str) -> None:
    """Driven by any sequence of steps, waits, emits, progress, stale writes and operators, the engine is the model."""
    app, table = engine

    @app.task(name="model.durable")
    async def durable() -> None: ...

    with anyio.from_thread.start_blocking_portal(backend=anyio_backend) as portal:
        run_state_machine_as_test(
            lambda: DurableModel(portal, app, table),
            settings=settings(
                # As test_engine_model.py: four runs (two engines, two loops), under a minute in all.
                max_examples=40,
                stateful_step_count=35,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )


def test_a_cancelled_suspension_leaves_no_wait_behind(engine: tuple[App, Table], anyio_backend: str) -> None:
    """A job cancelled while suspended on an event, retried and then snoozed, neither shows nor answers that wait."""
    app, _ = engine

    @app.task(name="model.durable")
    async def durable() -> None: ...

    driver = app.driver
    with anyio.from_thread.start_blocking_portal(backend=anyio_backend) as portal:

        def call(method: Callable[..., Any], **kwargs: Any) -> Any:
            return portal.call(functools.partial(method, **kwargs))

        info = WorkerInfo(id="w1", hostname=socket.gethostname(), pid=0, queues=("default",), concurrency=1)
        call(driver.register_worker, info=info)
        (job,) = call(driver.insert_jobs, specs=[app.tasks["model.durable"].job()])

        def claim() -> Lease:
            (row,) = call(driver.fetch_jobs, worker_id="w1", queues=["default"], limit=1)
            return Lease(job_id=row.id, attempt=row.attempt, worker_id="w1", attempted_at=row.attempted_at)

        lease = claim()
        waited = call(driver.wait_step, lease=lease, name="w", position=0, event="paid", delay=None, until=None)
        assert waited.outcome == "suspended"
        assert call(driver.cancel_job, job_id=job.id, error_cap=ERROR_CAP).status == "cancelled"
        assert call(driver.retry_job, job_id=job.id) is not None
        lease = claim()
        snooze = decide(Snoozed(delay=FAR), attempt=lease.attempt, max_attempts=1, backoff=lambda _: 0.0)
        completion = Completion(
            job_id=job.id, attempt=lease.attempt, attempted_at=lease.attempted_at, transition=snooze
        )
        assert call(driver.finish_jobs, worker_id="w1", completions=[completion], error_cap=ERROR_CAP) == [0]
        snoozed = call(driver.get_job, job_id=job.id)
        assert (snoozed.state, snoozed.waiting) == (JobState.SCHEDULED, None)
        assert call(driver.emit_event, key="paid", payload_json="1") is True
        assert call(driver.get_job, job_id=job.id).state is JobState.SCHEDULED


def test_a_wait_that_takes_over_a_failed_steps_row_keeps_no_error(
    engine: tuple[App, Table], anyio_backend: str
) -> None:
    """A sleep named like a step that failed before is stored without that step's error and duration."""
    app, _ = engine

    @app.task(name="model.durable")
    async def durable() -> None: ...

    driver = app.driver
    with anyio.from_thread.start_blocking_portal(backend=anyio_backend) as portal:

        def call(method: Callable[..., Any], **kwargs: Any) -> Any:
            return portal.call(functools.partial(method, **kwargs))

        info = WorkerInfo(id="w1", hostname=socket.gethostname(), pid=0, queues=("default",), concurrency=1)
        call(driver.register_worker, info=info)
        (job,) = call(driver.insert_jobs, specs=[app.tasks["model.durable"].job()])
        (row,) = call(driver.fetch_jobs, worker_id="w1", queues=["default"], limit=1)
        lease = Lease(job_id=job.id, attempt=row.attempt, worker_id="w1", attempted_at=row.attempted_at)
        error = ErrorInfo(type="ValueError", message="boom")
        record = StepWrite(lease=lease, name="x", position=0, result_json=None, error=error, duration=1.5)
        assert call(driver.record_steps, records=[record]) == [True]
        waited = call(driver.wait_step, lease=lease, name="x", position=0, event=None, delay=0.0, until=None)
        assert waited.outcome == "done"
        (step,) = call(driver.job_steps, job_id=job.id)
        assert (step.state, step.error, step.duration, step.runs) == ("completed", None, None, 1)
