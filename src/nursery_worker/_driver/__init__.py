"""The narrow interface between queue logic and a database engine.

Queue logic (app, worker, maintenance) talks to the database only through :class:`Driver`; SQL and
the database library are imported only by an engine's package: PostgreSQL (``postgres/``, psycopg)
and the embedded engine (``sqlite/``, the standard library's sqlite3). :func:`create_driver` picks
one by the DSN's scheme and imports only that one. What both share is in ``_common.py``; every
record a method takes or returns is in ``_models.py``. ``tests/conformance/`` runs one suite against
both: it is the definition of "the same semantics".

Layering: this package imports only ``_models``, ``_errors``, ``_state`` and ``_dsn`` (pure leaf
modules), never a feature module; ``tests/test_driver_layering.py`` checks it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from .._models import (
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
    Notification,
    PendingMigration,
    PeriodicEnqueued,
    PeriodicEntry,
    PeriodicListing,
    PeriodicSnapshot,
    QueueDepth,
    QueueInfo,
    RateLimit,
    RescueResult,
    RollupRead,
    RollupRow,
    StepWrite,
    TaskLimits,
    WaitResult,
    WorkerInfo,
    WorkerLoad,
    WorkerRow,
)
from ._common import SCHEMA_NAME as SCHEMA_NAME
from ._common import UserConnection as UserConnection

__all__ = ["SCHEMA_NAME", "Driver", "Listener", "Notification", "UserConnection", "create_driver"]


class Listener(Protocol):
    """One LISTEN connection. The worker's listener service owns reconnecting."""

    async def connect(self) -> None:
        """Open the connection and subscribe; raise ``DatabaseError`` if that fails."""

    async def wait(self, keepalive: float) -> list[Notification]:
        """Wait for notifications; after *keepalive* quiet seconds, check the link and return []."""

    async def aclose(self) -> None:
        """Close the connection; never raises."""


