"""Frozen records that cross the driver boundary and the public API.

Every value a :class:`~nursery_worker._driver.Driver` method takes or returns is one of these (or a
builtin scalar): the drivers import this module, never a feature module.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic

import attrs
from typing_extensions import TypeVar

from ._state import JobState, Transition

#: The type of a job's result: ``Job[int]`` for a task returning ``int`` (``Job`` alone: ``Job[Any]``).
ResultT = TypeVar("ResultT", covariant=True, default=Any)


@attrs.frozen(kw_only=True)
class JobError:
    """One failed attempt, as recorded on the job.

    Attributes:
        attempt: the attempt that failed (1-based).
        at: when it was recorded, by the database's clock.
        type: the exception's class name (``TimeoutError`` for a timeout, ``WorkerLost`` for a rescue).
        message: the exception's message, capped in size.
        traceback: the formatted traceback, capped in size ("" when there is none).
    """

    attempt: int
    at: dt.datetime | None
    type: str
    message: str
    traceback: str = ""


@attrs.frozen(kw_only=True)
class Job(Generic[ResultT]):
    """A snapshot of one job row. It does not change when the row does: call ``app.get_job`` again.

    Generic in the task's return type for type checkers: ``await add.defer(a=1, b=2)`` is a
    ``Job[int]`` when ``add`` returns ``int`` (``async def`` tasks: the awaited type), and
    ``app.wait_for(job)`` returns the same ``Job[int]``. A job read by id is ``Job[Any]``.

    Attributes:
        id: the job's id (a PostgreSQL bigint).
        task: the registered task name.
        queue: the queue it runs on.
        args: the keyword arguments, as decoded from JSON.
        state: where the job is in its lifecycle.
        attempt: how many attempts have started (0 before the first run).
        max_attempts: the attempt budget; after the last failed attempt the job is discarded.
        priority: higher runs first among available jobs of a queue.
        scheduled_at: when the job is (or was) due to run.
        inserted_at: when it was enqueued.
        attempted_at: when the last attempt started, or None.
        finished_at: when it reached a terminal state, or None.
        errors: the recorded failures, oldest first (capped to the most recent ones).
        worker_id: the worker running it while ``state`` is executing, else None.
        result: the task's return value (JSON) once completed, else None. Typed as the task's
            return type; it holds what JSON gave back (a tuple comes back as a list).
        cancel_requested_at: when a cancel was requested while it was executing, or None.
        unique_key: the key that keeps it unique among its task's jobs, or None.
        retry_policy: a per-job retry policy (as stored, JSON), or None for the task's.
        trace_context: the W3C trace context (``traceparent``, ``tracestate``) of the span that
            deferred the job, or None when tracing was off (see the ``otel`` extra).
        depends_on: the ids of the jobs it waits for (``depends_on=``); it is ``pending`` until
            they all completed.
        duplicate: True when an enqueue returned this existing job instead of inserting a new one
            (a unique job already queued or running); nothing was written.
        progress: what the task last reported with ``context.progress(...)``, or None; kept
            across attempts.
        waiting: what a suspended job waits for (a durable sleep or an event), while it is
            ``scheduled`` by ``context.sleep`` or ``context.wait_for_event``; else None.
    """

    id: int
    task: str
    queue: str
    args: Mapping[str, Any]
    state: JobState
    attempt: int
    max_attempts: int
    priority: int
    scheduled_at: dt.datetime
    inserted_at: dt.datetime | None = None
    attempted_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    errors: tuple[JobError, ...] = ()
    worker_id: str | None = None
    result: ResultT = attrs.field(default=None)
    cancel_requested_at: dt.datetime | None = None
    unique_key: str | None = None
    retry_policy: Mapping[str, Any] | None = None
    trace_context: Mapping[str, str] | None = None
    depends_on: tuple[int, ...] = ()
    duplicate: bool = False
    progress: JobProgress | None = None
    waiting: Waiting | None = None

    @property
    def finished(self) -> bool:
        """True once the job is completed, discarded or cancelled."""
        return self.state.is_terminal


@attrs.frozen(kw_only=True)
class JobProgress:
    """How far a running job says it is, from ``await context.progress(done, total, note=...)``.

    Attributes:
        done: the units done so far.
        total: the units in all, or None when unknown.
        note: a short free text (what it is doing now), or None.
        updated_at: when it was written, by the database's clock.
    """

    done: float
    total: float | None = None
    note: str | None = None
    updated_at: dt.datetime | None = None

    @property
    def fraction(self) -> float | None:
        """``done / total`` between 0 and 1, or None without a positive total."""
        if not self.total:
            return None
        return max(0.0, min(1.0, self.done / self.total))


@attrs.frozen(kw_only=True)
class Waiting:
    """What a suspended job waits for: a durable sleep, or an event with a timeout.

    Attributes:
        kind: ``"sleep"`` (``context.sleep``/``sleep_until``) or ``"event"`` (``context.wait_for_event``).
        step: the name of the step that waits (see :class:`JobStep`).
        until: when the wait ends (the sleep's end, or the event's timeout), by the database's clock.
        event: the event's key, for an event wait.
    """

    kind: str
    step: str
    until: dt.datetime
    event: str | None = None


@attrs.frozen(kw_only=True)
class JobStep:
    """One durable step of a job, as stored (``app.get_steps(job_id)``, ``jobs show``).

    Attributes:
        name: the step's name, unique within its job.
        position: its place among the job's steps (0 for the first one recorded).
        state: ``"completed"`` (its result is stored; it never runs again), ``"failed"`` (its last
            run raised; it runs again on the job's next attempt) or ``"waiting"`` (a sleep or an
            event wait that has not ended).
        attempt: the job's attempt that wrote it last.
        runs: how many times it was recorded (failed runs and the completion).
        result: the stored JSON result of a completed step (for an event wait: the payload).
        error: the error of a failed step, else None.
        duration: seconds its last run took (None for a wait).
        updated_at: when it was written last, by the database's clock.
        wake_at: when a sleep or an event wait ends, else None.
        event: the key an event wait waits for, else None.
    """

    name: str
    position: int
    state: str
    attempt: int
    runs: int = 1
    result: Any = None
    error: JobError | None = None
    duration: float | None = None
    updated_at: dt.datetime | None = None
    wake_at: dt.datetime | None = None
    event: str | None = None


@attrs.frozen(kw_only=True)
class ProgressRow:
    """An executing job that reports its progress (``nursery-worker status``, the overview).

    Attributes:
        job_id: the job's id.
        task: its task.
        queue: its queue.
        progress: what it last reported.
    """

    job_id: int
    task: str
    queue: str
    progress: JobProgress


@attrs.frozen(kw_only=True)
class DurableOverview:
    """Durable progress and waits across the jobs table, read cheaply (``Driver.durable_overview``).

    Attributes:
        progress: executing jobs that report progress, oldest id first, at most the limit asked for.
        reporting: how many executing jobs report progress in all (``progress`` may show fewer).
        sleeping: jobs suspended by a durable sleep (``context.sleep``/``sleep_until``).
        waiting_for_events: jobs suspended by ``context.wait_for_event``.
    """

    progress: tuple[ProgressRow, ...] = ()
    reporting: int = 0
    sleeping: int = 0
    waiting_for_events: int = 0


@attrs.frozen(kw_only=True)
class Lease:
    """The claim a durable write is guarded by: job, attempt, worker and lease (``attempted_at``)."""

    job_id: int
    attempt: int
    worker_id: str
    attempted_at: dt.datetime | None


@attrs.frozen(kw_only=True)
class StepWrite:
    """One run of a step to store, guarded by its attempt's *lease* (``Driver.record_steps``):
    completed with ``result_json``, or failed with ``error`` (an ``ErrorInfo``)."""

    lease: Lease
    name: str
    position: int
    result_json: str | None
    error: Any
    duration: float


@attrs.frozen(kw_only=True)
class WaitResult:
    """What :meth:`Driver.wait_step` did.

    ``outcome``: ``"done"`` (a sleep that is over: the step is completed), ``"received"`` (the
    event was emitted: the step is completed with its payload), ``"timeout"`` (the event wait's
    time is over: the step is completed as timed out), ``"suspended"`` (the job is scheduled
    until ``until``, its attempt given back), ``"lost"`` (the attempt is no longer this worker's:
    nothing was written) or ``"cancel_requested"`` (nothing was written: the job's cancel was
    requested).
    """

    outcome: str
    payload: Any = None
    until: dt.datetime | None = None


def _deps_repr(deps: tuple[Any, ...]) -> str:
    # Specs of the same call show as their task name: a long chain must not recurse.
    return "(" + ", ".join(str(d) if isinstance(d, int) else f"<spec {d.task}>" for d in deps) + ")"


@attrs.frozen(kw_only=True)
class JobSpec:
    """A validated job, ready to insert: what ``task.job(**kwargs)`` returns for ``app.defer_many``.

    Build it with ``task.job(...)`` or ``task.configure(...).job(...)`` rather than by hand: those
    validate the arguments against the task's signature and encode them as JSON.
    """

    task: str
    args: Mapping[str, Any]
    args_json: str = attrs.field(repr=False)
    queue: str
    priority: int
    max_attempts: int
    scheduled_at: dt.datetime | None = None
    delay: float | None = None
    unique_key: str | None = None
    unique_states: tuple[str, ...] | None = None
    retry_policy: Mapping[str, Any] | None = None
    #: Set by ``defer`` when a trace is recording (see ``_tracing``), not by the caller.
    trace_context: Mapping[str, str] | None = None
    #: The jobs this one waits for: ids, or specs of the same ``defer_many`` call.
    depends_on: tuple[int | JobSpec, ...] = attrs.field(default=(), eq=False, repr=_deps_repr)
    #: The partition of its task's limits ('' when not partitioned); None for a task without limits.
    limit_key: str | None = None


@attrs.frozen(kw_only=True)
class JobBatch:
    """Many jobs of one task with the same options, their arguments validated and encoded: what
    ``task.defer_batch`` hands the driver instead of one :class:`JobSpec` per job.

    Every job of the batch shares the task, queue, priority, attempts, schedule and retry policy;
    only the arguments differ. The driver returns the new jobs' ids, in order, and makes no
    :class:`Job` objects. A batch never carries unique keys, dependencies, limit keys or a trace
    context: jobs that need them go through :class:`JobSpec`.
    """

    task: str
    queue: str
    priority: int
    max_attempts: int
    scheduled_at: dt.datetime | None = None
    delay: float | None = None
    retry_policy: Mapping[str, Any] | None = None
    #: Each job's arguments as a JSON object (checked by ``_json.encode_args_text``), in order.
    args_json: Sequence[str] = attrs.field(repr=lambda a: f"<{len(a)} jobs>")


@attrs.frozen(kw_only=True)
class LimitedClaim:
    """What one claim of limited jobs returned.

    ``wake``: seconds until a rate window or a breaker's cooldown frees capacity (None: nothing is
    waiting on time). ``breakers_open``: tasks whose open breaker holds jobs back.
    """

    jobs: tuple[Job, ...] = ()
    wake: float | None = None
    breakers_open: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class Completion:
    """A decided outcome of one attempt, queued for the completer's guarded batch write.

    ``attempted_at`` is the claim's lease: the fetch stamps it with ``clock_timestamp()``, which
    differs for every claim of a row, so (id, attempt, worker, attempted_at) names one claim even
    when an attempt was given back and the same worker claims the job again.

    ``max_attempts`` and ``backoff`` are the job's retry budget and policy: when the database
    refuses to store this outcome (a result over its size limit), the completer records the
    attempt as failed instead, decided by them like any failure. Without them (a hand-back), such
    a failure is retried once more without waiting.
    """

    job_id: int
    attempt: int
    attempted_at: dt.datetime | None
    transition: Transition
    result_json: str | None = None
    max_attempts: int | None = None
    backoff: Callable[[int], float] | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class WorkerInfo:
    """What a worker records about itself in the workers table."""

    id: str
    hostname: str
    pid: int
    queues: tuple[str, ...]
    concurrency: int
    #: Set for a child of a supervisor (``run --processes N``): which supervisor, which slot, and
    #: how many times that slot's process was replaced.
    supervisor_id: str | None = None
    child_index: int | None = None
    restarts: int = 0
    last_exit: str | None = None


@attrs.frozen(kw_only=True)
class Supervision:
    """Who started a supervised worker: the supervisor's id, the slot, the slot's restarts, and how
    the slot's previous process ended (None for the first)."""

    supervisor_id: str
    child_index: int
    restarts: int = 0
    last_exit: str | None = None


