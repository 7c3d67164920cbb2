"""The embedded engine's durable steps: step rows, durable waits, events and progress.

The statements mirror PostgreSQL's (``postgres/_steps.py``). SQLite has one writer at a time
(``BEGIN IMMEDIATE``), so a wait, an emit and a rescue never interleave: each reads what the
others committed, and the lease guard is checked first in the same transaction as every write.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Any

from ..._models import DurableOverview, JobStep, Lease, StepWrite, WaitResult
from .._common import FOREVER, STEP_COLUMNS, durable_overview_from, error_entry, plan_wait, step_from_row
from ._time import from_us, iso, to_us

if TYPE_CHECKING:
    from ._connection import Tx

_GUARD = "id = :id AND state = 'executing' AND attempt = :attempt AND worker_id = :worker AND attempted_at IS :lease"
_SQL_LEASE = "SELECT cancel_requested_at IS NOT NULL, queue, limit_key IS NOT NULL FROM {jobs} WHERE " + _GUARD
_SQL_STEPS = "SELECT " + STEP_COLUMNS + " FROM {steps} WHERE job_id = :id ORDER BY position, name LIMIT :limit"
_SQL_STEP = "SELECT state, wake_at, result FROM {steps} WHERE job_id = :id AND name = :name"
_SQL_RECORD = """
INSERT INTO {steps} AS st (job_id, name, position, state, attempt, result, error, duration, updated_at)
VALUES (:id, :name, :position, :state, :attempt, :result, :error, :duration, :now)
ON CONFLICT (job_id, name) DO UPDATE
SET state = excluded.state, attempt = excluded.attempt, runs = st.runs + 1, result = excluded.result,
    error = excluded.error, duration = excluded.duration, updated_at = excluded.updated_at
WHERE st.state = 'failed'
RETURNING 1
"""
_SQL_WAIT_STEP = """
INSERT INTO {steps} AS st (job_id, name, position, state, attempt, result, wake_at, event, updated_at, runs)
VALUES (:id, :name, :position, :state, :attempt, :result, :wake_at, :event, :now, 0)
ON CONFLICT (job_id, name) DO UPDATE
SET state = excluded.state, attempt = excluded.attempt, result = excluded.result, wake_at = excluded.wake_at,
    event = excluded.event, updated_at = excluded.updated_at, error = NULL, duration = NULL
WHERE st.state IN ('waiting', 'failed')
"""
_SQL_SUSPEND = """
UPDATE {jobs}
SET state = 'scheduled', scheduled_at = :until, attempt = attempt - 1, worker_id = NULL,
    wait_event = :event, wait_step = :name
WHERE id = :id AND state = 'executing'
"""
_SQL_EVENT_HOLD = """
INSERT INTO {durable_events} AS e (key, created_at, waited_at) VALUES (:key, :now, :now)
ON CONFLICT (key) DO UPDATE SET waited_at = :now
RETURNING emitted_at IS NOT NULL, payload
"""
_SQL_EMIT = """
INSERT INTO {durable_events} AS e (key, payload, created_at, emitted_at) VALUES (:key, :payload, :now, :now)
ON CONFLICT (key) DO UPDATE SET payload = excluded.payload, emitted_at = excluded.emitted_at
WHERE e.emitted_at IS NULL
RETURNING 1
"""
_SQL_WAKE = """
UPDATE {jobs} SET state = 'available', scheduled_at = :now, wait_event = NULL, wait_step = NULL
WHERE state = 'scheduled' AND wait_event = :key
RETURNING queue
"""
_SQL_PROGRESS = "UPDATE {jobs} SET progress = :progress WHERE " + _GUARD
# As PostgreSQL's (postgres/_steps.py): through the partial indexes of executing, due and event-waiting jobs.
_SQL_PROGRESSING = """
SELECT id, task, queue, progress FROM {jobs}
WHERE state = 'executing' AND progress IS NOT NULL
ORDER BY id
LIMIT :limit
"""
_SQL_DURABLE_COUNTS = """
SELECT
    (SELECT count(*) FROM {jobs} WHERE state = 'executing' AND progress IS NOT NULL),
    (SELECT count(*) FROM {jobs} WHERE state = 'scheduled' AND wait_step IS NOT NULL AND wait_event IS NULL),
    (SELECT count(*) FROM {jobs} WHERE state = 'scheduled' AND wait_event IS NOT NULL)
"""
_SQL_PRUNE_EVENTS = """
DELETE FROM {durable_events} WHERE key IN (
    SELECT key FROM {durable_events} AS e
    WHERE coalesce(emitted_at, waited_at, created_at) < :before
      AND NOT EXISTS (SELECT 1 FROM {jobs} AS j WHERE j.state = 'scheduled' AND j.wait_event = e.key)
    ORDER BY coalesce(emitted_at, waited_at, created_at)
    LIMIT :limit
)
"""

#: The statements by name, composed with the other statements of the engine (``_queries.compose``).
STATEMENTS = {
    "step_lease": _SQL_LEASE,
    "steps": _SQL_STEPS,
    "step": _SQL_STEP,
    "step_record": _SQL_RECORD,
    "step_wait": _SQL_WAIT_STEP,
    "step_suspend": _SQL_SUSPEND,
    "event_hold": _SQL_EVENT_HOLD,
    "event_emit": _SQL_EMIT,
    "event_wake": _SQL_WAKE,
    "progress": _SQL_PROGRESS,
    "prune_durable_events": _SQL_PRUNE_EVENTS,
    "progressing": _SQL_PROGRESSING,
    "durable_counts": _SQL_DURABLE_COUNTS,
}


def _lease(lease: Lease) -> dict[str, Any]:
    return {
        "id": lease.job_id,
        "attempt": lease.attempt,
        "worker": lease.worker_id,
        "lease": None if lease.attempted_at is None else to_us(lease.attempted_at),
    }


def _loads(text: Any) -> Any:
    return None if text is None else json.loads(text)


def read_steps(tx: Tx, job_id: int, limit: int | None = None) -> list[JobStep]:
    """The job's steps, by position (the first *limit*, if given)."""
    rows = tx.execute("steps", {"id": job_id, "limit": -1 if limit is None else limit}).fetchall()
    return [step_from_row(r, time=from_us, loads=_loads) for r in rows]


