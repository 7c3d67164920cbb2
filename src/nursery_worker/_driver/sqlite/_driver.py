"""The embedded engine: the driver interface on the standard library's ``sqlite3``.

One file on one host, shared by any number of processes. The semantics are PostgreSQL's (see
``postgres/``, which this package mirrors statement by statement); ``tests/conformance/`` runs the
same tests on both engines. How it maps:

- **Writes** run in ``BEGIN IMMEDIATE`` transactions (``_connection.py``): SQLite has one writer at
  a time per file, so a claim, a finish or a rescue sees no concurrent change between its read and
  its write (what ``FOR UPDATE SKIP LOCKED`` and the guards give on PostgreSQL). Every write that
  moves an executing job still carries PostgreSQL's guard (state, attempt, worker and lease),
  because the row may have moved in an *earlier* transaction (a rescue, a hand-back).
- **Time** is the database's clock (``_time.py``), read once at the start of each write
  transaction, as PostgreSQL's ``now()`` is. A claim's lease (``attempted_at``) is also made
  strictly greater than the row's previous one, since SQLite's clock ticks in milliseconds.
- **Flow control** (limits, breakers, dependencies) is Python here (``_flow.py``) where it is
  PL/pgSQL on PostgreSQL, in the same transaction as the write that causes it.
- **Notifications** are rows of an ``events`` table, read by the listener (``_listener.py``).
- **Schema**: tables are prefixed with the schema's name (``nursery_worker_jobs``), so several
  schemas can share one file.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import anyio.to_thread
import attrs

from ..._errors import ConfigurationError, DatabaseError, JobStateError
from ..._models import (
    AuditEntry,
    BreakerConfig,
    BreakerInfo,
    BulkChange,
    CancelRequest,
    CancelResult,
    ClaimedAttempt,
    Completion,
    DashboardCounts,
    DatabaseHealth,
    DurableOverview,
    GraphNode,
    Job,
    JobBatch,
    JobCount,
    JobSearch,
    JobSelection,
    JobSpec,
    JobStep,
    Lease,
    LimitedClaim,
    PeriodicEnqueued,
    PeriodicEntry,
    PeriodicListing,
    PeriodicRow,
    PeriodicSnapshot,
    PeriodicState,
    QueueDepth,
    QueueInfo,
    RateLimit,
    RescueResult,
    RollupBucket,
    RollupRead,
    RollupRow,
    StepWrite,
    TaskLimits,
    WaitResult,
    WorkerInfo,
    WorkerLoad,
    WorkerRow,
)
from ..._state import ACTIVE_STATES, JobState
from .._common import UserConnection, check_version, error_entry, insert_graph, spec_columns, walk_graph
from . import _dashboard, _steps
from ._connection import MIGRATION_COUNT, SCHEMA_VERSION, SqliteConnections, Tx
from ._flow import claim_limited, limited_finished, settle
from ._listener import SqliteListener
from ._queries import JOB_COLUMNS, SQL_NOW, TABLES, job_from_row, new_job
from ._time import from_us, iso, moment, to_us

_ACTIVE_SET = frozenset(s.value for s in ACTIVE_STATES)
#: From this many jobs without unique keys, an insert goes through ``executemany``.
_BULK_MIN = 50
_INT64 = (-(2**63), 2**63 - 1)


def _is_id(job_id: int) -> bool:
    """Whether *job_id* can name a row (SQLite's integers are 64-bit; PostgreSQL finds no such job either)."""
    return _INT64[0] <= job_id <= _INT64[1]


class SqliteDriver(SqliteConnections):
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

    def __repr__(self) -> str:
        return f"<SqliteDriver {self.path!r} schema={self.schema!r}>"

    # --- schema -------------------------------------------------------------------------------

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
        def drop(tx: Tx) -> None:
            for name in (self._names[t] for t in TABLES):
                tx.conn.execute(f"DROP TABLE IF EXISTS {name}")
            self._schema_ready = False

        await self._hop(drop)

    async def check_schema(self) -> None:
        row = await self._hop(lambda tx: tx.execute("version").fetchone(), write=False)
        check_version(
            self._where(),
            row[0] if row else None,
            SCHEMA_VERSION,
            applied=row[1] if row else None,
            known=MIGRATION_COUNT,
        )

    # --- jobs ---------------------------------------------------------------------------------

    @staticmethod
    def _insert_params(spec: JobSpec, now: int) -> dict[str, Any]:
        if spec.scheduled_at is not None:
            at = to_us(spec.scheduled_at)
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

    def _insert_on(self, tx: Tx, specs: Sequence[JobSpec]) -> list[Job]:
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
                    jobs.append(job_from_row(row, duplicate=True))
                    continue
            params = self._insert_params(spec, now)
            job_id = int(execute(insert, params).fetchone()[0])
            if params["state"] == "available":
                available.add(spec.queue)
            jobs.append(new_job(spec, job_id, params["state"], params["at"], now))
        tx.notify_available(available)
        return jobs

    def _insert_graph(self, tx: Tx, specs: Sequence[JobSpec]) -> list[Job]:
        """Jobs with dependencies, in *tx*'s transaction (see ``_common.insert_graph``)."""
        return insert_graph(
            specs,
            insert=lambda roots: self._insert_on(tx, roots),
            insert_dependent=lambda spec, deps: self._insert_dependent(tx, spec, deps),
        )

    def _insert_dependent(self, tx: Tx, spec: JobSpec, deps: list[int]) -> Job:
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
                return job_from_row(row, duplicate=True)
        params = self._insert_params(spec, now)
        failed = sorted(d for d, (_, state) in parents.items() if state in ("discarded", "cancelled"))
        waiting = sum(1 for _, state in parents.values() if state != "completed")
        errors = "[]"
        finished_at = None
        if failed:
            task, state = parents[failed[0]]
            message = f"dependency {failed[0]} ({task}) was {state}, so this job will not run"
            entry = {"type": "DependencyFailed", "message": message, "traceback": "", "at": iso(now), "attempt": 0}
            errors = json.dumps([entry])
            finished_at = now
            params["state"] = "cancelled"
        elif waiting:
            params["state"] = "pending"
        params.update(deps=json.dumps(deps), waiting=waiting, errors=errors, finished_at=finished_at)
        job_id = int(tx.execute("insert_dep", params).fetchone()[0])
        if params["state"] == "cancelled":
            row = tx.execute("get", {"id": job_id}).fetchone()
            return job_from_row(row)
        if params["state"] == "available":
            tx.notify(f"available:{spec.queue}")
        return attrs.evolve(new_job(spec, job_id, params["state"], params["at"], now), depends_on=tuple(deps))

    def _insert_bulk(self, tx: Tx, specs: Sequence[JobSpec], now: int) -> list[Job]:
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
            new_job(spec, first + i, p["state"], p["at"], now)
            for i, (spec, p) in enumerate(zip(specs, rows, strict=True))
        ]

    def insert_jobs_sync(self, specs: Sequence[JobSpec], *, connection: UserConnection | None = None) -> list[Job]:
        if not specs:
            return []
        if connection is not None:
            return self._on_user_connection(connection, lambda tx: self._insert_on(tx, specs))
        return self._run(lambda tx: self._insert_on(tx, specs), write=True)

    async def insert_jobs(self, specs: Sequence[JobSpec], *, connection: UserConnection | None = None) -> list[Job]:
        if not specs:
            return []
        if connection is not None:
            # The caller's connection belongs to the caller's thread (sqlite3 enforces it by
            # default), where their own statements on it run too.
            return self._on_user_connection(connection, lambda tx: self._insert_on(tx, specs))
        return await self._hop(lambda tx: self._insert_on(tx, specs))

    def _insert_batch_on(self, tx: Tx, batch: JobBatch) -> list[int]:
        """The jobs of *batch* in *tx*'s transaction, in order; their ids (one event per queue).

        Every column but the arguments is the same for the whole batch. From ``_BULK_MIN`` jobs,
        one ``executemany``, whose ids are known as :meth:`_insert_bulk` explains.
        """
        now = tx.now
        if batch.scheduled_at is not None:
            at = to_us(batch.scheduled_at)
        elif batch.delay:
            at = now + round(batch.delay * 1_000_000)
        else:
            at = now
        state = "scheduled" if at > now else "available"
        base: dict[str, Any] = {
            "task": batch.task,
            "queue": batch.queue,
            "args": "",
            "priority": batch.priority,
            "max_attempts": batch.max_attempts,
            "retry_policy": None if batch.retry_policy is None else json.dumps(batch.retry_policy),
            "trace_context": None,
            "limit_key": None,
            "at": at,
            "now": now,
            "state": state,
            "unique_key": None,
            "unique_states": None,
        }
        n = len(batch.args_json)
        if n < _BULK_MIN:
            insert = tx.q["insert"]
            ids = [int(tx.conn.execute(insert, {**base, "args": text}).fetchone()[0]) for text in batch.args_json]
        else:
            tx.conn.executemany(tx.q["insert_many"], [{**base, "args": text} for text in batch.args_json])
            last = int(tx.execute("jobs_sequence").fetchone()[0])
            first = last - n + 1
            if tx.execute("count_ids", {"first": first, "last": last}).fetchone()[0] != n:
                raise DatabaseError(f"the ids of {n} inserted jobs are not {first}..{last}; nothing was inserted")
            ids = list(range(first, last + 1))
        if state == "available":
            tx.notify_available([batch.queue])
        return ids

    def insert_batch_sync(self, batch: JobBatch, *, connection: UserConnection | None = None) -> list[int]:
        if not batch.args_json:
            return []
        if connection is not None:
            return self._on_user_connection(connection, lambda tx: self._insert_batch_on(tx, batch))
        return self._run(lambda tx: self._insert_batch_on(tx, batch), write=True)

    async def insert_batch(self, batch: JobBatch, *, connection: UserConnection | None = None) -> list[int]:
        if not batch.args_json:
            return []
        if connection is not None:
            # As insert_jobs: the caller's connection belongs to the caller's thread.
            return self._on_user_connection(connection, lambda tx: self._insert_batch_on(tx, batch))
        return await self._hop(lambda tx: self._insert_batch_on(tx, batch))

    async def get_job(self, job_id: int) -> Job | None:
        if not _is_id(job_id):
            return None
        row = await self._hop(lambda tx: tx.execute("get", {"id": job_id}).fetchone(), write=False)
        return None if row is None else job_from_row(row)

    async def fetch_jobs(
        self, *, worker_id: str, queues: Sequence[str], limit: int, exclude_tasks: Sequence[str] = ()
    ) -> list[Job]:
        return await self._hop(lambda tx: self._claim(tx, worker_id, queues, limit, exclude_tasks))

    @staticmethod
    def _claim(tx: Tx, worker_id: str, queues: Sequence[str], limit: int, exclude_tasks: Sequence[str]) -> list[Job]:
        """The claim of ``fetch_jobs`` in the transaction *tx*."""
        suffix = "_not" if exclude_tasks else ""

        def fetch() -> list[Any]:
            params: dict[str, Any] = {"limit": limit, "worker": worker_id, "now": tx.now}
            if exclude_tasks:
                params["limited"] = json.dumps(list(exclude_tasks))
            if len(queues) == 1:
                params["queue"] = queues[0]
                return tx.execute("fetch_one" + suffix, params).fetchall()
            params["queues"] = json.dumps(list(queues))
            return tx.execute("fetch" + suffix, params).fetchall()

        jobs = [job_from_row(r) for r in fetch()]
        jobs.sort(key=lambda j: (-j.priority, j.scheduled_at, j.id))
        return jobs

    async def finish_jobs(self, *, worker_id: str, completions: Sequence[Completion], error_cap: int) -> list[int]:
        if not completions:
            return []
        return await self._hop(lambda tx: self._finish(tx, worker_id, completions, error_cap))

    async def finish_and_fetch(
        self,
        *,
        worker_id: str,
        completions: Sequence[Completion],
        error_cap: int,
        queues: Sequence[str],
        limit: int,
        exclude_tasks: Sequence[str] = (),
    ) -> tuple[list[int], list[Job]]:
        def both(tx: Tx) -> tuple[list[int], list[Job]]:
            changed = self._finish(tx, worker_id, completions, error_cap) if completions else []
            return changed, self._claim(tx, worker_id, queues, limit, exclude_tasks) if limit > 0 else []

        return await self._hop(both)

    @staticmethod
    def _finish(tx: Tx, worker_id: str, completions: Sequence[Completion], error_cap: int) -> list[int]:
        """The guarded writes of ``finish_jobs`` in the transaction *tx*."""
        now = tx.now
        at = iso(now)
        statement = tx.q["finish"]
        changed: list[int] = []
        available: set[str] = set()
        finished: list[int] = []
        settled: list[tuple[int, str, str]] = []
        for position, c in enumerate(completions):
            row = tx.conn.execute(
                statement,
                {
                    "id": c.job_id,
                    "attempt": c.attempt,
                    "lease": None if c.attempted_at is None else to_us(c.attempted_at),
                    "state": c.transition.state.value,
                    "delay": c.transition.delay,
                    "retry_at": None if c.transition.at is None else to_us(c.transition.at),
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
            changed.append(position)
            job_id, queue, state, task, has_dependents, limit_key, last_error = row
            if state == "available":
                available.add(queue)
            elif JobState(state).is_terminal:
                finished.append(int(job_id))
                if has_dependents:
                    settled.append((int(job_id), task, state))
            if limit_key is not None:
                limited_finished(tx, task, state, last_error)
                available.add(queue)
        tx.notify_available(available)
        tx.notify_finished(finished)
        settle(tx, settled)
        return changed

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
            "last_exit": info.last_exit,
            "now": now,
        }

    async def register_worker(self, info: WorkerInfo) -> None:
        await self._hop(lambda tx: tx.execute("register", self._worker_params(info, tx.now)))

    async def heartbeat(self, info: WorkerInfo, load: WorkerLoad | None = None) -> bool:
        def beat(tx: Tx) -> bool:
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
        def promote(tx: Tx) -> int:
            queues = [r[0] for r in tx.execute("promote", {"now": tx.now, "limit": limit}).fetchall()]
            tx.notify_available(queues)
            tx.prune_events()
            return len(queues)

        return await self._hop(promote)

    async def rescue_orphans(self, *, rescuer_id: str, rescue_after: float, limit: int, error_cap: int) -> RescueResult:
        def rescue(tx: Tx) -> RescueResult:
            since = tx.now - round(rescue_after * 1_000_000)
            params = {"now": tx.now, "at": iso(tx.now), "since": since, "limit": limit, "rescuer": rescuer_id}
            rows = tx.execute("rescue", {**params, "cap": error_cap}).fetchall()
            states = [r[0] for r in rows]
            # Like PostgreSQL's triggers: a limited job's slot is free (a rescue, a WorkerLost, does
            # not count for a breaker), and a job that failed for good cancels its dependents.
            tx.notify_available(r[2] for r in rows if r[5] is not None)
            settle(tx, [(int(r[1]), r[3], r[0]) for r in rows if r[4] and r[0] in ("discarded", "cancelled")])
            removed = tx.execute("delete_dead", {"since": since}).rowcount
            return RescueResult(
                retryable=states.count("retryable"),
                discarded=states.count("discarded"),
                cancelled=states.count("cancelled"),
                workers_removed=removed,
            )

        return await self._hop(rescue)

    async def executing_ids(self, *, worker_id: str, older_than: float) -> list[ClaimedAttempt]:
        params = {"worker": worker_id, "older": round(older_than * 1_000_000)}
        rows = await self._hop(lambda tx: tx.execute("executing", params).fetchall(), write=False)
        return [ClaimedAttempt(job_id=int(r[0]), attempt=int(r[1]), attempted_at=from_us(r[2])) for r in rows]

    # --- job control --------------------------------------------------------------------------

    @staticmethod
    def _cancel_on(tx: Tx, job_id: int, error_cap: int) -> CancelResult | None:
        """Cancel job *job_id* in *tx*'s write transaction: the job cannot move between the steps."""
        params = {"id": job_id, "now": tx.now, "at": iso(tx.now), "cap": error_cap}
        row = tx.execute("cancel_waiting", params).fetchone()
        if row is not None:
            tx.notify(f"finished:{job_id}")
            if row[19]:
                settle(tx, [(job_id, str(row[1]), "cancelled")])
            return CancelResult(job=job_from_row(row), status="cancelled")
        row = tx.execute("cancel_executing", {"id": job_id, "now": tx.now}).fetchone()
        if row is not None:
            tx.notify(f"cancel:{job_id}")
            return CancelResult(job=job_from_row(row), status="requested")
        row = tx.execute("get", {"id": job_id}).fetchone()
        return None if row is None else CancelResult(job=job_from_row(row), status="already_finished")

    async def cancel_job(self, job_id: int, *, error_cap: int) -> CancelResult | None:
        if not _is_id(job_id):
            return None
        return await self._hop(lambda tx: self._cancel_on(tx, job_id, error_cap))

    async def cancel_requested(self, *, worker_id: str) -> list[CancelRequest]:
        rows = await self._hop(lambda tx: tx.execute("cancel_requested", {"worker": worker_id}).fetchall(), write=False)
        return [CancelRequest(job_id=int(r[0]), attempt=int(r[1])) for r in rows]

    @staticmethod
    def _retry_on(tx: Tx, job_id: int) -> Job | None:
        """Retry job *job_id* in *tx*'s write transaction (see ``retry_job``)."""
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
        job = job_from_row(row)
        if waiting == 0:
            tx.notify(f"available:{job.queue}")
        return job

    async def retry_job(self, job_id: int) -> Job | None:
        if not _is_id(job_id):
            return None
        return await self._hop(lambda tx: self._retry_on(tx, job_id))

    # --- the dashboard's reads (see _insights.py) ------------------------------------------------

    async def search_jobs(self, search: JobSearch, *, limit: int, time_limit: float) -> list[Job]:
        query, params = _dashboard.search_query(self._names, JOB_COLUMNS, search, limit)
        rows = await self._hop(
            lambda tx: _dashboard.read(tx.conn, time_limit, lambda c: c.execute(query, params).fetchall()), write=False
        )
        return [job_from_row(r) for r in rows]

    async def run_job_now(self, job_id: int) -> Job | None:
        if not _is_id(job_id):
            return None
        query = _dashboard.run_now_query(self._names, JOB_COLUMNS)

        def run(tx: Tx) -> Job | None:
            row = tx.conn.execute(query, {"id": job_id, "now": tx.now}).fetchone()
            if row is None:
                return None
            job = job_from_row(row)
            tx.notify(f"available:{job.queue}")
            return job

        return await self._hop(run)

    async def dashboard_counts(
        self, *, queue: str | None, cap: int, time_limit: float, finished: bool = True
    ) -> DashboardCounts:
        return await self._hop(
            lambda tx: _dashboard.read(
                tx.conn,
                time_limit,
                lambda c: _dashboard.dashboard_counts(c, self._names, SQL_NOW, queue=queue, cap=cap, finished=finished),
            ),
            write=False,
        )

    async def job_dependants(self, job_id: int, *, limit: int, time_limit: float) -> list[Job]:
        query = _dashboard.dependants_query(self._names, JOB_COLUMNS)
        rows = await self._hop(
            lambda tx: _dashboard.read(
                tx.conn, time_limit, lambda c: c.execute(query, {"id": job_id, "limit": limit}).fetchall()
            ),
            write=False,
        )
        return [job_from_row(r) for r in rows]

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
            f"SELECT {JOB_COLUMNS} FROM {self._names['jobs']} "
            + ("WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY id DESC LIMIT :limit"
        )
        rows = await self._hop(lambda tx: tx.conn.execute(query, params).fetchall(), write=False)
        return [job_from_row(r) for r in rows]

    @staticmethod
    def _selection_where(tx: Tx, selection: JobSelection, params: dict[str, Any]) -> list[str]:
        """The WHERE terms of *selection*, its parameters added to *params*."""
        where: list[str] = []
        if selection.states is not None:
            where.append("state IN (SELECT value FROM json_each(:states))")
            params["states"] = json.dumps(list(selection.states))
        if selection.queue is not None:
            where.append("queue = :queue")
            params["queue"] = selection.queue
        if selection.task is not None:
            where.append("task = :task")
            params["task"] = selection.task
        if selection.older_than is not None:
            where.append("inserted_at <= :cutoff")
            params["cutoff"] = tx.now - round(selection.older_than * 1_000_000)
        if selection.finished_older_than is not None:
            where.append("finished_at < :finished_cutoff")
            params["finished_cutoff"] = tx.now - round(selection.finished_older_than * 1_000_000)
        if selection.min_id is not None:
            where.append("id >= :min_id")
            params["min_id"] = min(selection.min_id, _INT64[1])
        if selection.max_id is not None:
            where.append("id <= :max_id")
            params["max_id"] = min(selection.max_id, _INT64[1])
        return where

    async def count_jobs(self, selection: JobSelection) -> JobCount:
        def count(tx: Tx) -> tuple[int, int | None]:
            params: dict[str, Any] = {}
            where = self._selection_where(tx, selection, params)
            query = f"SELECT count(*), max(id) FROM {self._names['jobs']}" + (
                " WHERE " + " AND ".join(where) if where else ""
            )
            row = tx.conn.execute(query, params).fetchone()
            return int(row[0]), None if row[1] is None else int(row[1])

        found, highest = await self._hop(count, write=False)
        return JobCount(count=found, max_id=highest)

    async def select_job_ids(self, selection: JobSelection, *, after_id: int, limit: int) -> list[int]:
        def select(tx: Tx) -> list[int]:
            params: dict[str, Any] = {"after": min(after_id, _INT64[1]), "limit": limit}
            where = [*self._selection_where(tx, selection, params), "id > :after"]
            query = f"SELECT id FROM {self._names['jobs']} WHERE {' AND '.join(where)} ORDER BY id LIMIT :limit"
            return [int(r[0]) for r in tx.conn.execute(query, params).fetchall()]

        return await self._hop(select, write=False)

    def _in_states(self, tx: Tx, ids: Sequence[int], states: Sequence[str]) -> list[Any]:
        """The rows of *ids* still in one of *states* (id and state), in id order; the write lock
        of *tx* keeps them where they are until the commit."""
        query = (
            f"SELECT id, state FROM {self._names['jobs']} WHERE id IN (SELECT value FROM json_each(:ids)) "
            "AND state IN (SELECT value FROM json_each(:states)) ORDER BY id"
        )
        return tx.conn.execute(query, {"ids": json.dumps(list(ids)), "states": json.dumps(list(states))}).fetchall()

    async def cancel_jobs(self, ids: Sequence[int], *, states: Sequence[str], error_cap: int) -> BulkChange:
        def cancel(tx: Tx) -> BulkChange:
            cancelled = requested = 0
            for job_id, _ in self._in_states(tx, ids, states):
                result = self._cancel_on(tx, int(job_id), error_cap)
                cancelled += result is not None and result.status == "cancelled"
                requested += result is not None and result.status == "requested"
            return BulkChange(changed=cancelled, requested=requested)

        return await self._hop(cancel)

    async def retry_jobs(self, ids: Sequence[int], *, states: Sequence[str]) -> BulkChange:
        def retry(tx: Tx) -> BulkChange:
            retried = 0
            for job_id, _ in self._in_states(tx, ids, states):
                try:
                    retried += self._retry_on(tx, int(job_id)) is not None
                except JobStateError:  # a unique key held or a dependency failed: left as it is
                    continue
            return BulkChange(changed=retried)

        return await self._hop(retry)

    async def delete_jobs(self, ids: Sequence[int], *, states: Sequence[str]) -> BulkChange:
        query = (
            f"DELETE FROM {self._names['jobs']} WHERE id IN (SELECT value FROM json_each(:ids)) "
            "AND state IN (SELECT value FROM json_each(:states)) AND state <> 'executing'"
        )
        params = {"ids": json.dumps(list(ids)), "states": json.dumps(list(states))}
        deleted = await self._hop(lambda tx: int(tx.conn.execute(query, params).rowcount))
        return BulkChange(changed=deleted)

    async def prune_jobs(self, *, state: str, older_than: float, limit: int) -> int:
        def prune(tx: Tx) -> int:
            before = tx.now - round(older_than * 1_000_000)
            return int(tx.execute("prune", {"state": state, "before": before, "limit": limit}).rowcount)

        return await self._hop(prune)

    async def queue_depth(self) -> list[QueueDepth]:
        rows = await self._hop(lambda tx: tx.execute("queue_depth").fetchall(), write=False)
        return [QueueDepth(queue=str(r[0]), state=str(r[1]), count=int(r[2])) for r in rows]

    async def database_health(self) -> DatabaseHealth:
        # No server, no other clients' transactions to list, and no dead tuples to speak of (a
        # deleted row's space goes back to the file's free pages at once). What a long reader does
        # here is keep the write-ahead log from being checkpointed: it grows.
        def wal_size() -> int:
            try:
                return os.path.getsize(f"{self.path}-wal")
            except OSError:
                return 0

        return DatabaseHealth(engine="sqlite", wal_bytes=await anyio.to_thread.run_sync(wal_size))

    def set_idle_in_transaction_timeout(self, seconds: float) -> None:
        # Every transaction of the embedded engine is one call of ours: none is left idle.
        return

    async def list_workers(self) -> list[WorkerRow]:
        rows = await self._hop(lambda tx: tx.execute("list_workers").fetchall(), write=False)
        return [
            WorkerRow(
                id=r[0],
                hostname=r[1],
                pid=r[2],
                queues=tuple(json.loads(r[3])),
                concurrency=r[4],
                started_at=moment(r[5]),
                heartbeat_at=moment(r[6]),
                state=r[7],
                processed=r[8],
                failed=r[9],
                running=r[10],
                supervisor_id=r[11],
                child_index=r[12],
                restarts=r[13],
                last_exit=r[15],
                now=moment(r[14]),
            )
            for r in rows
        ]

    async def set_queue_paused(self, name: str, *, paused: bool) -> bool:
        def set_paused(tx: Tx) -> bool:
            row = tx.execute("paused", {"name": name}).fetchone()
            before = bool(row[0]) if row is not None else False
            tx.execute("set_paused", {"name": name, "paused": int(paused), "now": tx.now})
            if not paused:
                tx.notify(f"available:{name}")
            return before != paused

        return await self._hop(set_paused)

    async def list_queues(self, name: str | None = None) -> list[QueueInfo]:
        def read(tx: Tx) -> list[QueueInfo]:
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
                now = int(tx.conn.execute(SQL_NOW).fetchone()[0])
            finally:
                tx.conn.execute("COMMIT")
            none = (None, False, None, None, None, None)
            return [
                QueueInfo(
                    name=queue,
                    paused=bool(rows.get(queue, none)[1]),
                    paused_at=from_us(rows.get(queue, none)[2]),
                    counts=counts.get(queue, {}),
                    oldest_available_at=from_us(oldest.get(queue)),
                    now=moment(now),
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

    async def fetch_limited(
        self,
        *,
        worker_id: str,
        queues: Sequence[str],
        limit: int,
        config: Mapping[str, TaskLimits],
        adopt: bool = False,
    ) -> LimitedClaim:
        return await self._hop(lambda tx: claim_limited(tx, worker_id, queues, limit, config, adopt))

    async def set_queue_limits(self, name: str, *, max_concurrency: int | None, rate: RateLimit | None) -> None:
        def set_limits(tx: Tx) -> None:
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

    async def register_breakers(self, breakers: Sequence[BreakerConfig]) -> None:
        if not breakers:
            return

        def register(tx: Tx) -> None:
            for b in breakers:
                params = {"task": b.task, "threshold": b.threshold, "cooldown": b.cooldown, "now": tx.now}
                tx.execute("register_breaker", params)

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
                opened_at=from_us(r[5]),
                probe_job_id=r[6],
                now=moment(r[7]),
            )
            for r in rows
        ]

    # --- durable steps (see _steps.py) ----------------------------------------------------------

    async def job_steps(self, job_id: int, *, limit: int | None = None) -> list[JobStep]:
        if not _is_id(job_id):
            return []
        return await self._hop(lambda tx: _steps.read_steps(tx, job_id, limit), write=False)

    async def durable_overview(self, *, limit: int) -> DurableOverview:
        return await self._hop(lambda tx: _steps.durable_overview(tx, limit=limit), write=False)

    async def record_steps(self, records: Sequence[StepWrite]) -> list[bool]:
        return await self._hop(lambda tx: [_steps.record_step(tx, r) for r in records])

    async def wait_step(
        self,
        lease: Lease,
        *,
        name: str,
        position: int,
        event: str | None,
        delay: float | None,
        until: dt.datetime | None,
    ) -> WaitResult:
        return await self._hop(
            lambda tx: _steps.wait_step(tx, lease, name=name, position=position, event=event, delay=delay, until=until)
        )

    async def set_progress(self, lease: Lease, *, done: float, total: float | None, note: str | None) -> bool:
        return await self._hop(lambda tx: _steps.set_progress(tx, lease, done=done, total=total, note=note))

    def emit_event_sync(self, key: str, payload_json: str, *, connection: UserConnection | None = None) -> bool:
        if connection is not None:
            return self._on_user_connection(connection, lambda tx: _steps.emit(tx, key, payload_json))
        return self._run(lambda tx: _steps.emit(tx, key, payload_json), write=True)

    async def emit_event(self, key: str, payload_json: str, *, connection: UserConnection | None = None) -> bool:
        if connection is not None:
            # As insert_jobs: the caller's connection belongs to the caller's thread.
            return self._on_user_connection(connection, lambda tx: _steps.emit(tx, key, payload_json))
        return await self._hop(lambda tx: _steps.emit(tx, key, payload_json))

    async def prune_events(self, *, older_than: float, limit: int) -> int:
        return await self._hop(lambda tx: _steps.prune_events(tx, older_than=older_than, limit=limit))

    # --- periodic jobs (see _periodic.py) -----------------------------------------------------

    async def register_periodic(self, entries: Sequence[PeriodicEntry]) -> None:
        if not entries:
            return

        def register(tx: Tx) -> None:
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

    async def periodic_state(self, names: Sequence[str]) -> PeriodicSnapshot:
        def read(tx: Tx) -> tuple[int, list[Any]]:
            # One read transaction, so the clock and the rows agree.
            tx.conn.execute("BEGIN")
            try:
                rows = tx.execute("periodic_state", {"names": json.dumps(list(names))}).fetchall()
                now = int(tx.conn.execute(SQL_NOW).fetchone()[0])
            finally:
                tx.conn.execute("COMMIT")
            return now, rows

        now, rows = await self._hop(read, write=False)
        states = {
            str(r[0]): PeriodicState(last_tick=from_us(r[1]), active_since=moment(r[2]), paused=bool(r[3]))
            for r in rows
        }
        return PeriodicSnapshot(now=moment(now), states=states)

    async def enqueue_periodic(
        self, *, name: str, tick: dt.datetime, catch_up: float, spec: JobSpec
    ) -> PeriodicEnqueued | None:
        def enqueue(tx: Tx) -> PeriodicEnqueued | None:
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
            tick_us = to_us(tick)
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

    async def set_periodic_paused(self, name: str, *, paused: bool) -> bool | None:
        def set_paused(tx: Tx) -> bool | None:
            row = tx.execute("periodic_paused", {"name": name}).fetchone()
            if row is None:
                return None
            tx.execute("periodic_pause", {"name": name, "paused": int(paused), "now": tx.now})
            return bool(row[0]) != paused

        return await self._hop(set_paused)

    async def list_periodic(self) -> PeriodicListing:
        def read(tx: Tx) -> tuple[int, list[Any]]:
            tx.conn.execute("BEGIN")
            try:
                rows = tx.execute("periodic_list").fetchall()
                now = int(tx.conn.execute(SQL_NOW).fetchone()[0])
            finally:
                tx.conn.execute("COMMIT")
            return now, rows

        now, rows = await self._hop(read, write=False)
        return PeriodicListing(
            now=moment(now),
            rows=tuple(
                PeriodicRow(
                    name=r[0],
                    cron=r[1],
                    timezone=r[2],
                    task=r[3],
                    queue=r[4],
                    args=json.loads(r[5]),
                    active_since=moment(r[6]),
                    last_tick=from_us(r[7]),
                    last_job_id=r[8],
                    last_job_state=r[9],
                    updated_at=moment(r[10]),
                    paused_at=from_us(r[11]),
                )
                for r in rows
            ),
        )

    def listener(self) -> SqliteListener:
        return SqliteListener(self)

    # --- the dashboard's data (see _insights.py) -------------------------------------------------

    async def write_rollups(self, rows: Sequence[RollupRow]) -> None:
        if not rows:
            return

        def write(tx: Tx) -> None:
            for grain, unit in (("minute", 60_000_000), ("hour", 3_600_000_000)):
                bucket = tx.now - tx.now % unit
                for r in rows:
                    key = {"bucket": bucket, "queue": r.queue, "task": r.task, "error_type": r.error_type}
                    old = tx.execute(f"rollup_get_{grain}", key).fetchone()
                    counts = [r.completed, r.failed, r.discarded, r.cancelled]
                    duration, histogram = r.duration_sum, list(r.histogram)
                    if old is not None:
                        counts = [a + int(b) for a, b in zip(counts, old[:4], strict=True)]
                        duration += float(old[4])
                        stored = json.loads(old[5])
                        histogram = [a + int(b) for a, b in zip(histogram, stored, strict=False)]
                    tx.execute(
                        f"rollup_put_{grain}",
                        {
                            **key,
                            "completed": counts[0],
                            "failed": counts[1],
                            "discarded": counts[2],
                            "cancelled": counts[3],
                            "duration_sum": duration,
                            "histogram": json.dumps(histogram),
                        },
                    )

        await self._hop(write)

    async def read_rollups(self, *, since: float, hourly: bool, step: float, task: str | None = None) -> RollupRead:
        grain, unit = ("hour", 3_600_000_000) if hourly else ("minute", 60_000_000)

        def read(tx: Tx) -> tuple[int, list[Any]]:
            start = tx.now - round(since * 1_000_000)
            start -= start % unit
            params = {"since": start, "task": task, "step": max(1, round(step * 1_000_000))}
            return tx.now, tx.execute(f"rollup_read_{grain}", params).fetchall()

        now, rows = await self._hop(read, write=False)
        return RollupRead(
            now=moment(now),
            buckets=tuple(
                RollupBucket(
                    at=moment(r[0]),
                    row=RollupRow(
                        queue=r[1],
                        task=r[2],
                        error_type=r[3],
                        completed=int(r[4]),
                        failed=int(r[5]),
                        discarded=int(r[6]),
                        cancelled=int(r[7]),
                        duration_sum=float(r[8]),
                        histogram=tuple(int(n) for n in json.loads(r[9])),
                    ),
                )
                for r in rows
            ),
        )

    async def prune_rollups(self, *, minute_older_than: float, hour_older_than: float) -> int:
        def prune(tx: Tx) -> int:
            minute = tx.execute("rollup_prune_minute", {"before": tx.now - round(minute_older_than * 1_000_000)})
            hour = tx.execute("rollup_prune_hour", {"before": tx.now - round(hour_older_than * 1_000_000)})
            return int(minute.rowcount) + int(hour.rowcount)

        return await self._hop(prune)

    @staticmethod
    def _audit_entry(r: Sequence[Any]) -> AuditEntry:
        return AuditEntry(
            id=int(r[0]), at=moment(r[1]), actor=r[2], action=r[3], target=json.loads(r[4]), count=int(r[5])
        )

    async def record_audit(self, *, actor: str, action: str, target: Mapping[str, Any], count: int) -> AuditEntry:
        def record(tx: Tx) -> Any:
            params = {"now": tx.now, "actor": actor, "action": action, "target": json.dumps(target), "count": count}
            return tx.execute("record_audit", params).fetchone()

        return self._audit_entry(await self._hop(record))

    async def list_audit(self, *, limit: int, before_id: int | None = None) -> list[AuditEntry]:
        params = {"limit": limit, "before": before_id}
        rows = await self._hop(lambda tx: tx.execute("list_audit", params).fetchall(), write=False)
        return [self._audit_entry(r) for r in rows]

    async def recent_failures(self, *, since: float, limit: int) -> list[Job]:
        def read(tx: Tx) -> list[Any]:
            start = tx.now - round(since * 1_000_000)
            discarded = tx.execute("recent_discarded", {"since": start, "limit": limit}).fetchall()
            return discarded + tx.execute("recent_retryable", {"limit": limit}).fetchall()

        return [job_from_row(r) for r in await self._hop(read, write=False)]

    async def job_graph(self, job_id: int, *, max_depth: int, max_nodes: int) -> list[GraphNode]:
        if not _is_id(job_id):
            return []

        def rows(found: list[Any]) -> list[tuple[int, str, str, str, tuple[int, ...]]]:
            return [(int(r[0]), r[1], r[2], r[3], tuple(json.loads(r[4]) if r[4] else ())) for r in found]

        def walk(tx: Tx) -> list[GraphNode]:
            return walk_graph(
                job_id,
                nodes=lambda ids: rows(tx.execute("graph_nodes", {"ids": json.dumps(ids)}).fetchall()),
                children=lambda ids, limit: rows(
                    tx.execute("graph_children", {"ids": json.dumps(ids), "limit": limit}).fetchall()
                ),
                max_depth=max_depth,
                max_nodes=max_nodes,
            )

        return await self._hop(walk, write=False)
