"""The embedded engine: the driver interface on the standard library's ``sqlite3``.

One file on one host, shared by any number of processes. The semantics are PostgreSQL's (see
``_postgres.py``, which this module mirrors statement by statement); ``tests/conformance/`` runs
the same tests on both engines. How it maps:

- **Writes** run in ``BEGIN IMMEDIATE`` transactions: SQLite has one writer at a time per file, so
  a claim, a finish or a rescue sees no concurrent change between its read and its write (what
  ``FOR UPDATE SKIP LOCKED`` and the guards give on PostgreSQL). Every write that moves an
  executing job still carries PostgreSQL's guard (state, attempt, worker and lease), because the
  row may have moved in an *earlier* transaction (a rescue, a hand-back).
- **Connections**: ``sqlite3`` blocks, so every call runs in a worker thread
  (``anyio.to_thread.run_sync``, never abandoned on cancellation), on one of two connections per
  driver, each behind a lock: one for writes, one for reads (WAL mode lets reads run beside the
  writer, even in other processes). ``busy_timeout`` makes a writer wait for another process's
  transaction instead of failing.
- **Time** is the database's clock (SQLite's ``'now'``), read once at the start of each write
  transaction, as PostgreSQL's ``now()`` is, and stored as integer microseconds since the epoch
  (UTC). A claim's lease (``attempted_at``) is also made strictly greater than the row's previous
  one, since SQLite's clock ticks in milliseconds.
- **Notifications**: no LISTEN/NOTIFY. A write that would notify adds rows to the ``events``
  table in its transaction; a listener reads the rows after the last id it saw, every
  ``LISTEN_POLL`` seconds, and at once when a write of this process pokes it (a byte on a
  socket pair, so a poke from any thread or event loop wakes it).
- **Schema**: created (or upgraded) on first use, since the point of the engine is zero set-up.
  Tables are prefixed with the schema's name (``nursery_worker_jobs``), so several schemas can
  share one file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import os
import socket
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import resources
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import attrs

from .._errors import ConfigurationError, DatabaseError, JobStateError, SchemaNotReady
from .._flow import BreakerInfo, RateLimit, dependency_ids, order_graph
from .._models import (
    Completion,
    Job,
    JobError,
    JobSpec,
    LimitedClaim,
    QueueInfo,
    RescueResult,
    WorkerInfo,
    WorkerLoad,
    WorkerRow,
)
from .._periodic import PeriodicEnqueued, PeriodicEntry, PeriodicRow, PeriodicState
from .._state import ACTIVE_STATES, JobState
from . import SCHEMA_NAME, Notification, error_entry, spec_columns

logger = logging.getLogger("nursery_worker.driver")

T = TypeVar("T")

#: The SQLite schema's own versions (not PostgreSQL's); the last entry is what this code needs.
MIGRATIONS: tuple[tuple[int, str], ...] = ((1, "0001_initial.sql"), (2, "0002_flow_control.sql"))
SCHEMA_VERSION = MIGRATIONS[-1][0]

#: RETURNING arrived in SQLite 3.35.0 (2021-03).
MIN_SQLITE_VERSION = (3, 35, 0)

#: How often an idle listener looks for other processes' events (seconds). A poke from a write
#: of this process wakes it at once.
LISTEN_POLL = 0.05

#: Events older than this many seconds are deleted (a listener reads them within LISTEN_POLL).
EVENT_RETENTION = 60.0

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_US = dt.timedelta(microseconds=1)
#: The database's clock in integer microseconds. SQLite's 'now' has millisecond resolution and is
#: the same for every use within one statement.
_NOW_SQL = "(CAST(round((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER) * 1000)"
_ACTIVE = "('pending', 'scheduled', 'available', 'executing', 'retryable')"
_TERMINAL = "('completed', 'discarded', 'cancelled')"
_ACTIVE_SET = frozenset(s.value for s in ACTIVE_STATES)
_JOB_COLUMNS = (
    "id, task, queue, args, state, attempt, max_attempts, priority, scheduled_at, inserted_at, "
    "attempted_at, finished_at, errors, worker_id, result, cancel_requested_at, unique_key, retry_policy, "
    "trace_context"
)

# --- SQL -------------------------------------------------------------------------------------
# {jobs}, {workers}, {queues}, {events}, {migrations} are the prefixed, quoted table names, put in
# once per driver; every value is a bound :parameter.

_SQL_NOW = "SELECT " + _NOW_SQL

_SQL_INSERT = """
INSERT INTO {jobs} (task, queue, args, priority, max_attempts, scheduled_at, inserted_at, state,
                    unique_key, unique_states, retry_policy, trace_context, limit_key)
VALUES (:task, :queue, :args, :priority, :max_attempts, :at, :now, :state,
        :unique_key, :unique_states, :retry_policy, :trace_context, :limit_key)
RETURNING id
"""
#: From this many jobs without unique keys, an insert goes through ``executemany``.
_BULK_MIN = 50
_SQL_JOBS_SEQUENCE = "SELECT seq FROM sqlite_sequence WHERE name = '{jobs_name}'"
_SQL_COUNT_IDS = "SELECT count(*) FROM {jobs} WHERE id BETWEEN :first AND :last"
# The job holding a unique key in a spec's scope of states: a queued or running holder first, then
# the newest (as on PostgreSQL).
_SQL_UNIQUE_HOLDER = (
    "SELECT "
    + _JOB_COLUMNS
    + """ FROM {jobs}
WHERE task = :task AND unique_key = :unique_key AND state IN (SELECT value FROM json_each(:states))
ORDER BY state IN """
    + _ACTIVE
    + """ DESC, id DESC
LIMIT 1
"""
)

# fetch_guarded: available -> executing, attempt + 1, worker set, a fresh lease. The sub-select
# picks the jobs (priority, then oldest); the write lock of BEGIN IMMEDIATE keeps them available
# until the UPDATE, and the UPDATE says so again.
_SQL_FETCH = (
    """
UPDATE {jobs}
SET state = 'executing', attempt = attempt + 1, worker_id = :worker,
    attempted_at = max(:now, coalesce(attempted_at, 0) + 1)
WHERE state = 'available' AND id IN (
    SELECT id FROM {jobs}
    WHERE state = 'available' AND limit_key IS NULL AND __QUEUES__ __TASKS__
    ORDER BY priority DESC, scheduled_at, id
    LIMIT :limit
)
RETURNING """
    + _JOB_COLUMNS
)
# The fast claim serves jobs without a limit key, of queues that are neither paused nor limited (a
# queue with limits is claimed by the limited claim only), and not of the worker's limited tasks.
_HELD = "(paused OR max_concurrency IS NOT NULL OR rate_limit IS NOT NULL)"
_FETCH_ONE_QUEUE = "queue = :queue AND NOT EXISTS (SELECT 1 FROM {queues} WHERE name = :queue AND " + _HELD + ")"
_FETCH_QUEUES = "queue IN (SELECT value FROM json_each(:queues) EXCEPT SELECT name FROM {queues} WHERE " + _HELD + ")"
_NOT_TASKS = "AND task NOT IN (SELECT value FROM json_each(:limited))"


def _append_error(entry: str) -> str:
    """An error entry appended to ``errors``, keeping at most ``:cap`` (the oldest one dropped).

    The entry is stamped with the transaction's time (``:at``) and the row's attempt.
    """
    return (
        "json_insert(CASE WHEN json_array_length(errors) >= :cap THEN json_remove(errors, '$[0]') ELSE errors END, "
        f"'$[#]', json_set({entry}, '$.at', :at, '$.attempt', attempt))"
    )


# finish_guarded: only the attempt this worker is executing, under this lease, may be finished. A
# job whose cancel was requested never runs again: where it would, it becomes cancelled.
_OVERRIDE = "(cancel_requested_at IS NOT NULL AND :state IN ('available', 'retryable', 'scheduled'))"
_FINAL_STATE = "(CASE WHEN " + _OVERRIDE + " THEN 'cancelled' ELSE :state END)"
_SQL_FINISH = (
    """
UPDATE {jobs}
SET state = """
    + _FINAL_STATE
    + """,
    attempt = attempt - (CASE WHEN """
    + _OVERRIDE
    + """ THEN 0 ELSE :give_back END),
    scheduled_at = CASE WHEN :delay IS NULL THEN scheduled_at
                        ELSE :now + CAST(round(:delay * 1000000.0) AS INTEGER) END,
    finished_at = CASE WHEN """
    + _FINAL_STATE
    + " IN "
    + _TERMINAL
    + """ THEN :now END,
    worker_id = NULL,
    result = CASE WHEN :result IS NULL THEN result ELSE :result END,
    errors = CASE WHEN :error IS NOT NULL THEN """
    + _append_error("json(:error)")
    + """
                  WHEN """
    + _OVERRIDE
    + " THEN "
    + _append_error(
        "json_object('type', 'Cancelled', 'message', 'cancelled by request; the attempt ended by a shutdown "
        "or a snooze', 'traceback', '')"
    )
    + """
                  ELSE errors END
WHERE id = :id AND state = 'executing' AND attempt = :attempt AND worker_id = :worker AND attempted_at IS :lease
RETURNING id, queue, state, task, has_dependents, limit_key, json_extract(errors, '$[#-1].type')
"""
)

# promote_guarded: due scheduled/retryable -> available.
_SQL_PROMOTE = """
UPDATE {jobs} SET state = 'available'
WHERE state IN ('scheduled', 'retryable') AND id IN (
    SELECT id FROM {jobs}
    WHERE state IN ('scheduled', 'retryable') AND scheduled_at <= :now
    ORDER BY scheduled_at
    LIMIT :limit
)
RETURNING queue
"""
_SQL_PRUNE_EVENTS = "DELETE FROM {events} WHERE at < :before"

# rescue_guarded: executing on a worker with no recent heartbeat (or no row at all).
_SQL_RESCUE = (
    """
UPDATE {jobs}
SET state = CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled'
                 WHEN attempt >= max_attempts THEN 'discarded' ELSE 'retryable' END,
    scheduled_at = :now,
    finished_at = CASE WHEN cancel_requested_at IS NOT NULL OR attempt >= max_attempts THEN :now END,
    worker_id = NULL,
    errors = """
    + _append_error(
        "json_object('type', 'WorkerLost', 'message', 'worker ' || coalesce(worker_id, '?') "
        "|| ' stopped heartbeating; job rescued by ' || :rescuer, 'traceback', '')"
    )
    + """