@attrs.frozen(kw_only=True)
class WorkerLoad:
    """What a worker's heartbeat records besides the time: its state and counters."""

    state: str
    processed: int
    failed: int
    running: int


@attrs.frozen(kw_only=True)
class WorkerRow:
    """One row of the workers table as ``nursery-worker status`` shows it (times by the database's clock)."""

    id: str
    hostname: str
    pid: int
    queues: tuple[str, ...]
    concurrency: int
    started_at: dt.datetime
    heartbeat_at: dt.datetime
    state: str
    processed: int
    failed: int
    running: int
    supervisor_id: str | None
    child_index: int | None
    restarts: int
    now: dt.datetime
    last_exit: str | None = None


@attrs.frozen(kw_only=True)
class RescueResult:
    """What one pass of the reaper's orphan rescue did."""

    retryable: int = 0
    discarded: int = 0
    cancelled: int = 0
    workers_removed: int = 0

    @property
    def rescued(self) -> int:
        """Jobs taken back from dead workers: retryable, discarded, or cancelled (a cancel was requested)."""
        return self.retryable + self.discarded + self.cancelled


@attrs.frozen(kw_only=True)
class CancelResult:
    """What ``app.cancel`` did.

    Attributes:
        job: the job as it is after the call.
        status: ``"cancelled"`` (it was waiting and is cancelled now), ``"requested"`` (it is
            executing: its worker cancels it, and it ends ``cancelled`` unless it finishes first), or
            ``"already_finished"`` (it was completed, discarded or cancelled: nothing changed).
    """

    job: Job
    status: str

    @property
    def message(self) -> str:
        """A sentence saying what happened, for logs and the CLI."""
        if self.status == "cancelled":
            return f"job {self.job.id} was cancelled"
        if self.status == "requested":
            return f"job {self.job.id} is executing on {self.job.worker_id}; its cancellation was requested"
        return f"job {self.job.id} had already finished ({self.job.state.value}); nothing changed"


