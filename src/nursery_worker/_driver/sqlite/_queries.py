"""The embedded engine's SQL: every statement's text, :func:`compose`, which puts one schema's
table names in, and the decoding of a job row.

``{jobs}``, ``{workers}``, ``{queues}``, ``{events}``, ... are the prefixed, quoted table names,
put in once per driver; every value is a bound ``:parameter``. The statements mirror PostgreSQL's
(``postgres/_queries.py``) one by one; what PostgreSQL does in PL/pgSQL is in ``_flow.py``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..._models import Job, JobSpec
from ..._state import JobState
from .._common import job_errors, job_progress, job_waiting
from ._steps import STATEMENTS as STEP_STATEMENTS
from ._time import NOW_SQL, from_us, moment

_ACTIVE = "('pending', 'scheduled', 'available', 'executing', 'retryable')"
_TERMINAL = "('completed', 'discarded', 'cancelled')"
#: The columns of a job row, in the order :func:`job_from_row` reads them.
JOB_COLUMNS = (
    "id, task, queue, args, state, attempt, max_attempts, priority, scheduled_at, inserted_at, "
    "attempted_at, finished_at, errors, worker_id, result, cancel_requested_at, unique_key, retry_policy, "
    "trace_context, depends_on, progress, wait_event, wait_step"
)

SQL_NOW = "SELECT " + NOW_SQL

_SQL_INSERT = """
INSERT INTO {jobs} (task, queue, args, priority, max_attempts, scheduled_at, inserted_at, state,
                    unique_key, unique_states, retry_policy, trace_context, limit_key)
VALUES (:task, :queue, :args, :priority, :max_attempts, :at, :now, :state,
        :unique_key, :unique_states, :retry_policy, :trace_context, :limit_key)
RETURNING id
"""
_SQL_JOBS_SEQUENCE = "SELECT seq FROM sqlite_sequence WHERE name = '{jobs_name}'"
_SQL_COUNT_IDS = "SELECT count(*) FROM {jobs} WHERE id BETWEEN :first AND :last"
# The job holding a unique key in a spec's scope of states: a queued or running holder first, then
# the newest (as on PostgreSQL).
_SQL_UNIQUE_HOLDER = (
    "SELECT "
    + JOB_COLUMNS
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
    + JOB_COLUMNS
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
    scheduled_at = CASE WHEN :retry_at IS NOT NULL THEN :retry_at
                        WHEN :delay IS NULL THEN scheduled_at
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
UPDATE {jobs} SET state = 'available', wait_event = NULL, wait_step = NULL
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
                       started_at, heartbeat_at, last_exit)
VALUES (:id, :hostname, :pid, :queues, :concurrency, 'starting', :supervisor_id, :child_index, :restarts, :now, :now,
        :last_exit)
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
    + NOW_SQL
    + """, last_exit
FROM {workers}
ORDER BY supervisor_id IS NULL, supervisor_id, child_index IS NULL, child_index, hostname, pid, id
"""
)
_SQL_DEREGISTER = "DELETE FROM {workers} WHERE id = :id"
_SQL_GET = "SELECT " + JOB_COLUMNS + " FROM {jobs} WHERE id = :id"
_SQL_EXECUTING = (
    "SELECT id, attempt, attempted_at FROM {jobs} WHERE state = 'executing' AND worker_id = :worker "
    "AND attempted_at < " + NOW_SQL + " - :older"
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
    + """, wait_event = NULL, wait_step = NULL
WHERE id = :id AND state IN ('pending', 'scheduled', 'available', 'retryable')
RETURNING """
    + JOB_COLUMNS
    + ", has_dependents"
)
_SQL_CANCEL_EXECUTING = (
    """