class Driver(Protocol):
    """What the queue needs from a database, one method per statement.

    Every write that moves an executing job is guarded by its state, attempt and worker id, so that
    a late write after a rescue or a shutdown changes nothing. Times are always the database's.
    """

    schema: str
    schema_version: int

    async def open(self) -> None:
        """Connect (or verify the engine is reachable); raise ``DatabaseError`` within seconds if not."""

    def open_sync(self) -> None:
        """Like :meth:`open`, from synchronous code (blocks the calling thread)."""

    async def aclose(self) -> None:
        """Release every connection."""

    def close_sync(self) -> None:
        """Release every connection, from synchronous code."""

    async def migrate(self) -> list[int]:
        """Apply pending migrations; return the versions applied."""

    def migrate_sync(self) -> list[int]:
        """Like :meth:`migrate`, from synchronous code."""

    def pending_migrations_sync(self) -> list[PendingMigration]:
        """The migrations :meth:`migrate` would apply now, in order, without applying (or creating) anything."""

    async def drop_schema(self) -> None:
        """Drop the schema and everything in it (the testing helpers' clean-up)."""

    async def check_schema(self) -> None:
        """Raise ``SchemaNotReady`` unless the schema is at exactly this version."""

    async def insert_jobs(self, specs: Sequence[JobSpec], *, connection: UserConnection | None = None) -> list[Job]:
        """Insert jobs in one statement, in order; in *connection*'s transaction if given."""

    def insert_jobs_sync(self, specs: Sequence[JobSpec], *, connection: UserConnection | None = None) -> list[Job]:
        """Like :meth:`insert_jobs`, from synchronous code."""

    async def insert_batch(self, batch: JobBatch, *, connection: UserConnection | None = None) -> list[int]:
        """Insert the jobs of *batch* in one transaction, in order, and return their ids (no ``Job``
        objects); in *connection*'s transaction if given; one notification per queue."""

    def insert_batch_sync(self, batch: JobBatch, *, connection: UserConnection | None = None) -> list[int]:
        """Like :meth:`insert_batch`, from synchronous code."""

    async def get_job(self, job_id: int) -> Job | None:
        """Return the job, or None."""

    async def fetch_jobs(
        self, *, worker_id: str, queues: Sequence[str], limit: int, exclude_tasks: Sequence[str] = ()
    ) -> list[Job]:
        """Claim up to *limit* available jobs (priority, then oldest first) for *worker_id*, leaving
        jobs without limits of *exclude_tasks* (the worker's limited tasks) to ``fetch_limited``."""

    async def fetch_limited(
        self,
        *,
        worker_id: str,
        queues: Sequence[str],
        limit: int,
        config: Mapping[str, TaskLimits],
        adopt: bool = False,
    ) -> LimitedClaim:
        """Claim up to *limit* jobs subject to task limits (*config*: by task, see ``_flow.limits_config``),
        queue limits or circuit breakers, never overshooting a limit across workers; plus when
        capacity frees by time and which breakers hold jobs back. With *adopt*, first give jobs of
        the configured tasks that were deferred without a limit key the unpartitioned key."""

    async def set_queue_limits(self, name: str, *, max_concurrency: int | None, rate: RateLimit | None) -> None:
        """Store a queue's limits (None lifts one) and nudge its workers."""

    async def register_breakers(self, breakers: Sequence[BreakerConfig]) -> None:
        """Create or update these breakers' thresholds and cooldowns, keeping their state."""

    async def list_breakers(self) -> list[BreakerInfo]:
        """Every breaker with its state, sorted by task."""

    async def finish_jobs(self, *, worker_id: str, completions: Sequence[Completion], error_cap: int) -> list[int]:
        """Apply decided transitions in one statement, each guarded by state, attempt, worker and
        lease (``attempted_at``); return the positions in *completions* of those that changed their
        row, in order (the others were late: their attempt was no longer this worker's)."""

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
        """``finish_jobs`` of *completions* and ``fetch_jobs`` of up to *limit* jobs in one write
        (both take effect or neither): the positions of the completions that changed their row, and
        the jobs claimed. The claim does not see what the finish made available."""

    async def register_worker(self, info: WorkerInfo) -> None:
        """Insert or refresh the worker's row."""

    async def heartbeat(self, info: WorkerInfo, load: WorkerLoad | None = None) -> bool:
        """Beat (recording *load* when given); return False if the row had vanished (declared dead)
        and was re-inserted."""

    async def deregister_worker(self, worker_id: str) -> None:
        """Delete the worker's row."""

    async def promote_due(self, *, limit: int) -> int:
        """Make due scheduled and retryable jobs available; return how many."""

    async def rescue_orphans(self, *, rescuer_id: str, rescue_after: float, limit: int, error_cap: int) -> RescueResult:
        """Rescue executing jobs whose worker has not beaten for *rescue_after* seconds."""

    async def executing_ids(self, *, worker_id: str, older_than: float) -> list[ClaimedAttempt]:
        """The attempts executing on *worker_id* that were claimed over *older_than* seconds ago."""

    async def cancel_job(self, job_id: int, *, error_cap: int) -> CancelResult | None:
        """Cancel a waiting job, or request the cancel of an executing one (and notify it).

        Returns the job after, with ``"cancelled"``, ``"requested"`` or ``"already_finished"``, or
        None when there is no such job."""

    async def cancel_requested(self, *, worker_id: str) -> list[CancelRequest]:
        """The attempts executing on *worker_id* whose cancel was requested."""

    async def retry_job(self, job_id: int) -> Job | None:
        """Make a discarded or cancelled job available again; None if it is in another state or
        does not exist. Raises ``JobStateError`` if a unique job holds its key."""

    async def list_jobs(
        self,
        *,
        states: Sequence[str] | None,
        queue: str | None,
        task: str | None,
        limit: int,
        before_id: int | None = None,
    ) -> list[Job]:
        """Jobs matching every filter given, newest first."""

    async def count_jobs(self, selection: JobSelection) -> JobCount:
        """How many jobs match *selection* now, and the highest id among them."""

    async def select_job_ids(self, selection: JobSelection, *, after_id: int, limit: int) -> list[int]:
        """Up to *limit* ids of jobs matching *selection* above *after_id*, ascending (a keyset page)."""

    async def cancel_jobs(self, ids: Sequence[int], *, states: Sequence[str], error_cap: int) -> BulkChange:
        """In one short transaction, cancel those of *ids* still in one of *states*: a waiting job at
        once, an executing one by a cancel request (as :meth:`cancel_job` does); others are left."""

    async def retry_jobs(self, ids: Sequence[int], *, states: Sequence[str]) -> BulkChange:
        """In one short transaction, retry those of *ids* still in one of *states* (as
        :meth:`retry_job` does); one whose retry is refused (unique key, failed dependency) is left."""

    async def delete_jobs(self, ids: Sequence[int], *, states: Sequence[str]) -> BulkChange:
        """In one statement, delete those of *ids* still in one of *states*, never an executing one."""

    async def prune_jobs(self, *, state: str, older_than: float, limit: int) -> int:
        """Delete up to *limit* jobs finished in *state* over *older_than* seconds ago; return how many."""

    async def queue_depth(self) -> list[QueueDepth]:
        """How many jobs each queue has in each non-final state (pending, scheduled, available,
        executing, retryable), by queue and state, for the metrics."""

    async def database_health(self) -> DatabaseHealth:
        """In one cheap statement: the oldest open transaction on the server and the jobs table's dead
        and live tuples (PostgreSQL), or the write-ahead log's size (SQLite), for metrics and status."""

    def set_idle_in_transaction_timeout(self, seconds: float) -> None:
        """End any session of this driver left idle inside a transaction for over *seconds* (0: never).

        PostgreSQL: ``idle_in_transaction_session_timeout`` on every connection the driver opens
        (pool, listener, migrations; never a connection the caller passes in); a pooled session
        takes a new value before its next statement. SQLite: nothing (no server, no such sessions)."""

    def observe(self, callback: Callable[[Exception | None], None]) -> Callable[[], None]:
        """Call *callback* after each database call: with None on success, else with the error
        (:class:`DatabaseError` or :class:`SchemaNotReady`). Returns a function that removes it."""

    async def list_workers(self) -> list[WorkerRow]:
        """Every registered worker, supervised ones first (by supervisor and slot)."""

    async def set_queue_paused(self, name: str, *, paused: bool) -> bool:
        """Pause or resume queue *name* (resuming notifies its workers); return whether it changed."""

    async def list_queues(self, name: str | None = None) -> list[QueueInfo]:
        """Every queue with jobs or a pause record (or just *name*): paused flag, counts by state,
        the oldest available job, and the database's clock."""

    def listener(self) -> Listener:
        """A new, unconnected listener for this schema's channel."""

    # --- the dashboard's reads (see web/): each under *time_limit* seconds and a row cap ----------------

    async def search_jobs(self, search: JobSearch, *, limit: int, time_limit: float) -> list[Job]:
        """Up to *limit* jobs matching *search*, newest first (ids below ``search.before_id``)."""

    async def run_job_now(self, job_id: int) -> Job | None:
        """Make a scheduled or retryable job available now (and notify its queue); None if it is in
        another state or does not exist."""

    async def dashboard_counts(
        self, *, queue: str | None, cap: int, time_limit: float, finished: bool = True
    ) -> DashboardCounts:
        """Counts for the overview (every queue) or one queue's page, each from an index and
        capped at *cap* rows: exact below the cap, estimated (and marked so) above it; the
        finished counts only with *finished*."""

    async def job_dependants(self, job_id: int, *, limit: int, time_limit: float) -> list[Job]:
        """Up to *limit* jobs whose ``depends_on`` names *job_id*, by id."""

    # --- durable steps, sleeps, events and progress (see _durable.py) ---------------------------

    async def job_steps(self, job_id: int, *, limit: int | None = None) -> list[JobStep]:
        """The steps job *job_id* recorded, by position ([] for none, or no such job); the first
        *limit* only, if given."""

    async def durable_overview(self, *, limit: int) -> DurableOverview:
        """Up to *limit* executing jobs that report progress (by id), how many do in all, and how many
        jobs a durable sleep and an event wait hold ``scheduled``; read through the partial indexes
        of executing and due jobs and of event waits, never the whole table."""

    async def record_steps(self, records: Sequence[StepWrite]) -> list[bool]:
        """Store each of *records* (of any jobs, each step at most once), in one statement: a step
        completed with its ``result_json`` or, given an ``error``, failed; each guarded by its lease
        (the job row's lock serialises it with a rescue). A completed step never changes. Return, in
        order, whether each was written (False: its attempt is no longer the lease's, nothing written)."""

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
        """In one transaction, guarded by *lease*: end step *name*, a sleep (*event* None) or a wait
        for *event*, if it is over (the event was emitted, or the wait's end passed by the database's
        clock), else record it as waiting and suspend the job: ``scheduled`` until the wait's end
        (an existing waiting step's, else *until*, else now + *delay*, else forever), its attempt
        given back. See :class:`WaitResult` for what it returns."""

    async def set_progress(self, lease: Lease, *, done: float, total: float | None, note: str | None) -> bool:
        """Store the job's progress (stamped with the database's clock), guarded by *lease*; False
        when the attempt is no longer the lease's."""

    async def emit_event(self, key: str, payload_json: str, *, connection: UserConnection | None = None) -> bool:
        """Store event *key* with *payload_json* unless it was emitted before (the first emit wins)
        and make the jobs waiting for it available; in *connection*'s transaction if given. Return
        whether this emit stored the payload."""

    def emit_event_sync(self, key: str, payload_json: str, *, connection: UserConnection | None = None) -> bool:
        """Like :meth:`emit_event`, from synchronous code."""

    async def prune_events(self, *, older_than: float, limit: int) -> int:
        """Delete up to *limit* events last emitted or waited for over *older_than* seconds ago
        (by the database's clock) that no suspended job waits for; return how many."""

    # --- periodic jobs (see _periodic.py) -------------------------------------------------------

    async def register_periodic(self, entries: Sequence[PeriodicEntry]) -> None:
        """Insert or update the rows of these schedules. A new row, or one whose expression or time
        zone changed, becomes active now (``active_since``); its earlier ticks are never enqueued."""

    async def periodic_state(self, names: Sequence[str]) -> PeriodicSnapshot:
        """The database's ``now()`` and the rows of the schedules called *names* that exist."""

    async def enqueue_periodic(
        self, *, name: str, tick: dt.datetime, catch_up: float, spec: JobSpec
    ) -> PeriodicEnqueued | None:
        """In one statement, advance schedule *name* to *tick* and insert *spec* as its job
        (``scheduled_at = tick``), guarded by: the row's last tick is earlier, the tick is not before
        ``active_since``, and it is at most *catch_up* seconds old by the database's clock. Return
        None when the guard refused (another scheduler enqueued it). When the spec's unique key is
        held by a queued or running job, the tick is consumed without a job (``held``)."""

    async def set_periodic_paused(self, name: str, *, paused: bool) -> bool | None:
        """Pause or resume schedule *name*; return whether it changed, or None when it has no row."""

    async def list_periodic(self) -> PeriodicListing:
        """The database's ``now()`` and every schedule's row with the state of its last job, by name."""

    # --- the dashboard's data (see _insights.py) -----------------------------------------------

    async def write_rollups(self, rows: Sequence[RollupRow]) -> None:
        """Add *rows*' counts and histograms to the current minute's and hour's rollup rows (by
        the database's clock), creating them as needed, in one statement."""

    async def read_rollups(self, *, since: float, hourly: bool, step: float, task: str | None = None) -> RollupRead:
        """The minute (or with *hourly*, hour) rollup rows of the last *since* seconds (from the
        start of the bucket holding that time), of *task* only if given, summed in the database
        over every queue and over steps of *step* seconds (aligned on the epoch: ``at`` is a step's
        start), by (step, task, error type), oldest first."""

    async def prune_rollups(self, *, minute_older_than: float, hour_older_than: float) -> int:
        """Delete minute rows older than *minute_older_than* seconds and hour rows older than
        *hour_older_than*; return how many."""

    async def record_audit(self, *, actor: str, action: str, target: Mapping[str, Any], count: int) -> AuditEntry:
        """Append an entry to the audit table (stamped with the database's clock) and return it."""

    async def list_audit(self, *, limit: int, before_id: int | None = None) -> list[AuditEntry]:
        """The newest audit entries first (ids below *before_id* if given), at most *limit*."""

    async def recent_failures(self, *, since: float, limit: int) -> list[Job]:
        """Up to *limit* jobs discarded in the last *since* seconds (newest first) and up to *limit*
        retryable jobs (latest scheduled first), each through an index."""

    async def job_graph(self, job_id: int, *, max_depth: int, max_nodes: int) -> list[GraphNode]:
        """Job *job_id*, what it depends on and what depends on it (see ``_common.walk_graph``)."""


