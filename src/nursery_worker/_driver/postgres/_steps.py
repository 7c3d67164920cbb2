"""The PostgreSQL engine's durable steps: step rows, durable waits, events and progress.

Every write is guarded by the attempt's lease (job, attempt, worker and ``attempted_at``) under the
job row's lock, so a worker whose job was rescued writes nothing. ``wait_step`` and ``emit`` order
themselves through the event's row (see migration 11): a waiter updates it in the transaction that
suspends its job, an emit updates or inserts it before it wakes the key's waiters, each in READ
COMMITTED (a new snapshot per statement), so a waiter is never suspended past an emit that
committed first or while it ran.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import psycopg
from psycopg import sql

from ..._models import DurableOverview, JobStep, Lease, StepWrite, WaitResult
from .._common import FOREVER, STEP_COLUMNS, durable_overview_from, error_entry, plan_wait, step_from_row

# The job row, locked, if the lease still holds it; with its cancel request and the clock.
_SQL_LOCK_LEASE = """
SELECT cancel_requested_at IS NOT NULL, now()
FROM {s}.jobs
WHERE id = %(id)s AND state = 'executing' AND attempt = %(attempt)s AND worker_id = %(worker)s
  AND attempted_at IS NOT DISTINCT FROM %(lease)s
FOR UPDATE
"""
_SQL_STEPS = "SELECT " + STEP_COLUMNS + " FROM {s}.steps WHERE job_id = %(id)s ORDER BY position, name LIMIT %(limit)s"
_SQL_STEP = "SELECT state, wake_at, result FROM {s}.steps WHERE job_id = %(id)s AND name = %(name)s"
# A run of a step: completed with its result, or failed with its error. Guarded by the lease under
# FOR SHARE: a rescue that commits first fails the guard (the row is read again), one that comes
# later waits for this write, and the job's next attempt finds the step completed.
_SQL_RECORD = """
INSERT INTO {s}.steps AS st (job_id, name, position, state, attempt, result, error, duration, updated_at)
SELECT j.id, %(name)s, %(position)s, %(state)s, j.attempt, %(result)s::jsonb,
       %(error)s::jsonb || jsonb_build_object('at', now(), 'attempt', j.attempt), %(duration)s, now()
FROM {s}.jobs AS j
WHERE j.id = %(id)s AND j.state = 'executing' AND j.attempt = %(attempt)s AND j.worker_id = %(worker)s
  AND j.attempted_at IS NOT DISTINCT FROM %(lease)s
FOR SHARE OF j
ON CONFLICT (job_id, name) DO UPDATE
SET state = excluded.state, attempt = excluded.attempt, runs = st.runs + 1, result = excluded.result,
    error = excluded.error, duration = excluded.duration, updated_at = excluded.updated_at
WHERE st.state = 'failed'
RETURNING 1
"""
# Many runs of steps (of any jobs of one worker) in one statement: _SQL_RECORD for each row.
_SQL_RECORD_MANY = """
WITH u AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(attempts)s::int[], %(workers)s::text[], %(leases)s::timestamptz[],
                         %(names)s::text[], %(positions)s::int[], %(states)s::text[], %(results)s::text[],
                         %(errors)s::text[], %(durations)s::float8[])
         AS u(id, attempt, worker, lease, name, position, state, result, error, duration)
), held AS (
    SELECT u.* FROM u JOIN {s}.jobs AS j ON j.id = u.id
    WHERE j.state = 'executing' AND j.attempt = u.attempt AND j.worker_id = u.worker
      AND j.attempted_at IS NOT DISTINCT FROM u.lease
    FOR SHARE OF j
)
INSERT INTO {s}.steps AS st (job_id, name, position, state, attempt, result, error, duration, updated_at)
SELECT id, name, position, state, attempt, result::jsonb,
       error::jsonb || jsonb_build_object('at', now(), 'attempt', attempt), duration, now()
FROM held
ON CONFLICT (job_id, name) DO UPDATE
SET state = excluded.state, attempt = excluded.attempt, runs = st.runs + 1, result = excluded.result,
    error = excluded.error, duration = excluded.duration, updated_at = excluded.updated_at
WHERE st.state = 'failed'
RETURNING st.job_id, st.name
"""
# A wait's step, written under the job row's lock (taken by _SQL_LOCK_LEASE). A failed step's row it
# takes over (the same name) keeps no error or duration: a wait has neither.
_SQL_WAIT_STEP = """
INSERT INTO {s}.steps AS st (job_id, name, position, state, attempt, result, wake_at, event, updated_at, runs)
VALUES (%(id)s, %(name)s, %(position)s, %(state)s, %(attempt)s, %(result)s::jsonb, %(wake_at)s, %(event)s, now(), 0)
ON CONFLICT (job_id, name) DO UPDATE
SET state = excluded.state, attempt = excluded.attempt, result = excluded.result, wake_at = excluded.wake_at,
    event = excluded.event, updated_at = excluded.updated_at, error = NULL, duration = NULL