UPDATE {jobs} SET cancel_requested_at = coalesce(cancel_requested_at, :now)
WHERE id = :id AND state = 'executing'
RETURNING """
    + JOB_COLUMNS
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
    + JOB_COLUMNS
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
# The newest version and how many are applied (fewer rows than the code's versions: a gap to fill).
_SQL_VERSION = "SELECT max(version), count(*) FROM {migrations}"
TABLES = (
    "jobs",
    "workers",
    "queues",
    "events",
    "migrations",
    "rate_limits",
    "breakers",
    "periodic",
    "rollup_minute",
    "rollup_hour",
    "audit",
    "steps",
    "durable_events",
)


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
    + JOB_COLUMNS
)
# A queue's jobs without task limits (those of limited tasks wait to be adopted).
_SQL_CLAIM_QUEUE = (
    _CLAIM_SET.replace(
        "__GROUP__", "limit_key IS NULL AND queue = :queue AND task NOT IN (SELECT value FROM json_each(:tasks))"
    )
    + JOB_COLUMNS
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
    + NOW_SQL
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
SELECT name, last_tick, active_since, paused_at IS NOT NULL FROM {periodic}
WHERE name IN (SELECT value FROM json_each(:names))
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
  AND paused_at IS NULL
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
# Pause or resume a schedule (PostgreSQL's migration 9), under the write lock: read, then write.
_SQL_PERIODIC_PAUSED = "SELECT paused_at IS NOT NULL FROM {periodic} WHERE name = :name"
_SQL_PERIODIC_PAUSE = """
UPDATE {periodic} SET paused_at = CASE WHEN :paused THEN coalesce(paused_at, :now) END WHERE name = :name
"""
_SQL_PERIODIC_LIST = """
SELECT p.name, p.cron, p.timezone, p.task, p.queue, p.args, p.active_since, p.last_tick, p.last_job_id, j.state,
       p.updated_at, p.paused_at
FROM {periodic} AS p LEFT JOIN {jobs} AS j ON j.id = p.last_job_id
ORDER BY p.name
"""


def compose(schema: str) -> tuple[dict[str, str], dict[str, str]]:
    """Every statement by name with *schema*'s table names put in, and the table names (quoted,
    by table; ``jobs_name`` unquoted)."""
    names = {t: f'"{schema}_{t}"' for t in TABLES}
    names["jobs_name"] = f"{schema}_jobs"
    statements = {
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
        **STEP_STATEMENTS,
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
        "periodic_paused": _SQL_PERIODIC_PAUSED,
        "periodic_pause": _SQL_PERIODIC_PAUSE,
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
    }
    return {name: text.format(**names) for name, text in statements.items()}, names


# --- rows ------------------------------------------------------------------------------------


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def job_from_row(row: Sequence[Any], *, duplicate: bool = False) -> Job:
    """A job from a row of :data:`JOB_COLUMNS`."""
    return Job(
        id=row[0],
        task=row[1],
        queue=row[2],
        args=json.loads(row[3]),
        state=JobState(row[4]),
        attempt=row[5],
        max_attempts=row[6],
        priority=row[7],
        scheduled_at=moment(row[8]),
        inserted_at=from_us(row[9]),
        attempted_at=from_us(row[10]),
        finished_at=from_us(row[11]),
        errors=job_errors(json.loads(row[12])),
        worker_id=row[13],
        result=_loads(row[14]),
        cancel_requested_at=from_us(row[15]),
        unique_key=row[16],
        retry_policy=_loads(row[17]),
        trace_context=_loads(row[18]),
        depends_on=tuple(json.loads(row[19])) if row[19] else (),
        duplicate=duplicate,
        progress=job_progress(json.loads(row[20])) if row[20] else None,
        waiting=job_waiting(row[4], row[22], row[21], moment(row[8])) if row[22] else None,
    )


def new_job(spec: JobSpec, job_id: int, state: str, at: int, now: int) -> Job:
    """The job just inserted from *spec*, as its id, state and times were decided."""
    return Job(
        id=job_id,
        task=spec.task,
        queue=spec.queue,
        args=spec.args,
        state=JobState(state),
        attempt=0,
        max_attempts=spec.max_attempts,
        priority=spec.priority,
        scheduled_at=moment(at),
        inserted_at=from_us(now),
        unique_key=spec.unique_key,
        retry_policy=spec.retry_policy,
        trace_context=spec.trace_context,
    )
