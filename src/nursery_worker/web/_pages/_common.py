"""What several pages share: the state lists, the counts read, and the job list's filter."""

from __future__ import annotations

import attrs

from ..._jobfilter import JobFilter
from ..._models import DashboardCounts, JobSearch
from ..._state import JobState
from .._page import WebError
from .._request import PageRequest

#: The states in the order the pages show them.
STATES = ("pending", "scheduled", "available", "executing", "retryable", "completed", "discarded", "cancelled")
WAITING = STATES[:5]
FINISHED = STATES[5:]
#: The most rows any one count walks before it becomes an estimate.
COUNT_CAP = 10_000


async def read_counts(req: PageRequest, queue: str | None = None) -> DashboardCounts:
    """The overview's (or one queue's) counts, under the statement timeout."""
    limit = req.options.statement_timeout
    return await req.read(lambda: req.admin.dashboard_counts(queue=queue, cap=COUNT_CAP, time_limit=limit))


@attrs.frozen(kw_only=True)
class ListFilter:
    """The job list's filter, read from the URL (every field optional)."""

    state: str | None = None
    queue: str | None = None
    task: str | None = None
    priority: int | None = None
    job_id: int | None = None
    args: str | None = None
    after: str | None = None
    before: str | None = None

    def query(self) -> dict[str, object]:
        """The filter as URL query parameters (None left out by ``req.url``)."""
        return {
            "state": self.state,
            "queue": self.queue,
            "task": self.task,
            "priority": self.priority,
            "id": self.job_id,
            "args": self.args,
            "after": self.after,
            "before": self.before,
        }

    @property
    def bulk_ready(self) -> bool:
        """Whether a bulk action can take this filter (state, queue, task and id only)."""
        return self.priority is None and self.args is None and self.after is None and self.before is None


def read_filter(req: PageRequest) -> tuple[ListFilter, JobSearch]:
    """The job list's filter from the URL (or form), checked; a 400 naming any bad value."""
    state = req.param("state")
    if state is not None and state != "all" and state not in STATES:
        raise WebError(400, f"state={state!r} is not a job state; use one of {', '.join(STATES)}")
    if state == "all":
        state = None
    args = req.param("args")
    if args is not None and len(args) > 200:
        raise WebError(400, "args= is longer than 200 characters")
    after, before = req.time_param("after"), req.time_param("before")
    shown = ListFilter(
        state=state,
        queue=req.param("queue"),
        task=req.param("task"),
        priority=req.int_param("priority", low=-(2**31), high=2**31 - 1),
        job_id=req.int_param("id", low=1, high=2**63 - 1),
        args=args,
        after=req.param("after"),
        before=req.param("before"),
    )
    search = JobSearch(
        states=(state,) if state is not None else None,
        queue=shown.queue,
        task=shown.task,
        priority=shown.priority,
        job_id=shown.job_id,
        args_text=args,
        after=after,
        before=before,
    )
    return shown, search


def job_filter(shown: ListFilter) -> JobFilter:
    """The bulk operations' :class:`JobFilter` of a list filter; a 400 if it has other fields."""
    if not shown.bulk_ready:
        raise WebError(
            400, "bulk actions take the state, queue, task and id filters only; clear priority, args and time range"
        )
    return JobFilter(
        states=JobState(shown.state) if shown.state is not None else None,
        queue=shown.queue,
        task=shown.task,
        min_id=shown.job_id,
        max_id=shown.job_id,
    )