WHERE state = 'executing' AND id IN (
    SELECT j.id FROM {jobs} AS j
    WHERE j.state = 'executing'
      AND NOT EXISTS (SELECT 1 FROM {workers} AS w WHERE w.id = j.worker_id AND w.heartbeat_at > :since)
    ORDER BY j.id
    LIMIT :limit
)
RETURNING state, id, queue, task, has_dependents, limit_key
"""
)
_SQL_DELETE_DEAD_WORKERS = "DELETE FROM {workers} WHERE heartbeat_at <= :since"

_SQL_REGISTER = """
INSERT INTO {workers} (id, hostname, pid, queues, concurrency, state, supervisor_id, child_index, restarts,
                       started_at, heartbeat_at)
VALUES (:id, :hostname, :pid, :queues, :concurrency, 'starting', :supervisor_id, :child_index, :restarts, :now, :now)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = :now
"""
_SQL_HEARTBEAT = "UPDATE {workers} SET heartbeat_at = :now WHERE id = :id"
_SQL_HEARTBEAT_LOAD = """
UPDATE {workers}
SET heartbeat_at = :now, state = :state, processed = :processed, failed = :failed, running = :running
WHERE id = :id
"""
_SQL_LIST_WORKERS = (
    """
SELECT id, hostname, pid, queues, concurrency, started_at, heartbeat_at, state, processed, failed, running,
       supervisor_id, child_index, restarts, """
    + _NOW_SQL
    + """
FROM {workers}
ORDER BY supervisor_id IS NULL, supervisor_id, child_index IS NULL, child_index, hostname, pid, id
"""
)
_SQL_DEREGISTER = "DELETE FROM {workers} WHERE id = :id"
_SQL_GET = "SELECT " + _JOB_COLUMNS + " FROM {jobs} WHERE id = :id"
_SQL_EXECUTING = (
    "SELECT id, attempt, attempted_at FROM {jobs} WHERE state = 'executing' AND worker_id = :worker "
    "AND attempted_at < " + _NOW_SQL + " - :older"
)
_SQL_QUEUE_DEPTH = """
SELECT queue, state, count(*) FROM (
    SELECT queue, state FROM {jobs} WHERE state = 'available'
    UNION ALL SELECT queue, state FROM {jobs} WHERE state IN ('scheduled', 'retryable')
    UNION ALL SELECT queue, state FROM {jobs} WHERE state = 'executing'
    UNION ALL SELECT queue, state FROM {jobs} WHERE state = 'pending'
)
GROUP BY queue, state ORDER BY 1, 2
"""

# cancel_guarded: a waiting job is cancelled at once; an executing one gets a durable request.
_SQL_CANCEL_WAITING = (
    """
UPDATE {jobs}
SET state = 'cancelled', finished_at = :now, errors = """
    + _append_error("json_object('type', 'Cancelled', 'message', 'cancelled before it ran', 'traceback', '')")
    + """
WHERE id = :id AND state IN ('pending', 'scheduled', 'available', 'retryable')
RETURNING """
    + _JOB_COLUMNS
    + ", has_dependents"
)
_SQL_CANCEL_EXECUTING = (
    """
UPDATE {jobs} SET cancel_requested_at = coalesce(cancel_requested_at, :now)
WHERE id = :id AND state = 'executing'
RETURNING """
    + _JOB_COLUMNS
)
_SQL_CANCEL_REQUESTED = (
    "SELECT id, attempt FROM {jobs} WHERE state = 'executing' AND worker_id = :worker "
    "AND cancel_requested_at IS NOT NULL"
)
# retry_guarded: the dead-letter path back to the queue, with one more attempt allowed. A job with
# dependencies waits again (pending) for those not completed; with one failed it is refused.
_SQL_RETRY = (
    """
UPDATE {jobs}
SET state = CASE WHEN :waiting > 0 THEN 'pending' ELSE 'available' END, pending_deps = :waiting,
    scheduled_at = :now, finished_at = NULL, cancel_requested_at = NULL, result = NULL,
    max_attempts = max(max_attempts, attempt + 1)
WHERE id = :id AND state IN ('discarded', 'cancelled') AND :failed = 0
RETURNING """
    + _JOB_COLUMNS
)
# The dependencies of a job, with their states (retry_job).
_SQL_PARENTS = """
SELECT p.id, p.task, p.state FROM {jobs} AS p
WHERE p.id IN (SELECT value FROM json_each(coalesce((SELECT depends_on FROM {jobs} WHERE id = :id), '[]')))
ORDER BY p.id
"""
_SQL_PRUNE = """
DELETE FROM {jobs}
WHERE state = :state AND id IN (
    SELECT id FROM {jobs} WHERE state = :state AND finished_at < :before ORDER BY finished_at LIMIT :limit
)
"""
_SQL_PAUSED = "SELECT paused FROM {queues} WHERE name = :name"
_SQL_SET_PAUSED = """
INSERT INTO {queues} AS q (name, paused, paused_at, updated_at)
VALUES (:name, :paused, CASE WHEN :paused THEN :now END, :now)
ON CONFLICT (name) DO UPDATE
SET paused = excluded.paused,
    paused_at = CASE WHEN excluded.paused THEN coalesce(q.paused_at, :now) END,
    updated_at = :now
"""
_SQL_QUEUE_NAMES = "SELECT name FROM {queues} UNION SELECT DISTINCT queue FROM {jobs}"
_SQL_QUEUE_COUNTS = """
SELECT queue, state, count(*), min(CASE WHEN state = 'available' THEN scheduled_at END)
FROM {jobs} GROUP BY queue, state
"""
_SQL_QUEUE_ROWS = "SELECT name, paused, paused_at, max_concurrency, rate_limit, rate_period FROM {queues}"
_SQL_EVENT = "INSERT INTO {events} (at, payload) VALUES (:now, :payload)"
_SQL_EVENTS_AFTER = "SELECT id, payload FROM {events} WHERE id > :after ORDER BY id LIMIT 10000"
_SQL_LAST_EVENT = "SELECT coalesce(max(id), 0) FROM {events}"
_SQL_VERSION = "SELECT max(version) FROM {migrations}"
_TABLES = ("jobs", "workers", "queues", "events", "migrations", "rate_limits", "breakers", "periodic")


# --- flow control (schema version 2; PostgreSQL's migration 6) --------------------------------
# What PostgreSQL does in triggers and in nw_claim_limited runs here as statements of the same
# BEGIN IMMEDIATE transaction as the write that causes it (the write lock serialises it all), from
# every path to a final state: a worker's outcome, a rescue, a cancel, and the cascade itself.

# One job with dependencies: mark the dependencies first (has_dependents), reading their states.
_SQL_MARK_PARENTS = """
UPDATE {jobs} SET has_dependents = 1
WHERE id IN (SELECT value FROM json_each(:deps))
RETURNING id, task, state
"""
_SQL_INSERT_DEP = """
INSERT INTO {jobs} (task, queue, args, priority, max_attempts, scheduled_at, inserted_at, state, unique_key,
                    unique_states, retry_policy, trace_context, limit_key, depends_on, pending_deps, finished_at,
                    errors)
VALUES (:task, :queue, :args, :priority, :max_attempts, :at, :now, :state, :unique_key, :unique_states,
        :retry_policy, :trace_context, :limit_key, :deps, :waiting, :finished_at, :errors)
RETURNING id
"""
# A dependency completed: each pending dependent has one fewer to wait for; the last one makes it
# available (or scheduled, if it was deferred with a delay).
_SQL_RELEASE = """
UPDATE {jobs}
SET pending_deps = pending_deps - 1,
    state = CASE WHEN pending_deps > 1 THEN 'pending' WHEN scheduled_at > :now THEN 'scheduled' ELSE 'available' END
WHERE state = 'pending' AND EXISTS (SELECT 1 FROM json_each(depends_on) WHERE value = :id)
RETURNING queue, state
"""
# A dependency was discarded or cancelled: its pending dependents are cancelled, naming it.
_SQL_DOOM = """
UPDATE {jobs}
SET state = 'cancelled', finished_at = :now, pending_deps = 0,
    errors = json_insert(errors, '$[#]', json_object('type', 'DependencyFailed', 'message', :message,
                                                     'traceback', '', 'at', :at, 'attempt', attempt))
WHERE state = 'pending' AND EXISTS (SELECT 1 FROM json_each(depends_on) WHERE value = :id)
RETURNING id, task, has_dependents
"""
# Circuit breakers count the outcomes workers write (PostgreSQL's nw_limited_finished).
_SQL_BREAKER_SUCCESS = """
UPDATE {breakers}
SET state = 'closed', failures = 0, opened_at = NULL, probe_job_id = NULL, updated_at = :now
WHERE task = :task AND (state <> 'closed' OR failures <> 0)
"""
_SQL_BREAKER_FAILURE = """
UPDATE {breakers}
SET failures = failures + 1,
    state = CASE WHEN state = 'half_open' OR failures + 1 >= threshold THEN 'open' ELSE state END,
    opened_at = CASE WHEN state = 'half_open' OR failures + 1 >= threshold THEN :now ELSE opened_at END,
    probe_job_id = NULL,
    updated_at = :now
WHERE task = :task
"""
_SQL_ADOPT = """
UPDATE {jobs} SET limit_key = ''
WHERE state = 'available' AND limit_key IS NULL AND queue IN (SELECT value FROM json_each(:queues))
  AND task IN (SELECT value FROM json_each(:tasks))
