"""The PostgreSQL driver: the driver interface's statements, on the pool of ``_connection.py``.

Each method is one statement (or a few, in one transaction) from ``_queries.py``, with its
parameters built here and its rows turned into the records of ``_models``. Every statement that
moves an executing job mirrors a ``*_guarded`` function of ``_state.py``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import anyio
import anyio.to_thread
import attrs
import psycopg
import psycopg.errors
from psycopg import sql

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
    OldestTransaction,
    PendingMigration,
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
from .._common import (
    Migrations,
    UserConnection,
    check_schema_name,
    check_version,
    error_entry,
    insert_graph,
    job_errors,
    job_progress,
    job_waiting,
    spec_columns,
    walk_graph,
)
from . import _dashboard, _steps
from ._connection import PostgresConnections
from ._insights import DashboardQueries
from ._listener import PostgresListener
from ._queries import JOB_COLUMNS, Queries, ordered_page

logger = logging.getLogger("nursery_worker.driver")

#: The schema's versions, in order: ``migrations/<file>`` of this package.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (1, "0001_initial.sql"),
    (2, "0002_job_control.sql"),
    (3, "0003_worker_stats.sql"),
    (4, "0004_queues.sql"),
    (5, "0005_trace_context.sql"),
    (6, "0006_flow_control.sql"),
    (7, "0007_periodic.sql"),
    (8, "0008_dashboard.sql"),
    (9, "0009_periodic_pause.sql"),
    (10, "0010_lean_task_index.sql"),
    (11, "0011_durable_steps.sql"),
)
_MIGRATIONS = Migrations(package=__name__.rpartition(".")[0], versions=MIGRATIONS)
#: The schema version this code reads and writes; the last entry of MIGRATIONS.
SCHEMA_VERSION = _MIGRATIONS.latest

_ACTIVE_SET = frozenset(s.value for s in ACTIVE_STATES)

# Bulk inserts of many jobs go through COPY: ids drawn first (so the jobs come back in order),
# the transaction's now() read once and the schedule computed from it, then one NOTIFY per queue.
_COPY_MIN = 200
#: Rows formatted per write to the COPY stream.
_COPY_CHUNK = 2_000
#: COPY's text format: a backslash starts an escape, tab and newline end a field and a row.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_text(value: str | None) -> str:
    """A text field of COPY's text format: NULL as ``\\N``, the special characters escaped."""
    if value is None:
        return "\\N"
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return value.translate(_COPY_ESCAPES)
    return value


