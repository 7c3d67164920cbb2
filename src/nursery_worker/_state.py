"""The job state machine, as pure code: no I/O, no clock, no event loop.

The worker decides what an attempt's outcome means here (:func:`decide`), and the driver applies the
decision with one guarded SQL statement. :class:`JobRecord` and the ``*_guarded`` functions are the
same guards written in Python: the property tests drive them with Hypothesis, and the driver's SQL
must mirror them line by line (see ``_driver/postgres/_queries.py``).

Lifecycle::

    scheduled ──due──▶ available ──fetch──▶ executing ──ok──▶ completed
        ▲  ▲               ▲                   │ │ ╰─error, attempts left──▶ retryable ──due──▶ available
        │  ╰──snoozed──────┼───────────────────┤ │
        │                  ╰──released────────╯ │
    (deferred later)      (graceful shutdown)    ╰─error, no attempts left / Discard──▶ discarded

    scheduled, available, retryable ──cancel──▶ cancelled
    executing ──cancel request──▶ (its scope is cancelled) ──▶ cancelled
    discarded, cancelled ──app.retry──▶ available          (the dead-letter path)

A cancel request on an executing job is durable (``cancel_requested``): whatever the attempt's
outcome is afterwards, a job that would run again (released, retryable, snoozed) becomes
``cancelled`` instead. Finished states are never left by a worker's write; only an explicit
``app.retry`` moves a discarded or cancelled job back to ``available``.

Durable steps (issue 22) are written under the attempt's lease as well: ``step_guarded``,
``wait_guarded`` (a durable wait suspends the job: ``scheduled``, its attempt given back, as a
snooze), ``emit_guarded`` (the first emit wins and wakes the key's waiters) and ``progress_guarded``
mirror ``_driver/postgres/_steps.py``. A suspended job's wait (``wait_step``, ``wait_event``) lasts
only while it is scheduled: promoting, waking or cancelling it clears them.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
import traceback
from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs


class JobState(enum.StrEnum):
    """Where a job is in its lifecycle; the values are what the database stores."""

    #: Waiting for the jobs it depends on (``depends_on=``) to complete.
    PENDING = "pending"
    SCHEDULED = "scheduled"
    AVAILABLE = "available"
    EXECUTING = "executing"
    RETRYABLE = "retryable"
    COMPLETED = "completed"
    DISCARDED = "discarded"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True for completed, discarded and cancelled: finished states no worker write ever leaves."""
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.COMPLETED, JobState.DISCARDED, JobState.CANCELLED})

#: Every edge a write may take. Anything else is a bug in the engine.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    # Released when its last dependency completes; cancelled when one fails for good (or by request).
    JobState.PENDING: frozenset({JobState.AVAILABLE, JobState.SCHEDULED, JobState.CANCELLED}),
    JobState.SCHEDULED: frozenset({JobState.AVAILABLE, JobState.CANCELLED}),
    JobState.AVAILABLE: frozenset({JobState.EXECUTING, JobState.CANCELLED}),
    JobState.EXECUTING: frozenset(
        {
            JobState.COMPLETED,
            JobState.RETRYABLE,
            JobState.DISCARDED,
            JobState.AVAILABLE,
            JobState.CANCELLED,
            JobState.SCHEDULED,
        }
    ),
    JobState.RETRYABLE: frozenset({JobState.AVAILABLE, JobState.CANCELLED}),
    JobState.COMPLETED: frozenset(),
    # Only by an explicit app.retry (the dead-letter path), never by a worker.
    JobState.DISCARDED: frozenset({JobState.AVAILABLE}),
    JobState.CANCELLED: frozenset({JobState.AVAILABLE}),
}

#: States in which a job is queued or running: what a unique job's scope always covers.
ACTIVE_STATES = frozenset(
    {JobState.PENDING, JobState.SCHEDULED, JobState.AVAILABLE, JobState.EXECUTING, JobState.RETRYABLE}
)


class WorkerState(enum.StrEnum):
    """Where a worker is in its lifecycle (``worker.state``)."""

    INITIALIZING = "initializing"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    ERROR = "error"


# --- outcomes of one attempt ------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ErrorInfo:
    """What went wrong in one attempt, as stored in the job's ``errors`` list."""

    type: str
    message: str
    traceback: str = ""