_STATE_ORDER = ("pending", "available", "scheduled", "executing", "retryable", "completed", "discarded", "cancelled")


def _all_states(counts: Mapping[str, int]) -> dict[str, int]:
    return {state: int(counts.get(state, 0)) for state in _STATE_ORDER}


@attrs.frozen(kw_only=True)
class QueueInfo:
    """A queue as ``app.list_queues()`` and ``nursery-worker status`` see it.

    Attributes:
        name: the queue's name.
        paused: whether workers skip its jobs (``app.pause_queue``).
        paused_at: when it was paused, or None.
        counts: jobs by state; every state is present, zero when there are none.
        oldest_available_at: when the longest-waiting available job became due, or None.
        now: the database's clock when the row was read (ages are measured against it).
        max_concurrency: the queue's limit on jobs executing at once (``app.set_queue_limits``), or None.
        rate_limit: the queue's rate limit as ``"<count>/<seconds>s"``, or None.
    """

    name: str
    paused: bool = False
    paused_at: dt.datetime | None = None
    counts: Mapping[str, int] = attrs.field(factory=dict, converter=_all_states)
    oldest_available_at: dt.datetime | None = None
    now: dt.datetime
    max_concurrency: int | None = None
    rate_limit: str | None = None

    @property
    def oldest_available_age(self) -> float | None:
        """Seconds the oldest available job has waited (database clock), or None when none is available."""
        if self.oldest_available_at is None:
            return None
        return max(0.0, (self.now - self.oldest_available_at).total_seconds())