#: The name of the single defer's prepared statement on each pooled connection (``_direct_prepared``).
_INSERT_ONE_NAME = b"nursery_worker_insert_one"
#: The types of the one-job insert's parameters, sent as text (the statement casts the JSON ones).
_INSERT_ONE_TYPES = {
    "task": 25,  # text
    "queue": 25,
    "args": 25,
    "priority": 23,  # int4
    "max_attempts": 23,
    "retry_policy": 25,
    "trace_context": 25,
    "limit_key": 25,
    "scheduled": 1184,  # timestamptz
    "delay": 701,  # float8
    "channel": 25,
}
#: PostgreSQL's binary timestamptz counts microseconds from this instant.
_PG_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def _param_text(value: object) -> bytes | None:
    """A parameter of the one-job insert in PostgreSQL's text form (None stays NULL)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, dt.datetime):
        return value.isoformat().encode()
    return str(value).encode()  # int, float (repr: round-trips exactly)


def _binary_int(value: bytes | None) -> int:
    assert value is not None
    return int.from_bytes(value, "big", signed=True)


def _binary_time(value: bytes | None) -> dt.datetime:
    return _PG_EPOCH + dt.timedelta(microseconds=_binary_int(value))


#: A state as stored, to its enum member: a dict lookup, several times cheaper than ``JobState(value)``.
_STATE_OF: dict[str, JobState] = {state.value: state for state in JobState}


def _int_array(values: Sequence[int]) -> str:
    """A PostgreSQL array literal of integers (``{1,2,3}``)."""
    return "{" + ",".join(map(str, values)) + "}"


def _float_array(values: Sequence[float | None]) -> str:
    """A PostgreSQL array literal of ``float8`` values or NULLs."""
    return "{" + ",".join("NULL" if v is None else repr(float(v)) for v in values) + "}"


def _array_text(value: str) -> str:
    """One element of an array literal: quoted, with backslashes and double quotes escaped."""
    if "\\" in value or '"' in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + value + '"'


def _text_array(values: Sequence[str | None]) -> str:
    """A PostgreSQL array literal of text values or NULLs."""
    return "{" + ",".join("NULL" if v is None else _array_text(v) for v in values) + "}"


def _time_array(values: Sequence[dt.datetime | None]) -> str:
    """A PostgreSQL array literal of ``timestamptz`` values (ISO 8601; a naive one is read in the
    session's time zone, as psycopg's own adaptation has it) or NULLs."""
    return "{" + ",".join("NULL" if v is None else '"' + v.isoformat() + '"' for v in values) + "}"


def _claim_query(
    params: dict[str, Any], queues: Sequence[str], exclude_tasks: Sequence[str], variants: tuple[bytes, ...]
) -> bytes:
    """Which of a claim's four statements to run (one queue or several; with or without tasks left
    to the limited claim), with its queue parameters added to *params*.

    Args:
        params: the statement's parameters, completed here.
        queues: the worker's queues.
        exclude_tasks: the tasks whose jobs only the limited claim takes.
        variants: the statements for one queue, one queue excluding tasks, several, several excluding.

    Returns:
        The statement.
    """
    one, one_not, many, many_not = variants
    if exclude_tasks:
        params["limited"] = list(exclude_tasks)
    if len(queues) == 1:
        params["queue"] = queues[0]
        return one_not if exclude_tasks else one
    params["queues"] = list(queues)
    return many_not if exclude_tasks else many


def _by_priority(jobs: list[Job]) -> list[Job]:
    """Claimed jobs in claim order (the UPDATE's RETURNING does not keep it): priority, then time, then id."""
    jobs.sort(key=lambda j: (-j.priority, j.scheduled_at, j.id))
    return jobs


def _applied(rows: Sequence[Any]) -> list[int]:
    """The positions (from 0) of the completions a finish statement applied, from its first row."""
    positions = rows[0][0] if rows else None
    return [int(p) - 1 for p in positions or ()]


def _job_from_row(row: Sequence[Any], *, duplicate: bool = False) -> Job:
    # A job that never failed has no errors ('[]'): no records to build.
    errors = job_errors(row[12]) if row[12] else ()
    extra = len(row) > 14
    return Job(
        id=row[0],
        task=row[1],
        queue=row[2],
        args=row[3],
        state=_STATE_OF[row[4]],
        attempt=row[5],
        max_attempts=row[6],
        priority=row[7],
        scheduled_at=row[8],
        inserted_at=row[9],
        attempted_at=row[10],
        finished_at=row[11],
        errors=errors,
        worker_id=row[13],
        result=row[14] if extra else None,
        cancel_requested_at=row[15] if extra else None,
        unique_key=row[16] if extra else None,
        retry_policy=row[17] if extra else None,
        trace_context=row[18] if len(row) > 18 else None,
        depends_on=tuple(row[19] or ()) if len(row) > 19 else (),
        duplicate=duplicate,
        progress=job_progress(row[20]) if len(row) > 20 and row[20] else None,
        waiting=job_waiting(row[4], row[22], row[21], row[8]) if len(row) > 22 and row[22] else None,
    )


def _limits_json(config: Mapping[str, TaskLimits]) -> str:
    """The task limits as ``nw_claim_limited`` (migration 6) reads them: {task: {"c", "r", "p", "b"}}."""
    out: dict[str, dict[str, Any]] = {}
    for task, limits in config.items():
        entry: dict[str, Any] = {}
        if limits.concurrency is not None:
            entry["c"] = limits.concurrency
        if limits.rate is not None:
            entry["r"] = limits.rate.count
            entry["p"] = limits.rate.period
        if limits.breaker:
            entry["b"] = True
        out[task] = entry
    return json.dumps(out)


class PostgresDriver(PostgresConnections):
    """The PostgreSQL implementation of the driver interface (see ``_driver/__init__.py``)."""

    schema_version = SCHEMA_VERSION
    #: Whether a single ``defer()`` sends our own prepared statement (off: psycopg's cursor, as before).
    prepared_insert: bool = True

    def __init__(
        self, dsn: str, *, schema: str, pool_min_size: int, pool_max_size: int, connect_timeout: float
    ) -> None:
        super().__init__(
            dsn,
            schema=check_schema_name(schema),
            pool_min_size=pool_min_size,
            pool_max_size=pool_max_size,
            connect_timeout=connect_timeout,
        )
        self._sql = Queries(schema)
        self._dash = DashboardQueries(schema)
        self._steps = _steps.StepQueries(schema)
        self._insert_one_types = [_INSERT_ONE_TYPES[name] for name in self._sql.insert_one_names]

    def __repr__(self) -> str:
        return f"<PostgresDriver {self._dsn_redacted!r} schema={self.schema!r}>"

    # --- schema -------------------------------------------------------------------------------

    def _where(self) -> str:
        return f"schema {self.schema!r} of {self._dsn_redacted}"

    def migrate_sync(self) -> list[int]:
        applied_now: list[int] = []
        ident = self._sql.ident
        with self._connect() as conn:
            try:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"nursery_worker:{self.schema}"])
                    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
                    conn.execute(
                        sql.SQL(
                            "CREATE TABLE IF NOT EXISTS {}.migrations (version integer PRIMARY KEY, "
                            "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
                        ).format(ident)
                    )
                    rows = conn.execute(sql.SQL("SELECT version FROM {}.migrations").format(ident)).fetchall()
                    for version, filename, text in _MIGRATIONS.pending((int(r[0]) for r in rows), where=self._where()):
                        conn.execute(sql.SQL(text).format(schema=ident))
                        conn.execute(
                            sql.SQL("INSERT INTO {}.migrations (version, name) VALUES (%s, %s)").format(ident),
                            [version, filename],
                        )
                        applied_now.append(version)
            except psycopg.Error as exc:
                raise self._translate(exc) from exc
        if applied_now:
            logger.info("migrated schema %r to version %d (applied %s)", self.schema, SCHEMA_VERSION, applied_now)
        return applied_now

    def pending_migrations_sync(self) -> list[PendingMigration]:
        ident = self._sql.ident
        with self._connect() as conn:
            try:
                applied: list[int] = []
                if conn.execute("SELECT to_regclass(%s)", [f'"{self.schema}".migrations']).fetchone() != (None,):
                    rows = conn.execute(sql.SQL("SELECT version FROM {}.migrations").format(ident)).fetchall()
                    applied = [int(r[0]) for r in rows]
                return [
                    PendingMigration(version=version, name=name, sql=sql.SQL(text).format(schema=ident).as_string(conn))
                    for version, name, text in _MIGRATIONS.pending(applied, where=self._where())
                ]
            except psycopg.Error as exc:
                raise self._translate(exc) from exc

    async def migrate(self) -> list[int]:
        return await anyio.to_thread.run_sync(self.migrate_sync)

    async def drop_schema(self) -> None:
        query = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(self._sql.ident)
        await self._hop(lambda c: c.execute(query))

    async def check_schema(self) -> None:
        row = await self._hop(lambda c: c.execute(self._sql.version).fetchone())
        check_version(
            self._where(),
            row[0] if row else None,
            SCHEMA_VERSION,
            applied=row[1] if row else None,
            known=_MIGRATIONS.count,
        )

    # --- jobs ---------------------------------------------------------------------------------

    def _insert_params(self, specs: Sequence[JobSpec]) -> dict[str, Any]:
        return {
            "tasks": [s.task for s in specs],
            "queues": [s.queue for s in specs],
            "args": [s.args_json for s in specs],
            "priorities": [s.priority for s in specs],
            "max_attempts": [s.max_attempts for s in specs],
            "scheduled": [s.scheduled_at for s in specs],
            "delays": [s.delay for s in specs],
            "unique_keys": [s.unique_key for s in specs],
            "unique_states": [None if s.unique_states is None else ",".join(s.unique_states) for s in specs],
            "retry_policies": [None if s.retry_policy is None else json.dumps(s.retry_policy) for s in specs],
            "trace_contexts": [None if s.trace_context is None else json.dumps(s.trace_context) for s in specs],
            "limit_keys": [s.limit_key for s in specs],
            "channel": self.channel,
        }

    @staticmethod
    def _new_job(spec: JobSpec, row: Sequence[Any], *, duplicate: bool = False) -> Job:
        return Job(
            id=row[0],
            task=spec.task,
            queue=spec.queue,
            args=spec.args,
            state=_STATE_OF[row[1]],
            attempt=0,
            max_attempts=spec.max_attempts,
            priority=spec.priority,
            scheduled_at=row[2],
            inserted_at=row[3],
            unique_key=spec.unique_key,
            retry_policy=spec.retry_policy,
            trace_context=spec.trace_context,
            duplicate=duplicate,
        )

    def _match(self, specs: Sequence[JobSpec], rows: Sequence[Sequence[Any]]) -> list[Job | None]:
        """Pair the inserted rows (in id order, that is the order given) with their specs.

        A unique spec whose key was taken gets None; one whose key an earlier spec of the same call
        took gets that job, marked as a duplicate.
        """
        out: list[Job | None] = []
        keys_inserted = {(r[5], r[4]) for r in rows if r[4] is not None}
        by_key: dict[tuple[str, str], Job] = {}
        it = iter(rows)
        for spec in specs:
            if spec.unique_key is None:
                out.append(self._new_job(spec, next(it)))
                continue
            key = (spec.task, spec.unique_key)
            if key in by_key:
                out.append(attrs.evolve(by_key[key], duplicate=True))
                continue
            if key not in keys_inserted:
                out.append(None)
                continue
            row = next(it)
            job = self._new_job(spec, row)
            by_key[key] = job
            out.append(job)
        return out

    def _one_params(self, spec: JobSpec) -> dict[str, Any]:
        """The parameters of a one-job insert (plain, or with dependencies)."""
        return {**spec_columns(spec), "scheduled": spec.scheduled_at, "delay": spec.delay, "channel": self.channel}

    def _plain_insert(self, specs: Sequence[JobSpec]) -> tuple[bytes, dict[str, Any]] | None:
        """The one statement that inserts *specs*, when one does: no dependencies, no unique keys,
        fewer than the COPY threshold. None: the caller takes the multi-statement paths."""
        if len(specs) >= _COPY_MIN or any(s.depends_on or s.unique_key is not None for s in specs):
            return None
        if len(specs) == 1:
            return self._sql.insert_one, self._one_params(specs[0])
        return self._sql.insert, self._insert_params(specs)

    def _insert_on(self, conn: psycopg.Connection[Any], specs: Sequence[JobSpec]) -> list[Job]:
        plain = self._plain_insert(specs)
        if plain is not None:
            rows = conn.execute(*plain).fetchall()
            return [self._new_job(spec, row) for spec, row in zip(specs, rows, strict=True)]
        if any(s.depends_on for s in specs):
            return self._insert_graph(conn, specs)
        if any(s.unique_key is not None for s in specs):
            return self._insert_unique(conn, specs)
        return self._insert_copy(conn, specs)

    @staticmethod
    def _atomic(conn: psycopg.Connection[Any]) -> contextlib.AbstractContextManager[psycopg.Transaction]:
        """``conn.transaction()`` that joins the caller's transaction on their own connection.

        On a connection out of autocommit with no transaction yet, psycopg's ``transaction()``
        would BEGIN and COMMIT one of its own, committing the jobs whatever the caller does next:
        start the caller's transaction first, so the block is a savepoint inside it.
        """
        if not conn.autocommit and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            conn.execute("SELECT 1")
        return conn.transaction()

    def _insert_copy(self, conn: psycopg.Connection[Any], specs: Sequence[JobSpec]) -> list[Job]:
        """Many jobs in one transaction (the caller's, if it has one): ids, COPY, one NOTIFY per queue."""
        with self._atomic(conn):
            row = conn.execute(self._sql.copy_prepare, {"table": f"{self.schema}.jobs", "n": len(specs)}).fetchone()
            assert row is not None
            now: dt.datetime = row[0]
            ids: list[int] = row[1]
            jobs: list[Job] = []
            queues: set[str] = set()
            # The COPY text is formatted here, a chunk at a time: several times cheaper than
            # psycopg's write_row, which looks up a dumper for every field of every row.
            now_text = now.isoformat()
            lines: list[str] = []
            with conn.cursor().copy(self._sql.copy) as copy:
                for job_id, spec in zip(ids, specs, strict=True):
                    if spec.scheduled_at is not None:
                        at = spec.scheduled_at
                    elif spec.delay:
                        at = now + dt.timedelta(seconds=spec.delay)
                    else:
                        at = now
                    if at > now:
                        state = "scheduled"
                    else:
                        state = "available"
                        queues.add(spec.queue)
                    policy = None if spec.retry_policy is None else json.dumps(spec.retry_policy)
                    trace = None if spec.trace_context is None else json.dumps(spec.trace_context)
                    lines.append(
                        f"{job_id}\t{_copy_text(spec.task)}\t{_copy_text(spec.queue)}\t{_copy_text(spec.args_json)}\t"
                        f"{int(spec.priority)}\t{int(spec.max_attempts)}\t"
                        f"{now_text if at is now else at.isoformat()}\t{state}\t"
                        f"{_copy_text(policy)}\t{_copy_text(trace)}\t{_copy_text(spec.limit_key)}\n"
                    )
                    # Made while the server takes in the rows already sent (it runs on its own core).
                    jobs.append(self._new_job(spec, (job_id, state, at, now)))
                    if len(lines) >= _COPY_CHUNK:
                        copy.write("".join(lines))
                        lines.clear()
                if lines:
                    copy.write("".join(lines))
            if queues:
                conn.execute(self._sql.notify_queues, {"channel": self.channel, "queues": sorted(queues)})
        return jobs

    def _holders(self, conn: psycopg.Connection[Any], specs: Sequence[JobSpec]) -> list[Job | None]:
        """For each unique spec, the job holding its key in the spec's scope of states, or None."""
        params = {
            "tasks": [s.task for s in specs],
            "keys": [s.unique_key for s in specs],
            "states": [",".join(s.unique_states or ()) for s in specs],
        }
        found: list[Job | None] = [None] * len(specs)
        for row in conn.execute(self._sql.unique_holders, params).fetchall():
            found[int(row[0]) - 1] = _job_from_row(row[1:], duplicate=True)
        return found

    def _insert_unique(self, conn: psycopg.Connection[Any], specs: Sequence[JobSpec]) -> list[Job]:
        """Insert with unique keys: a refused spec returns the job that holds its key."""
        result: list[Job | None] = [None] * len(specs)
        todo = list(range(len(specs)))
        # A scope beyond the queued and running states (the index's) also refuses finished twins:
        # look those up first. A row only finishes after being queued or running, so a finished
        # twin that is not there now can only appear after the index itself refused us.
        wide = [i for i in todo if set(specs[i].unique_states or ()) - _ACTIVE_SET]
        if wide:
            for i, holder in zip(wide, self._holders(conn, [specs[i] for i in wide]), strict=True):
                result[i] = holder
            todo = [i for i in todo if result[i] is None]
        for _ in range(5):
            if not todo:
                break
            batch = [specs[i] for i in todo]
            rows = conn.execute(self._sql.insert_unique, self._insert_params(batch)).fetchall()
            matched = self._match(batch, rows)
            missing = [i for i, job in zip(todo, matched, strict=True) if job is None]
            for i, job in zip(todo, matched, strict=True):
                result[i] = job
            if not missing:
                break
            todo = []
            for i, holder in zip(missing, self._holders(conn, [specs[i] for i in missing]), strict=True):
                if holder is None:
                    todo.append(i)  # the holder left the scope meanwhile: insert again
                else:
                    result[i] = holder
        if any(job is None for job in result):
            raise DatabaseError("could not insert or find the holders of some unique jobs after 5 tries; retry")
        return [job for job in result if job is not None]

    def _insert_graph(self, conn: psycopg.Connection[Any], specs: Sequence[JobSpec]) -> list[Job]:
        """Jobs with dependencies, in one transaction (see ``_common.insert_graph``)."""
        return insert_graph(
            specs,
            insert=lambda roots: self._insert_on(conn, roots),
            insert_dependent=lambda spec, deps: self._insert_dependent(conn, spec, deps),
            transaction=lambda: self._atomic(conn),
        )

    def _insert_dependent(self, conn: psycopg.Connection[Any], spec: JobSpec, deps: list[int]) -> Job:
        params = {
            **self._one_params(spec),
            "unique_key": spec.unique_key,
            "unique_states": None if spec.unique_states is None else ",".join(spec.unique_states),
            "deps": deps,
        }
        query = self._sql.insert_dep if spec.unique_key is None else self._sql.insert_dep_unique
        row = conn.execute(query, params).fetchone()
        assert row is not None
        found = set(row[4] or ())
        missing = [d for d in deps if d not in found]
        if missing:
            raise ConfigurationError(
                f"{spec.task}: depends_on names job(s) {missing} that do not exist (never deferred, or pruned); "
                "nothing was enqueued"
            )
        if row[0] is None:
            holder = self._holders(conn, [spec])[0]
            if holder is None:
                raise DatabaseError(f"{spec.task}: the unique job holding key {spec.unique_key!r} vanished; retry")
            return holder
        if row[1] == "cancelled":
            fresh = conn.execute(self._sql.get, {"id": row[0]}).fetchone()
            assert fresh is not None
            return _job_from_row(fresh)
        return attrs.evolve(self._new_job(spec, row), depends_on=tuple(deps))

    @staticmethod
    def _refuse_connection(connection: object, *, allow_async: bool) -> NoReturn:
        kinds = "a psycopg.Connection or psycopg.AsyncConnection" if allow_async else "a psycopg.Connection"
        raise TypeError(f"connection= must be {kinds} with an open transaction, got {type(connection).__name__}")

    def insert_jobs_sync(self, specs: Sequence[JobSpec], *, connection: UserConnection | None = None) -> list[Job]:
        if not specs:
            return []
        if connection is None:
            return self._run(lambda c: self._insert_on(c, specs))
        if not isinstance(connection, psycopg.Connection):
            self._refuse_connection(connection, allow_async=False)
        try:
            return self._insert_on(connection, specs)
        except psycopg.Error as exc:
            raise self._translate(exc) from exc

    async def insert_jobs(self, specs: Sequence[JobSpec], *, connection: UserConnection | None = None) -> list[Job]:
        if not specs:
            return []
        if connection is None:
            plain = self._plain_insert(specs)
            if plain is not None:  # one statement: straight from the event loop
                if len(specs) == 1 and self.prepared_insert:
                    job = await self._insert_one_prepared(specs[0])
                    if job is not None:
                        return [job]
                rows = await self._direct(*plain)
                return [self._new_job(spec, row) for spec, row in zip(specs, rows, strict=True)]
            return await self._hop(lambda c: self._insert_on(c, specs))
        if not isinstance(connection, (psycopg.Connection, psycopg.AsyncConnection)):
            self._refuse_connection(connection, allow_async=True)
        if isinstance(connection, psycopg.AsyncConnection):
            if any(s.depends_on for s in specs):
                raise ConfigurationError(
                    "jobs with depends_on= cannot be enqueued on a psycopg.AsyncConnection yet; use a sync "
                    "psycopg.Connection or no connection="
                )
            if any(s.unique_key is not None for s in specs):
                raise ConfigurationError(
                    "unique jobs cannot be enqueued on a psycopg.AsyncConnection yet; use a sync psycopg.Connection "
                    "or no connection="
                )
            try:
                cur = await connection.execute(self._sql.insert, self._insert_params(specs))
                rows = await cur.fetchall()
            except psycopg.Error as exc:
                raise self._translate(exc) from exc
            return [self._new_job(spec, row) for spec, row in zip(specs, rows, strict=True)]
        return await anyio.to_thread.run_sync(lambda: self.insert_jobs_sync(specs, connection=connection))

    # --- one task's jobs in bulk (task.defer_batch): ids only ----------------------------------

    def _batch_params(self, batch: JobBatch) -> dict[str, Any]:
        """The many-job INSERT's parameters for a small batch: its shared options once per job."""
        n = len(batch.args_json)
        policy = None if batch.retry_policy is None else json.dumps(batch.retry_policy)
        nothing: list[str | None] = [None] * n
        return {
            "tasks": [batch.task] * n,
            "queues": [batch.queue] * n,
            "args": list(batch.args_json),
            "priorities": [batch.priority] * n,
            "max_attempts": [batch.max_attempts] * n,
            "scheduled": [batch.scheduled_at] * n,
            "delays": [batch.delay] * n,
            "unique_keys": nothing,
            "unique_states": nothing,
            "retry_policies": [policy] * n,
            "trace_contexts": nothing,
            "limit_keys": nothing,
            "channel": self.channel,
        }

    def _insert_batch_on(self, conn: psycopg.Connection[Any], batch: JobBatch) -> list[int]:
        if len(batch.args_json) < _COPY_MIN:
            return [int(row[0]) for row in conn.execute(self._sql.insert, self._batch_params(batch)).fetchall()]
        return self._copy_batch(conn, batch)

    def _copy_batch(self, conn: psycopg.Connection[Any], batch: JobBatch) -> list[int]:
        """The jobs of *batch* in one transaction (the caller's, if it has one): ids, COPY, one NOTIFY.

        Only the id and the arguments differ from row to row, so the rest of each row is formatted
        once for the whole batch.
        """
        args = batch.args_json
        n = len(args)
        with self._atomic(conn):
            row = conn.execute(self._sql.copy_prepare, {"table": f"{self.schema}.jobs", "n": n}).fetchone()
            assert row is not None
            now: dt.datetime = row[0]
            ids: list[int] = row[1]
            if batch.scheduled_at is not None:
                at = batch.scheduled_at
            elif batch.delay:
                at = now + dt.timedelta(seconds=batch.delay)
            else:
                at = now
            available = at <= now
            policy = None if batch.retry_policy is None else json.dumps(batch.retry_policy)
            middle = f"\t{_copy_text(batch.task)}\t{_copy_text(batch.queue)}\t"
            tail = (
                f"\t{int(batch.priority)}\t{int(batch.max_attempts)}\t{at.isoformat()}\t"
                f"{'available' if available else 'scheduled'}\t{_copy_text(policy)}\t\\N\t\\N\n"
            )
            with conn.cursor().copy(self._sql.copy) as copy:
                for start in range(0, n, _COPY_CHUNK):
                    end = start + _COPY_CHUNK
                    copy.write(
                        "".join(
                            [
                                f"{job_id}{middle}{_copy_text(text)}{tail}"
                                for job_id, text in zip(ids[start:end], args[start:end], strict=True)
                            ]
                        )
                    )
            if available:
                conn.execute(self._sql.notify_queues, {"channel": self.channel, "queues": [batch.queue]})
        return ids

    def insert_batch_sync(self, batch: JobBatch, *, connection: UserConnection | None = None) -> list[int]:
        if not batch.args_json:
            return []
        if connection is None:
            return self._run(lambda c: self._insert_batch_on(c, batch))
        if not isinstance(connection, psycopg.Connection):
            self._refuse_connection(connection, allow_async=False)
        try:
            return self._insert_batch_on(connection, batch)
        except psycopg.Error as exc:
            raise self._translate(exc) from exc

    async def insert_batch(self, batch: JobBatch, *, connection: UserConnection | None = None) -> list[int]:
        if not batch.args_json:
            return []
        if connection is None:
            if len(batch.args_json) < _COPY_MIN:  # one statement: straight from the event loop
                return [int(row[0]) for row in await self._direct(self._sql.insert, self._batch_params(batch))]
            return await self._hop(lambda c: self._copy_batch(c, batch))
        if not isinstance(connection, (psycopg.Connection, psycopg.AsyncConnection)):
            self._refuse_connection(connection, allow_async=True)
        if isinstance(connection, psycopg.AsyncConnection):
            try:
                cur = await connection.execute(self._sql.insert, self._batch_params(batch))
                rows = await cur.fetchall()
            except psycopg.Error as exc:
                raise self._translate(exc) from exc
            return [int(row[0]) for row in rows]
        return await anyio.to_thread.run_sync(lambda: self.insert_batch_sync(batch, connection=connection))

    async def _insert_one_prepared(self, spec: JobSpec) -> Job | None:
        """One plain job through our own prepared statement (see ``_direct_prepared``); None when no
        pooled connection is idle."""
        params = self._one_params(spec)
        result = await self._direct_prepared(
            _INSERT_ONE_NAME,
            self._sql.insert_one_numbered,
            self._insert_one_types,
            [_param_text(params[name]) for name in self._sql.insert_one_names],
        )
        if result is None:
            return None
        row = (
            _binary_int(result.get_value(0, 0)),
            (result.get_value(0, 1) or b"").decode(),
            _binary_time(result.get_value(0, 2)),
            _binary_time(result.get_value(0, 3)),
        )
        return self._new_job(spec, row)

    async def get_job(self, job_id: int) -> Job | None:
        rows = await self._direct(self._sql.get, {"id": job_id})
        return _job_from_row(rows[0]) if rows else None

    async def fetch_jobs(
        self, *, worker_id: str, queues: Sequence[str], limit: int, exclude_tasks: Sequence[str] = ()
    ) -> list[Job]:
        params: dict[str, Any] = {"limit": limit, "worker": worker_id}
        sql_ = self._sql
        query = _claim_query(
            params, queues, exclude_tasks, (sql_.fetch_one, sql_.fetch_one_not, sql_.fetch, sql_.fetch_not)
        )
        rows = await self._direct(query, params)
        return _by_priority([_job_from_row(r) for r in rows])

    async def fetch_limited(
        self,
        *,
        worker_id: str,
        queues: Sequence[str],
        limit: int,
        config: Mapping[str, TaskLimits],
        adopt: bool = False,
    ) -> LimitedClaim:
        params = {
            "worker": worker_id,
            "queues": list(queues),
            "limit": limit,
            "cfg": _limits_json(config),
            "adopt": adopt,
        }
        rows = await self._direct(self._sql.claim_limited, params)
        jobs = _by_priority([_job_from_row(r[:19]) for r in rows if r[0] is not None])
        wakes = [float(r[19]) for r in rows if r[0] is None and r[19] is not None]
        held = tuple(sorted({r[20].split(":", 1)[1] for r in rows if r[0] is None and r[20]}))
        return LimitedClaim(jobs=tuple(jobs), wake=min(wakes) if wakes else None, breakers_open=held)

    async def set_queue_limits(self, name: str, *, max_concurrency: int | None, rate: RateLimit | None) -> None:
        params = {
            "name": name,
            "concurrency": max_concurrency,
            "rate": None if rate is None else rate.count,
            "period": None if rate is None else rate.period,
            "channel": self.channel,
        }
        await self._hop(lambda c: c.execute(self._sql.set_limits, params).fetchall())

    async def register_breakers(self, breakers: Sequence[BreakerConfig]) -> None:
        if not breakers:
            return
        params = {
            "tasks": [b.task for b in breakers],
            "thresholds": [b.threshold for b in breakers],
            "cooldowns": [b.cooldown for b in breakers],
        }
        await self._hop(lambda c: c.execute(self._sql.register_breakers, params))

    async def list_breakers(self) -> list[BreakerInfo]:
        rows = await self._hop(lambda c: c.execute(self._sql.list_breakers).fetchall())
        return [
            BreakerInfo(
                task=r[0],
                state=r[1],
                failures=r[2],
                threshold=r[3],
                cooldown=r[4],
                opened_at=r[5],
                probe_job_id=r[6],
                now=r[7],
            )
            for r in rows
        ]

    async def finish_jobs(self, *, worker_id: str, completions: Sequence[Completion], error_cap: int) -> list[int]:
        if not completions:
            return []
        rows = await self._direct(self._sql.finish, self._finish_params(worker_id, completions, error_cap))
        return _applied(rows)

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
        if limit <= 0:
            return await self.finish_jobs(worker_id=worker_id, completions=completions, error_cap=error_cap), []
        params: dict[str, Any] = self._finish_params(worker_id, completions, error_cap)
        params["limit"] = limit
        sql_ = self._sql
        variants = (sql_.finish_fetch_one, sql_.finish_fetch_one_not, sql_.finish_fetch, sql_.finish_fetch_not)
        rows = await self._direct(_claim_query(params, queues, exclude_tasks, variants), params)
        return _applied(rows), _by_priority([_job_from_row(r[3:]) for r in rows if r[3] is not None])

    def _finish_params(self, worker_id: str, completions: Sequence[Completion], error_cap: int) -> dict[str, Any]:
        # Each array as its literal (the statement casts each one): psycopg's list adaptation looks
        # up a dumper and quotes every element, which cost more than the rest of a no-op job.
        return {
            "ids": _int_array([c.job_id for c in completions]),
            "attempts": _int_array([c.attempt for c in completions]),
            "leases": _time_array([c.attempted_at for c in completions]),
            "states": _text_array([c.transition.state.value for c in completions]),
            "delays": _float_array([c.transition.delay for c in completions]),
            "ats": _time_array([c.transition.at for c in completions]),
            "errors": _text_array(
                [None if c.transition.error is None else error_entry(c.transition.error) for c in completions]
            ),
            "give_back": _int_array([int(c.transition.give_back_attempt) for c in completions]),
            "results": _text_array([c.result_json for c in completions]),
            "worker": worker_id,
            "cap": error_cap,
            "channel": self.channel,
        }

    # --- workers and maintenance --------------------------------------------------------------

    @staticmethod
    def _worker_params(info: WorkerInfo) -> dict[str, Any]:
        return {
            "id": info.id,
            "hostname": info.hostname,
            "pid": info.pid,
            "queues": list(info.queues),
            "concurrency": info.concurrency,
            "supervisor_id": info.supervisor_id,
            "child_index": info.child_index,
            "restarts": info.restarts,
            "last_exit": info.last_exit,
        }

    async def register_worker(self, info: WorkerInfo) -> None:
        params = self._worker_params(info)
        await self._hop(lambda c: c.execute(self._sql.register, params))

    async def heartbeat(self, info: WorkerInfo, load: WorkerLoad | None = None) -> bool:
        def beat(c: psycopg.Connection[Any]) -> bool:
            if load is None:
                updated = c.execute(self._sql.heartbeat, {"id": info.id}).rowcount
            else:
                params = {"id": info.id, **attrs.asdict(load)}
                updated = c.execute(self._sql.heartbeat_load, params).rowcount
            if updated:
                return True
            c.execute(self._sql.register, self._worker_params(info))
            if load is not None:
                c.execute(self._sql.heartbeat_load, {"id": info.id, **attrs.asdict(load)})
            return False

        return await self._hop(beat)

    async def deregister_worker(self, worker_id: str) -> None:
        await self._hop(lambda c: c.execute(self._sql.deregister, {"id": worker_id}))

    async def promote_due(self, *, limit: int) -> int:
        params = {"limit": limit, "channel": self.channel}
        row = await self._hop(lambda c: c.execute(self._sql.promote, params).fetchone())
        return int(row[0]) if row else 0

    async def rescue_orphans(self, *, rescuer_id: str, rescue_after: float, limit: int, error_cap: int) -> RescueResult:
        params = {"after": rescue_after, "limit": limit, "rescuer": rescuer_id, "cap": error_cap}

        def rescue(c: psycopg.Connection[Any]) -> RescueResult:
            states = [r[0] for r in c.execute(self._sql.rescue, params).fetchall()]
            removed = c.execute(self._sql.delete_dead, {"after": rescue_after}).rowcount
            return RescueResult(
                retryable=states.count("retryable"),
                discarded=states.count("discarded"),
                cancelled=states.count("cancelled"),
                workers_removed=removed,
            )

        return await self._hop(rescue)

    async def executing_ids(self, *, worker_id: str, older_than: float) -> list[ClaimedAttempt]:
        params = {"worker": worker_id, "older": older_than}
        rows = await self._hop(lambda c: c.execute(self._sql.executing, params).fetchall())
        return [ClaimedAttempt(job_id=int(r[0]), attempt=int(r[1]), attempted_at=r[2]) for r in rows]

    # --- job control --------------------------------------------------------------------------

    async def cancel_job(self, job_id: int, *, error_cap: int) -> CancelResult | None:
        params = {"id": job_id, "channel": self.channel, "cap": error_cap}

        def cancel(c: psycopg.Connection[Any]) -> CancelResult | None:
            # Three single-statement steps; a job that moves between them is simply tried again.
            for _ in range(5):
                row = c.execute(self._sql.cancel_waiting, params).fetchone()
                if row is not None:
                    return CancelResult(job=_job_from_row(row), status="cancelled")
                row = c.execute(self._sql.cancel_executing, params).fetchone()
                if row is not None:
                    return CancelResult(job=_job_from_row(row), status="requested")
                row = c.execute(self._sql.get, params).fetchone()
                if row is None:
                    return None
                job = _job_from_row(row)
                if job.state.is_terminal:
                    return CancelResult(job=job, status="already_finished")
            raise DatabaseError(f"job {job_id} kept changing state while being cancelled; try again")

        return await self._hop(cancel)

    async def cancel_requested(self, *, worker_id: str) -> list[CancelRequest]:
        params = {"worker": worker_id}
        rows = await self._hop(lambda c: c.execute(self._sql.cancel_requested, params).fetchall())
        return [CancelRequest(job_id=int(r[0]), attempt=int(r[1])) for r in rows]

    async def retry_job(self, job_id: int) -> Job | None:
        params = {"id": job_id, "channel": self.channel}

        def retry(c: psycopg.Connection[Any]) -> Job | None:
            try:
                row = c.execute(self._sql.retry, params).fetchone()
            except psycopg.errors.UniqueViolation:
                raise JobStateError(
                    f"job {job_id} cannot be retried: another job of its task with the same unique key is queued or "
                    "running; cancel that one first, or wait for it to finish"
                ) from None
            if row is None:
                failed = c.execute(self._sql.failed_parents, params).fetchall()
                if failed:
                    names = ", ".join(f"{r[0]} ({r[1]}, {r[2]})" for r in failed)
                    raise JobStateError(
                        f"job {job_id} cannot be retried: it depends on job(s) that did not complete: {names}; "
                        "retry those first"
                    )
            return None if row is None else _job_from_row(row)

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
        where: list[sql.Composable] = []
        params: dict[str, Any] = {"limit": limit}
        if states is not None:
            where.append(sql.SQL("state = ANY(%(states)s::text[])"))
            params["states"] = list(states)
        if queue is not None:
            where.append(sql.SQL("queue = %(queue)s"))
            params["queue"] = queue
        if task is not None:
            where.append(sql.SQL("task = %(task)s"))
            params["task"] = task
        if before_id is not None:
            where.append(sql.SQL("id < %(before)s"))
            params["before"] = before_id
        head = sql.SQL("SELECT {cols} FROM {s}.jobs").format(cols=sql.SQL(JOB_COLUMNS), s=self._sql.ident)
        query = ordered_page(head, where, order="id DESC", by_task=task is not None)
        rows = await self._hop(lambda c: c.execute(query, params).fetchall())
        return [_job_from_row(r) for r in rows]

    @staticmethod
    def _selection_where(selection: JobSelection, params: dict[str, Any]) -> list[sql.Composable]:
        """The WHERE terms of *selection*, its parameters added to *params*."""
        where: list[sql.Composable] = []
        if selection.states is not None:
            where.append(sql.SQL("state = ANY(%(states)s::text[])"))
            params["states"] = list(selection.states)
        if selection.queue is not None:
            where.append(sql.SQL("queue = %(queue)s"))
            params["queue"] = selection.queue
        if selection.task is not None:
            where.append(sql.SQL("task = %(task)s"))
            params["task"] = selection.task
        if selection.older_than is not None:
            where.append(sql.SQL("inserted_at <= now() - %(age)s * interval '1 second'"))
            params["age"] = selection.older_than
        if selection.finished_older_than is not None:
            where.append(sql.SQL("finished_at < now() - %(finished_age)s * interval '1 second'"))
            params["finished_age"] = selection.finished_older_than
        if selection.min_id is not None:
            where.append(sql.SQL("id >= %(min_id)s"))
            params["min_id"] = selection.min_id
        if selection.max_id is not None:
            where.append(sql.SQL("id <= %(max_id)s"))
            params["max_id"] = selection.max_id
        return where

    async def count_jobs(self, selection: JobSelection) -> JobCount:
        params: dict[str, Any] = {}
        where = self._selection_where(selection, params)
        head = sql.SQL("SELECT count(*) AS n, max(id) AS top FROM {s}.jobs").format(s=self._sql.ident)
        if selection.task is None:
            query = sql.SQL("{} {}").format(
                head, sql.SQL("WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL("")
            )
        else:
            # jobs_task_idx leaves the executing jobs out (migration 10): count them apart.
            query = sql.SQL("SELECT sum(n), max(top) FROM ({} WHERE {} UNION ALL {} WHERE {}) AS arms").format(
                head,
                sql.SQL(" AND ").join([*where, sql.SQL("state <> 'executing'")]),
                head,
                sql.SQL(" AND ").join([*where, sql.SQL("state = 'executing'")]),
            )
        row = await self._hop(lambda c: c.execute(query, params).fetchone())
        assert row is not None
        return JobCount(count=int(row[0]), max_id=None if row[1] is None else int(row[1]))

    async def select_job_ids(self, selection: JobSelection, *, after_id: int, limit: int) -> list[int]:
        params: dict[str, Any] = {"after": after_id, "limit": limit}
        where = [*self._selection_where(selection, params), sql.SQL("id > %(after)s")]
        head = sql.SQL("SELECT id FROM {s}.jobs").format(s=self._sql.ident)
        query = ordered_page(head, where, order="id", by_task=selection.task is not None)
        rows = await self._hop(lambda c: c.execute(query, params).fetchall())
        return [int(r[0]) for r in rows]

    def _lock_in_states(self, c: psycopg.Connection[Any], ids: Sequence[int], states: Sequence[str]) -> list[Any]:
        """Lock, in id order, the rows of *ids* still in one of *states* (their id and state)."""
        query = sql.SQL(
            "SELECT id, state FROM {s}.jobs WHERE id = ANY(%(ids)s::bigint[]) AND state = ANY(%(states)s::text[]) "
            "ORDER BY id FOR UPDATE"
        ).format(s=self._sql.ident)
        return c.execute(query, {"ids": list(ids), "states": list(states)}).fetchall()

    async def cancel_jobs(self, ids: Sequence[int], *, states: Sequence[str], error_cap: int) -> BulkChange:
        def cancel(c: psycopg.Connection[Any]) -> BulkChange:
            cancelled = requested = 0
            with c.transaction():
                # Locked rows cannot move until the commit, so each one takes the single-job
                # cancel statement of the state it was found in (a guarded write all the same).
                for job_id, state in self._lock_in_states(c, ids, states):
                    params = {"id": job_id, "channel": self.channel, "cap": error_cap}
                    if state == "executing":
                        requested += c.execute(self._sql.cancel_executing, params).fetchone() is not None
                    else:
                        cancelled += c.execute(self._sql.cancel_waiting, params).fetchone() is not None
            return BulkChange(changed=cancelled, requested=requested)

        return await self._hop(cancel)

    async def retry_jobs(self, ids: Sequence[int], *, states: Sequence[str]) -> BulkChange:
        def retry(c: psycopg.Connection[Any]) -> BulkChange:
            retried = 0
            with c.transaction():
                for job_id, _ in self._lock_in_states(c, ids, states):
                    try:
                        with c.transaction():  # a savepoint: a refused retry leaves the others
                            row = c.execute(self._sql.retry, {"id": job_id, "channel": self.channel}).fetchone()
                    except psycopg.errors.UniqueViolation:
                        continue
                    retried += row is not None
            return BulkChange(changed=retried)

        return await self._hop(retry)

    async def delete_jobs(self, ids: Sequence[int], *, states: Sequence[str]) -> BulkChange:
        query = sql.SQL(
            "DELETE FROM {s}.jobs WHERE id = ANY(%(ids)s::bigint[]) AND state = ANY(%(states)s::text[]) "
            "AND state <> 'executing'"
        ).format(s=self._sql.ident)
        params = {"ids": list(ids), "states": list(states)}
        deleted = await self._hop(lambda c: c.execute(query, params).rowcount)
        return BulkChange(changed=deleted)

    async def prune_jobs(self, *, state: str, older_than: float, limit: int) -> int:
        params = {"state": state, "age": older_than, "limit": limit}
        return await self._hop(lambda c: c.execute(self._sql.prune, params).rowcount)

    async def queue_depth(self) -> list[QueueDepth]:
        rows = await self._hop(lambda c: c.execute(self._sql.queue_depth).fetchall())
        return [QueueDepth(queue=str(r[0]), state=str(r[1]), count=int(r[2])) for r in rows]

    async def database_health(self) -> DatabaseHealth:
        params = {"jobs": f'"{self.schema}".jobs'}  # a checked schema name: letters, digits, underscores
        row = await self._hop(lambda c: c.execute(self._sql.database_health, params).fetchone())
        assert row is not None  # an aggregate always has its row
        oldest = None
        if row[0] is not None:
            oldest = OldestTransaction(
                age=max(0.0, float(row[0])), pid=int(row[1]), state=row[2], application_name=str(row[3])
            )
        return DatabaseHealth(
            engine="postgresql", oldest_transaction=oldest, dead_tuples=int(row[4]), live_tuples=int(row[5])
        )

    async def list_workers(self) -> list[WorkerRow]:
        rows = await self._hop(lambda c: c.execute(self._sql.list_workers).fetchall())
        return [
            WorkerRow(
                id=r[0],
                hostname=r[1],
                pid=r[2],
                queues=tuple(r[3]),
                concurrency=r[4],
                started_at=r[5],
                heartbeat_at=r[6],
                state=r[7],
                processed=r[8],
                failed=r[9],
                running=r[10],
                supervisor_id=r[11],
                child_index=r[12],
                restarts=r[13],
                last_exit=r[15],
                now=r[14],
            )
            for r in rows
        ]

    async def set_queue_paused(self, name: str, *, paused: bool) -> bool:
        params = {"name": name, "paused": paused, "channel": self.channel}
        row = await self._hop(lambda c: c.execute(self._sql.set_paused, params).fetchone())
        return bool(row is not None and row[0])

    async def list_queues(self, name: str | None = None) -> list[QueueInfo]:
        rows = await self._hop(lambda c: c.execute(self._sql.list_queues, {"name": name}).fetchall())
        return [
            QueueInfo(
                name=r[0],
                paused=bool(r[1]),
                paused_at=r[2],
                counts={state: int(n) for state, n in sorted(r[3].items())},
                oldest_available_at=r[4],
                now=r[5],
                max_concurrency=r[6],
                rate_limit=None if r[7] is None else str(RateLimit(count=r[7], period=r[8])),
            )
            for r in rows
        ]

    # --- the dashboard's reads (see _insights.py) ------------------------------------------------

    async def search_jobs(self, search: JobSearch, *, limit: int, time_limit: float) -> list[Job]:
        query, params = _dashboard.search_query(self._sql.ident, JOB_COLUMNS, search, limit)

        def read(c: psycopg.Connection[Any]) -> list[Any]:
            with c.transaction():
                _dashboard.begin(c, time_limit)
                return list(_dashboard.rows(c, query, params))

        return [_job_from_row(r) for r in await self._hop(read)]

    async def run_job_now(self, job_id: int) -> Job | None:
        query = _dashboard.run_now_query(self._sql.ident, JOB_COLUMNS)
        rows = await self._hop(lambda c: c.execute(query, {"id": job_id, "channel": self.channel}).fetchall())
        return _job_from_row(rows[0][:-1]) if rows else None

    async def dashboard_counts(
        self, *, queue: str | None, cap: int, time_limit: float, finished: bool = True
    ) -> DashboardCounts:
        def read(c: psycopg.Connection[Any]) -> DashboardCounts:
            with c.transaction():
                _dashboard.begin(c, time_limit)
                return _dashboard.dashboard_counts(c, self._sql.ident, queue=queue, cap=cap, finished=finished)

        return await self._hop(read)

    async def job_dependants(self, job_id: int, *, limit: int, time_limit: float) -> list[Job]:
        query = _dashboard.dependants_query(self._sql.ident, JOB_COLUMNS)

        def read(c: psycopg.Connection[Any]) -> list[Any]:
            with c.transaction():
                _dashboard.begin(c, time_limit)
                return list(_dashboard.rows(c, query, {"id": job_id, "limit": limit}))

        return [_job_from_row(r) for r in await self._hop(read)]

    def listener(self) -> PostgresListener:
        return PostgresListener(self)

    # --- durable steps (see _steps.py) ----------------------------------------------------------

    # Steps and progress are single statements: sent from the event loop, as the claim is.

    async def job_steps(self, job_id: int, *, limit: int | None = None) -> list[JobStep]:
        return _steps.steps_from_rows(await self._direct(self._steps.steps, {"id": job_id, "limit": limit}))

    async def durable_overview(self, *, limit: int) -> DurableOverview:
        return await self._hop(lambda c: _steps.durable_overview(c, self._steps, limit=limit))

    async def record_steps(self, records: Sequence[StepWrite]) -> list[bool]:
        if len(records) == 1:  # the statement of one record: no arrays to build and unpack
            return [bool(await self._direct(self._steps.record, _steps.record_params(records[0])))]
        leases = [r.lease for r in records]
        params = {
            "ids": _int_array([x.job_id for x in leases]),
            "attempts": _int_array([x.attempt for x in leases]),
            "workers": _text_array([x.worker_id for x in leases]),
            "leases": _time_array([x.attempted_at for x in leases]),
            "names": _text_array([r.name for r in records]),
            "positions": _int_array([r.position for r in records]),
            "states": _text_array(["failed" if r.error is not None else "completed" for r in records]),
            "results": _text_array([r.result_json if r.error is None else None for r in records]),
            "errors": _text_array([None if r.error is None else error_entry(r.error) for r in records]),
            "durations": _float_array([r.duration for r in records]),
        }
        written = {(int(row[0]), str(row[1])) for row in await self._direct(self._steps.record_many, params)}
        return [(r.lease.job_id, r.name) in written for r in records]

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
            lambda c: _steps.wait_step_or_abort(
                c, self._steps, lease, name=name, position=position, event=event, delay=delay, until=until
            )
        )

    async def set_progress(self, lease: Lease, *, done: float, total: float | None, note: str | None) -> bool:
        params = {**_steps.lease_params(lease), "done": done, "total": total, "note": note}
        return bool(await self._direct(self._steps.progress, params))

    def emit_event_sync(self, key: str, payload_json: str, *, connection: UserConnection | None = None) -> bool:
        if connection is None:
            return self._run(lambda c: self._emit_on(c, key, payload_json))
        if not isinstance(connection, psycopg.Connection):
            self._refuse_connection(connection, allow_async=False)
        try:
            return self._emit_on(connection, key, payload_json)
        except psycopg.Error as exc:
            raise self._translate(exc) from exc

    def _emit_on(self, conn: psycopg.Connection[Any], key: str, payload_json: str) -> bool:
        with self._atomic(conn):
            return _steps.emit(conn, self._steps, key, payload_json, self.channel)

    async def emit_event(self, key: str, payload_json: str, *, connection: UserConnection | None = None) -> bool:
        if connection is None:
            return await self._hop(lambda c: self._emit_on(c, key, payload_json))
        if isinstance(connection, psycopg.AsyncConnection):
            try:
                return await _steps.emit_async(connection, self._steps, key, payload_json, self.channel)
            except psycopg.Error as exc:
                raise self._translate(exc) from exc
        if not isinstance(connection, psycopg.Connection):
            self._refuse_connection(connection, allow_async=True)
        return await anyio.to_thread.run_sync(lambda: self.emit_event_sync(key, payload_json, connection=connection))

    async def prune_events(self, *, older_than: float, limit: int) -> int:
        params = {"age": older_than, "limit": limit}
        return int(await self._hop(lambda c: c.execute(self._steps.prune_events, params).rowcount))

    # --- periodic jobs (see _periodic.py) -----------------------------------------------------

    async def register_periodic(self, entries: Sequence[PeriodicEntry]) -> None:
        if not entries:
            return
        params = {
            "names": [e.name for e in entries],
            "crons": [e.cron for e in entries],
            "zones": [e.timezone for e in entries],
            "tasks": [e.task for e in entries],
            "queues": [e.queue for e in entries],
            "args": [e.args_json for e in entries],
        }
        query = self._sql.periodic_register
        await self._hop(lambda c: c.execute(query, params))

    async def periodic_state(self, names: Sequence[str]) -> PeriodicSnapshot:
        query = self._sql.periodic_state
        rows = await self._hop(lambda c: c.execute(query, {"names": list(names)}).fetchall())
        states = {
            r[1]: PeriodicState(last_tick=r[2], active_since=r[3], paused=bool(r[4])) for r in rows if r[1] is not None
        }
        return PeriodicSnapshot(now=rows[0][0], states=states)

    async def enqueue_periodic(
        self, *, name: str, tick: dt.datetime, catch_up: float, spec: JobSpec
    ) -> PeriodicEnqueued | None:
        params = {
            "name": name,
            "tick": tick,
            "catch_up": catch_up,
            "table": f"{self.schema}.jobs",
            "task": spec.task,
            "queue": spec.queue,
            "args": spec.args_json,
            "priority": spec.priority,
            "max_attempts": spec.max_attempts,
            "unique_key": spec.unique_key,
            "unique_states": None if spec.unique_states is None else ",".join(spec.unique_states),
            "retry_policy": None if spec.retry_policy is None else json.dumps(spec.retry_policy),
            "limit_key": spec.limit_key,
            "channel": self.channel,
        }
        query = self._sql.periodic_enqueue

        def enqueue(c: psycopg.Connection[Any]) -> PeriodicEnqueued | None:
            for _ in range(3):
                try:
                    row = c.execute(query, params).fetchone()
                except psycopg.errors.UniqueViolation:
                    # A twin with the same unique key was inserted after this statement's snapshot
                    # and before its insert: nothing was written; the next try sees the twin.
                    continue
                return None if row is None else PeriodicEnqueued(job_id=int(row[0]), held=bool(row[1]))
            raise DatabaseError(f"periodic {name!r}: the unique key of its job kept changing hands; retrying later")

        return await self._hop(enqueue)

    async def set_periodic_paused(self, name: str, *, paused: bool) -> bool | None:
        params = {"name": name, "paused": paused}
        row = await self._hop(lambda c: c.execute(self._sql.periodic_pause, params).fetchone())
        return None if row is None else bool(row[0]) != paused

    async def list_periodic(self) -> PeriodicListing:
        query = self._sql.periodic_list

        def read(c: psycopg.Connection[Any]) -> PeriodicListing:
            rows = c.execute(query).fetchall()
            now = c.execute("SELECT now()").fetchone()
            assert now is not None
            return PeriodicListing(
                now=now[0],
                rows=tuple(
                    PeriodicRow(
                        name=r[0],
                        cron=r[1],
                        timezone=r[2],
                        task=r[3],
                        queue=r[4],
                        args=r[5],
                        active_since=r[6],
                        last_tick=r[7],
                        last_job_id=r[8],
                        last_job_state=r[9],
                        updated_at=r[10],
                        paused_at=r[11],
                    )
                    for r in rows
                ),
            )

        return await self._hop(read)

    # --- the dashboard's data (see _insights.py) -------------------------------------------------

    async def write_rollups(self, rows: Sequence[RollupRow]) -> None:
        if not rows:
            return
        params = {
            "queues": [r.queue for r in rows],
            "tasks": [r.task for r in rows],
            "error_types": [r.error_type for r in rows],
            "completed": [r.completed for r in rows],
            "failed": [r.failed for r in rows],
            "discarded": [r.discarded for r in rows],
            "cancelled": [r.cancelled for r in rows],
            "durations": [r.duration_sum for r in rows],
            "histograms": ["{" + ",".join(map(str, r.histogram)) + "}" for r in rows],
        }
        await self._hop(lambda c: c.execute(self._dash.write_rollups, params))

    def _read(self, c: psycopg.Connection[Any], query: bytes, params: Mapping[str, Any]) -> list[Any]:
        """One dashboard read, under the statement timeout of ``_dashboard.READ_TIMEOUT``."""
        with c.transaction():
            c.execute(self._dash.read_timeout)
            return c.execute(query, params).fetchall()

    async def read_rollups(self, *, since: float, hourly: bool, step: float, task: str | None = None) -> RollupRead:
        query = self._dash.read_hours if hourly else self._dash.read_minutes
        params = {"since": since, "task": task, "step": step}

        def read(c: psycopg.Connection[Any]) -> RollupRead:
            rows = self._read(c, query, params)
            now = c.execute("SELECT now()").fetchone()
            assert now is not None
            return RollupRead(
                now=now[0],
                buckets=tuple(
                    RollupBucket(
                        at=r[0],
                        row=RollupRow(
                            queue=r[1],
                            task=r[2],
                            error_type=r[3],
                            completed=int(r[4]),
                            failed=int(r[5]),
                            discarded=int(r[6]),
                            cancelled=int(r[7]),
                            duration_sum=float(r[8]),
                            histogram=tuple(int(n) for n in r[9]),
                        ),
                    )
                    for r in rows
                ),
            )

        return await self._hop(read)

    async def prune_rollups(self, *, minute_older_than: float, hour_older_than: float) -> int:
        params = {"minute_age": minute_older_than, "hour_age": hour_older_than}
        row = await self._hop(lambda c: c.execute(self._dash.prune_rollups, params).fetchone())
        return int(row[0]) if row else 0

    async def record_audit(self, *, actor: str, action: str, target: Mapping[str, Any], count: int) -> AuditEntry:
        params = {"actor": actor, "action": action, "target": json.dumps(target), "count": count}
        row = await self._hop(lambda c: c.execute(self._dash.record_audit, params).fetchone())
        assert row is not None
        return AuditEntry(id=row[0], at=row[1], actor=row[2], action=row[3], target=row[4], count=int(row[5]))

    async def list_audit(self, *, limit: int, before_id: int | None = None) -> list[AuditEntry]:
        params = {"limit": limit, "before": before_id}
        rows = await self._hop(lambda c: self._read(c, self._dash.list_audit, params))
        return [AuditEntry(id=r[0], at=r[1], actor=r[2], action=r[3], target=r[4], count=int(r[5])) for r in rows]

    async def recent_failures(self, *, since: float, limit: int) -> list[Job]:
        params = {"since": since, "limit": limit}
        rows = await self._hop(lambda c: self._read(c, self._dash.recent_failures, params))
        return [_job_from_row(r) for r in rows]

    async def job_graph(self, job_id: int, *, max_depth: int, max_nodes: int) -> list[GraphNode]:
        def rows(found: list[Any]) -> list[tuple[int, str, str, str, tuple[int, ...]]]:
            return [(int(r[0]), r[1], r[2], r[3], tuple(r[4] or ())) for r in found]

        def walk(c: psycopg.Connection[Any]) -> list[GraphNode]:
            with c.transaction():
                c.execute(self._dash.read_timeout)
                return walk_graph(
                    job_id,
                    nodes=lambda ids: rows(c.execute(self._dash.graph_nodes, {"ids": ids}).fetchall()),
                    children=lambda ids, limit: rows(
                        c.execute(self._dash.graph_children, {"ids": ids, "limit": limit}).fetchall()
                    ),
                    max_depth=max_depth,
                    max_nodes=max_nodes,
                )

        return await self._hop(walk)
