"""What the dashboard reads besides jobs and queues: process health, periodic schedules with their
recent runs, a job's dependency graph, failures grouped by task and exception type, and metrics
history, plus the audit trail of admin actions.

Every answer comes from small tables (workers, periodic, audit), the metric rollups the workers
write (``_rollup.py``: per minute and per hour, so no history query scans the jobs table), or
bounded index reads of the jobs table (a graph's levels, the newest failed jobs, a task's newest
jobs). :class:`~nursery_worker._admin.Admin` exposes each one; the CLI and the web pages call it.

Layering: imports records, the rollup arithmetic and ``_periodic``; never ``_app``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from ._config import WorkerConfig
from ._errors import JobNotFound
from ._json import check_json
from ._models import AuditEntry, GraphNode, Job, RollupRow, WorkerRow
from ._periodic import PeriodicInfo, list_periodic
from ._rollup import add_histograms, percentile

if TYPE_CHECKING:
    from ._app import App

#: The windows of the failures view, by name: seconds, and whether hourly rollups serve it.
FAILURE_WINDOWS: Mapping[str, tuple[float, bool]] = {
    "1h": (3600.0, False),
    "24h": (86400.0, True),
    "7d": (7 * 86400.0, True),
}
#: The ranges of the metrics history, by name: seconds, step seconds, and whether hourly rollups serve it.
METRIC_RANGES: Mapping[str, tuple[float, float, bool]] = {
    "1h": (3600.0, 60.0, False),
    "6h": (6 * 3600.0, 300.0, False),
    "24h": (86400.0, 3600.0, True),
    "7d": (7 * 86400.0, 6 * 3600.0, True),
    "30d": (30 * 86400.0, 86400.0, True),
}
#: How far a job graph is followed each way, and how many jobs it shows at most.
GRAPH_MAX_DEPTH = 25
GRAPH_MAX_NODES = 200
#: A heartbeat older than this (the default ``rescue_after``) marks a worker stale.
STALE_AFTER: float = float(attrs.fields(WorkerConfig).rescue_after.default or 15.0)
#: The most audit entries or recent failed jobs one call returns.
MAX_ROWS = 500


def _check_limit(limit: object, where: str) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_ROWS:
        raise ValueError(f"{where}: limit must be an int from 1 to {MAX_ROWS}, got {limit!r}")
    return limit


def _check_choice(value: object, choices: Iterable[str], where: str, name: str) -> str:
    names = list(choices)
    if not isinstance(value, str) or value not in names:
        raise ValueError(f"{where}: {name} must be one of {', '.join(names)}, got {value!r}")
    return value


# --- the audit trail ----------------------------------------------------------------------------


async def record_audit(
    app: App, *, actor: str, action: str, target: Mapping[str, Any] | str, count: int | None
) -> AuditEntry:
    """Write one audit entry; see :meth:`Admin.record_audit`."""
    if isinstance(target, str):
        target = {"target": target}
    if count is None:
        count = 0
    for name, value in (("actor", actor), ("action", action)):
        if not isinstance(value, str) or not value.strip() or len(value) > 200:
            raise ValueError(f"record_audit({name}={value!r}): must be a non-empty string of at most 200 characters")
    if not isinstance(target, Mapping):
        raise TypeError(
            f"record_audit(target={target!r}): must be a mapping (a JSON object) such as {{'job_id': 7}}, or a string"
        )
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"record_audit(count={count!r}): must be an int >= 0")
    check_json(dict(target), "record_audit(target)")
    return await app.driver.record_audit(actor=actor, action=action, target=dict(target), count=count)


async def list_audit(app: App, *, limit: int = 100, before_id: int | None = None) -> list[AuditEntry]:
    """The newest audit entries first; see :meth:`Admin.list_audit`."""
    limit = _check_limit(limit, "list_audit()")
    if before_id is not None and (isinstance(before_id, bool) or not isinstance(before_id, int)):
        raise TypeError(f"list_audit(before_id={before_id!r}): must be an int or None")
    return await app.driver.list_audit(limit=limit, before_id=before_id)


# --- workers and supervisors --------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class WorkerHealth:
    """One worker process as the dashboard shows it (ages by the database's clock).

    Attributes:
        id: the worker's id. hostname, pid: where it runs. state: its last reported state.
        queues: the queues it serves. concurrency: its most jobs at once.
        supervisor_id, child_index: the supervisor and slot that started it, or None.
        uptime: seconds since it registered. heartbeat_age: seconds since its last heartbeat.
        stale: whether that is over :data:`STALE_AFTER` (its jobs are about to be rescued).
        running, processed, failed: its counters at the last heartbeat.
        restarts: how many times its slot's process was replaced. last_exit: how the previous
            process of its slot ended (None for a first process or an unsupervised worker).
    """

    id: str
    hostname: str
    pid: int
    state: str
    queues: tuple[str, ...]
    concurrency: int
    supervisor_id: str | None
    child_index: int | None
    uptime: float
    heartbeat_age: float
    stale: bool
    running: int
    processed: int
    failed: int
    restarts: int
    last_exit: str | None


def _health(row: WorkerRow) -> WorkerHealth:
    age = max(0.0, (row.now - row.heartbeat_at).total_seconds())
    return WorkerHealth(
        id=row.id,
        hostname=row.hostname,
        pid=row.pid,
        state=row.state,
        queues=row.queues,
        concurrency=row.concurrency,
        supervisor_id=row.supervisor_id,
        child_index=row.child_index,
        uptime=max(0.0, (row.now - row.started_at).total_seconds()),
        heartbeat_age=age,
        stale=age > STALE_AFTER,
        running=row.running,
        processed=row.processed,
        failed=row.failed,
        restarts=row.restarts,
        last_exit=row.last_exit,
    )


async def worker_health(app: App) -> list[WorkerHealth]:
    """Every registered worker, supervised ones first; see :meth:`Admin.worker_health`."""
    return [_health(row) for row in await app.driver.list_workers()]


# --- periodic schedules -------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class PeriodicOverview:
    """A periodic schedule with its recent runs.

    Attributes:
        info: the schedule (next fire, last tick and its job's state, ...).
        recent: its task's newest jobs (newest first; a job of the task enqueued by other means is
            among them too), each with its state: the outcome of each recent run.
        completed_24h, failed_24h: its task's completed and failed (retryable or discarded)
            attempts over the last 24 hours, from the rollups.
    """

    info: PeriodicInfo
    recent: tuple[Job, ...]
    completed_24h: int
    failed_24h: int


async def periodic_overview(app: App, *, runs: int = 5) -> list[PeriodicOverview]:
    """Every periodic schedule with its recent runs; see :meth:`Admin.periodic_overview`."""
    if isinstance(runs, bool) or not isinstance(runs, int) or not 0 <= runs <= 50:
        raise ValueError(f"periodic_overview(runs={runs!r}): must be an int from 0 to 50")
    schedules = await list_periodic(app)
    if not schedules:
        return []
    day = await app.driver.read_rollups(since=86400.0, hourly=True, step=86400.0)
    done: dict[str, int] = {}
    failed: dict[str, int] = {}
    for b in day.buckets:
        done[b.row.task] = done.get(b.row.task, 0) + b.row.completed
        failed[b.row.task] = failed.get(b.row.task, 0) + b.row.failed + b.row.discarded
    out = []
    for info in schedules:
        recent = await app.driver.list_jobs(states=None, queue=None, task=info.task, limit=runs) if runs else []
        out.append(
            PeriodicOverview(
                info=info,
                recent=tuple(recent),
                completed_24h=done.get(info.task, 0),
                failed_24h=failed.get(info.task, 0),
            )
        )
    return out


# --- workflows ----------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class JobGraph:
    """A job's dependency graph.

    Attributes:
        job_id: the job it was read from (depth 0).
        nodes: the jobs, by depth then id: negative depths are what it depends on (directly: -1),
            positive ones what depends on it.
        truncated: whether the graph was cut at ``GRAPH_MAX_NODES`` jobs or ``GRAPH_MAX_DEPTH`` levels.
    """

    job_id: int
    nodes: tuple[GraphNode, ...]
    truncated: bool

    def edges(self) -> list[tuple[int, int]]:
        """(dependency, dependant) pairs between the jobs shown."""
        ids = {n.id for n in self.nodes}
        return [(d, n.id) for n in self.nodes for d in n.depends_on if d in ids]


async def job_graph(app: App, job_id: int) -> JobGraph:
    """Job *job_id*'s dependency graph; see :meth:`Admin.job_graph`."""
    nodes = await app.driver.job_graph(job_id, max_depth=GRAPH_MAX_DEPTH, max_nodes=GRAPH_MAX_NODES)
    if not nodes:
        raise JobNotFound(job_id)
    depths = [n.depth for n in nodes]
    truncated = len(nodes) >= GRAPH_MAX_NODES or max(depths) >= GRAPH_MAX_DEPTH or min(depths) <= -GRAPH_MAX_DEPTH
    return JobGraph(job_id=job_id, nodes=tuple(nodes), truncated=truncated)


# --- failures -----------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class FailureGroup:
    """Failed attempts of one task or one exception type within a window.

    Attributes:
        key: the task's name, or the exception's type.
        failed: attempts that failed and will be retried. discarded: attempts that failed for good.
        attempts: every finished attempt of the task (for a task's group; 0 for a type's), so
            ``(failed + discarded) / attempts`` is its failure rate.
        last_message: the newest error message seen among the recent failed jobs, or None.
        sample_job_ids: some recent failed jobs of the group, newest first.
    """

    key: str
    failed: int
    discarded: int
    attempts: int
    last_message: str | None
    sample_job_ids: tuple[int, ...]

    @property
    def total(self) -> int:
        """Failed and discarded attempts together."""
        return self.failed + self.discarded


@attrs.frozen(kw_only=True)
class FailureReport:
    """Failures over one window, grouped by task and by exception type (largest first).

    Attributes:
        window: the window's name (``1h``, ``24h``, ``7d``).
        now: the database's clock when read.
        by_task, by_type: the groups.
        recent: the newest failed jobs (discarded within the window, and retryable ones).
    """

    window: str
    now: dt.datetime
    by_task: tuple[FailureGroup, ...]
    by_type: tuple[FailureGroup, ...]
    recent: tuple[Job, ...]


_NEVER = dt.datetime.min.replace(tzinfo=dt.UTC)


def _failed_at(job: Job) -> dt.datetime:
    """When the job last failed (its last error's time), for ordering."""
    at = job.errors[-1].at if job.errors else None
    return at or job.finished_at or job.inserted_at or _NEVER


def _last_error(job: Job) -> tuple[str, str] | None:
    return (job.errors[-1].type, job.errors[-1].message) if job.errors else None


async def failures(app: App, *, window: str = "24h", recent: int = 50) -> FailureReport:
    """Failures over *window* by task and by exception type; see :meth:`Admin.failures`."""
    window = _check_choice(window, FAILURE_WINDOWS, "failures()", "window")
    recent = _check_limit(recent, "failures()")
    seconds, hourly = FAILURE_WINDOWS[window]
    read = await app.driver.read_rollups(since=seconds, hourly=hourly, step=seconds)
    jobs = await app.driver.recent_failures(since=seconds, limit=recent)
    jobs.sort(key=_failed_at, reverse=True)
    tasks: dict[str, list[int]] = {}
    types: dict[str, list[int]] = {}
    for b in read.buckets:
        r = b.row
        t = tasks.setdefault(r.task, [0, 0, 0])
        t[0] += r.failed
        t[1] += r.discarded
        t[2] += r.completed + r.failed + r.discarded + r.cancelled
        if r.error_type:
            e = types.setdefault(r.error_type, [0, 0, 0])
            e[0] += r.failed
            e[1] += r.discarded

    def groups(counts: dict[str, list[int]], key_of: Any) -> tuple[FailureGroup, ...]:
        out = []
        for key, (failed_n, discarded_n, attempts) in counts.items():
            if failed_n + discarded_n == 0:
                continue
            mine = [j for j in jobs if key_of(j) == key]
            last = _last_error(mine[0]) if mine else None
            out.append(
                FailureGroup(
                    key=key,
                    failed=failed_n,
                    discarded=discarded_n,
                    attempts=attempts,
                    last_message=last[1] if last else None,
                    sample_job_ids=tuple(j.id for j in mine[:5]),
                )
            )
        return tuple(sorted(out, key=lambda g: (-g.total, g.key)))

    return FailureReport(
        window=window,
        now=read.now,
        by_task=groups(tasks, lambda j: j.task),
        by_type=groups(types, lambda j: (_last_error(j) or ("", ""))[0]),
        recent=tuple(jobs),
    )


# --- metrics history ----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class MetricPoint:
    """One step of a task's metrics history.

    Attributes:
        at: the start of the step. completed, failed, discarded, cancelled: finished attempts.
        throughput: completed attempts per minute. failure_rate: failed and discarded attempts
            over all finished ones (None without any).
        p50, p95, p99: attempt duration percentiles in seconds (None without any attempt),
            accurate to one histogram bucket (a factor of sqrt(2)).
        mean: the mean attempt duration in seconds, or None.
    """

    at: dt.datetime
    completed: int
    failed: int
    discarded: int
    cancelled: int
    throughput: float
    failure_rate: float | None
    p50: float | None
    p95: float | None
    p99: float | None
    mean: float | None


@attrs.frozen(kw_only=True)
class TaskMetrics:
    """A task's metrics history: one point per step, and the whole range summed (``total``)."""

    task: str
    points: tuple[MetricPoint, ...]
    total: MetricPoint


@attrs.frozen(kw_only=True)
class MetricsHistory:
    """Per-task metrics over a range, from the rollups.

    Attributes:
        period: the range's name (``1h``, ``6h``, ``24h``, ``7d``, ``30d``). step: seconds per point.
        start: the first step's start. now: the database's clock when read.
        tasks: one entry per task with attempts in the range, by name.
    """

    period: str
    step: float
    start: dt.datetime
    now: dt.datetime
    tasks: tuple[TaskMetrics, ...]


def _point(at: dt.datetime, rows: Sequence[RollupRow], minutes: float) -> MetricPoint:
    completed = sum(r.completed for r in rows)
    failed = sum(r.failed for r in rows)
    discarded = sum(r.discarded for r in rows)
    cancelled = sum(r.cancelled for r in rows)
    finished = completed + failed + discarded + cancelled
    histogram = add_histograms(r.histogram for r in rows)
    judged = completed + failed + discarded
    return MetricPoint(
        at=at,
        completed=completed,
        failed=failed,
        discarded=discarded,
        cancelled=cancelled,
        throughput=completed / minutes if minutes > 0 else 0.0,
        failure_rate=(failed + discarded) / judged if judged else None,
        p50=percentile(histogram, 0.50),
        p95=percentile(histogram, 0.95),
        p99=percentile(histogram, 0.99),
        mean=sum(r.duration_sum for r in rows) / finished if finished else None,
    )


def _floor(moment: dt.datetime, step: float) -> dt.datetime:
    epoch = moment.timestamp()
    return dt.datetime.fromtimestamp(math.floor(epoch / step) * step, tz=dt.UTC)


async def metrics_history(app: App, *, period: str = "24h", task: str | None = None) -> MetricsHistory:
    """Per-task throughput, failure rate and duration percentiles; see :meth:`Admin.metrics_history`."""
    period = _check_choice(period, METRIC_RANGES, "metrics_history()", "period")
    if task is not None and not isinstance(task, str):
        raise TypeError(f"metrics_history(task={task!r}): must be a task name or None")
    seconds, step, hourly = METRIC_RANGES[period]
    read = await app.driver.read_rollups(since=seconds, hourly=hourly, step=step, task=task)
    start = _floor(read.now - dt.timedelta(seconds=seconds), step)
    steps = math.ceil(seconds / step) + 1  # the range's steps, and the current one under way
    by_task: dict[str, list[list[RollupRow]]] = {}
    for b in read.buckets:
        index = min(steps - 1, max(0, int((b.at - start).total_seconds() // step)))
        by_task.setdefault(b.row.task, [[] for _ in range(steps)])[index].append(b.row)
    tasks = []
    for name in sorted(by_task):
        slots = by_task[name]
        points = tuple(_point(start + dt.timedelta(seconds=i * step), rows, step / 60) for i, rows in enumerate(slots))
        everything = [r for rows in slots for r in rows]
        tasks.append(TaskMetrics(task=name, points=points, total=_point(start, everything, seconds / 60)))
    return MetricsHistory(period=period, step=step, start=start, now=read.now, tasks=tuple(tasks))
