"""Which jobs a bulk operation acts on (:class:`JobFilter`), and what it did (:class:`BulkResult`).

A filter is validated when it is built, so a bad state name or id range is refused before anything
is read or written. Each bulk operation narrows it to the states it can act on
(:meth:`JobFilter.for_action`): cancelling a finished job, retrying a queued one or deleting an
executing one is refused there with a message naming the state, never half-done.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable
from typing import Literal

import attrs

from ._durations import format_duration_exact
from ._errors import ConfigurationError, JobStateError
from ._models import JobSelection
from ._state import JobState
from ._task import check_queue, check_task_name

#: A bulk operation's name, as :class:`BulkResult` and :meth:`JobFilter.for_action` spell it.
BulkAction = Literal["cancel", "retry", "delete"]

_ALL = tuple(s.value for s in JobState)
#: The states each bulk operation can act on (in JobState's order); its default when none is given.
ACTION_STATES: dict[str, tuple[str, ...]] = {
    "cancel": ("pending", "scheduled", "available", "executing", "retryable"),
    "retry": ("discarded", "cancelled"),
    "delete": tuple(s for s in _ALL if s != "executing"),
}
_WHY = {
    "cancel": "a finished job cannot be cancelled",
    "retry": "only a discarded or cancelled job can be retried",
}


def _states(value: object) -> tuple[JobState, ...] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, Iterable):
        raise ConfigurationError(f"JobFilter(states={value!r}): give a state name or a list of them")
    out: list[JobState] = []
    for item in items:
        try:
            state = JobState(item)
        except ValueError:
            raise ConfigurationError(
                f"JobFilter(states=...): {item!r} is not a job state; use one of {', '.join(_ALL)}"
            ) from None
        if state not in out:
            out.append(state)
    if not out:
        raise ConfigurationError("JobFilter(states=[]): an empty list matches nothing; give None for every state")
    return tuple(out)


def _seconds(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, dt.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigurationError(
            f"JobFilter(older_than={value!r}): must be seconds >= 0 or a timedelta (for example 3600 for an hour)"
        )
    return float(value)


def _check_id(_: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigurationError(f"JobFilter({attribute.name}={value!r}): must be a job id (an int >= 1) or None")


@attrs.frozen(kw_only=True)
class JobFilter:
    """Which jobs a bulk operation (``app.bulk_cancel``, ``bulk_retry``, ``bulk_delete``,
    ``count_jobs``) acts on: every field given narrows it; a filter with none matches every job.

    Attributes:
        states: a state name or :class:`JobState`, or several (None: every state the operation can
            act on).
        queue: only this queue.
        task: only this task name.
        older_than: only jobs inserted at least this many seconds ago (or a timedelta), by the
            database's clock.
        min_id: only ids from this one (inclusive).
        max_id: only ids up to this one (inclusive).

    Raises:
        ConfigurationError: an unknown state, a bad queue or task name, a negative age, or an id
            range whose ends are not ids or are reversed (the message names the value).

    Example:
        >>> JobFilter(states="available", queue="emails", older_than=3600)
    """

    states: tuple[JobState, ...] | None = attrs.field(default=None, converter=_states)
    queue: str | None = attrs.field(default=None)
    task: str | None = attrs.field(default=None)
    older_than: float | None = attrs.field(default=None, converter=_seconds)
    min_id: int | None = attrs.field(default=None, validator=_check_id)
    max_id: int | None = attrs.field(default=None, validator=_check_id)

    @queue.validator
    def _check_queue(self, _: attrs.Attribute[str | None], value: str | None) -> None:
        if value is not None:
            check_queue(value, where="JobFilter()")

    @task.validator
    def _check_task(self, _: attrs.Attribute[str | None], value: str | None) -> None:
        if value is not None:
            check_task_name(value, where="JobFilter()")

    def __attrs_post_init__(self) -> None:
        if self.min_id is not None and self.max_id is not None and self.min_id > self.max_id:
            raise ConfigurationError(
                f"JobFilter(min_id={self.min_id}, max_id={self.max_id}): the range is reversed; "
                f"use min_id={self.max_id}, max_id={self.min_id}"
            )

    @property
    def is_empty(self) -> bool:
        """Whether no field narrows it (it matches every job)."""
        return self == JobFilter()

    def describe(self) -> str:
        """The fields given, for people: ``state available, queue emails`` (``every job`` if none)."""
        parts: list[str] = []
        if self.states is not None:
            parts.append(("state " if len(self.states) == 1 else "states ") + ", ".join(s.value for s in self.states))
        if self.queue is not None:
            parts.append(f"queue {self.queue}")
        if self.task is not None:
            parts.append(f"task {self.task}")
        if self.older_than is not None:
            parts.append(f"older than {format_duration_exact(self.older_than)}")
        if self.min_id is not None or self.max_id is not None:
            parts.append(f"ids {self.min_id or 1}-{'' if self.max_id is None else self.max_id}")
        return ", ".join(parts) if parts else "every job"

    def for_action(self, action: BulkAction) -> JobFilter:
        """This filter narrowed to the states *action* can act on (all of them when none is given).

        Raises:
            JobStateError: a state given cannot take *action* (the message says why and what to do).
        """
        allowed = ACTION_STATES[action]
        if self.states is None:
            return attrs.evolve(self, states=allowed)
        for state in self.states:
            if state.value in allowed:
                continue
            if action == "delete":
                raise JobStateError(
                    "executing jobs cannot be deleted: a worker is running them and would write its outcome to a "
                    "missing row; cancel them first (bulk_cancel, or `nursery-worker jobs cancel`), then delete "
                    "them once cancelled"
                )
            raise JobStateError(
                f"cannot {action} {state.value} jobs: {_WHY[action]}; use states among {', '.join(allowed)}"
            )
        return self

    def selection(self) -> JobSelection:
        """The filter as the driver takes it."""
        return JobSelection(
            states=None if self.states is None else tuple(s.value for s in self.states),
            queue=self.queue,
            task=self.task,
            older_than=self.older_than,
            min_id=self.min_id,
            max_id=self.max_id,
        )


@attrs.frozen(kw_only=True)
class BulkResult:
    """What ``app.bulk_cancel``, ``bulk_retry`` or ``bulk_delete`` did.

    Attributes:
        action: ``"cancel"``, ``"retry"`` or ``"delete"``.
        matched: the jobs the filter matched when the operation started (it acts on those only:
            jobs inserted later are left alone).
        changed: the jobs cancelled, retried or deleted.
        requested: executing jobs whose cancel was requested (their workers cancel them; bulk
            cancel only).
        skipped: matched jobs left as they were: they changed state since the count (finished,
            started, already retried or deleted), or a retry was refused (a unique job holds its
            key, or a dependency failed).
    """

    action: BulkAction
    matched: int
    changed: int
    requested: int = 0
    skipped: int = 0