# --- flow control ---------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class RateLimit:
    """At most ``count`` starts in any window of ``period`` seconds (a sliding window)."""

    count: int
    period: float

    def __str__(self) -> str:
        return f"{self.count}/{self.period:g}s"


@attrs.frozen(kw_only=True)
class TaskLimits:
    """One limited task's limits, as the limited claim enforces them (see ``_flow.limits_config``).

    Attributes:
        concurrency: jobs of one partition executing at once across all workers, or None.
        rate: starts of one partition per window, or None.
        breaker: whether a circuit breaker holds the task's jobs back while it is open.
    """

    concurrency: int | None = None
    rate: RateLimit | None = None
    breaker: bool = False


@attrs.frozen(kw_only=True)
class BreakerConfig:
    """A task's circuit breaker as a worker registers it (``Driver.register_breakers``)."""

    task: str
    threshold: int
    cooldown: float


@attrs.frozen(kw_only=True)
class BreakerInfo:
    """A circuit breaker as ``app.list_breakers()`` and ``nursery-worker status`` see it.

    Attributes:
        task: the task it guards.
        state: ``"closed"`` (jobs run), ``"open"`` (jobs held back until ``reopens_at``) or
            ``"half_open"`` (one probe job is running).
        failures: consecutive failures counted so far.
        threshold: failures that open it.
        cooldown: seconds it stays open before a probe.
        opened_at: when it last opened, or None.
        probe_job_id: the probe job while half open, else None.
        now: the database's clock when the row was read.
    """

    task: str
    state: str
    failures: int
    threshold: int
    cooldown: float
    opened_at: dt.datetime | None
    probe_job_id: int | None
    now: dt.datetime

    @property
    def reopens_at(self) -> dt.datetime | None:
        """When an open breaker lets a probe through (database clock), or None when it is not open."""
        if self.state != "open" or self.opened_at is None:
            return None
        return self.opened_at + dt.timedelta(seconds=self.cooldown)