"""
# The groups with waiting limited jobs, best first: (queue, task, partition) of jobs with a limit
# key, and one group per queue with limits for its other jobs (task NULL). Each group's place is
# its best job's (priority, then age). NULL tasks sort last, as on PostgreSQL.
_SQL_LIMITED_GROUPS = """
SELECT gq, gt, gk FROM (
    SELECT queue AS gq, task AS gt, limit_key AS gk, priority AS pr, scheduled_at AS sa FROM (
        SELECT queue, task, limit_key, priority, scheduled_at,
               row_number() OVER (PARTITION BY queue, task, limit_key ORDER BY priority DESC, scheduled_at, id) AS rn
        FROM {jobs}
        WHERE state = 'available' AND limit_key IS NOT NULL AND queue IN (SELECT value FROM json_each(:queues))
    ) WHERE rn = 1
    UNION ALL
    SELECT f.queue, NULL, NULL, f.priority, f.scheduled_at FROM (
        SELECT queue, priority, scheduled_at,
               row_number() OVER (PARTITION BY queue ORDER BY priority DESC, scheduled_at, id) AS rn
        FROM {jobs}
        WHERE state = 'available' AND limit_key IS NULL AND queue IN (
            SELECT name FROM {queues}
            WHERE name IN (SELECT value FROM json_each(:queues))
              AND (max_concurrency IS NOT NULL OR rate_limit IS NOT NULL))
    ) AS f WHERE f.rn = 1
)
WHERE gq NOT IN (SELECT name FROM {queues} WHERE paused)
ORDER BY pr DESC, sa, gq, gt IS NULL, gt, gk IS NULL, gk
"""
_SQL_QUEUE_LIMITS = "SELECT max_concurrency, rate_limit, rate_period FROM {queues} WHERE name = :name"
_SQL_COUNT_QUEUE_EXECUTING = "SELECT count(*) FROM {jobs} WHERE state = 'executing' AND queue = :queue"
_SQL_COUNT_TASK_EXECUTING = """
SELECT count(*) FROM {jobs}
WHERE state = 'executing' AND limit_key IS NOT NULL AND task = :task AND limit_key = :key
"""
_SQL_RATE_TAT = "SELECT tat FROM {rate_limits} WHERE scope = :scope"
_SQL_RATE_TAKE = """
INSERT INTO {rate_limits} (scope, tat) VALUES (:scope, :now + :step)
ON CONFLICT (scope) DO UPDATE SET tat = max(tat, :now) + :step
"""
_SQL_BREAKER = "SELECT state, opened_at, cooldown, probe_job_id FROM {breakers} WHERE task = :task"
_SQL_PROBE_RUNNING = "SELECT 1 FROM {jobs} WHERE id = :id AND state = 'executing'"
_SQL_BREAKER_PROBE = """
UPDATE {breakers} SET state = 'half_open', probe_job_id = :probe, updated_at = :now WHERE task = :task
"""
_CLAIM_SET = """
UPDATE {jobs}
SET state = 'executing', attempt = attempt + 1, worker_id = :worker,
    attempted_at = max(:now, coalesce(attempted_at, 0) + 1)
WHERE state = 'available' AND id IN (
    SELECT id FROM {jobs}
    WHERE state = 'available' AND __GROUP__
    ORDER BY priority DESC, scheduled_at, id
    LIMIT :cap
)
RETURNING """
# A group of one limited task's partition.
_SQL_CLAIM_GROUP = (
    _CLAIM_SET.replace("__GROUP__", "limit_key IS NOT NULL AND queue = :queue AND task = :task AND limit_key = :key")
    + _JOB_COLUMNS
)
# A queue's jobs without task limits (those of limited tasks wait to be adopted).
_SQL_CLAIM_QUEUE = (
    _CLAIM_SET.replace(
        "__GROUP__", "limit_key IS NULL AND queue = :queue AND task NOT IN (SELECT value FROM json_each(:tasks))"
    )
    + _JOB_COLUMNS
)
_SQL_SET_LIMITS = """
INSERT INTO {queues} (name, max_concurrency, rate_limit, rate_period, updated_at)
VALUES (:name, :concurrency, :rate, :period, :now)
ON CONFLICT (name) DO UPDATE
SET max_concurrency = excluded.max_concurrency, rate_limit = excluded.rate_limit, rate_period = excluded.rate_period,
    updated_at = :now
"""
_SQL_REGISTER_BREAKER = """
INSERT INTO {breakers} (task, threshold, cooldown, updated_at) VALUES (:task, :threshold, :cooldown, :now)
ON CONFLICT (task) DO UPDATE SET threshold = excluded.threshold, cooldown = excluded.cooldown, updated_at = :now
WHERE threshold IS NOT excluded.threshold OR cooldown IS NOT excluded.cooldown
"""
_SQL_LIST_BREAKERS = (
    "SELECT task, state, failures, threshold, cooldown, opened_at, probe_job_id, "
    + _NOW_SQL
    + " FROM {breakers} ORDER BY task"
)

# --- periodic jobs (PostgreSQL's migration 7; see _periodic.py) ----------------------------------
# A new row, or one whose expression or time zone changed, is active from now: its earlier ticks
# are never enqueued.
_SQL_PERIODIC_REGISTER = """
INSERT INTO {periodic} (name, cron, timezone, task, queue, args, active_since, updated_at)
VALUES (:name, :cron, :timezone, :task, :queue, :args, :now, :now)
ON CONFLICT (name) DO UPDATE
SET active_since = CASE WHEN cron IS NOT excluded.cron OR timezone IS NOT excluded.timezone THEN :now
                        ELSE active_since END,
    cron = excluded.cron, timezone = excluded.timezone, task = excluded.task, queue = excluded.queue,
    args = excluded.args, updated_at = :now
"""
_SQL_PERIODIC_STATE = """
SELECT name, last_tick, active_since FROM {periodic} WHERE name IN (SELECT value FROM json_each(:names))
"""
# The job holding the spec's unique key in its scope of states (the newest).
_SQL_PERIODIC_HOLDER = """
SELECT id FROM {jobs}
WHERE task = :task AND unique_key = :unique_key AND state IN (SELECT value FROM json_each(:states))
ORDER BY id DESC
LIMIT 1
"""
# Exactly once per tick: the guarded update claims the tick on the schedule's row; the write lock
# makes a concurrent scheduler wait, then see last_tick = tick and change nothing. The job is
# inserted in the same transaction, only for a claimed tick, so both commit or neither.
_SQL_PERIODIC_CLAIM = """
UPDATE {periodic}
SET last_tick = :tick, last_job_id = :holder
WHERE name = :name
  AND (last_tick IS NULL OR last_tick < :tick)
  AND active_since <= :tick
  AND :tick <= :now
  AND :tick >= :now - :catch_up
RETURNING name
"""
_SQL_PERIODIC_INSERT = """
INSERT INTO {jobs} (task, queue, args, priority, max_attempts, scheduled_at, inserted_at, state, unique_key,
                    unique_states, retry_policy, limit_key)
VALUES (:task, :queue, :args, :priority, :max_attempts, :tick, :now, 'available', :unique_key, :unique_states,
        :retry_policy, :limit_key)
RETURNING id
"""
_SQL_PERIODIC_JOB = "UPDATE {periodic} SET last_job_id = :id WHERE name = :name"
_SQL_PERIODIC_LIST = """
SELECT p.name, p.cron, p.timezone, p.task, p.queue, p.args, p.active_since, p.last_tick, p.last_job_id, j.state,
       p.updated_at
