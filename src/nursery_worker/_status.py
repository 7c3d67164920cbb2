"""What the operations commands print: tables for people, JSON for programs.

``nursery-worker status`` (queues and workers), ``jobs list``/``jobs show``, ``queues list`` and
``cron list``.
Every age is measured against the database's clock (``now`` read in the same statement), so a
skewed clock on the machine running the CLI does not distort it.
"""

from __future__ import annotations

import datetime as dt
import json
import zoneinfo
from collections.abc import Sequence
from typing import Any

from ._durations import format_duration
from ._flow import BreakerInfo
from ._models import Job, JobError, QueueInfo, WorkerRow
from ._periodic import PeriodicInfo

_COLUMNS = (
    "SUPERVISOR",
    "CHILD",
    "PID",
    "HOST",
    "STATE",
    "UPTIME",
    "RESTARTS",
    "PROCESSED",
    "FAILED",
    "RUNNING",
    "HEARTBEAT",
    "QUEUES",
)


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


def render_queues(queues: Sequence[QueueInfo]) -> str:
    """The queues table: pause state, jobs by state, how long the oldest available job has waited."""
    if not queues:
        return "no queues: no jobs have been deferred and no queue was paused"
    header = ("QUEUE", "STATE", *(s.upper() for s in _STATES), "OLDEST AVAILABLE", "LIMITS")
    rows = [
        (
            q.name,
            "paused" if q.paused else "running",
            *(str(q.counts.get(s, 0)) for s in _STATES),
            "-" if q.oldest_available_age is None else format_duration(q.oldest_available_age),
            _limits(q),
        )
        for q in queues
    ]
    return table(header, rows)


def render_status(
    queues: Sequence[QueueInfo],
    workers: Sequence[WorkerRow],
    *,
    schema: str,
    breakers: Sequence[BreakerInfo] = (),
) -> str:
    """``nursery-worker status``: the queues table (when there are queues), the circuit breakers
    (when there are any), then the workers table."""
    parts = [render_queues(queues)] if queues else []
    if breakers:
        parts.append(render_breakers(breakers))
    parts.append(render_table(workers, schema=schema))
    return "\n\n".join(parts)


def status_dict(
    queues: Sequence[QueueInfo],
    workers: Sequence[WorkerRow],
    *,
    schema: str,
    breakers: Sequence[BreakerInfo] = (),
) -> dict[str, Any]:
    """``nursery-worker status --json``: ``{"schema", "queues", "breakers", "workers"}``."""
    return {
        "schema": schema,
        "queues": [queue_dict(q) for q in queues],
        "breakers": [breaker_dict(b) for b in breakers],
        "workers": [as_dict(w) for w in workers],
    }


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


def render_breakers(breakers: Sequence[BreakerInfo]) -> str:
    """The circuit breakers table: state, consecutive failures, and when an open one lets a probe through."""
    if not breakers:
        return "no circuit breakers: no task with circuit_breaker= has run yet"
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
    return table(("BREAKER", "STATE", "FAILURES", "COOLDOWN", "NEXT"), rows)


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
    }


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


def render_job(job: Job) -> str:
    """One job in full: its fields, arguments, result, and every recorded error with its traceback."""
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
    lines = [f"job {job.id}"]
    lines += [f"  {name:<12} {value}" for name, value in fields]
    lines.append("args:")
    lines += ["  " + line for line in json.dumps(dict(job.args), indent=2, sort_keys=True, default=str).splitlines()]
    if job.result is not None:
        lines.append("result:")
        lines += ["  " + line for line in json.dumps(job.result, indent=2, default=str).splitlines()]
    lines.append(f"errors ({len(job.errors)}):" if job.errors else "errors: none")
    for e in job.errors:
        lines.append(f"  attempt {e.attempt} at {_time(e.at)}: {e.type}: {e.message}")
        lines += ["    " + line for line in e.traceback.rstrip().splitlines()]
    return "\n".join(lines)


def render_table(rows: Sequence[WorkerRow], *, schema: str) -> str:
    """The workers as an aligned text table, or a sentence when there are none."""
    if not rows:
        return f"no workers are registered in schema {schema!r}"
    cells = [_COLUMNS] + [
        (
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
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(_COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


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