# --- what the worker's services read ----------------------------------------------------------


@attrs.frozen(kw_only=True)
class ClaimedAttempt:
    """An attempt executing under a worker's id (``Driver.executing_ids``); ``attempted_at`` is its lease."""

    job_id: int
    attempt: int
    attempted_at: dt.datetime | None


@attrs.frozen(kw_only=True)
class CancelRequest:
    """An executing attempt whose cancel was requested (``Driver.cancel_requested``)."""

    job_id: int
    attempt: int


@attrs.frozen(kw_only=True)
class QueueDepth:
    """How many jobs of a queue are in one non-final state (``Driver.queue_depth``, for the metrics)."""

    queue: str
    state: str
    count: int


@attrs.frozen(kw_only=True)
class OldestTransaction:
    """The oldest open transaction on the PostgreSQL server (any database, any client but the asker).

    While it stays open, vacuum cannot remove the rows other sessions deleted or updated after its
    snapshot: the jobs table's dead tuples pile up and the claim slows down.

    Attributes:
        age: seconds since it began (``xact_start``), by the database's clock.
        pid: its backend's process id (``pg_terminate_backend(pid)`` ends it).
        state: ``active``, ``idle in transaction``, ... (None where the server hides it from this role).
        application_name: what the client called itself (``psql``, ``nursery-worker``, ...).
    """

    age: float
    pid: int
    state: str | None
    application_name: str


@attrs.frozen(kw_only=True)
class DatabaseHealth:
    """What keeps the jobs table fast or slows it down (``Driver.database_health``, for metrics and status).

    Attributes:
        engine: ``"postgresql"`` or ``"sqlite"``.
        oldest_transaction: PostgreSQL: the oldest open transaction on the server (None when none is
            open or the role may not see them); SQLite: always None (there is no server-wide view).
        dead_tuples: PostgreSQL: the jobs table's dead rows (summed over its partitions), as the
            statistics collector last counted them; SQLite: None.
        live_tuples: the same for its live rows; SQLite: None.
        wal_bytes: SQLite: the size of the write-ahead log file (a long reader keeps it from being
            checkpointed, and it grows); PostgreSQL: None.
    """

    engine: str
    oldest_transaction: OldestTransaction | None = None
    dead_tuples: int | None = None
    live_tuples: int | None = None
    wal_bytes: int | None = None