WHERE st.state IN ('waiting', 'failed')
"""
# The suspension: scheduled until the wait's end, the attempt given back (as a snooze).
_SQL_SUSPEND = """
UPDATE {s}.jobs
SET state = 'scheduled', scheduled_at = %(until)s, attempt = attempt - 1, worker_id = NULL,
    wait_event = %(event)s, wait_step = %(name)s
WHERE id = %(id)s AND state = 'executing'
"""
# A waiter's hold on the event's row: inserted as a placeholder, or updated, so that an emit in
# flight is waited for and one that comes later finds this job suspended.
_SQL_EVENT_HOLD = """
INSERT INTO {s}.durable_events AS e (key, waited_at) VALUES (%(key)s, now())
ON CONFLICT (key) DO UPDATE SET waited_at = now()
RETURNING e.emitted_at IS NOT NULL, e.payload
"""
# The first emit stores the payload; a later one changes nothing.
_SQL_EMIT = """
INSERT INTO {s}.durable_events AS e (key, payload, emitted_at) VALUES (%(key)s, %(payload)s::jsonb, now())
ON CONFLICT (key) DO UPDATE SET payload = excluded.payload, emitted_at = excluded.emitted_at
WHERE e.emitted_at IS NULL
RETURNING 1
"""
# Its own statement (a new snapshot): it sees a waiter that committed while the emit waited for
# the event's row.
_SQL_WAKE = """
WITH woken AS (
    UPDATE {s}.jobs SET state = 'available', scheduled_at = now(), wait_event = NULL, wait_step = NULL
    WHERE state = 'scheduled' AND wait_event = %(key)s
    RETURNING queue
)
SELECT pg_notify(%(channel)s, 'available:' || q.queue) FROM (SELECT DISTINCT queue FROM woken) AS q
"""
_SQL_PROGRESS = """
UPDATE {s}.jobs
SET progress = jsonb_build_object('done', %(done)s::float8, 'total', %(total)s::float8, 'note', %(note)s::text,
                                  'at', now())
WHERE id = %(id)s AND state = 'executing' AND attempt = %(attempt)s AND worker_id = %(worker)s
  AND attempted_at IS NOT DISTINCT FROM %(lease)s
RETURNING 1
"""
# Executing jobs that report progress (jobs_executing_idx holds every executing job), and the
# suspended ones by kind: sleeps through jobs_due_idx (scheduled and retryable jobs), event waits
# through jobs_wait_event_idx.
_SQL_PROGRESSING = """
SELECT id, task, queue, progress FROM {s}.jobs
WHERE state = 'executing' AND progress IS NOT NULL
ORDER BY id
LIMIT %(limit)s
"""
_SQL_DURABLE_COUNTS = """
SELECT
    (SELECT count(*) FROM {s}.jobs WHERE state = 'executing' AND progress IS NOT NULL),
    (SELECT count(*) FROM {s}.jobs WHERE state = 'scheduled' AND wait_step IS NOT NULL AND wait_event IS NULL),
    (SELECT count(*) FROM {s}.jobs WHERE state = 'scheduled' AND wait_event IS NOT NULL)