_MESSAGE_CAP = 2_000
_TRACEBACK_CAP = 8_000


def error_info(exc: BaseException) -> ErrorInfo:
    """Describe *exc* for the job's error list, capped in size (the traceback keeps its tail).

    NUL characters are replaced: PostgreSQL's jsonb cannot hold them, and one would fail the whole
    batch of outcomes it is written with.
    """
    message = str(exc).replace("\x00", "\\x00")
    if len(message) > _MESSAGE_CAP:
        message = message[:_MESSAGE_CAP] + "… (truncated)"
    tb = "".join(traceback.format_exception(exc)).replace("\x00", "\\x00")
    if len(tb) > _TRACEBACK_CAP:
        tb = "(truncated) …" + tb[-_TRACEBACK_CAP:]
    return ErrorInfo(type=type(exc).__qualname__, message=message, traceback=tb)


@attrs.frozen(kw_only=True)
class Succeeded:
    """The task function returned."""


@attrs.frozen(kw_only=True)
class Failed:
    """The attempt raised, timed out, or cannot run at all.

    ``permanent``: do not retry (``Discard``, an unknown task, bad arguments). ``retry_after``: the
    task chose the wait before the next attempt (``Retry(after=seconds)``), instead of its policy.
    ``retry_at``: the task chose the time of the next attempt (``Retry(after=datetime)``), which
    the database compares with its own clock.
    """

    error: ErrorInfo
    permanent: bool = False
    retry_after: float | None = None
    retry_at: dt.datetime | None = None


@attrs.frozen(kw_only=True)
class Snoozed:
    """The task asked to run again after *delay* seconds without using up an attempt."""

    delay: float


@attrs.frozen(kw_only=True)
class Suspended(Snoozed):
    """The task waits durably (``context.sleep``, ``context.wait_for_event``): the job is scheduled
    for later without using up an attempt, as a snooze is. The job wrote this itself, guarded by its
    lease (``Driver.wait_step``), before its attempt ended; the completer writes nothing more.

    ``kind``: ``"sleep"`` or ``"event"``; ``step``: the waiting step's name.
    """

    kind: str = "sleep"
    step: str = ""


@attrs.frozen(kw_only=True)
class Cancelled:
    """The attempt was stopped by a cancel request (``abandoned``: it did not stop, and was left)."""

    reason: str = "cancelled by request"
    abandoned: bool = False


@attrs.frozen(kw_only=True)
class Released:
    """The worker stopped before the attempt ended: give the attempt back and run the job again."""

    reason: str = "worker shutdown"


Outcome = Succeeded | Failed | Released | Snoozed | Cancelled

#: The outcome of every attempt that returned (one shared record: it has no fields).
SUCCEEDED = Succeeded()


@attrs.frozen(kw_only=True)
class Transition:
    """A decision the driver applies with one guarded write.

    Attributes:
        state: the state to write.
        delay: seconds after the database's ``now()`` for ``scheduled_at`` (retryable only).
        at: ``scheduled_at`` itself, an absolute time (retryable only, instead of *delay*): the
            database compares it with its own clock, so the worker's clock never enters.
        error: appended to the job's errors, stamped with the database time.
        give_back_attempt: decrement ``attempt`` (a released attempt does not count).
    """

    state: JobState
    delay: float | None = None
    at: dt.datetime | None = None
    error: ErrorInfo | None = None
    give_back_attempt: bool = False


#: The longest wait a decision writes (100 years): beyond PostgreSQL's timestamp range a finish
#: statement would fail, and with it every other outcome in its batch.
MAX_DELAY = 100 * 365.25 * 86400.0

#: A hand-back: the attempt did not count and the job is available again.
RELEASE = Transition(state=JobState.AVAILABLE, give_back_attempt=True)
#: A completion (one shared record: a transition is frozen, and one is decided for every job).
COMPLETE = Transition(state=JobState.COMPLETED)