@attrs.frozen(kw_only=True)
class Notification:
    """A decoded NOTIFY (or, on the embedded engine, a row of its events table).

    ``kind`` is ``"available"`` (value: a queue name), ``"cancel"`` (value: a job id) or
    ``"finished"`` (value: comma-separated job ids, or ``*`` for too many to list).
    """

    kind: str
    value: str


# --- periodic jobs (see _periodic.py) ---------------------------------------------------------


@attrs.frozen(kw_only=True)
class PeriodicEntry:
    """What a scheduler writes about one of its schedules when it starts (``register_periodic``)."""

    name: str
    cron: str
    timezone: str
    task: str
    queue: str
    args_json: str


@attrs.frozen(kw_only=True)
class PeriodicState:
    """A schedule's row as the scheduler needs it: the last tick enqueued and when it became active."""

    last_tick: dt.datetime | None
    active_since: dt.datetime
    #: Paused (``app.pause_periodic``): the scheduler enqueues none of its ticks.
    paused: bool = False


@attrs.frozen(kw_only=True)
class PeriodicSnapshot:
    """The database's clock and the rows of the schedules asked for that exist (``periodic_state``)."""

    now: dt.datetime
    states: Mapping[str, PeriodicState]


@attrs.frozen(kw_only=True)
class PeriodicEnqueued:
    """A tick this scheduler claimed. ``held``: the task's unique twin (``job_id``) was still queued
    or running, so no job was inserted; the tick counts as handled."""

    job_id: int
    held: bool = False


@attrs.frozen(kw_only=True)
class PeriodicRow:
    """One row of the periodic table, with the state of its last job (None once pruned)."""

    name: str
    cron: str
    timezone: str
    task: str
    queue: str
    args: Mapping[str, Any]
    active_since: dt.datetime
    last_tick: dt.datetime | None
    last_job_id: int | None
    last_job_state: str | None
    updated_at: dt.datetime
    paused_at: dt.datetime | None = None


@attrs.frozen(kw_only=True)
class PeriodicListing:
    """The database's clock and every schedule's row, by name (``list_periodic``)."""

    now: dt.datetime
    rows: tuple[PeriodicRow, ...]


# --- the dashboard's records: metric rollups, the audit trail, job graphs ------------------------


#: How many buckets a rollup's duration histogram has (``_rollup.py`` defines them; both engines'
#: reads sum each bucket in SQL).
HISTOGRAM_BUCKETS = 48


@attrs.frozen(kw_only=True)
class RollupRow:
    """Finished attempts of one (queue, task, error type) that a worker counted in one interval.

    ``error_type`` is "" for completed and cancelled attempts, else the failure's exception type.
    ``histogram`` has one count per duration bucket (see ``_rollup.py``), always the same length.
    """

    queue: str
    task: str
    error_type: str = ""
    completed: int = 0
    failed: int = 0
    discarded: int = 0
    cancelled: int = 0
    duration_sum: float = 0.0
    histogram: tuple[int, ...] = ()


@attrs.frozen(kw_only=True)
class RollupBucket:
    """Rollup counts summed over one step of a read (over every queue: ``row.queue`` is "")."""

    at: dt.datetime
    row: RollupRow


@attrs.frozen(kw_only=True)
class RollupRead:
    """Rollup rows since some time, and the database's clock when they were read."""

    now: dt.datetime
    buckets: tuple[RollupBucket, ...]


