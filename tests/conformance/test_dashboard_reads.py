"""The dashboard's driver reads on both engines: capped counts marked as estimates beyond the cap,
the job search's filters and cursor, dependants, and run-now."""

from __future__ import annotations

import pytest

from nursery_worker import App, JobState, JobStateError
from nursery_worker._admin import Admin
from nursery_worker._models import JobSearch

pytestmark = pytest.mark.anyio


async def test_counts_below_the_cap_are_exact(app: App) -> None:
    """Two available jobs under a cap of 10 count exactly, not estimated."""

    @app.task(queue="q", name="dash.a")
    async def a() -> None: ...

    await a.defer()
    await a.defer()
    counts = await Admin(app).dashboard_counts(cap=10, time_limit=5)
    (available,) = [c for c in counts.waiting if c.queue == "q" and c.state == "available"]
    assert (available.count, available.estimated) == (2, False)


async def test_counts_beyond_the_cap_are_marked_estimated(app: App) -> None:
    """Five available jobs under a cap of 2 are marked as an estimate of at least the cap."""

    @app.task(queue="q", name="dash.b")
    async def b() -> None: ...

    for _ in range(5):
        await b.defer()
    counts = await Admin(app).dashboard_counts(cap=2, time_limit=5)
    (available,) = [c for c in counts.waiting if c.queue == "q" and c.state == "available"]
    assert available.estimated and available.count >= 2


async def test_search_filters_priority_and_pages_by_cursor(app: App) -> None:
    """The search filters by priority and pages below the cursor, newest first."""

    @app.task(name="dash.c")
    async def c(i: int) -> None: ...

    ids = [(await c.configure(priority=5).defer(i=i)).id for i in range(3)]
    await c.defer(i=9)
    admin = Admin(app)
    first = await admin.search_jobs(JobSearch(priority=5), limit=2, time_limit=5)
    rest = await admin.search_jobs(JobSearch(priority=5, before_id=first[-1].id), limit=2, time_limit=5)
    assert [j.id for j in first + rest] == sorted(ids, reverse=True)


async def test_run_now_moves_only_a_waiting_job(app: App) -> None:
    """Run now makes a scheduled job available, and refuses an available one with JobStateError."""

    @app.task(name="dash.d")
    async def d() -> None: ...

    later = await d.configure(delay=3600).defer()
    admin = Admin(app)
    assert (await admin.run_now(later.id)).state is JobState.AVAILABLE
    with pytest.raises(JobStateError, match="already available"):
        await admin.run_now(later.id)


async def test_dependants_are_found(app: App) -> None:
    """A job's dependants are those naming it in depends_on."""

    @app.task(name="dash.e")
    async def e() -> None: ...

    first = await e.defer()
    second = await e.configure(depends_on=[first]).defer()
    found = await Admin(app).job_dependants(first.id, limit=10, time_limit=5)
    assert [j.id for j in found] == [second.id]