def decide(outcome: Outcome, *, attempt: int, max_attempts: int, backoff: Callable[[int], float]) -> Transition:
    """Decide what an executing job becomes after *outcome* of attempt number *attempt*.

    Args:
        outcome: what the attempt did.
        attempt: the attempt that just ran (1 for the first run).
        max_attempts: the job's attempt budget.
        backoff: ``attempt -> seconds`` to wait before the next attempt.

    Returns:
        The transition to apply; its state is always a legal edge out of ``executing``.
    """
    if isinstance(outcome, Succeeded):
        return COMPLETE
    if isinstance(outcome, Released):
        return RELEASE
    if isinstance(outcome, Snoozed):
        if outcome.delay <= 0:
            return RELEASE
        return Transition(state=JobState.SCHEDULED, delay=min(outcome.delay, MAX_DELAY), give_back_attempt=True)
    if isinstance(outcome, Cancelled):
        return Transition(state=JobState.CANCELLED, error=ErrorInfo(type="Cancelled", message=outcome.reason))
    if outcome.permanent or attempt >= max_attempts:
        return Transition(state=JobState.DISCARDED, error=outcome.error)
    if outcome.retry_at is not None:
        return Transition(state=JobState.RETRYABLE, at=outcome.retry_at, error=outcome.error)
    delay = outcome.retry_after if outcome.retry_after is not None else backoff(attempt)
    delay = float(delay)
    if math.isnan(delay):
        delay = 0.0
    return Transition(state=JobState.RETRYABLE, delay=min(max(0.0, delay), MAX_DELAY), error=outcome.error)


# --- the guarded writes, in Python ------------------------------------------------------------
#
# These mirror the SQL statements of the driver. Each returns the record unchanged when its guard
# does not hold: that is what makes a late write (after a rescue, a cancel or a shutdown) harmless.


class StepState(enum.StrEnum):
    """Where a durable step is; the values are what the database stores."""

    COMPLETED = "completed"
    FAILED = "failed"
    WAITING = "waiting"
    TIMED_OUT = "timed_out"


@attrs.frozen(kw_only=True)
class StepRecord:
    """The part of a step row (one per job and name) the durable writes read and write.

    ``over`` stands for ``wake_at`` against the database's clock, as ``JobRecord.due`` stands for
    ``scheduled_at``: None when the row has no wake time (a step's run, a wait without an end),
    True when it has passed, False while it is ahead.
    """

    state: StepState
    position: int
    attempt: int
    runs: int = 1
    result: Any = None
    error: ErrorInfo | None = None
    duration: float | None = None
    event: str | None = None
    over: bool | None = None


@attrs.frozen(kw_only=True)
class JobRecord:
    """The part of a job row the state machine reads and writes."""

    state: JobState
    attempt: int = 0
    max_attempts: int = 20
    worker_id: str | None = None
    lease: int = 0  # attempted_at: a new value at every claim (clock_timestamp() in SQL)
    due: bool = True  # scheduled_at <= now()
    errors: int = 0
    cancel_requested: bool = False
    # The durable parts (issue 22): what a durable wait suspended the job on (only while it is
    # scheduled by one), its last progress (done, total, note), and its steps by name.
    wait_step: str | None = None
    wait_event: str | None = None
    progress: tuple[float, float | None, str | None] | None = None
    steps: Mapping[str, StepRecord] = attrs.field(factory=dict, hash=False)


#: Where a job that would run again goes instead when a cancel was requested during its attempt.
_REQUEUE_STATES = frozenset({JobState.AVAILABLE, JobState.RETRYABLE, JobState.SCHEDULED})


def fetch_guarded(job: JobRecord, worker_id: str) -> JobRecord:
    """Claim *job* for *worker_id* if it is available and due (the fetch statement's WHERE)."""
    if job.state is not JobState.AVAILABLE or not job.due:
        return job
    return attrs.evolve(
        job, state=JobState.EXECUTING, attempt=job.attempt + 1, worker_id=worker_id, lease=job.lease + 1
    )