def durable_overview(tx: Tx, *, limit: int) -> DurableOverview:
    """Executing jobs' progress and the counts of suspended jobs (see ``Driver.durable_overview``)."""
    rows = tx.execute("progressing", {"limit": limit}).fetchall()
    counts = tx.execute("durable_counts", {}).fetchone()
    return durable_overview_from(rows, counts, loads=_loads)


def record_step(tx: Tx, record: StepWrite) -> bool:
    """One run of a step, guarded by its lease (see ``Driver.record_steps``)."""
    lease, error = record.lease, record.error
    if tx.execute("step_lease", _lease(lease)).fetchone() is None:
        return False
    entry = None
    if error is not None:
        entry = json.dumps({**json.loads(error_entry(error)), "at": iso(tx.now), "attempt": lease.attempt})
    params = {
        "id": lease.job_id,
        "name": record.name,
        "position": record.position,
        "state": "failed" if error is not None else "completed",
        "attempt": lease.attempt,
        "result": record.result_json if error is None else None,
        "error": entry,
        "duration": record.duration,
        "now": tx.now,
    }
    return tx.execute("step_record", params).fetchone() is not None


def wait_step(
    tx: Tx,
    lease: Lease,
    *,
    name: str,
    position: int,
    event: str | None,
    delay: float | None,
    until: dt.datetime | None,
) -> WaitResult:
    """A durable wait, in *tx*'s transaction (see ``Driver.wait_step``)."""
    held = tx.execute("step_lease", _lease(lease)).fetchone()
    if held is None:
        return WaitResult(outcome="lost")
    if held[0]:
        return WaitResult(outcome="cancel_requested")
    now = tx.now
    emitted, payload = False, None
    if event is not None:  # as on PostgreSQL: the event's row is held (waited_at) by every wait for it
        row = tx.execute("event_hold", {"key": event, "now": now}).fetchone()
        emitted, payload = bool(row[0]), row[1]
    step = tx.execute("step", {"id": lease.job_id, "name": name}).fetchone()
    plan = plan_wait(
        stored=None if step is None else step[0],
        stored_wake_at=None if step is None else step[1],
        emitted=emitted,
        event=event,
        until=None if until is None else to_us(until),
        delay_end=None if delay is None else now + round(delay * 1_000_000),
        now=now,
    )
    if plan.write is None:  # answered as stored
        return WaitResult(outcome=plan.outcome, payload=None if step is None else _loads(step[2]))
    received = plan.outcome == "received"
    params = {"id": lease.job_id, "name": name, "position": position, "attempt": lease.attempt, "event": event}
    params |= {"state": plan.write, "result": payload if received else None, "wake_at": plan.wake_at, "now": now}
    tx.execute("step_wait", params)
    if plan.outcome != "suspended":
        until_at = from_us(plan.wake_at)
        return WaitResult(outcome=plan.outcome, payload=_loads(payload) if received else None, until=until_at)
    scheduled = plan.wake_at if plan.wake_at is not None else now + round(FOREVER * 1_000_000)
    tx.execute("step_suspend", {"id": lease.job_id, "until": scheduled, "event": event, "name": name})
    if held[2]:  # a limited job's slot is free (PostgreSQL: the trigger jobs_limited_finished)
        tx.notify_available([held[1]])
    return WaitResult(outcome="suspended", until=from_us(scheduled))


def set_progress(tx: Tx, lease: Lease, *, done: float, total: float | None, note: str | None) -> bool:
    """The job's progress, guarded by *lease*."""
    progress = json.dumps({"done": done, "total": total, "note": note, "at": iso(tx.now)})
    return bool(tx.execute("progress", {**_lease(lease), "progress": progress}).rowcount)


def emit(tx: Tx, key: str, payload_json: str) -> bool:
    """Store event *key* (the first emit wins) and wake its waiters, in *tx*'s transaction."""
    won = tx.execute("event_emit", {"key": key, "payload": payload_json, "now": tx.now}).fetchone() is not None
    if won:
        queues = [r[0] for r in tx.execute("event_wake", {"key": key, "now": tx.now}).fetchall()]
        tx.notify_available(queues)
    return won


def prune_events(tx: Tx, *, older_than: float, limit: int) -> int:
    """Delete up to *limit* events nobody needs any more (see ``Driver.prune_events``)."""
    before = tx.now - round(older_than * 1_000_000)
    return int(tx.execute("prune_durable_events", {"before": before, "limit": limit}).rowcount)