def create_driver(dsn: str, *, schema: str, pool_min_size: int, pool_max_size: int, connect_timeout: float) -> Driver:
    """Choose the engine for *dsn*: ``postgresql://`` (or a libpq key/value string) for PostgreSQL,
    ``sqlite:///path`` for the embedded engine.

    Only the chosen engine's module (and database library) is imported.

    Raises:
        ConfigurationError: the DSN names an engine nursery-worker does not support, or is invalid.
    """
    from .._dsn import is_sqlite_dsn, parse_sqlite_dsn
    from .._errors import ConfigurationError

    if is_sqlite_dsn(dsn):
        target = parse_sqlite_dsn(dsn)
        from .sqlite import SqliteDriver

        return SqliteDriver(
            target.path,
            schema=schema,
            busy_timeout=target.busy_timeout if target.busy_timeout is not None else connect_timeout,
            synchronous=target.synchronous,
        )
    scheme = dsn.split(":", 1)[0].lower() if "://" in dsn else ""
    if scheme and scheme not in ("postgres", "postgresql"):
        raise ConfigurationError(
            f"unsupported database scheme {scheme!r}: nursery-worker needs a PostgreSQL DSN such as "
            "'postgresql://user@host/db', or 'sqlite:///path/to/file.sqlite3' for the embedded engine"
        )
    from .postgres import PostgresDriver

    return PostgresDriver(
        dsn,
        schema=schema,
        pool_min_size=pool_min_size,
        pool_max_size=pool_max_size,
        connect_timeout=connect_timeout,
    )