def finish_guarded(
    job: JobRecord, *, worker_id: str, attempt: int, transition: Transition, lease: int | None = None
) -> JobRecord:
    """Apply *transition* only if *job* is still executing this claim: attempt, worker and lease.

    *lease* is the value of ``job.lease`` when it was fetched (None: the caller holds the row's
    current lease, as in a direct model step).
    """
    if job.state is not JobState.EXECUTING or job.attempt != attempt or job.worker_id != worker_id:
        return job
    if lease is not None and lease != job.lease:
        return job
    state = transition.state
    give_back = transition.give_back_attempt
    recorded = transition.error is not None
    if job.cancel_requested and state in _REQUEUE_STATES:
        # The attempt ran and is what the cancel ended: it counts, and a Cancelled error is
        # recorded when the outcome had none (a release at shutdown, a snooze).
        state, give_back, recorded = JobState.CANCELLED, False, True
    return attrs.evolve(
        job,
        state=state,
        attempt=job.attempt - 1 if give_back else job.attempt,
        worker_id=None,
        # A time of its own (Retry(after=datetime)) is due by the database's clock, which this
        # model does not have: it is taken to be in the future.
        due=state not in (JobState.RETRYABLE, JobState.SCHEDULED) or (not transition.delay and transition.at is None),
        errors=job.errors + recorded,
    )


def rescue_guarded(job: JobRecord, live_workers: frozenset[str]) -> JobRecord:
    """Rescue *job* if it is executing on a worker that is not alive (the reaper's WHERE)."""
    if job.state is not JobState.EXECUTING or job.worker_id in live_workers:
        return job
    if job.cancel_requested:
        state = JobState.CANCELLED
    elif job.attempt >= job.max_attempts:
        state = JobState.DISCARDED
    else:
        state = JobState.RETRYABLE
    return attrs.evolve(job, state=state, worker_id=None, due=True, errors=job.errors + 1)


def promote_guarded(job: JobRecord) -> JobRecord:
    """Make a due scheduled or retryable job available (the promoter's WHERE)."""
    if job.state in (JobState.SCHEDULED, JobState.RETRYABLE) and job.due:
        return attrs.evolve(job, state=JobState.AVAILABLE, wait_step=None, wait_event=None)
    return job


def cancel_guarded(job: JobRecord) -> JobRecord:
    """``app.cancel``: a waiting job is cancelled now; an executing one gets a durable request."""
    if job.state in (JobState.PENDING, JobState.SCHEDULED, JobState.AVAILABLE, JobState.RETRYABLE):
        # A suspended job waits no more: an emit of its key must not wake it if it runs again.
        return attrs.evolve(job, state=JobState.CANCELLED, errors=job.errors + 1, wait_step=None, wait_event=None)
    if job.state is JobState.EXECUTING:
        return attrs.evolve(job, cancel_requested=True)
    return job


def retry_guarded(job: JobRecord) -> JobRecord:
    """``app.retry``: a discarded or cancelled job is available again, with one more attempt allowed."""
    if job.state not in (JobState.DISCARDED, JobState.CANCELLED):
        return job
    return attrs.evolve(
        job,
        state=JobState.AVAILABLE,
        max_attempts=max(job.max_attempts, job.attempt + 1),
        cancel_requested=False,
        due=True,
    )


# --- the durable writes (issue 22), in Python ---------------------------------------------------
#
# These mirror ``_driver/postgres/_steps.py`` (and SQLite's twin). Each is guarded by the attempt's
# lease, as a finish is: a worker whose job was rescued, handed back or re-claimed writes nothing.

#: What ``wait_guarded`` answers (``WaitResult.outcome``).
WaitOutcome = Literal["done", "received", "timeout", "suspended", "lost", "cancel_requested"]


def holds_lease(job: JobRecord, *, worker_id: str, attempt: int, lease: int) -> bool:
    """Whether the claim (*worker_id*, *attempt*, *lease*) is still the job's attempt (the lease guard)."""
    return (
        job.state is JobState.EXECUTING and job.attempt == attempt and job.worker_id == worker_id and job.lease == lease
    )


