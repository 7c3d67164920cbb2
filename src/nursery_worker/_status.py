"""What the operations commands print: tables for people, JSON for programs.

``nursery-worker status`` (queues and workers), ``jobs list``/``jobs show``, ``queues list`` and
``cron list``.
Every age is measured against the database's clock (``now`` read in the same statement), so a
skewed clock on the machine running the CLI does not distort it.
"""

from __future__ import annotations

import datetime as dt
import json
import textwrap
import zoneinfo
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ._durations import format_duration
from ._flow import BreakerInfo
from ._models import DatabaseHealth, DurableOverview, Job, JobError, JobProgress, JobStep, QueueInfo, Waiting, WorkerRow
from ._periodic import PeriodicInfo


def as_dict(row: WorkerRow) -> dict[str, Any]:
    """One worker as a JSON-ready dict; ages are seconds by the database's clock."""
    return {
        "id": row.id,
        "supervisor_id": row.supervisor_id,
        "child_index": row.child_index,
        "pid": row.pid,
        "hostname": row.hostname,
        "state": row.state,
        "queues": list(row.queues),
        "concurrency": row.concurrency,
        "started_at": row.started_at.isoformat(),
        "uptime": round((row.now - row.started_at).total_seconds(), 3),
        "restarts": row.restarts,
        "processed": row.processed,
        "failed": row.failed,
        "running": row.running,
        "heartbeat_at": row.heartbeat_at.isoformat(),
        "heartbeat_age": round((row.now - row.heartbeat_at).total_seconds(), 3),
    }


def render_json(rows: Sequence[WorkerRow]) -> str:
    """The workers as a JSON array of :func:`as_dict` objects."""
    return json.dumps([as_dict(r) for r in rows], indent=2)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An aligned plain-text table (two spaces between columns, no trailing blanks)."""
    cells = [tuple(header), *(tuple(r) for r in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


# --- fitting a table to the terminal -----------------------------------------------------------

#: A column's ``keep`` at which it is never dropped (the row's name).
ALWAYS = 99
_EMPTY_CELLS = frozenset({"", "-", "0"})


@attrs.frozen
class Column:
    """A column of a table that narrows to fit a width.

    ``short`` is its header in a narrow layout; columns are dropped lowest ``keep`` first (a column
    with nothing to show, every cell empty, before any other); a ``flexible`` column's cells are
    shortened with an ellipsis when dropping is not enough.
    """

    header: str
    short: str
    keep: int
    flexible: bool = False


def wrap_lines(text: str, width: int) -> str:
    """*text* with each line wrapped to *width* (0: as it is)."""
    if width <= 0:
        return text
    return "\n".join(
        "\n".join(textwrap.wrap(line, width, break_long_words=True, break_on_hyphens=False) or [""])
        for line in text.splitlines()
    )


def fit_table(columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int = 0) -> str:
    """An aligned table no line of which is wider than *width* (0: unlimited, every column, long headers).

    Narrow layouts are deliberate rather than cut at the edge: short headers first, then columns
    dropped from the least useful up (empty ones first), then the flexible columns (names, queue
    lists) shortened with "…" (a very long one first, to a third of the width); a last line names the
    columns left out.
    """
    full = table([c.header for c in columns], rows)
    if width <= 0 or max(len(line) for line in full.splitlines()) <= width:
        return full
    shown = list(range(len(columns)))
    empty = {i for i in shown if rows and all(r[i] in _EMPTY_CELLS for r in rows)}
    droppable = sorted((i for i in shown if columns[i].keep < ALWAYS), key=lambda i: (i not in empty, columns[i].keep))

    def render(keep: Sequence[int], cells: Sequence[Sequence[str]]) -> str:
        return table([columns[i].short for i in keep], [[r[i] for i in keep] for r in cells])

    def widest(text: str) -> int:
        return max(len(line) for line in text.splitlines())

    # A very long name (a queue, a host) is shortened before it pushes useful columns out.
    cap = max(12, width // 3)
    cells = [[_short(c, cap) if columns[i].flexible else c for i, c in enumerate(r)] for r in rows]
    text = render(shown, cells)
    while widest(text) > width and droppable:
        shown.remove(droppable.pop(0))
        text = render(shown, cells)
    for i in sorted((i for i in shown if columns[i].flexible), key=lambda i: -max(len(r[i]) for r in cells)):
        excess = widest(text) - width
        if excess <= 0:
            break
        longest = max(len(r[i]) for r in cells)
        room = max(len(columns[i].short), 4, longest - excess)
        for r in cells:
            r[i] = _short(r[i], room)
        text = render(shown, cells)
    hidden = [columns[i].short for i in range(len(columns)) if i not in shown]
    if hidden:
        text += "\n" + wrap_lines(f"(hidden: {', '.join(hidden)}; --width 0 shows all)", width)
    return "\n".join(line[:width].rstrip() for line in text.splitlines())


def terminal_width(requested: int | None, *, isatty: bool, environ: Mapping[str, str]) -> int:
    """The width ``status`` fits its tables to: *requested* (``--width``; 0 is unlimited), else the
    terminal's (``$COLUMNS`` first) when there is one, else unlimited: piped output is never cut
    unless asked."""
    import shutil

    if requested is not None:
        return max(0, requested)
    if isatty or environ.get("COLUMNS", "").strip().isdigit():
        return shutil.get_terminal_size().columns
    return 0


# --- rates (``status --watch``) ------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Snapshot:
    """The counters one redraw of ``status --watch`` saw, to turn the next one's into rates.

    Attributes:
        at: when it was taken (monotonic seconds).
        completed: jobs in state ``completed`` by queue.
        workers: (processed, failed) attempts by worker id, from their heartbeats.
    """

    at: float
    completed: dict[str, int]
    workers: dict[str, tuple[int, int]]

    @classmethod
    def take(cls, at: float, queues: Sequence[QueueInfo], workers: Sequence[WorkerRow]) -> Snapshot:
        """The snapshot of one redraw's queues and workers."""
        return cls(
            at=at,
            completed={q.name: q.counts.get("completed", 0) for q in queues},
            workers={w.id: (w.processed, w.failed) for w in workers},
        )