"""
# Events nobody needs any more: old, and no suspended job waits for them.
_SQL_PRUNE_EVENTS = """
WITH doomed AS (
    SELECT key FROM {s}.durable_events AS e
    WHERE coalesce(emitted_at, waited_at, created_at) < now() - %(age)s * interval '1 second'
      AND NOT EXISTS (SELECT 1 FROM {s}.jobs AS j WHERE j.state = 'scheduled' AND j.wait_event = e.key)
    ORDER BY coalesce(emitted_at, waited_at, created_at)
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM {s}.durable_events AS e USING doomed WHERE e.key = doomed.key
"""


class StepQueries:
    """The durable steps' statements, composed once for a schema."""

    def __init__(self, schema: str) -> None:
        ident = sql.Identifier(schema)

        def q(text: str) -> bytes:
            return sql.SQL(text).format(s=ident).as_bytes(None)

        self.lock_lease = q(_SQL_LOCK_LEASE)
        self.steps = q(_SQL_STEPS)
        self.step = q(_SQL_STEP)
        self.record = q(_SQL_RECORD)
        self.record_many = q(_SQL_RECORD_MANY)
        self.wait_step = q(_SQL_WAIT_STEP)
        self.suspend = q(_SQL_SUSPEND)
        self.event_hold = q(_SQL_EVENT_HOLD)
        self.emit = q(_SQL_EMIT)
        self.wake = q(_SQL_WAKE)
        self.progress = q(_SQL_PROGRESS)
        self.prune_events = q(_SQL_PRUNE_EVENTS)
        self.progressing = q(_SQL_PROGRESSING)
        self.durable_counts = q(_SQL_DURABLE_COUNTS)


def lease_params(lease: Lease) -> dict[str, Any]:
    """The guard's parameters."""
    return {"id": lease.job_id, "attempt": lease.attempt, "worker": lease.worker_id, "lease": lease.attempted_at}


def _same(value: Any) -> Any:
    return value


def steps_from_rows(rows: list[Any]) -> list[JobStep]:
    """The job's steps from the rows of ``q.steps``."""
    return [step_from_row(r, time=_same, loads=_same) for r in rows]


def durable_overview(c: psycopg.Connection[Any], q: StepQueries, *, limit: int) -> DurableOverview:
    """Executing jobs' progress and the counts of suspended jobs (see ``Driver.durable_overview``)."""
    rows = c.execute(q.progressing, {"limit": limit}).fetchall()
    counts = c.execute(q.durable_counts).fetchone()
    assert counts is not None  # scalar subqueries always give their row
    return durable_overview_from(rows, counts, loads=_same)


def record_params(record: StepWrite) -> dict[str, Any]:
    """The parameters of ``q.record``: one run of a step, guarded by its lease (``Driver.record_steps``)."""
    error = record.error
    return {
        **lease_params(record.lease),
        "name": record.name,
        "position": record.position,
        "state": "failed" if error is not None else "completed",
        "result": record.result_json if error is None else None,
        "error": None if error is None else error_entry(error),
        "duration": record.duration,
    }


def wait_step(
    c: psycopg.Connection[Any],
    q: StepQueries,
    lease: Lease,
    *,
    name: str,
    position: int,
    event: str | None,
    delay: float | None,
    until: dt.datetime | None,
) -> WaitResult:
    """A durable wait, in the transaction of *c* (see ``Driver.wait_step``)."""
    with c.transaction():
        emitted, payload = False, None
        if event is not None:
            row = c.execute(q.event_hold, {"key": event}).fetchone()
            if row is not None:  # always: an upsert returns its row
                emitted, payload = bool(row[0]), row[1]
        held = c.execute(q.lock_lease, lease_params(lease)).fetchone()
        if held is None:
            raise _Abort(WaitResult(outcome="lost"))
        cancel_requested, now = bool(held[0]), held[1]
        if cancel_requested:
            raise _Abort(WaitResult(outcome="cancel_requested"))
        step = c.execute(q.step, {"id": lease.job_id, "name": name}).fetchone()
        plan = plan_wait(
            stored=None if step is None else step[0],
            stored_wake_at=None if step is None else step[1],
            emitted=emitted,
            event=event,
            until=until,
            delay_end=None if delay is None else now + dt.timedelta(seconds=delay),
            now=now,
        )
        if plan.write is None:  # answered as stored
            return WaitResult(outcome=plan.outcome, payload=None if step is None else step[2])
        received = plan.outcome == "received"
        params = {"id": lease.job_id, "name": name, "position": position, "attempt": lease.attempt, "event": event}
        params |= {"state": plan.write, "result": json.dumps(payload) if received else None, "wake_at": plan.wake_at}
        c.execute(q.wait_step, params)
        if plan.outcome != "suspended":
            return WaitResult(outcome=plan.outcome, payload=payload if received else None, until=plan.wake_at)
        scheduled = plan.wake_at if plan.wake_at is not None else now + dt.timedelta(seconds=FOREVER)
        c.execute(q.suspend, {"id": lease.job_id, "until": scheduled, "event": event, "name": name})
        return WaitResult(outcome="suspended", until=scheduled)


class _Abort(Exception):
    """Leave :func:`wait_step`'s transaction rolled back, with *result* as the outcome."""

    def __init__(self, result: WaitResult) -> None:
        super().__init__(result.outcome)
        self.result = result


def wait_step_or_abort(c: psycopg.Connection[Any], q: StepQueries, lease: Lease, **kwargs: Any) -> WaitResult:
    """:func:`wait_step`, with its early exits (rolled back) as outcomes."""
    try:
        return wait_step(c, q, lease, **kwargs)
    except _Abort as abort:
        return abort.result


def emit(c: psycopg.Connection[Any], q: StepQueries, key: str, payload_json: str, channel: str) -> bool:
    """Store event *key* (the first emit wins) and wake its waiters, in *c*'s transaction."""
    won = c.execute(q.emit, {"key": key, "payload": payload_json}).fetchone() is not None
    if won:
        c.execute(q.wake, {"key": key, "channel": channel})
    return won


async def emit_async(
    c: psycopg.AsyncConnection[Any], q: StepQueries, key: str, payload_json: str, channel: str
) -> bool:
    """:func:`emit` on the caller's async connection."""
    cur = await c.execute(q.emit, {"key": key, "payload": payload_json})
    won = await cur.fetchone() is not None
    if won:
        await c.execute(q.wake, {"key": key, "channel": channel})
    return won