FROM {periodic} AS p LEFT JOIN {jobs} AS j ON j.id = p.last_job_id
ORDER BY p.name
"""

# --- values ----------------------------------------------------------------------------------


def check_sqlite_version() -> None:
    """Refuse an SQLite library older than the engine needs.

    Raises:
        ConfigurationError: ``sqlite3.sqlite_version`` is older than 3.35.0.
    """
    if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
        needed = ".".join(map(str, MIN_SQLITE_VERSION))
        raise ConfigurationError(
            f"the embedded engine needs SQLite >= {needed} (for RETURNING), but this Python's sqlite3 module "
            f"uses SQLite {sqlite3.sqlite_version}: use a newer Python build, or PostgreSQL "
            "(set NURSERY_WORKER_DSN=postgresql://user@host/db and run `nursery-worker migrate`)"
        )


_INT64 = (-(2**63), 2**63 - 1)


def _is_id(job_id: int) -> bool:
    """Whether *job_id* can name a row (SQLite's integers are 64-bit; PostgreSQL finds no such job either)."""
    return _INT64[0] <= job_id <= _INT64[1]


def _to_us(value: dt.datetime) -> int:
    return (value - _EPOCH) // _US


def _from_us(value: int | None) -> dt.datetime | None:
    return None if value is None else _EPOCH + dt.timedelta(microseconds=value)


def _at(value: int | None) -> dt.datetime:
    moment = _from_us(value)
    assert moment is not None
    return moment


def _iso(us: int) -> str:
    return _at(us).isoformat()


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _job_from_row(row: Sequence[Any], *, duplicate: bool = False) -> Job:
    errors = tuple(
        JobError(
            attempt=int(e.get("attempt", 0)),
            at=None if e.get("at") is None else dt.datetime.fromisoformat(str(e["at"])),
            type=str(e.get("type", "")),
            message=str(e.get("message", "")),
            traceback=str(e.get("traceback", "")),
        )
        for e in (json.loads(row[12]) or ())
    )
    return Job(
        id=row[0],
        task=row[1],
        queue=row[2],
        args=json.loads(row[3]),
        state=JobState(row[4]),
        attempt=row[5],
        max_attempts=row[6],
        priority=row[7],
        scheduled_at=_at(row[8]),
        inserted_at=_from_us(row[9]),
        attempted_at=_from_us(row[10]),
        finished_at=_from_us(row[11]),
        errors=errors,
        worker_id=row[13],
        result=_loads(row[14]),
        cancel_requested_at=_from_us(row[15]),
        unique_key=row[16],
        retry_policy=_loads(row[17]),
        trace_context=_loads(row[18]),
        duplicate=duplicate,
    )


def _new_job(spec: JobSpec, job_id: int, state: str, at: int, now: int) -> Job:
    return Job(
        id=job_id,
        task=spec.task,
        queue=spec.queue,
        args=spec.args,
        state=JobState(state),
        attempt=0,
        max_attempts=spec.max_attempts,
        priority=spec.priority,
        scheduled_at=_at(at),
        inserted_at=_from_us(now),
        unique_key=spec.unique_key,
        retry_policy=spec.retry_policy,
        trace_context=spec.trace_context,
    )


# --- in-process wake-ups ---------------------------------------------------------------------

#: The write ends of the listeners of this process, by (file, schema): a write that adds events
#: pokes every listener of its file and schema, whichever driver (App) and thread made it.
_wakers: dict[tuple[str, str], set[socket.socket]] = {}
_wakers_lock = threading.Lock()


def _poke(key: tuple[str, str]) -> None:
    with _wakers_lock:
        targets = list(_wakers.get(key, ()))
    for sock in targets:
        # A full socket is awake already; a closed one belongs to a listener going away.
        with contextlib.suppress(OSError):
            sock.send(b"\0")


class _Tx:
    """One call's connection, the events it adds, and (for a write) the transaction's time."""

    def __init__(self, conn: sqlite3.Connection, q: dict[str, str]) -> None:
        self.conn = conn
        self.q = q
        self.events: list[str] = []
        self._now: int | None = None

    @property
    def now(self) -> int:
        """The database's clock, read once per transaction (PostgreSQL's ``now()``)."""
        if self._now is None:
            self._now = int(self.conn.execute(_SQL_NOW).fetchone()[0])
        return self._now

    def execute(self, name: str, params: dict[str, Any] | None = None) -> sqlite3.Cursor:
        return self.conn.execute(self.q[name], params or {})

    def notify(self, payload: str) -> None:
        self.execute("event", {"now": self.now, "payload": payload})
        self.events.append(payload)

    def notify_available(self, queues: Iterable[str]) -> None:
        """One event per queue that got available jobs, not one per row (as on PostgreSQL)."""
        for queue in sorted(set(queues)):
            self.notify(f"available:{queue}")

    def notify_finished(self, ids: Sequence[int]) -> None:
        if ids:
            text = ",".join(map(str, ids))
            self.notify("finished:" + ("*" if len(text) > 7000 else text))


class SqliteDriver:
    """The SQLite implementation of the driver interface (see ``_driver/__init__.py``).

    Args:
        path: the database file (made absolute against the current directory).
        schema: the prefix of the tables (``<schema>_jobs``, ...).
        busy_timeout: seconds a write waits for another process's transaction before failing.
        synchronous: SQLite's ``synchronous`` setting (``"full"``: a committed job survives a
            power cut; ``"normal"``: faster, it survives a crash of the process).

    Raises:
        ConfigurationError: the schema name is invalid, or the SQLite library is too old.
    """

    schema_version = SCHEMA_VERSION

    def __init__(self, path: str, *, schema: str, busy_timeout: float, synchronous: str = "full") -> None:
        check_sqlite_version()
        if not isinstance(schema, str) or not SCHEMA_NAME.match(schema):
            raise ConfigurationError(
                f"schema={schema!r} is not a valid schema name: use 1-41 lowercase letters, digits and "
                "underscores, starting with a letter or underscore (for example 'nursery_worker')"
            )
        self.schema = schema
        self.path = os.path.abspath(path)
        self._busy_timeout = busy_timeout
        self._synchronous = synchronous
        self._key = (os.path.realpath(self.path), schema)
        names = {t: f'"{schema}_{t}"' for t in _TABLES}
        names["jobs_name"] = f"{schema}_jobs"
        q: dict[str, str] = {}
        for name, text in {
            "insert": _SQL_INSERT,
            "insert_many": _SQL_INSERT.replace("RETURNING id", ""),
            "jobs_sequence": _SQL_JOBS_SEQUENCE,
            "count_ids": _SQL_COUNT_IDS,
            "unique_holder": _SQL_UNIQUE_HOLDER,
            "fetch_one": _SQL_FETCH.replace("__QUEUES__", _FETCH_ONE_QUEUE).replace("__TASKS__", ""),
            "fetch": _SQL_FETCH.replace("__QUEUES__", _FETCH_QUEUES).replace("__TASKS__", ""),
            "fetch_one_not": _SQL_FETCH.replace("__QUEUES__", _FETCH_ONE_QUEUE).replace("__TASKS__", _NOT_TASKS),
            "fetch_not": _SQL_FETCH.replace("__QUEUES__", _FETCH_QUEUES).replace("__TASKS__", _NOT_TASKS),
            "finish": _SQL_FINISH,
            "promote": _SQL_PROMOTE,
            "prune_events": _SQL_PRUNE_EVENTS,
            "rescue": _SQL_RESCUE,
            "delete_dead": _SQL_DELETE_DEAD_WORKERS,
            "register": _SQL_REGISTER,
            "heartbeat": _SQL_HEARTBEAT,
            "heartbeat_load": _SQL_HEARTBEAT_LOAD,
            "list_workers": _SQL_LIST_WORKERS,
            "deregister": _SQL_DEREGISTER,
            "get": _SQL_GET,
            "executing": _SQL_EXECUTING,
            "queue_depth": _SQL_QUEUE_DEPTH,
            "cancel_waiting": _SQL_CANCEL_WAITING,
            "cancel_executing": _SQL_CANCEL_EXECUTING,
            "cancel_requested": _SQL_CANCEL_REQUESTED,
            "retry": _SQL_RETRY,
            "parents": _SQL_PARENTS,
            "mark_parents": _SQL_MARK_PARENTS,
            "insert_dep": _SQL_INSERT_DEP,
            "release": _SQL_RELEASE,
            "doom": _SQL_DOOM,
            "breaker_success": _SQL_BREAKER_SUCCESS,
            "breaker_failure": _SQL_BREAKER_FAILURE,
            "adopt": _SQL_ADOPT,
            "limited_groups": _SQL_LIMITED_GROUPS,
            "queue_limits": _SQL_QUEUE_LIMITS,
            "count_queue_executing": _SQL_COUNT_QUEUE_EXECUTING,
            "count_task_executing": _SQL_COUNT_TASK_EXECUTING,
            "rate_tat": _SQL_RATE_TAT,
            "rate_take": _SQL_RATE_TAKE,
            "breaker": _SQL_BREAKER,
            "probe_running": _SQL_PROBE_RUNNING,
            "breaker_probe": _SQL_BREAKER_PROBE,
            "claim_group": _SQL_CLAIM_GROUP,
            "claim_queue": _SQL_CLAIM_QUEUE,
            "set_limits": _SQL_SET_LIMITS,
            "register_breaker": _SQL_REGISTER_BREAKER,
            "list_breakers": _SQL_LIST_BREAKERS,
            "periodic_register": _SQL_PERIODIC_REGISTER,
            "periodic_state": _SQL_PERIODIC_STATE,
            "periodic_holder": _SQL_PERIODIC_HOLDER,
            "periodic_claim": _SQL_PERIODIC_CLAIM,
            "periodic_insert": _SQL_PERIODIC_INSERT,
            "periodic_job": _SQL_PERIODIC_JOB,
            "periodic_list": _SQL_PERIODIC_LIST,
            "prune": _SQL_PRUNE,
            "paused": _SQL_PAUSED,
            "set_paused": _SQL_SET_PAUSED,
            "queue_names": _SQL_QUEUE_NAMES,
            "queue_counts": _SQL_QUEUE_COUNTS,
            "queue_rows": _SQL_QUEUE_ROWS,
            "event": _SQL_EVENT,
            "events_after": _SQL_EVENTS_AFTER,
            "last_event": _SQL_LAST_EVENT,
            "version": _SQL_VERSION,
        }.items():
            q[name] = text.format(**names)
        self._q = q
        self._names = names
        self._open_lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._writer_lock = threading.Lock()
        self._reader_lock = threading.Lock()
        self._schema_ready = False
        #: Called after each database call: None on success, else the error.
        self._observers: list[Callable[[Exception | None], None]] = []

    def __repr__(self) -> str:
        return f"<SqliteDriver {self.path!r} schema={self.schema!r}>"

    # --- connections --------------------------------------------------------------------------

    def _translate(self, exc: sqlite3.Error) -> Exception:
        """Turn an sqlite3 error into ours, once, at the boundary."""
        message = " ".join(str(exc).split()) or type(exc).__name__
        if "no such table" in message:
            return SchemaNotReady(
                f"the nursery-worker tables of schema {self.schema!r} are missing in {self.path}: they are created "
                "on first use; run `nursery-worker migrate` (or `await app.migrate()`) to create them again"
            )
        if "database is locked" in message or "database is busy" in message:
            return DatabaseError(
                f"the SQLite file {self.path} stayed locked by another connection for over {self._busy_timeout:g}s "
                f"(busy_timeout): {message}"
            )
        error = DatabaseError(f"SQLite error on {self.path}: {message}")
        # Only a statement refused for what it is cannot succeed when tried again; a file that
        # cannot be opened or written now (a volume not mounted yet, permissions) may be later.
        if isinstance(exc, (sqlite3.IntegrityError, sqlite3.DataError)):
            error.transient = False
        return error

    def _connect(self) -> sqlite3.Connection:
        """A new connection in WAL mode, with the busy timeout; the caller owns it."""
        try:
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            problem = " ".join(str(exc).split())
            raise DatabaseError(
                f"cannot open the SQLite file {self.path}: {problem} (does its directory exist, and is it writable?)"
            ) from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            mode = self._use_wal(conn)
            if str(mode).lower() != "wal":
                logger.warning(
                    "SQLite file %s cannot use WAL mode (journal_mode=%s): readers and the writer will block "
                    "each other",
                    self.path,
                    mode,
                )
            conn.execute(f"PRAGMA synchronous = {self._synchronous.upper()}")
            conn.execute("SELECT json('[]')")
        except sqlite3.Error as exc:
            conn.close()
            if "no such function: json" in str(exc):
                raise ConfigurationError(
                    f"this Python's SQLite {sqlite3.sqlite_version} lacks the JSON functions the embedded engine "
                    "needs: use a Python build whose SQLite has JSON1, or PostgreSQL"
                ) from None
            raise self._translate(exc) from None
        return conn

    def _use_wal(self, conn: sqlite3.Connection) -> str:
        """Switch a new file to WAL (a file keeps it); the switch needs the file to itself for a
        moment, and SQLite may answer "locked" at once instead of waiting for the busy timeout when
        another process opens the same new file at that instant, so try again until the timeout."""
        mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0])
        if mode.lower() == "wal":
            return mode
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            except sqlite3.OperationalError as exc:
                if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _connections(self) -> tuple[sqlite3.Connection, sqlite3.Connection]:
        """The writer and the reader, opened (and the schema created or upgraded) on first use."""
        writer, reader = self._writer, self._reader
        if writer is not None and reader is not None and self._schema_ready:
            return writer, reader
        with self._open_lock:
            if self._writer is None:
                self._writer = self._connect()
            if self._reader is None:
                self._reader = self._connect()
                self._reader.execute("PRAGMA query_only = 1")
            if not self._schema_ready:
                # A read first: the write lock (which a long transaction of another connection may
                # hold) is only needed when the tables are missing or older.
                with self._reader_lock:
                    current = self._current_on(self._reader)
                if not current:
                    with self._writer_lock:
                        self._migrate_on(self._writer)
                self._schema_ready = True
            return self._writer, self._reader

    def _run(self, fn: Callable[[_Tx], T], *, write: bool) -> T:
        """Run *fn* in this (worker) thread: a write in one ``BEGIN IMMEDIATE`` transaction."""
        writer, reader = self._connections()
        conn, lock = (writer, self._writer_lock) if write else (reader, self._reader_lock)
        tx = _Tx(conn, self._q)
        try:
            with lock:
                if not write:
                    return fn(tx)
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(tx)
                    if tx.events:
                        # Each write that notifies also drops old notifications: the table stays
                        # small even when only producers run (the promoter does it too).
                        tx.execute("prune_events", {"before": tx.now - round(EVENT_RETENTION * 1_000_000)})
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback(conn)
                    raise
        except sqlite3.Error as exc:
            raise self._translate(exc) from None
        if tx.events:
            _poke(self._key)
        return result

    async def _hop(self, fn: Callable[[_Tx], T], *, write: bool = True) -> T:
        # Never abandoned on cancellation: a claim whose result was thrown away would leave jobs
        # executing under a live worker. Calls are short, and busy_timeout bounds a lock wait.
        if not self._observers:
            return await anyio.to_thread.run_sync(lambda: self._run(fn, write=write))
        try:
            result = await anyio.to_thread.run_sync(lambda: self._run(fn, write=write))
        except (DatabaseError, SchemaNotReady) as exc:
            self._notify_observers(exc)
            raise
        self._notify_observers(None)
        return result

    def _notify_observers(self, error: Exception | None) -> None:
        for observer in list(self._observers):
            try:
                observer(error)
            except Exception:  # an observer (metrics) must never break a database call
                logger.exception("database observer %r failed", observer)

    def observe(self, callback: Callable[[Exception | None], None]) -> Callable[[], None]:
        self._observers.append(callback)

        def remove() -> None:
            if callback in self._observers:
                self._observers.remove(callback)

        return remove

    async def open(self) -> None:
        await anyio.to_thread.run_sync(self._connections)

    def close_sync(self) -> None:
        with self._open_lock:
            with self._writer_lock:
                writer, self._writer = self._writer, None
            with self._reader_lock:
                reader, self._reader = self._reader, None
            self._schema_ready = False
        for conn in (writer, reader):
            if conn is not None:
                conn.close()

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self.close_sync)

    # --- schema -------------------------------------------------------------------------------

    def _apply_migrations(self, conn: sqlite3.Connection) -> list[int]:
        """Apply the pending migrations on *conn*, inside the write transaction it is in."""
        applied_now: list[int] = []
        migrations = self._names["migrations"]
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {migrations} (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
            "applied_at INTEGER NOT NULL)"
        )
        applied = {int(r[0]) for r in conn.execute(f"SELECT version FROM {migrations}")}
        if applied and max(applied) > SCHEMA_VERSION:
            raise self._too_new(max(applied))
        folder = resources.files(__package__).joinpath("sqlite_migrations")
        for version, filename in MIGRATIONS:
            if version in applied:
                continue
            text = folder.joinpath(filename).read_text(encoding="utf-8")
            for statement in _statements(text.replace("{p}", f"{self.schema}_")):
                conn.execute(statement)
            conn.execute(
                f"INSERT INTO {migrations} (version, name, applied_at) VALUES (?, ?, {_NOW_SQL})",
                (version, filename),
            )
            applied_now.append(version)
        return applied_now

    def _migrate_on(self, conn: sqlite3.Connection) -> list[int]:
        """Apply the pending migrations in one ``BEGIN IMMEDIATE`` transaction (so concurrent
        processes take turns and the second finds nothing to do)."""
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                applied_now = self._apply_migrations(conn)
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
        except sqlite3.Error as exc:
            raise self._translate(exc) from None
        if applied_now:
            logger.info(
                "created the nursery-worker tables of schema %r in %s (SQLite schema version %d)",
                self.schema,
                self.path,
                SCHEMA_VERSION,
            )
        return applied_now

    def migrate_sync(self) -> list[int]:
        with self._open_lock:
            if self._writer is None:
                self._writer = self._connect()
            with self._writer_lock:
                applied = self._migrate_on(self._writer)
            self._schema_ready = True
        return applied

    async def migrate(self) -> list[int]:
        return await anyio.to_thread.run_sync(self.migrate_sync)

    async def drop_schema(self) -> None:
        def drop(tx: _Tx) -> None:
            for name in (self._names[t] for t in _TABLES):
                tx.conn.execute(f"DROP TABLE IF EXISTS {name}")
            self._schema_ready = False

        await self._hop(drop)

    def _too_new(self, version: int) -> SchemaNotReady:
        return SchemaNotReady(
            f"schema {self.schema!r} of the SQLite file {self.path} is at version {version}, newer than this "
            f"nursery-worker understands ({SCHEMA_VERSION}): upgrade nursery-worker"
        )

    async def check_schema(self) -> None:
        row = await self._hop(lambda tx: tx.execute("version").fetchone(), write=False)
        version = row[0] if row else None
        if version is None or version < SCHEMA_VERSION:
            raise SchemaNotReady(
                f"schema {self.schema!r} of the SQLite file {self.path} is at version {version or 0}, this "
                f"nursery-worker needs {SCHEMA_VERSION}: run `nursery-worker migrate` (or `await app.migrate()`)"
            )
        if version > SCHEMA_VERSION:
            raise self._too_new(version)

    # --- jobs ---------------------------------------------------------------------------------

    @staticmethod
    def _insert_params(spec: JobSpec, now: int) -> dict[str, Any]:
        if spec.scheduled_at is not None:
            at = _to_us(spec.scheduled_at)
        elif spec.delay:
            at = now + round(spec.delay * 1_000_000)
        else:
            at = now
        return {
            **spec_columns(spec),
            "at": at,
            "now": now,
            "state": "scheduled" if at > now else "available",
            "unique_key": spec.unique_key,
            "unique_states": None if spec.unique_states is None else ",".join(spec.unique_states),
        }

    def _insert_on(self, tx: _Tx, specs: Sequence[JobSpec]) -> list[Job]:
        """Insert *specs* in order in *tx*'s transaction; a unique spec whose key is taken (by a row,
        or by an earlier spec of the same call) returns the holder, marked as a duplicate."""
        if any(s.depends_on for s in specs):
            return self._insert_graph(tx, specs)
        now = tx.now
        if len(specs) >= _BULK_MIN and all(s.unique_key is None for s in specs):
            return self._insert_bulk(tx, specs, now)
        jobs: list[Job] = []
        available: set[str] = set()
        insert = tx.q["insert"]
        execute = tx.conn.execute
        for spec in specs:
            if spec.unique_key is not None:
                scope = sorted(set(spec.unique_states or ()) | _ACTIVE_SET)
                row = tx.execute(
                    "unique_holder", {"task": spec.task, "unique_key": spec.unique_key, "states": json.dumps(scope)}
                ).fetchone()
                if row is not None:
                    jobs.append(_job_from_row(row, duplicate=True))
                    continue
            params = self._insert_params(spec, now)
            job_id = int(execute(insert, params).fetchone()[0])
            if params["state"] == "available":
                available.add(spec.queue)
            jobs.append(_new_job(spec, job_id, params["state"], params["at"], now))
        tx.notify_available(available)
        return jobs

    def _insert_graph(self, tx: _Tx, specs: Sequence[JobSpec]) -> list[Job]:
        """Jobs with dependencies: the independent ones first, then the others one by one, each
        after the jobs it depends on, all in *tx*'s transaction (as ``_postgres._insert_graph``)."""
        order = order_graph(specs)
        result: list[Job | None] = [None] * len(specs)
        by_spec: dict[int, Job] = {}
        roots = [i for i in range(len(specs)) if not specs[i].depends_on]
        if roots:
            for i, job in zip(roots, self._insert_on(tx, [specs[i] for i in roots]), strict=True):
                result[i] = job
                by_spec.setdefault(id(specs[i]), job)
        for i in order:
            spec = specs[i]
            if not spec.depends_on:
                continue
            job = self._insert_dependent(tx, spec, dependency_ids(spec, by_spec))
            result[i] = job
            by_spec.setdefault(id(spec), job)
        return [job for job in result if job is not None]

    def _insert_dependent(self, tx: _Tx, spec: JobSpec, deps: list[int]) -> Job:
        """One job with dependencies: pending until they complete, or cancelled at once when one
        already failed. The write lock keeps every dependency where it is until the commit."""
        now = tx.now
        parents = {int(r[0]): (str(r[1]), str(r[2])) for r in tx.execute("mark_parents", {"deps": json.dumps(deps)})}
        missing = [d for d in deps if d not in parents]
        if missing:
            raise ConfigurationError(
                f"{spec.task}: depends_on names job(s) {missing} that do not exist (never deferred, or pruned); "
                "nothing was enqueued"
            )
        if spec.unique_key is not None:
            scope = sorted(set(spec.unique_states or ()) | _ACTIVE_SET)
            row = tx.execute(
                "unique_holder", {"task": spec.task, "unique_key": spec.unique_key, "states": json.dumps(scope)}
            ).fetchone()
            if row is not None:
                return _job_from_row(row, duplicate=True)
        params = self._insert_params(spec, now)
        failed = sorted(d for d, (_, state) in parents.items() if state in ("discarded", "cancelled"))
        waiting = sum(1 for _, state in parents.values() if state != "completed")
        errors = "[]"
        finished_at = None
        if failed:
            task, state = parents[failed[0]]
            message = f"dependency {failed[0]} ({task}) was {state}, so this job will not run"
            entry = {"type": "DependencyFailed", "message": message, "traceback": "", "at": _iso(now), "attempt": 0}
            errors = json.dumps([entry])
            finished_at = now
            params["state"] = "cancelled"
        elif waiting:
            params["state"] = "pending"
        params.update(deps=json.dumps(deps), waiting=waiting, errors=errors, finished_at=finished_at)
        job_id = int(tx.execute("insert_dep", params).fetchone()[0])
        if params["state"] == "cancelled":
            row = tx.execute("get", {"id": job_id}).fetchone()
            return _job_from_row(row)
        if params["state"] == "available":
            tx.notify(f"available:{spec.queue}")
        return _new_job(spec, job_id, params["state"], params["at"], now)

    def _settle(self, tx: _Tx, finished: Iterable[tuple[int, str, str]]) -> None:
        """Release or cancel the pending dependents of jobs that reached a final state in *tx*
        ((id, task, state) of jobs with dependents), and theirs in turn (PostgreSQL's trigger
        ``nw_release_dependents``). Called on every path to a final state."""
        work = deque(finished)
        at = _iso(tx.now)
        while work:
            job_id, task, state = work.popleft()
            if state == "completed":
                released = tx.execute("release", {"id": job_id, "now": tx.now}).fetchall()
                tx.notify_available(str(r[0]) for r in released if r[1] == "available")
                continue
            message = f"dependency {job_id} ({task}) was {state}, so this job will not run"
            doomed = tx.execute("doom", {"id": job_id, "now": tx.now, "at": at, "message": message}).fetchall()
            tx.notify_finished([int(r[0]) for r in doomed])
            work.extend((int(r[0]), str(r[1]), "cancelled") for r in doomed if r[2])

    def _insert_bulk(self, tx: _Tx, specs: Sequence[JobSpec], now: int) -> list[Job]:
        """Many jobs with one prepared statement (``executemany``: a third faster than a row at a
        time with RETURNING, which ``executemany`` cannot return).

        The ids are known without RETURNING: AUTOINCREMENT gives each new row one more than the
        largest id the table ever had, and the write lock of this transaction keeps every other
        writer out, so the rows got the ``len(specs)`` ids ending at the table's sequence, in order.
        """
        rows = [self._insert_params(spec, now) for spec in specs]
        tx.conn.executemany(tx.q["insert_many"], rows)
        last = int(tx.execute("jobs_sequence").fetchone()[0])
        first = last - len(specs) + 1
        if tx.execute("count_ids", {"first": first, "last": last}).fetchone()[0] != len(specs):
            raise DatabaseError(f"the ids of {len(specs)} inserted jobs are not {first}..{last}; nothing was inserted")
        tx.notify_available({p["queue"] for p in rows if p["state"] == "available"})
        return [
            _new_job(spec, first + i, p["state"], p["at"], now)
            for i, (spec, p) in enumerate(zip(specs, rows, strict=True))
        ]

    def _check_connection(self, connection: Any) -> sqlite3.Connection:
        """Accept a ``sqlite3.Connection`` to this very file; refuse anything else, naming why."""
        if type(connection).__module__.split(".")[0] == "psycopg":
            raise ConfigurationError(
                "connection= is a psycopg connection, but this app uses the embedded SQLite engine "
                f"({self.path}): enqueueing inside a PostgreSQL transaction needs the PostgreSQL engine "
                "(App(dsn='postgresql://...') or NURSERY_WORKER_DSN). With SQLite, pass a sqlite3.Connection "
                "to the same file instead"
            )
        if not isinstance(connection, sqlite3.Connection):
            raise TypeError(
                f"connection= must be a sqlite3.Connection to {self.path} with the embedded engine, "
                f"got {type(connection).__name__}"
            )
        try:
            files = [row[2] for row in connection.execute("PRAGMA database_list") if row[1] == "main"]
        except sqlite3.Error as exc:
            raise self._translate(exc) from None
        main = files[0] if files else ""
        if not main or not _same_file(main, self.path):
            raise ConfigurationError(
                f"connection= is a sqlite3.Connection to {main or 'an in-memory database'!r}, not to this app's "
                f"file {self.path}: a job can only join a transaction on the file that holds the jobs"
            )
        return connection

    def _insert_on_connection(self, connection: Any, specs: Sequence[JobSpec]) -> list[Job]:
        """Insert in the caller's transaction on their own connection (their commit or rollback decides).

        A connection outside a transaction gets one: ``BEGIN IMMEDIATE`` left open for the caller to
        commit (as sqlite3 itself would begin one before an INSERT), or, in autocommit mode, committed
        here. A savepoint makes the insert all or nothing within the caller's transaction. Nothing
        here uses the driver's own connections: the caller's transaction may hold the write lock
        they would wait for. Missing tables are created in the caller's transaction.
        """
        conn = self._check_connection(connection)
        autocommit = getattr(conn, "autocommit", None) is True or conn.isolation_level is None
        tx = _Tx(conn, self._q)
        try:
            own = not conn.in_transaction
            if own:
                conn.execute("BEGIN IMMEDIATE")
            conn.execute("SAVEPOINT nursery_worker_insert")
            try:
                if not self._current_on(conn):
                    self._apply_migrations(conn)
                jobs = self._insert_on(tx, specs)
            except BaseException:
                if own:  # the transaction is ours alone: nothing of the caller's is in it
                    _rollback(conn)
                else:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK TO nursery_worker_insert")
                        conn.execute("RELEASE nursery_worker_insert")
                raise
            conn.execute("RELEASE nursery_worker_insert")
            if own and autocommit:
                conn.execute("COMMIT")
                _poke(self._key)
        except sqlite3.Error as exc:
            raise self._translate(exc) from None
        return jobs

    def _current_on(self, conn: sqlite3.Connection) -> bool:
        """Whether *conn*'s file has this schema's tables at this code's version."""
        try:
            row = conn.execute(self._q["version"]).fetchone()
        except sqlite3.OperationalError:
            return False  # no migrations table yet
        return bool(row is not None and row[0] == SCHEMA_VERSION)

    def insert_jobs_sync(self, specs: Sequence[JobSpec], *, connection: Any = None) -> list[Job]:
        if not specs:
            return []
        if connection is not None:
            return self._insert_on_connection(connection, specs)
        return self._run(lambda tx: self._insert_on(tx, specs), write=True)

    async def insert_jobs(self, specs: Sequence[JobSpec], *, connection: Any = None) -> list[Job]:
        if not specs:
            return []
        if connection is not None:
            # The caller's connection belongs to the caller's thread (sqlite3 enforces it by
            # default), where their own statements on it run too.
            return self._insert_on_connection(connection, specs)
        return await self._hop(lambda tx: self._insert_on(tx, specs))

    async def get_job(self, job_id: int) -> Job | None:
        if not _is_id(job_id):
            return None
        row = await self._hop(lambda tx: tx.execute("get", {"id": job_id}).fetchone(), write=False)
        return None if row is None else _job_from_row(row)

    async def fetch_jobs(
        self, *, worker_id: str, queues: Sequence[str], limit: int, exclude_tasks: Sequence[str] = ()
    ) -> list[Job]:
        suffix = "_not" if exclude_tasks else ""

        def fetch(tx: _Tx) -> list[Any]:
            params: dict[str, Any] = {"limit": limit, "worker": worker_id, "now": tx.now}
            if exclude_tasks:
                params["limited"] = json.dumps(list(exclude_tasks))
            if len(queues) == 1:
                params["queue"] = queues[0]
                return tx.execute("fetch_one" + suffix, params).fetchall()
            params["queues"] = json.dumps(list(queues))
            return tx.execute("fetch" + suffix, params).fetchall()

        rows = await self._hop(fetch)
        jobs = [_job_from_row(r) for r in rows]
        jobs.sort(key=lambda j: (-j.priority, j.scheduled_at, j.id))
        return jobs

    async def finish_jobs(self, *, worker_id: str, completions: Sequence[Completion], error_cap: int) -> int:
        if not completions:
            return 0

        def finish(tx: _Tx) -> int:
            now = tx.now
            at = _iso(now)
            statement = tx.q["finish"]
            changed = 0
            available: set[str] = set()
            finished: list[int] = []
            settled: list[tuple[int, str, str]] = []
            for c in completions:
                row = tx.conn.execute(
                    statement,
                    {
                        "id": c.job_id,
                        "attempt": c.attempt,
                        "lease": None if c.attempted_at is None else _to_us(c.attempted_at),
                        "state": c.transition.state.value,
                        "delay": c.transition.delay,
                        "error": None if c.transition.error is None else error_entry(c.transition.error),
                        "give_back": int(c.transition.give_back_attempt),
                        "result": c.result_json,
                        "worker": worker_id,
                        "cap": error_cap,
                        "now": now,
                        "at": at,
                    },
                ).fetchone()
                if row is None:
                    continue
                changed += 1
                job_id, queue, state, task, has_dependents, limit_key, last_error = row
                if state == "available":
                    available.add(queue)
                elif JobState(state).is_terminal:
                    finished.append(int(job_id))
                    if has_dependents:
                        settled.append((int(job_id), task, state))
                if limit_key is not None:
                    self._limited_finished(tx, task, state, last_error)
                    available.add(queue)
            tx.notify_available(available)
            tx.notify_finished(finished)
            self._settle(tx, settled)
            return changed

        return await self._hop(finish)

    # --- workers and maintenance --------------------------------------------------------------

    @staticmethod
    def _worker_params(info: WorkerInfo, now: int) -> dict[str, Any]:
        return {
            "id": info.id,
            "hostname": info.hostname,
            "pid": info.pid,
            "queues": json.dumps(list(info.queues)),
            "concurrency": info.concurrency,
            "supervisor_id": info.supervisor_id,
            "child_index": info.child_index,
            "restarts": info.restarts,
            "now": now,
        }

    async def register_worker(self, info: WorkerInfo) -> None:
        await self._hop(lambda tx: tx.execute("register", self._worker_params(info, tx.now)))

    async def heartbeat(self, info: WorkerInfo, load: WorkerLoad | None = None) -> bool:
        def beat(tx: _Tx) -> bool:
            if load is None:
                updated = tx.execute("heartbeat", {"id": info.id, "now": tx.now}).rowcount
            else:
                updated = tx.execute("heartbeat_load", {"id": info.id, "now": tx.now, **attrs.asdict(load)}).rowcount
            if updated:
                return True
            tx.execute("register", self._worker_params(info, tx.now))
            if load is not None:
                tx.execute("heartbeat_load", {"id": info.id, "now": tx.now, **attrs.asdict(load)})
            return False

        return await self._hop(beat)

    async def deregister_worker(self, worker_id: str) -> None:
        await self._hop(lambda tx: tx.execute("deregister", {"id": worker_id}))

    async def promote_due(self, *, limit: int) -> int:
        def promote(tx: _Tx) -> int:
            queues = [r[0] for r in tx.execute("promote", {"now": tx.now, "limit": limit}).fetchall()]
            tx.notify_available(queues)
            tx.execute("prune_events", {"before": tx.now - round(EVENT_RETENTION * 1_000_000)})
            return len(queues)

        return await self._hop(promote)

    async def rescue_orphans(self, *, rescuer_id: str, rescue_after: float, limit: int, error_cap: int) -> RescueResult:
        def rescue(tx: _Tx) -> RescueResult:
            since = tx.now - round(rescue_after * 1_000_000)
            params = {"now": tx.now, "at": _iso(tx.now), "since": since, "limit": limit, "rescuer": rescuer_id}
            rows = tx.execute("rescue", {**params, "cap": error_cap}).fetchall()
            states = [r[0] for r in rows]
            # Like PostgreSQL's triggers: a limited job's slot is free (a rescue, a WorkerLost, does
            # not count for a breaker), and a job that failed for good cancels its dependents.
            tx.notify_available(r[2] for r in rows if r[5] is not None)
            self._settle(tx, [(int(r[1]), r[3], r[0]) for r in rows if r[4] and r[0] in ("discarded", "cancelled")])
            removed = tx.execute("delete_dead", {"since": since}).rowcount
            return RescueResult(
                retryable=states.count("retryable"),
                discarded=states.count("discarded"),
                cancelled=states.count("cancelled"),
                workers_removed=removed,
            )

        return await self._hop(rescue)

    async def executing_ids(self, *, worker_id: str, older_than: float) -> list[tuple[int, int, dt.datetime | None]]:
        params = {"worker": worker_id, "older": round(older_than * 1_000_000)}
        rows = await self._hop(lambda tx: tx.execute("executing", params).fetchall(), write=False)
        return [(int(r[0]), int(r[1]), _from_us(r[2])) for r in rows]

    # --- job control --------------------------------------------------------------------------

    async def cancel_job(self, job_id: int, *, error_cap: int) -> tuple[Job, str] | None:
        if not _is_id(job_id):
            return None

        def cancel(tx: _Tx) -> tuple[Job, str] | None:
            # One transaction: the job cannot move between the steps.
            params = {"id": job_id, "now": tx.now, "at": _iso(tx.now), "cap": error_cap}
            row = tx.execute("cancel_waiting", params).fetchone()
            if row is not None:
                tx.notify(f"finished:{job_id}")
                if row[19]:
                    self._settle(tx, [(job_id, str(row[1]), "cancelled")])
                return _job_from_row(row), "cancelled"
            row = tx.execute("cancel_executing", {"id": job_id, "now": tx.now}).fetchone()
            if row is not None:
                tx.notify(f"cancel:{job_id}")
                return _job_from_row(row), "requested"
            row = tx.execute("get", {"id": job_id}).fetchone()
            return None if row is None else (_job_from_row(row), "already_finished")

        return await self._hop(cancel)

    async def cancel_requested(self, *, worker_id: str) -> list[tuple[int, int]]:
        rows = await self._hop(lambda tx: tx.execute("cancel_requested", {"worker": worker_id}).fetchall(), write=False)
        return [(int(r[0]), int(r[1])) for r in rows]

    async def retry_job(self, job_id: int) -> Job | None:
        if not _is_id(job_id):
            return None

        def retry(tx: _Tx) -> Job | None:
            parents = tx.execute("parents", {"id": job_id}).fetchall()
            waiting = sum(1 for p in parents if p[2] != "completed")
            failed = [p for p in parents if p[2] in ("discarded", "cancelled")]
            params = {"id": job_id, "now": tx.now, "waiting": waiting, "failed": len(failed)}
            try:
                row = tx.execute("retry", params).fetchone()
            except sqlite3.IntegrityError as exc:
                if "UNIQUE" not in str(exc):
                    raise
                raise JobStateError(
                    f"job {job_id} cannot be retried: another job of its task with the same unique key is queued or "
                    "running; cancel that one first, or wait for it to finish"
                ) from None
            if row is None:
                if failed:
                    names = ", ".join(f"{p[0]} ({p[1]}, {p[2]})" for p in failed)
                    raise JobStateError(
                        f"job {job_id} cannot be retried: it depends on job(s) that did not complete: {names}; "
                        "retry those first"
                    )
                return None
            job = _job_from_row(row)
            if waiting == 0:
                tx.notify(f"available:{job.queue}")
            return job

        return await self._hop(retry)

    async def list_jobs(
        self,
        *,
        states: Sequence[str] | None,
        queue: str | None,
        task: str | None,
        limit: int,
        before_id: int | None = None,
    ) -> list[Job]:
        where: list[str] = []
        params: dict[str, Any] = {"limit": limit}
        if states is not None:
            where.append("state IN (SELECT value FROM json_each(:states))")
            params["states"] = json.dumps(list(states))
        if queue is not None:
            where.append("queue = :queue")
            params["queue"] = queue
        if task is not None:
            where.append("task = :task")
            params["task"] = task
        if before_id is not None:
            where.append("id < :before")
            params["before"] = min(max(before_id, _INT64[0]), _INT64[1])
        query = (
            f"SELECT {_JOB_COLUMNS} FROM {self._names['jobs']} "
            + ("WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY id DESC LIMIT :limit"
        )
        rows = await self._hop(lambda tx: tx.conn.execute(query, params).fetchall(), write=False)
        return [_job_from_row(r) for r in rows]

    async def prune_jobs(self, *, state: str, older_than: float, limit: int) -> int:
        def prune(tx: _Tx) -> int:
            before = tx.now - round(older_than * 1_000_000)
            return int(tx.execute("prune", {"state": state, "before": before, "limit": limit}).rowcount)

        return await self._hop(prune)

    async def queue_depth(self) -> list[tuple[str, str, int]]:
        rows = await self._hop(lambda tx: tx.execute("queue_depth").fetchall(), write=False)
        return [(str(r[0]), str(r[1]), int(r[2])) for r in rows]

    async def list_workers(self) -> list[WorkerRow]:
        rows = await self._hop(lambda tx: tx.execute("list_workers").fetchall(), write=False)
        return [
            WorkerRow(
                id=r[0],
                hostname=r[1],
                pid=r[2],
                queues=tuple(json.loads(r[3])),
                concurrency=r[4],
                started_at=_at(r[5]),
                heartbeat_at=_at(r[6]),
                state=r[7],
                processed=r[8],
                failed=r[9],
                running=r[10],
                supervisor_id=r[11],
                child_index=r[12],
                restarts=r[13],
                now=_at(r[14]),
            )
            for r in rows
        ]

    async def set_queue_paused(self, name: str, *, paused: bool) -> bool:
        def set_paused(tx: _Tx) -> bool:
            row = tx.execute("paused", {"name": name}).fetchone()
            before = bool(row[0]) if row is not None else False
            tx.execute("set_paused", {"name": name, "paused": int(paused), "now": tx.now})
            if not paused:
                tx.notify(f"available:{name}")
            return before != paused

        return await self._hop(set_paused)

    async def list_queues(self, name: str | None = None) -> list[QueueInfo]:
        def read(tx: _Tx) -> list[QueueInfo]:
            # One read transaction, so the counts, the pause flags and the clock agree.
            tx.conn.execute("BEGIN")
            try:
                names = sorted(str(r[0]) for r in tx.execute("queue_names"))
                counts: dict[str, dict[str, int]] = {}
                oldest: dict[str, int] = {}
                for queue, state, n, first in tx.execute("queue_counts"):
                    counts.setdefault(queue, {})[state] = int(n)
                    if first is not None:
                        oldest[queue] = first
                rows = {str(r[0]): r for r in tx.execute("queue_rows")}
                now = int(tx.conn.execute(_SQL_NOW).fetchone()[0])
            finally:
                tx.conn.execute("COMMIT")
            none = (None, False, None, None, None, None)
            return [
                QueueInfo(
                    name=queue,
                    paused=bool(rows.get(queue, none)[1]),
                    paused_at=_from_us(rows.get(queue, none)[2]),
                    counts=counts.get(queue, {}),
                    oldest_available_at=_from_us(oldest.get(queue)),
                    now=_at(now),
                    max_concurrency=rows.get(queue, none)[3],
                    rate_limit=None
                    if rows.get(queue, none)[4] is None
                    else str(RateLimit(count=rows[queue][4], period=rows[queue][5])),
                )
                for queue in names
                if name is None or queue == name
            ]

        return await self._hop(read, write=False)

    # --- flow control: limits and circuit breakers (PostgreSQL's nw_claim_limited) -------------

    @staticmethod
    def _limited_finished(tx: _Tx, task: str, state: str, last_error: str | None) -> None:
        """A limited job left executing by a worker's outcome: a success closes its task's
        breaker; a failure (retryable or discarded; not a rescue, a snooze, a release or a cancel)
        counts towards opening it, and a failed probe opens it again at once."""
        if state == "completed":
            tx.execute("breaker_success", {"task": task, "now": tx.now})
        elif state in ("retryable", "discarded") and (last_error or "") not in ("WorkerLost", "Cancelled"):
            tx.execute("breaker_failure", {"task": task, "now": tx.now})

    @staticmethod
    def _rate_room(tx: _Tx, scope: str, count: int, period: float) -> tuple[int, float | None]:
        """How many jobs of a rate-limited scope may start now, and in how many seconds the next
        may when none can (PostgreSQL's ``nw_rate_room``: GCRA, bursts above 50 per second)."""
        slot = period / count
        burst = max(1, math.floor(count * 0.02 / period))
        row = tx.execute("rate_tat", {"scope": scope}).fetchone()
        tat = tx.now if row is None else int(row[0])
        ahead = max(0.0, (tat - tx.now) / 1_000_000)
        room = max(0, burst - math.ceil(ahead / slot - 1e-9))
        return room, None if room > 0 else max(0.001, ahead - (burst - 1) * slot)

    @staticmethod
    def _rate_take(tx: _Tx, scope: str, count: int, period: float, n: int) -> None:
        """Take *n* slots of a scope that :meth:`_rate_room` allowed (PostgreSQL's ``nw_rate_take``)."""
        step = round(n * period / count * 1_000_000)
        tx.execute("rate_take", {"scope": scope, "now": tx.now, "step": step})

    def _claim_limited(
        self, tx: _Tx, worker_id: str, queues: Sequence[str], limit: int, config: Mapping[str, Any], adopt: bool
    ) -> LimitedClaim:
        """The limited claim, group by group, best group first; the write lock of the transaction
        keeps the counts it reads true until it commits, so two workers never overshoot."""
        now = tx.now
        queues_json = json.dumps(list(queues))
        tasks_json = json.dumps(list(config))
        if adopt and config:
            tx.execute("adopt", {"queues": queues_json, "tasks": tasks_json})
        groups = tx.execute("limited_groups", {"queues": queues_json}).fetchall()
        claimed: list[Job] = []
        wake: float | None = None
        held: set[str] = set()

        def sooner(seconds: float) -> None:
            nonlocal wake
            wake = seconds if wake is None else min(wake, seconds)

        for queue, task, key in groups:
            cap = limit - len(claimed)
            probe = False
            cfg = None if task is None else config.get(task)
            # A limited task this worker does not know the limits of: leave its jobs to one that does.
            if key is not None and cfg is None:
                continue
            limits = tx.execute("queue_limits", {"name": queue}).fetchone()
            qc, qr, qp = (None, None, 0.0) if limits is None else (limits[0], limits[1], float(limits[2] or 0))
            if qc is not None:
                running = int(tx.execute("count_queue_executing", {"queue": queue}).fetchone()[0])
                cap = min(cap, qc - running)
            if qr is not None:
                room, wait = self._rate_room(tx, f"q:{queue}", int(qr), qp)
                cap = min(cap, room)
                if wait is not None:
                    sooner(wait)
            if cfg is not None and "c" in cfg:
                params = {"task": task, "key": key or ""}
                running = int(tx.execute("count_task_executing", params).fetchone()[0])
                cap = min(cap, int(cfg["c"]) - running)
            scope = f"t:{task}:{key or ''}"
            if cfg is not None and "r" in cfg:
                room, wait = self._rate_room(tx, scope, int(cfg["r"]), float(cfg["p"]))
                cap = min(cap, room)
                if wait is not None:
                    sooner(wait)
            if cfg is not None and "b" in cfg and cap > 0:
                breaker = tx.execute("breaker", {"task": task}).fetchone()
                if breaker is not None and breaker[0] == "open":
                    reopens = breaker[1] + round(breaker[2] * 1_000_000)
                    if reopens > now:
                        cap = 0
                        sooner((reopens - now) / 1_000_000)
                        held.add(task)
                    else:
                        probe, cap = True, 1
                elif breaker is not None and breaker[0] == "half_open":
                    if tx.execute("probe_running", {"id": breaker[3]}).fetchone() is not None:
                        cap = 0
                    else:
                        probe, cap = True, 1
            if cap > 0:
                params = {"worker": worker_id, "now": now, "queue": queue, "cap": cap}
                if key is None:
                    rows = tx.execute("claim_queue", {**params, "tasks": tasks_json}).fetchall()
                else:
                    rows = tx.execute("claim_group", {**params, "task": task, "key": key}).fetchall()
                got = len(rows)
                if got:
                    jobs = [_job_from_row(r) for r in rows]
                    claimed.extend(jobs)
                    # The slots taken; and come back when the next one opens, in case more jobs wait.
                    if qr is not None:
                        self._rate_take(tx, f"q:{queue}", int(qr), qp, got)
                        sooner(qp / int(qr) * got)
                    if cfg is not None and "r" in cfg:
                        self._rate_take(tx, scope, int(cfg["r"]), float(cfg["p"]), got)
                        sooner(float(cfg["p"]) / int(cfg["r"]) * got)
                    if probe:
                        tx.execute("breaker_probe", {"task": task, "probe": jobs[-1].id, "now": now})
            if len(claimed) >= limit:
                break
        claimed.sort(key=lambda j: (-j.priority, j.scheduled_at, j.id))
        return LimitedClaim(
            jobs=tuple(claimed), wake=None if wake is None else max(wake, 0.001), breakers_open=tuple(sorted(held))
        )

    async def fetch_limited(
        self,
        *,
        worker_id: str,
        queues: Sequence[str],
        limit: int,
        config: Mapping[str, Any],
        adopt: bool = False,
    ) -> LimitedClaim:
        return await self._hop(lambda tx: self._claim_limited(tx, worker_id, queues, limit, config, adopt))

    async def set_queue_limits(self, name: str, *, max_concurrency: int | None, rate: RateLimit | None) -> None:
        def set_limits(tx: _Tx) -> None:
            params = {
                "name": name,
                "concurrency": max_concurrency,
                "rate": None if rate is None else rate.count,
                "period": None if rate is None else rate.period,
                "now": tx.now,
            }
            tx.execute("set_limits", params)
            tx.notify(f"available:{name}")

        await self._hop(set_limits)

    async def register_breakers(self, breakers: Sequence[tuple[str, int, float]]) -> None:
        if not breakers:
            return

        def register(tx: _Tx) -> None:
            for task, threshold, cooldown in breakers:
                tx.execute(
                    "register_breaker", {"task": task, "threshold": threshold, "cooldown": cooldown, "now": tx.now}
                )

        await self._hop(register)

    async def list_breakers(self) -> list[BreakerInfo]:
        rows = await self._hop(lambda tx: tx.execute("list_breakers").fetchall(), write=False)
        return [
            BreakerInfo(
                task=r[0],
                state=r[1],
                failures=r[2],
                threshold=r[3],
                cooldown=r[4],
                opened_at=_from_us(r[5]),
                probe_job_id=r[6],
                now=_at(r[7]),
            )
            for r in rows
        ]

    # --- periodic jobs (see _periodic.py) -----------------------------------------------------

    async def register_periodic(self, entries: Sequence[PeriodicEntry]) -> None:
        if not entries:
            return

        def register(tx: _Tx) -> None:
            for e in entries:
                params = {
                    "name": e.name,
                    "cron": e.cron,
                    "timezone": e.timezone,
                    "task": e.task,
                    "queue": e.queue,
                    "args": e.args_json,
                    "now": tx.now,
                }
                tx.execute("periodic_register", params)

        await self._hop(register)

    async def periodic_state(self, names: Sequence[str]) -> tuple[dt.datetime, dict[str, PeriodicState]]:
        def read(tx: _Tx) -> tuple[int, list[Any]]:
            # One read transaction, so the clock and the rows agree.
            tx.conn.execute("BEGIN")
            try:
                rows = tx.execute("periodic_state", {"names": json.dumps(list(names))}).fetchall()
                now = int(tx.conn.execute(_SQL_NOW).fetchone()[0])
            finally:
                tx.conn.execute("COMMIT")
            return now, rows

        now, rows = await self._hop(read, write=False)
        states = {str(r[0]): PeriodicState(last_tick=_from_us(r[1]), active_since=_at(r[2])) for r in rows}
        return _at(now), states

    async def enqueue_periodic(
        self, *, name: str, tick: dt.datetime, catch_up: float, spec: JobSpec
    ) -> PeriodicEnqueued | None:
        def enqueue(tx: _Tx) -> PeriodicEnqueued | None:
            # One transaction under the write lock: the guarded claim of the tick and the job's
            # insert commit together or not at all, and a concurrent scheduler waits, then finds
            # the tick taken.
            holder = None
            if spec.unique_key is not None:
                params: dict[str, Any] = {
                    "task": spec.task,
                    "unique_key": spec.unique_key,
                    "states": json.dumps(list(spec.unique_states or ())),
                }
                row = tx.execute("periodic_holder", params).fetchone()
                holder = None if row is None else int(row[0])
            tick_us = _to_us(tick)
            claim = {
                "name": name,
                "tick": tick_us,
                "holder": holder,
                "now": tx.now,
                "catch_up": round(catch_up * 1_000_000),
            }
            if tx.execute("periodic_claim", claim).fetchone() is None:
                return None
            if holder is not None:
                return PeriodicEnqueued(job_id=holder, held=True)
            params = {
                "task": spec.task,
                "queue": spec.queue,
                "args": spec.args_json,
                "priority": spec.priority,
                "max_attempts": spec.max_attempts,
                "tick": tick_us,
                "now": tx.now,
                "unique_key": spec.unique_key,
                "unique_states": None if spec.unique_states is None else ",".join(spec.unique_states),
                "retry_policy": None if spec.retry_policy is None else json.dumps(spec.retry_policy),
                "limit_key": spec.limit_key,
            }
            job_id = int(tx.execute("periodic_insert", params).fetchone()[0])
            tx.execute("periodic_job", {"id": job_id, "name": name})
            tx.notify(f"available:{spec.queue}")
            return PeriodicEnqueued(job_id=job_id)

        return await self._hop(enqueue)

    async def list_periodic(self) -> tuple[dt.datetime, list[PeriodicRow]]:
        def read(tx: _Tx) -> tuple[int, list[Any]]:
            tx.conn.execute("BEGIN")
            try:
                rows = tx.execute("periodic_list").fetchall()
                now = int(tx.conn.execute(_SQL_NOW).fetchone()[0])
            finally:
                tx.conn.execute("COMMIT")
            return now, rows

        now, rows = await self._hop(read, write=False)
        return _at(now), [
            PeriodicRow(
                name=r[0],
                cron=r[1],
                timezone=r[2],
                task=r[3],
                queue=r[4],
                args=json.loads(r[5]),
                active_since=_at(r[6]),
                last_tick=_from_us(r[7]),
                last_job_id=r[8],
                last_job_state=r[9],
                updated_at=_at(r[10]),
            )
            for r in rows
        ]

    def listener(self) -> SqliteListener:
        return SqliteListener(self)


class SqliteListener:
    """The embedded engine's LISTEN: reads the events table after the last id seen.

    It reads every :data:`LISTEN_POLL` seconds, and at once when a write of this process (any
    driver on the same file and schema, any thread) pokes its socket pair. Waiting on the socket
    is an ordinary checkpoint on trio and asyncio alike, so cancelling a wait is instant.
    """

    def __init__(self, driver: SqliteDriver) -> None:
        self._driver = driver
        self._last: int | None = None
        self._socks: tuple[socket.socket, socket.socket] | None = None

    async def connect(self) -> None:
        await self.aclose()
        # Registered before the last id is read: an event committed meanwhile is either at or
        # before that id (skipped, as LISTEN skips what came before it) or after it (read by the
        # next wait, whose poke may already be waiting on the socket). None is lost.
        recv, send = socket.socketpair()
        recv.setblocking(False)
        send.setblocking(False)
        with _wakers_lock:
            _wakers.setdefault(self._driver._key, set()).add(send)
        self._socks = (recv, send)
        try:
            row = await self._read(lambda tx: tx.execute("last_event").fetchone())
        except BaseException:
            await self.aclose()
            raise
        self._last = int(row[0])

    async def _read(self, fn: Callable[[_Tx], T]) -> T:
        # Not through the driver's observers: like PostgreSQL's LISTEN connection, the listener's
        # polls are not the app's database calls (the metrics count those).
        return await anyio.to_thread.run_sync(lambda: self._driver._run(fn, write=False))

    def _events(self, tx: _Tx) -> list[tuple[int, str]]:
        return [(int(i), str(p)) for i, p in tx.execute("events_after", {"after": self._last})]

    async def wait(self, keepalive: float) -> list[Notification]:
        if self._socks is None or self._last is None:
            raise DatabaseError("the listener is not connected")
        recv = self._socks[0]
        deadline = anyio.current_time() + keepalive
        while True:
            rows = await self._read(self._events)
            if rows:
                self._last = rows[-1][0]
                out = []
                for _, payload in rows:
                    kind, _, value = payload.partition(":")
                    out.append(Notification(kind=kind, value=value))
                return out
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                return []
            with anyio.move_on_after(min(LISTEN_POLL, remaining)):
                await anyio.wait_readable(recv)
            with contextlib.suppress(BlockingIOError):  # drain the pokes: one read covers them all
                while recv.recv(4096):
                    pass

    async def aclose(self) -> None:
        socks, self._socks = self._socks, None
        self._last = None
        if socks is None:
            return
        recv, send = socks
        with _wakers_lock:
            registered = _wakers.get(self._driver._key)
            if registered is not None:
                registered.discard(send)
                if not registered:
                    del _wakers[self._driver._key]
        recv.close()
        send.close()


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back after an error; a failure to do so must not hide the error being raised."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _same_file(a: str, b: str) -> bool:
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (``;`` at the end of a line; ``--`` comments dropped)."""
    lines = [line for line in script.splitlines() if not line.lstrip().startswith("--")]
    out: list[str] = []
    current: list[str] = []
    for line in lines:
        current.append(line)
        if line.rstrip().endswith(";"):
            statement = "\n".join(current).strip()
            if statement.strip(";").strip():
                out.append(statement)
            current = []
    return out