def step_guarded(
    job: JobRecord,
    *,
    worker_id: str,
    attempt: int,
    lease: int,
    name: str,
    position: int,
    result: Any = None,
    error: ErrorInfo | None = None,
    duration: float = 0.0,
) -> tuple[JobRecord, bool]:
    """Record one run of step *name* (``Driver.record_steps``): completed with *result*, or failed
    with *error*. Only a new or failed step is written, and only under the job's lease; a completed
    step (or a wait's row) never changes. Returns the record and whether the write happened."""
    if not holds_lease(job, worker_id=worker_id, attempt=attempt, lease=lease):
        return job, False
    old = job.steps.get(name)
    if old is not None and old.state is not StepState.FAILED:
        return job, False
    step = StepRecord(
        state=StepState.FAILED if error is not None else StepState.COMPLETED,
        # A step keeps its first position; each run counts.
        position=position if old is None else old.position,
        attempt=attempt,
        runs=1 if old is None else old.runs + 1,
        result=None if error is not None else result,
        error=error,
        duration=duration,
        event=None if old is None else old.event,
        over=None if old is None else old.over,
    )
    return attrs.evolve(job, steps={**job.steps, name: step}), True


def wait_guarded(
    job: JobRecord,
    *,
    worker_id: str,
    attempt: int,
    lease: int,
    name: str,
    position: int,
    event: str | None,
    over: bool | None,
    events: Mapping[str, Any],
) -> tuple[JobRecord, WaitOutcome, Any]:
    """A durable wait (``Driver.wait_step``): a sleep (*event* None) or a wait for *event*.

    *over* is whether the end the caller asks for (``delay``/``until``) has passed by the
    database's clock (None: no end); *events* are the emitted events' payloads by key. A waiting
    step keeps the end it was first given. Returns the record, the outcome and the payload (the
    event's, or a completed step's stored result).
    """
    if not holds_lease(job, worker_id=worker_id, attempt=attempt, lease=lease):
        return job, "lost", None
    if job.cancel_requested:
        return job, "cancel_requested", None
    old = job.steps.get(name)
    if old is not None and old.state is StepState.COMPLETED:
        return job, "received" if event is not None else "done", old.result
    if old is not None and old.state is StepState.TIMED_OUT:
        return job, "timeout", None
    position = position if old is None else old.position
    runs = 0 if old is None else old.runs  # a wait is no run

    def written(state: StepState, *, result: Any = None, over: bool | None = None) -> JobRecord:
        step = StepRecord(
            state=state, position=position, attempt=attempt, runs=runs, result=result, event=event, over=over
        )
        return attrs.evolve(job, steps={**job.steps, name: step})

    if event is not None and event in events:
        return written(StepState.COMPLETED, result=events[event]), "received", events[event]
    if old is not None and old.state is StepState.WAITING:
        over = old.over
    if over:
        if event is not None:
            return written(StepState.TIMED_OUT, over=True), "timeout", None
        return written(StepState.COMPLETED, over=True), "done", None
    # Suspended, as a snooze: scheduled until the wait's end (or for ever), the attempt given back.
    suspended = attrs.evolve(
        written(StepState.WAITING, over=over),
        state=JobState.SCHEDULED,
        attempt=job.attempt - 1,
        worker_id=None,
        due=False,
        wait_step=name,
        wait_event=event,
    )
    return suspended, "suspended", None


def wake_guarded(job: JobRecord, key: str) -> JobRecord:
    """An emit of *key* makes a job suspended on it available at once (the emit's second statement)."""
    if job.state is not JobState.SCHEDULED or job.wait_event != key:
        return job
    return attrs.evolve(job, state=JobState.AVAILABLE, due=True, wait_step=None, wait_event=None)


def emit_guarded(
    events: Mapping[str, Any], jobs: Mapping[int, JobRecord], *, key: str, payload: Any
) -> tuple[dict[str, Any], dict[int, JobRecord], bool]:
    """``app.emit``: the first emit of *key* stores *payload* and wakes the key's waiters; a later
    one changes nothing. Returns the events, the jobs and whether this emit won."""
    if key in events:
        return dict(events), dict(jobs), False
    return {**events, key: payload}, {i: wake_guarded(job, key) for i, job in jobs.items()}, True


def progress_guarded(
    job: JobRecord,
    *,
    worker_id: str,
    attempt: int,
    lease: int,
    done: float,
    total: float | None,
    note: str | None,
) -> tuple[JobRecord, bool]:
    """``context.progress``: store (*done*, *total*, *note*) under the job's lease; whether it was written."""
    if not holds_lease(job, worker_id=worker_id, attempt=attempt, lease=lease):
        return job, False
    return attrs.evolve(job, progress=(done, total, note)), True