@attrs.frozen(kw_only=True)
class AuditEntry:
    """One dashboard or admin action as the audit table keeps it.

    Attributes:
        id: the entry's id (they grow in the order written).
        at: when it was written, by the database's clock.
        actor: who did it (the dashboard's user, or ``"cli"``).
        action: what was done (``"retry"``, ``"cancel"``, ``"pause_queue"``, ...).
        target: what it was done to: a job id, a queue, or the filter of a bulk action.
        count: how many jobs (or other things) it changed.
    """

    id: int
    at: dt.datetime
    actor: str
    action: str
    target: Mapping[str, Any]
    count: int


@attrs.frozen(kw_only=True)
class GraphNode:
    """One job of a dependency graph: its id, task, state and the ids it depends on."""

    id: int
    task: str
    queue: str
    state: JobState
    depends_on: tuple[int, ...]
    depth: int


@attrs.frozen(kw_only=True)
class JobSelection:
    """Which jobs a bulk operation counts or acts on, as the driver takes it (``JobFilter.selection``).

    Every field given narrows it; ``older_than`` compares ``inserted_at`` with the database's clock,
    ``finished_older_than`` compares ``finished_at`` (as the pruner does).
    """

    states: tuple[str, ...] | None = None
    queue: str | None = None
    task: str | None = None
    older_than: float | None = None
    min_id: int | None = None
    max_id: int | None = None
    #: Only jobs finished over this many seconds ago (what ``prune`` deletes), by the database's clock.
    finished_older_than: float | None = None


@attrs.frozen(kw_only=True)
class BulkChange:
    """What one chunk of a bulk operation changed: ``changed`` rows moved (cancelled, retried or
    deleted), ``requested`` executing jobs asked to cancel (bulk cancel only)."""

    changed: int
    requested: int = 0


@attrs.frozen(kw_only=True)
class JobCount:
    """How many jobs a selection matches now, and the highest id among them (None when none)."""

    count: int
    max_id: int | None


# --- the dashboard's reads (see web/) --------------------------------------------------------------


@attrs.frozen(kw_only=True)
class JobSearch:
    """The dashboard's job list filter, as the driver takes it: every field given narrows it.

    ``args_text`` matches the args' JSON text (case-insensitive substring); ``after``/``before``
    bound ``inserted_at``; ``before_id`` is the keyset cursor (ids below it, newest first).
    """

    states: tuple[str, ...] | None = None
    queue: str | None = None
    task: str | None = None
    priority: int | None = None
    job_id: int | None = None
    args_text: str | None = None
    after: dt.datetime | None = None
    before: dt.datetime | None = None
    before_id: int | None = None


@attrs.frozen(kw_only=True)
class StateCount:
    """How many jobs of *queue* (None: every queue) are in *state*, in the window *window* (seconds
    back from now, for finished states; None: no window). ``estimated``: the database's planner
    estimate (PostgreSQL) or a lower bound at the row cap (SQLite), not an exact count."""

    queue: str | None
    state: str
    count: int
    estimated: bool = False
    window: int | None = None


@attrs.frozen(kw_only=True)
class DashboardCounts:
    """What the overview and queue pages count, each count answered from an index under a row cap.

    Attributes:
        now: the database's clock.
        waiting: per queue and non-final state (pending, scheduled, available, executing, retryable).
        finished: per finished state (every queue, or the one asked for), in the last hour and day.
        totals: per finished state, over all time (an estimate on PostgreSQL).
        oldest_available: per queue, the ``scheduled_at`` of its oldest available job (the lag).
        queues: every queue counted, with its pause flag and limits, and the waiting counts
            (capped) as its ``counts``.
    """

    now: dt.datetime
    queues: tuple[QueueInfo, ...] = ()
    waiting: tuple[StateCount, ...] = ()
    finished: tuple[StateCount, ...] = ()
    totals: tuple[StateCount, ...] = ()
    oldest_available: Mapping[str, dt.datetime] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class PendingMigration:
    """A migration the schema has not had yet, as ``app.pending_migrations()`` lists it.

    Attributes:
        version: the schema version it brings.
        name: its file's name (``0009_periodic_pause.sql``).
        sql: the statements it would run, with the schema's name filled in.
    """

    version: int
    name: str
    sql: str