@attrs.frozen(kw_only=True)
class Rates:
    """Jobs per second between two snapshots of ``status --watch``.

    Attributes:
        seconds: the time between them.
        completed: jobs completed per second, all queues (from the queues' completed counts).
        failed: failed attempts per second, all workers (retried or discarded; from their heartbeats).
        by_queue: jobs completed per second by queue.
        by_worker: (attempts processed, failed) per second by worker id.
    """

    seconds: float
    completed: float
    failed: float
    by_queue: dict[str, float]
    by_worker: dict[str, tuple[float, float]]

    @classmethod
    def between(cls, before: Snapshot, after: Snapshot) -> Rates:
        """The rates from *before* to *after*; a counter that went down (pruned jobs, a restarted
        worker) counts as no change, and a worker or queue in one snapshot only is left out."""
        seconds = max(after.at - before.at, 1e-9)
        by_queue = {
            q: max(0, n - before.completed[q]) / seconds for q, n in after.completed.items() if q in before.completed
        }
        by_worker = {
            w: (max(0, p - before.workers[w][0]) / seconds, max(0, f - before.workers[w][1]) / seconds)
            for w, (p, f) in after.workers.items()
            if w in before.workers
        }
        return cls(
            seconds=seconds,
            completed=sum(by_queue.values()),
            failed=sum(f for _, f in by_worker.values()),
            by_queue=by_queue,
            by_worker=by_worker,
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: ``seconds``, ``completed_per_second``, ``failed_per_second``."""
        return {
            "seconds": round(self.seconds, 3),
            "completed_per_second": round(self.completed, 3),
            "failed_per_second": round(self.failed, 3),
        }

    def summary(self) -> str:
        """``12.5 jobs/s completed, 0.5 jobs/s failed (last 2.0s)``."""
        done, failed = _rate(self.completed), _rate(self.failed)
        return f"{done} jobs/s completed, {failed} jobs/s failed (last {self.seconds:.1f}s)"


def _rate(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _time(value: dt.datetime | None) -> str:
    return "-" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


# --- queues ------------------------------------------------------------------------------------

_STATES = ("pending", "available", "scheduled", "executing", "retryable", "completed", "discarded", "cancelled")


def queue_dict(q: QueueInfo) -> dict[str, Any]:
    """One queue as a JSON-ready dict."""
    age = q.oldest_available_age
    return {
        "name": q.name,
        "paused": q.paused,
        "paused_at": _iso(q.paused_at),
        "counts": dict(q.counts),
        "oldest_available_at": _iso(q.oldest_available_at),
        "oldest_available_age": None if age is None else round(age, 3),
        "max_concurrency": q.max_concurrency,
        "rate_limit": q.rate_limit,
    }


def _limits(q: QueueInfo) -> str:
    parts = []
    if q.max_concurrency is not None:
        parts.append(f"{q.max_concurrency} at once")
    if q.rate_limit is not None:
        parts.append(q.rate_limit)
    return ", ".join(parts) or "-"


def render_queues(queues: Sequence[QueueInfo], *, width: int = 0, rates: Rates | None = None) -> str:
    """The queues table: pause state, jobs by state, how long the oldest available job has waited,
    limits, and (with *rates*) the jobs completed per second; fitted to *width* (0: unlimited)."""
    if not queues:
        return wrap_lines("no queues: no jobs have been deferred and no queue was paused", width)
    keeps = {"pending": 4, "available": 9, "scheduled": 6, "executing": 8, "retryable": 7}
    shorts = {"available": "AVAIL", "scheduled": "SCHED", "executing": "EXEC", "retryable": "RETRY"}
    shorts |= {"pending": "PEND", "completed": "DONE", "discarded": "DISC", "cancelled": "CANC"}
    keeps |= {"completed": 5, "discarded": 6, "cancelled": 3}
    columns = [
        Column("QUEUE", "QUEUE", ALWAYS, flexible=True),
        Column("STATE", "STATE", 8),
        *(Column(s.upper(), shorts[s], keeps[s]) for s in _STATES),
        Column("OLDEST AVAILABLE", "OLDEST", 7),
        Column("LIMITS", "LIMITS", 5, flexible=True),
    ]
    if rates is not None:
        columns.append(Column("DONE/S", "DONE/S", 8))
    rows = []
    for q in queues:
        row = [
            q.name,
            "paused" if q.paused else "running",
            *(str(q.counts.get(s, 0)) for s in _STATES),
            "-" if q.oldest_available_age is None else format_duration(q.oldest_available_age),
            _limits(q),
        ]
        if rates is not None:
            row.append(_rate(rates.by_queue[q.name]) if q.name in rates.by_queue else "-")
        rows.append(row)
    return fit_table(columns, rows, width)


# --- the database's health ----------------------------------------------------------------------

#: A transaction open longer than this is flagged (the default idle_in_transaction_timeout).
OLD_TRANSACTION_WARNING = 60.0
#: Dead tuples are flagged above this share of the live ones (autovacuum's default scale factor) ...
DEAD_SHARE_WARNING = 0.2
#: ... and above this many (a small table's share swings with every batch).
DEAD_TUPLES_WARNING = 10_000


def database_warnings(health: DatabaseHealth) -> list[str]:
    """What in *health* deserves an operator's attention (empty when nothing does)."""
    warnings = []
    oldest = health.oldest_transaction
    if oldest is not None and oldest.age > OLD_TRANSACTION_WARNING:
        warnings.append(
            f"a transaction has been open {format_duration(oldest.age)} (pid {oldest.pid}): vacuum cannot "
            f"clean the jobs table until it ends; end it with SELECT pg_terminate_backend({oldest.pid})"
        )
    dead, live = health.dead_tuples, health.live_tuples
    if dead is not None and live is not None and dead > DEAD_TUPLES_WARNING and dead > DEAD_SHARE_WARNING * live:
        warnings.append(f"the jobs table has {dead:,} dead tuples, more than vacuum keeps up with")
    return warnings


def _bytes(value: int) -> str:
    """A size for people: ``512 B``, ``3.2 MiB``."""
    if value < 1024:
        return f"{value} B"
    size = float(value)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            break
    return f"{size:.1f} {unit}"


def render_database(health: DatabaseHealth) -> str:
    """The ``database:`` line of ``status`` (``WARNING database:`` when :func:`database_warnings`
    has something to say, followed by what)."""
    if health.engine == "sqlite":
        wal = _bytes(health.wal_bytes) if health.wal_bytes is not None else "n/a"
        text = f"database: SQLite, oldest transaction n/a; write-ahead log {wal}"
    else:
        oldest = health.oldest_transaction
        if oldest is None:
            first = "no open transaction"
        elif oldest.age < 1.0:
            # A statement running this instant (often a sibling of this very query) is no news.
            first = "no transaction open over 1s"
        else:
            state = oldest.state or "state hidden"
            app = oldest.application_name or "?"
            first = f"oldest transaction {format_duration(oldest.age)} (pid {oldest.pid}, {state}, app {app})"
        dead = "n/a"
        if health.dead_tuples is not None:
            dead = f"{health.dead_tuples:,}"
            if health.live_tuples:
                dead += f" ({health.dead_tuples / health.live_tuples:.0%} of live)"
        text = f"database: {first}; jobs dead tuples {dead}"
    warnings = database_warnings(health)
    if warnings:
        text = "WARNING " + text + "".join(f"\n  ! {w}" for w in warnings)
    return text


def database_dict(health: DatabaseHealth) -> dict[str, Any]:
    """The ``"database"`` object of ``status --json``: the engine, the oldest transaction (None when
    none is open, or on SQLite), dead and live tuples of the jobs table, the WAL size (SQLite), and
    the warnings."""
    oldest = health.oldest_transaction
    return {
        "engine": health.engine,
        "oldest_transaction": None
        if oldest is None
        else {
            "age": round(oldest.age, 3),
            "pid": oldest.pid,
            "state": oldest.state,
            "application_name": oldest.application_name,
        },
        "dead_tuples": health.dead_tuples,
        "live_tuples": health.live_tuples,
        "wal_bytes": health.wal_bytes,
        "warnings": database_warnings(health),
    }


#: The most executing jobs whose progress ``status`` lists.
PROGRESS_ROWS = 10


def render_durable(overview: DurableOverview, *, width: int = 0) -> str:
    """The durable section of ``status``: how many jobs durable sleeps and event waits hold, then
    the executing jobs that report progress (at most :data:`PROGRESS_ROWS`, and how many more);
    empty when there is neither."""
    parts = []
    if overview.sleeping or overview.waiting_for_events:
        parts.append(
            wrap_lines(
                f"suspended: {overview.sleeping} job(s) in a durable sleep, "
                f"{overview.waiting_for_events} waiting for an event",
                width,
            )
        )
    if overview.progress:
        columns = (
            Column("JOB", "JOB", ALWAYS),
            Column("TASK", "TASK", 8, flexible=True),
            Column("QUEUE", "QUEUE", 3, flexible=True),
            Column("PROGRESS", "PROG", ALWAYS),
            Column("NOTE", "NOTE", 5, flexible=True),
            Column("UPDATED (UTC)", "UPDATED", 2),
        )
        rows = []
        for row in overview.progress[:PROGRESS_ROWS]:
            p = row.progress
            rows.append(
                (
                    str(row.job_id),
                    row.task,
                    row.queue,
                    _progress_figure(p),
                    _short(p.note or "-", STEP_PREVIEW),
                    _time(p.updated_at),
                )
            )
        text = fit_table(columns, rows, width)
        more = overview.reporting - len(rows)
        if more > 0:
            text += "\n" + wrap_lines(f"(and {more} more executing job(s) reporting progress)", width)
        parts.append(text)
    return "\n".join(parts)


def durable_dict(overview: DurableOverview) -> dict[str, Any]:
    """The ``"durable"`` object of ``status --json``: suspended jobs by kind and the executing jobs'
    progress (``reporting`` counts them all; ``progress`` lists the first ones)."""
    return {
        "sleeping": overview.sleeping,
        "waiting_for_events": overview.waiting_for_events,
        "reporting": overview.reporting,
        "progress": [
            {"job_id": r.job_id, "task": r.task, "queue": r.queue, **progress_dict(r.progress)}
            for r in overview.progress[:PROGRESS_ROWS]
        ],
    }


def render_status(
    queues: Sequence[QueueInfo],
    workers: Sequence[WorkerRow],
    *,
    schema: str,
    breakers: Sequence[BreakerInfo] = (),
    width: int = 0,
    rates: Rates | None = None,
    database: DatabaseHealth | None = None,
    durable: DurableOverview | None = None,
) -> str:
    """``nursery-worker status``: the rates (when watching), the database's health line (when
    given), the queues table (when there are queues), the circuit breakers (when there are any),
    the durable jobs (suspended ones and executing ones' progress, when there are any), then the
    workers table; no line wider than *width* (0: unlimited)."""
    parts = [wrap_lines(rates.summary(), width)] if rates is not None else []
    if database is not None:
        parts.append(wrap_lines(render_database(database), width))
    if queues:
        parts.append(render_queues(queues, width=width, rates=rates))
    if breakers:
        parts.append(render_breakers(breakers, width=width))
    if durable is not None:
        section = render_durable(durable, width=width)
        if section:
            parts.append(section)
    parts.append(render_table(workers, schema=schema, width=width, rates=rates))
    return "\n\n".join(parts)


def status_dict(
    queues: Sequence[QueueInfo],
    workers: Sequence[WorkerRow],
    *,
    schema: str,
    breakers: Sequence[BreakerInfo] = (),
    rates: Rates | None = None,
    database: DatabaseHealth | None = None,
    durable: DurableOverview | None = None,
) -> dict[str, Any]:
    """``nursery-worker status --json``: ``{"schema", "queues", "breakers", "workers"}``, and
    ``"rates"`` (:meth:`Rates.as_dict`) from the second redraw of ``--watch`` on, and
    ``"database"`` (:func:`database_dict`) and ``"durable"`` (:func:`durable_dict`) when given."""
    data: dict[str, Any] = {
        "schema": schema,
        "queues": [queue_dict(q) for q in queues],
        "breakers": [breaker_dict(b) for b in breakers],
        "workers": [as_dict(w) for w in workers],
    }
    if database is not None:
        data["database"] = database_dict(database)
    if durable is not None:
        data["durable"] = durable_dict(durable)
    if rates is not None:
        data["rates"] = rates.as_dict()
    return data


# --- circuit breakers --------------------------------------------------------------------------


def breaker_dict(b: BreakerInfo) -> dict[str, Any]:
    """One circuit breaker as a JSON-ready dict."""
    return {
        "task": b.task,
        "state": b.state,
        "failures": b.failures,
        "threshold": b.threshold,
        "cooldown": b.cooldown,
        "opened_at": _iso(b.opened_at),
        "reopens_at": _iso(b.reopens_at),
        "probe_job_id": b.probe_job_id,
    }


def render_breakers(breakers: Sequence[BreakerInfo], *, width: int = 0) -> str:
    """The circuit breakers table: state, consecutive failures, and when an open one lets a probe
    through; fitted to *width* (0: unlimited)."""
    if not breakers:
        return wrap_lines("no circuit breakers: no task with circuit_breaker= has run yet", width)
    rows = []
    for b in breakers:
        if b.state == "open" and b.reopens_at is not None:
            left = max(0.0, (b.reopens_at - b.now).total_seconds())
            note = f"probe in {format_duration(left)}"
        elif b.state == "half_open":
            note = f"probe job {b.probe_job_id}" if b.probe_job_id is not None else "probe due"
        else:
            note = "-"
        rows.append((b.task, b.state, f"{b.failures}/{b.threshold}", f"{b.cooldown:g}s", note))
    columns = (
        Column("BREAKER", "BREAKER", ALWAYS, flexible=True),
        Column("STATE", "STATE", 9),
        Column("FAILURES", "FAILS", 7),
        Column("COOLDOWN", "COOL", 3),
        Column("NEXT", "NEXT", 6, flexible=True),
    )
    return fit_table(columns, rows, width)


# --- jobs --------------------------------------------------------------------------------------


def error_dict(e: JobError) -> dict[str, Any]:
    """One recorded error as a JSON-ready dict."""
    return {"attempt": e.attempt, "at": _iso(e.at), "type": e.type, "message": e.message, "traceback": e.traceback}


def job_dict(job: Job) -> dict[str, Any]:
    """One job as a JSON-ready dict, with its arguments, result and errors (tracebacks included)."""
    return {
        "id": job.id,
        "task": job.task,
        "queue": job.queue,
        "state": job.state.value,
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "priority": job.priority,
        "args": dict(job.args),
        "scheduled_at": _iso(job.scheduled_at),
        "inserted_at": _iso(job.inserted_at),
        "attempted_at": _iso(job.attempted_at),
        "finished_at": _iso(job.finished_at),
        "worker_id": job.worker_id,
        "cancel_requested_at": _iso(job.cancel_requested_at),
        "unique_key": job.unique_key,
        "depends_on": list(job.depends_on),
        "result": job.result,
        "errors": [error_dict(e) for e in job.errors],
        "progress": None if job.progress is None else progress_dict(job.progress),
        "waiting": None if job.waiting is None else waiting_dict(job.waiting),
    }


# --- durable steps, waits and progress (issue 22) ----------------------------------------------

#: The most steps ``jobs show`` and the dashboard's job page list (a job may have thousands).
STEP_ROWS = 200

#: A step's result or error is shortened to this many characters in ``jobs show`` (``--json`` has it whole).
STEP_PREVIEW = 60
#: A wait that ends further ahead than this has no timeout (those are scheduled a century ahead).
_NO_TIMEOUT = dt.timedelta(days=50 * 365)


def _number(value: float) -> str:
    return f"{value:g}"


def _progress_figure(progress: JobProgress) -> str:
    """``3/10 (30%)``: done of total and the share (``3`` alone without a total)."""
    text = _number(progress.done)
    if progress.total is not None:
        text += f"/{_number(progress.total)}"
    fraction = progress.fraction
    if fraction is not None:
        text += f" ({fraction:.0%})"
    return text


def progress_text(progress: JobProgress) -> str:
    """``3/10 (30%) copying files, updated 2026-12-03 10:00:00``: done of total, the share, the note
    and when it was written (UTC)."""
    text = _progress_figure(progress)
    if progress.note:
        text += f" {_short(progress.note, STEP_PREVIEW)}"
    if progress.updated_at is not None:
        text += f", updated {_time(progress.updated_at)}"
    return text


def progress_dict(progress: JobProgress) -> dict[str, Any]:
    """A job's progress as a JSON-ready dict (``fraction`` is None without a positive total)."""
    return {
        "done": progress.done,
        "total": progress.total,
        "fraction": progress.fraction,
        "note": progress.note,
        "updated_at": _iso(progress.updated_at),
    }


def waits_forever(until: dt.datetime, now: dt.datetime | None = None) -> bool:
    """Whether a wait ending at *until* has no timeout (its job is scheduled a century ahead)."""
    return until - (now or dt.datetime.now(dt.UTC)) > _NO_TIMEOUT


def waiting_text(waiting: Waiting) -> str:
    """``sleep until 2026-12-03 10:00:00 UTC (step 'cool-off')`` or ``event 'paid:7' until ... UTC
    (timeout; step 'payment')``; ``no timeout`` for an event wait without one."""
    step = f"step {waiting.step!r}"
    if waiting.kind == "event":
        if waits_forever(waiting.until):
            return f"event {waiting.event!r}, no timeout ({step})"
        return f"event {waiting.event!r} until {_time(waiting.until)} UTC (timeout; {step})"
    return f"sleep until {_time(waiting.until)} UTC ({step})"


def waiting_dict(waiting: Waiting) -> dict[str, Any]:
    """What a suspended job waits for, as a JSON-ready dict (``until`` is None for no timeout)."""
    return {
        "kind": waiting.kind,
        "step": waiting.step,
        "event": waiting.event,
        "until": None if waiting.kind == "event" and waits_forever(waiting.until) else _iso(waiting.until),
    }


def step_dict(step: JobStep) -> dict[str, Any]:
    """One durable step as a JSON-ready dict, its result and error whole."""
    return {
        "position": step.position,
        "name": step.name,
        "state": step.state,
        "attempt": step.attempt,
        "runs": step.runs,
        "duration": step.duration,
        "result": step.result,
        "error": None if step.error is None else error_dict(step.error),
        "updated_at": _iso(step.updated_at),
        "wake_at": _iso(step.wake_at),
        "event": step.event,
    }


def step_outcome(step: JobStep, width: int = STEP_PREVIEW) -> str:
    """A step's result, error or wait in one line of at most *width* characters."""
    if step.error is not None:
        text = f"{step.error.type}: {step.error.message}"
    elif step.state == "waiting":
        what = "sleeps" if step.event is None else f"waits for event {step.event!r}"
        if step.wake_at is None or waits_forever(step.wake_at):
            text = f"{what}, no timeout" if step.event is not None else what
        else:
            text = f"{what} until {_time(step.wake_at)}"
    elif step.state == "timed_out":
        text = f"timed out waiting for event {step.event!r}" if step.event is not None else "timed out"
    else:
        text = json.dumps(step.result, default=str, ensure_ascii=False)
    return _short(text, width)


def render_steps(steps: Sequence[JobStep]) -> str:
    """The steps table of ``jobs show``: position, name, state, attempt, runs, duration, and the
    result or error shortened to :data:`STEP_PREVIEW` characters."""
    rows = [
        (
            str(s.position),
            _short(s.name, 40),
            s.state,
            str(s.attempt),
            str(s.runs),
            "-" if s.duration is None else f"{s.duration:.3f}s",
            step_outcome(s),
        )
        for s in steps
    ]
    return table(("#", "STEP", "STATE", "ATTEMPT", "RUNS", "DURATION", "RESULT OR ERROR"), rows)


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def render_jobs(jobs: Sequence[Job]) -> str:
    """The jobs table, newest first; the last error's first line, shortened."""
    if not jobs:
        return "no jobs match"
    header = ("ID", "TASK", "QUEUE", "STATE", "ATTEMPT", "PRIORITY", "SCHEDULED (UTC)", "LAST ERROR")
    rows = [
        (
            str(j.id),
            j.task,
            j.queue,
            j.state.value,
            f"{j.attempt}/{j.max_attempts}",
            str(j.priority),
            _time(j.scheduled_at),
            _short(f"{j.errors[-1].type}: {j.errors[-1].message}", 60) if j.errors else "",
        )
        for j in jobs
    ]
    return table(header, rows)


def render_job(job: Job, steps: Sequence[JobStep] = ()) -> str:
    """One job in full: its fields (with its progress and what it waits for, if anything), arguments,
    result, its durable *steps* (results and errors shortened), and every recorded error with its
    traceback."""
    fields = [
        ("task", job.task),
        ("queue", job.queue),
        ("state", job.state.value),
        ("attempt", f"{job.attempt} of {job.max_attempts}"),
        ("priority", str(job.priority)),
        ("scheduled", _time(job.scheduled_at)),
        ("inserted", _time(job.inserted_at)),
        ("attempted", _time(job.attempted_at)),
        ("finished", _time(job.finished_at)),
        ("worker", job.worker_id or "-"),
    ]
    if job.cancel_requested_at is not None:
        fields.append(("cancel asked", _time(job.cancel_requested_at)))
    if job.unique_key is not None:
        fields.append(("unique key", job.unique_key))
    if job.depends_on:
        fields.append(("depends on", ", ".join(str(i) for i in job.depends_on)))
    if job.progress is not None:
        fields.append(("progress", progress_text(job.progress)))
    if job.waiting is not None:
        fields.append(("waiting", waiting_text(job.waiting)))
    lines = [f"job {job.id}"]
    lines += [f"  {name:<12} {value}" for name, value in fields]
    lines.append("args:")
    lines += ["  " + line for line in json.dumps(dict(job.args), indent=2, sort_keys=True, default=str).splitlines()]
    if job.result is not None:
        lines.append("result:")
        lines += ["  " + line for line in json.dumps(job.result, indent=2, default=str).splitlines()]
    if steps:
        more = len(steps) > STEP_ROWS
        lines.append(f"steps (the first {STEP_ROWS}; --json lists every one):" if more else f"steps ({len(steps)}):")
        lines += ["  " + line for line in render_steps(steps[:STEP_ROWS]).splitlines()]
    lines.append(f"errors ({len(job.errors)}):" if job.errors else "errors: none")
    for e in job.errors:
        lines.append(f"  attempt {e.attempt} at {_time(e.at)}: {e.type}: {e.message}")
        lines += ["    " + line for line in e.traceback.rstrip().splitlines()]
    return "\n".join(lines)


def render_table(rows: Sequence[WorkerRow], *, schema: str, width: int = 0, rates: Rates | None = None) -> str:
    """The workers as an aligned text table fitted to *width* (0: unlimited), with their attempts
    processed and failed per second when *rates* are given; a sentence when there are none."""
    if not rows:
        return wrap_lines(f"no workers are registered in schema {schema!r}", width)
    columns = [
        Column("SUPERVISOR", "SUPERVISOR", 1, flexible=True),
        Column("CHILD", "CHILD", 3),
        Column("PID", "PID", ALWAYS),
        Column("HOST", "HOST", 6, flexible=True),
        Column("STATE", "STATE", 9),
        Column("UPTIME", "UP", 5),
        Column("RESTARTS", "RST", 2),
        Column("PROCESSED", "PROC", 7),
        Column("FAILED", "FAIL", 6),
        Column("RUNNING", "RUN", 8),
        Column("HEARTBEAT", "BEAT", 8),
        Column("QUEUES", "QUEUES", 4, flexible=True),
    ]
    if rates is not None:
        columns += [Column("PROC/S", "PROC/S", 8), Column("FAIL/S", "FAIL/S", 8)]
    cells = []
    for r in rows:
        row = [
            r.supervisor_id or "-",
            "-" if r.child_index is None else str(r.child_index),
            str(r.pid),
            r.hostname,
            r.state,
            format_duration((r.now - r.started_at).total_seconds()),
            str(r.restarts),
            str(r.processed),
            str(r.failed),
            f"{r.running}/{r.concurrency}",
            f"{max(0.0, (r.now - r.heartbeat_at).total_seconds()):.1f}s ago",
            ",".join(r.queues),
        ]
        if rates is not None:
            processed, failed = rates.by_worker.get(r.id, (None, None))
            row += ["-" if processed is None else _rate(processed), "-" if failed is None else _rate(failed)]
        cells.append(row)
    return fit_table(columns, cells, width)


# --- periodic schedules (`nursery-worker cron list`) --------------------------------------------


def periodic_dict(p: PeriodicInfo) -> dict[str, Any]:
    """One periodic schedule as a JSON-ready dict; ``next_in`` is seconds by the database's clock."""
    next_in = p.next_in
    return {
        "name": p.name,
        "cron": p.cron,
        "timezone": p.timezone,
        "task": p.task,
        "queue": p.queue,
        "args": dict(p.args),
        "next_tick": _iso(p.next_tick),
        "next_in": None if next_in is None else round(next_in, 3),
        "last_tick": _iso(p.last_tick),
        "last_job_id": p.last_job_id,
        "last_job_state": None if p.last_job_state is None else p.last_job_state.value,
        "active_since": _iso(p.active_since),
        "updated_at": _iso(p.updated_at),
        "in_app": p.in_app,
        "paused": p.paused,
        "paused_at": _iso(p.paused_at),
    }


def _local(value: dt.datetime | None, zone: str) -> str:
    """A tick in its schedule's time zone (``2026-11-23 06:00:00 CET``)."""
    if value is None:
        return "-"
    try:
        return value.astimezone(zoneinfo.ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S %Z")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return _time(value) + " UTC"


def render_periodic(items: Sequence[PeriodicInfo], *, app_given: bool = False) -> str:
    """The schedules table: expression, zone, task, queue, next run, last tick and last job.

    Times are shown in each schedule's own time zone; "in 4m10s" is by the database's clock. With
    an app (``--app``), schedules it does not define are marked with ``*``.
    """
    if not items:
        return "no periodic schedules: none is defined in the app and no worker has registered one"
    header = ("NAME", "CRON", "TIMEZONE", "TASK", "QUEUE", "NEXT RUN", "LAST TICK", "LAST JOB")
    rows = []
    for p in items:
        next_in = p.next_in
        next_run = (
            "paused"
            if p.paused
            else "never"
            if p.next_tick is None
            else f"{_local(p.next_tick, p.timezone)} (in {format_duration(next_in or 0)})"
        )
        if p.last_job_id is None:
            last_job = "-"
        else:
            last_job = f"{p.last_job_id} {p.last_job_state.value if p.last_job_state is not None else 'pruned'}"
        rows.append(
            (
                p.name + ("*" if app_given and not p.in_app else ""),
                p.cron,
                p.timezone,
                p.task,
                p.queue,
                next_run,
                _local(p.last_tick, p.timezone),
                last_job,
            )
        )
    text = table(header, rows)
    if app_given and any(not p.in_app for p in items):
        text += "\n* not defined in the app: removed from the code, or another app's; its workers no longer enqueue it"
    return text
