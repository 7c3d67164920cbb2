"""Periodic jobs: schedule definitions (the rows the driver reads and writes live in ``_models``).

The scheduler that enqueues their ticks is a maintenance service (``_maintenance/scheduler.py``).

Exactly once per tick, across any number of workers: every worker that serves a schedule's queue
runs a :class:`Scheduler`, and each of them tries to enqueue each due tick. The database decides
who wins. One statement (``Driver.enqueue_periodic``) advances the schedule's row with a guarded
``UPDATE ... WHERE last_tick < tick`` and inserts the job only if that row changed, so two
schedulers can never both enqueue a tick, and a crash can never advance the row without the job
(or insert the job without advancing the row). Every time comparison is made against the
database's clock: the scheduler reads ``now()`` and the guard re-checks it.

A tick is due when it is the latest tick at or before the database's ``now()``, later than the
row's ``last_tick``, no earlier than ``active_since`` (when the schedule first appeared in the
database, or its expression or time zone last changed), and at most ``catch_up`` seconds old. So
a worker that starts after missed ticks enqueues only the latest of them, once, and only if it is
recent enough: never a flood.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from ._cron import Cron, resolve_zone
from ._errors import ConfigurationError, TaskNotFound
from ._models import JobSpec, PeriodicEntry, PeriodicState
from ._state import JobState
from ._task import Task

if TYPE_CHECKING:
    from ._app import App

#: How late a tick may still be enqueued, by default (seconds): a worker restart or a short
#: database outage does not lose a tick, a worker started hours later does not run a stale one.
DEFAULT_CATCH_UP = 600.0
_NAME = re.compile(r"[^\s\x00-\x1f\x7f\ud800-\udfff]{1,255}")
_TICK_PLACEHOLDER = "1970-01-01T00:00:00+00:00"


@attrs.frozen(kw_only=True)
class PeriodicInfo:
    """A periodic schedule as ``app.list_periodic()`` and ``nursery-worker cron list`` see it.

    Attributes:
        name: the schedule's name (by default its task's name).
        cron: the cron expression.
        timezone: the IANA time zone its fields are read in.
        task: the task it enqueues.
        queue: the queue its jobs go to.
        args: the arguments of its jobs.
        next_tick: its next tick after ``now``, or None if it can never fire again.
        last_tick: the last tick a job was enqueued for, or None.
        last_job_id: the job of that tick (or the unique twin that stood in for it), or None.
        last_job_state: that job's state, or None (no tick yet, or the job was pruned).
        active_since: ticks before this time are never enqueued: when the schedule first reached
            the database, or its expression or time zone last changed. None until a worker that
            serves its queue has started.
        updated_at: when a worker last registered it, or None.
        in_app: whether the App it was listed from defines it. False for a schedule only the
            database knows (removed from the code, or another app's): no worker of this app
            enqueues it.
        paused_at: when it was paused (``app.pause_periodic``), or None while it runs.
        now: the database's clock when it was read.
    """

    name: str
    cron: str
    timezone: str
    task: str
    queue: str
    args: Mapping[str, Any]
    next_tick: dt.datetime | None
    last_tick: dt.datetime | None = None
    last_job_id: int | None = None
    last_job_state: JobState | None = None
    active_since: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    in_app: bool = True
    paused_at: dt.datetime | None = None
    now: dt.datetime

    @property
    def paused(self) -> bool:
        """Whether it is paused: its ticks are not enqueued until ``app.resume_periodic``."""
        return self.paused_at is not None

    @property
    def next_in(self) -> float | None:
        """Seconds from ``now`` to the next tick, or None."""
        return None if self.next_tick is None else max(0.0, (self.next_tick - self.now).total_seconds())


# --- definitions -----------------------------------------------------------------------------


@attrs.frozen(kw_only=True, eq=False)
class Schedule:
    """One periodic schedule, validated: what ``@app.periodic`` registers."""

    name: str
    cron: Cron
    spec: JobSpec  # the job of every tick (the tick becomes its scheduled_at)
    catch_up: float
    tick_arg: str | None = None  # the parameter that receives the tick (ISO 8601), if any

    @property
    def timezone(self) -> str:
        return self.cron.zone.key

    def entry(self) -> PeriodicEntry:
        return PeriodicEntry(
            name=self.name,
            cron=self.cron.expression,
            timezone=self.timezone,
            task=self.spec.task,
            queue=self.spec.queue,
            args_json=self.spec.args_json,
        )

    def definition(self) -> tuple[object, ...]:
        """What makes two registrations the same schedule (a module imported twice registers twice)."""
        s = self.spec
        return (
            self.cron.expression,
            self.timezone,
            s.task,
            s.queue,
            s.priority,
            s.args_json,
            s.unique_key,
            self.catch_up,
            self.tick_arg,
        )

    def job_for(self, tick: dt.datetime) -> JobSpec:
        """The job of *tick*: the registered one, with the tick in ``tick_arg`` when there is one."""
        if self.tick_arg is None:
            return self.spec
        args = {**self.spec.args, self.tick_arg: tick.astimezone(self.cron.zone).isoformat()}
        return attrs.evolve(self.spec, args=args, args_json=json.dumps(args, separators=(",", ":"), ensure_ascii=False))

    def due(self, now: dt.datetime, state: PeriodicState) -> dt.datetime | None:
        """The tick to enqueue at *now* (database clock), or None: the latest tick at or before *now*,
        if it is later than the last one enqueued and not before the schedule became active."""
        tick = self.cron.latest_at_or_before(now)
        if tick is None or tick < state.active_since:
            return None
        if state.last_tick is not None and tick <= state.last_tick:
            return None
        return tick


def _catch_up(value: object, *, where: str) -> float:
    if isinstance(value, dt.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigurationError(
            f"{where}: catch_up={value!r} must be seconds > 0 (or a timedelta): how late a tick may still be "
            "enqueued, for example after the workers were down"
        )
    return float(value)


def build_schedule(
    app: App,
    target: Task[..., Any] | str,
    *,
    cron: str,
    name: str | None,
    timezone: object,
    args: Mapping[str, Any] | None,
    queue: str | None,
    priority: int | None,
    catch_up: float | dt.timedelta,
    tick_arg: str | None = None,
) -> Schedule:
    """Validate a periodic registration into a :class:`Schedule` (see ``App.periodic``)."""
    if isinstance(target, str):
        try:
            task = app.get_task(target)
        except TaskNotFound as exc:
            raise ConfigurationError(
                f"app.periodic({target!r}): {exc}; register the task with @app.task first"
            ) from None
    elif isinstance(target, Task):
        task = target
        if task.app is not app:
            raise ConfigurationError(
                f"app.periodic: task {task.name!r} belongs to another App; register the schedule on that App"
            )
    else:
        raise TypeError(
            f"@app.periodic needs a task: put it above @app.task (decorators apply bottom-up), or pass a Task or a "
            f"registered task name; got {target!r}"
        )
    schedule_name = task.name if name is None else name
    where = f"@app.periodic on {schedule_name!r}"
    if not isinstance(schedule_name, str) or not _NAME.fullmatch(schedule_name):
        raise ConfigurationError(
            f"{where}: name={schedule_name!r} is not valid; use 1-255 printable characters without spaces "
            "(for example 'reports.nightly')"
        )
    zone = resolve_zone(timezone, where=where)
    expression = Cron(cron, zone, where=where)
    if args is not None and not isinstance(args, Mapping):
        raise ConfigurationError(f"{where}: args={args!r} must be a dict of the task's keyword arguments")
    kwargs = dict(args or {})
    if tick_arg is not None:
        if not isinstance(tick_arg, str) or not tick_arg.isidentifier():
            raise ConfigurationError(f"{where}: tick_arg={tick_arg!r} must be the name of one of the task's parameters")
        if tick_arg in kwargs:
            raise ConfigurationError(
                f"{where}: tick_arg={tick_arg!r} is also in args; the tick fills it, drop it from args"
            )
        # Checked against the signature like the rest; a unique key derived from the arguments
        # sees this fixed value, so it stays the same from tick to tick (it guards against overlap).
        kwargs[tick_arg] = _TICK_PLACEHOLDER
    try:
        spec = task.configure(queue=queue, priority=priority).job(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{where}: args do not fit task {task.name!r}: {exc}") from None
    return Schedule(
        name=schedule_name, cron=expression, spec=spec, catch_up=_catch_up(catch_up, where=where), tick_arg=tick_arg
    )


def add_schedule(schedules: dict[str, Schedule], schedule: Schedule) -> None:
    """Register *schedule*; the same definition again is a no-op (a module imported twice)."""
    existing = schedules.get(schedule.name)
    if existing is not None and existing.definition() != schedule.definition():
        raise ConfigurationError(
            f"periodic schedule name {schedule.name!r} is already registered (cron={existing.cron.expression!r}, "
            f"task={existing.spec.task!r}); pass @app.periodic(name=...) to give this one another name"
        )
    schedules[schedule.name] = schedule


def schedules_for(app: App, queues: Sequence[str]) -> tuple[Schedule, ...]:
    """The app's schedules whose jobs go to one of *queues*: the ones a worker of those queues runs."""
    served = set(queues)
    return tuple(s for s in app.schedules.values() if s.spec.queue in served)


async def list_periodic(app: App) -> list[PeriodicInfo]:
    """Every schedule in the database, and the app's own that are not there yet, sorted by name."""
    listing = await app.driver.list_periodic()
    now, rows = listing.now, listing.rows
    out: list[PeriodicInfo] = []
    seen: set[str] = set()
    for row in rows:
        seen.add(row.name)
        try:  # the row's expression: what the workers that registered it run
            next_tick = Cron(row.cron, resolve_zone(row.timezone, where=row.name)).next_after(now)
        except ConfigurationError:  # written by another version or app, with syntax this one cannot read
            next_tick = None
        out.append(
            PeriodicInfo(
                name=row.name,
                cron=row.cron,
                timezone=row.timezone,
                task=row.task,
                queue=row.queue,
                args=row.args,
                next_tick=next_tick,
                last_tick=row.last_tick,
                last_job_id=row.last_job_id,
                last_job_state=None if row.last_job_state is None else JobState(row.last_job_state),
                active_since=row.active_since,
                updated_at=row.updated_at,
                in_app=row.name in app.schedules,
                paused_at=row.paused_at,
                now=now,
            )
        )
    for schedule in app.schedules.values():
        if schedule.name not in seen:
            out.append(
                PeriodicInfo(
                    name=schedule.name,
                    cron=schedule.cron.expression,
                    timezone=schedule.timezone,
                    task=schedule.spec.task,
                    queue=schedule.spec.queue,
                    args=json.loads(schedule.spec.args_json),
                    next_tick=schedule.cron.next_after(now),
                    now=now,
                )
            )
    return sorted(out, key=lambda info: info.name)
