"""Operations on jobs against real PostgreSQL: ``app.retry`` (the dead-letter path), ``list_jobs``,
pruning (``app.prune``, the ``Pruner``, the worker's own pruning), the reaper's removal of stale
worker rows, and ``open_worker(wait_for_db=...)``."""

from __future__ import annotations

import datetime as dt
import logging
import random
import time
from typing import Any

import anyio
import pytest

from nursery_worker import (
    App,
    ConfigurationError,
    DatabaseError,
    Job,
    JobNotFound,
    JobState,
    JobStateError,
    WorkerState,
    open_worker,
)
from nursery_worker._maintenance import Pruner, Rescuer

from .helpers import Connection, execute, fast, query, wait_for_state, wait_until

pytestmark = pytest.mark.anyio

UNREACHABLE_DSN = "postgresql://postgres@127.0.0.1:1/test"


async def _insert(
    db: Connection, state: str, *, finished_ago: float | None = None, task: str = "some.task", queue: str = "default"
) -> int:
    """Insert a job in *state* (finished *finished_ago* seconds ago, when given); return its id."""
    (row,) = await query(
        db,
        "INSERT INTO jobs (task, queue, state, finished_at) "
        "VALUES (%s, %s, %s, CASE WHEN %s::float8 IS NULL THEN NULL ELSE now() - %s::float8 * interval '1 second' END) "
        "RETURNING id",
        [task, queue, state, finished_ago, finished_ago],
    )
    return int(row[0])


async def _ids(db: Connection) -> set[int]:
    """The ids of every job in the table."""
    return {int(r[0]) for r in await query(db, "SELECT id FROM jobs")}


# --- app.retry -------------------------------------------------------------------------------


async def test_retry_of_a_discarded_job_makes_it_available_with_one_more_attempt_and_its_errors(app: App) -> None:
    """A job discarded after its last attempt comes back available, max_attempts raised, errors kept."""

    @app.task(max_attempts=1)
    async def fragile() -> None:
        raise RuntimeError("broken")

    job = await fragile.defer()
    async with open_worker(app, **fast()):
        discarded = await wait_for_state(app, job.id, JobState.DISCARDED, within=20)
    assert (discarded.attempt, discarded.max_attempts) == (1, 1)

    retried = await app.retry(job.id)

    assert retried.id == job.id
    assert retried.state is JobState.AVAILABLE
    assert retried.attempt == 1
    assert retried.max_attempts == 2
    assert retried.finished_at is None
    assert [e.type for e in retried.errors] == ["RuntimeError"]
    assert await app.get_job(job.id) == retried


async def test_a_retried_discarded_job_runs_again(app: App) -> None:
    """After app.retry a worker runs the job again, as attempt 2; the first error stays recorded."""
    runs: list[int] = []

    @app.task(max_attempts=1)
    async def fixed_later() -> str:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("first run fails")
        return "second run works"

    job = await fixed_later.defer()
    async with open_worker(app, **fast()):
        await wait_for_state(app, job.id, JobState.DISCARDED, within=20)
        await app.retry(job.id)
        done = await wait_for_state(app, job.id, JobState.COMPLETED, JobState.DISCARDED, within=20)

    assert done.state is JobState.COMPLETED
    assert done.result == "second run works"
    assert done.attempt == 2
    assert [(e.attempt, e.type) for e in done.errors] == [(1, "RuntimeError")]
    assert len(runs) == 2


async def test_retry_of_a_cancelled_job_makes_it_available_and_it_runs(app: App) -> None:
    """A job cancelled before it ran comes back available, keeps its Cancelled error, and completes."""

    @app.task
    async def work() -> int:
        return 7

    job = await work.defer()
    assert (await app.cancel(job.id)).status == "cancelled"

    retried = await app.retry(job.id)
    assert retried.state is JobState.AVAILABLE
    assert retried.max_attempts == job.max_attempts  # attempts were not used up
    assert [e.type for e in retried.errors] == ["Cancelled"]

    async with open_worker(app, **fast()):
        done = await wait_for_state(app, job.id, JobState.COMPLETED, JobState.DISCARDED, within=20)
    assert done.state is JobState.COMPLETED and done.result == 7
    assert done.cancel_requested_at is None


async def test_retry_of_a_job_cancelled_while_executing_clears_the_cancel_request(app: App) -> None:
    """A job cancelled while it ran is retried without its old cancel request, so it completes."""
    started = anyio.Event()
    runs: list[int] = []

    @app.task
    async def slow() -> str:
        runs.append(1)
        if len(runs) == 1:
            started.set()
            await anyio.sleep(60)
        return "done"

    job = await slow.defer()
    async with open_worker(app, **fast()):
        with anyio.fail_after(20):
            await started.wait()
        assert (await app.cancel(job.id)).status == "requested"
        cancelled = await wait_for_state(app, job.id, JobState.CANCELLED, within=20)
        assert cancelled.cancel_requested_at is not None
        retried = await app.retry(job.id)
        assert retried.cancel_requested_at is None
        done = await wait_for_state(app, job.id, JobState.COMPLETED, JobState.CANCELLED, within=20)

    assert done.state is JobState.COMPLETED and done.result == "done"
    assert done.attempt == 2


@pytest.mark.parametrize("state", ["available", "completed", "executing", "scheduled", "retryable"])
async def test_retry_of_a_job_that_is_not_discarded_or_cancelled_is_a_job_state_error(
    app: App, db: Connection, state: str
) -> None:
    """app.retry refuses a job in any other state, naming that state, and changes nothing."""
    (row,) = await query(
        db,
        "INSERT INTO jobs (task, queue, state, attempt, worker_id, attempted_at, finished_at) "
        "VALUES ('some.task', 'default', %s, 1, CASE WHEN %s = 'executing' THEN 'w' END, now(), "
        "CASE WHEN %s = 'completed' THEN now() END) RETURNING id",
        [state, state, state],
    )
    job_id = int(row[0])
    before = await app.get_job(job_id)

    with pytest.raises(JobStateError, match=state):
        await app.retry(job_id)

    assert await app.get_job(job_id) == before


async def test_retrying_a_job_twice_raises_the_second_time(app: App) -> None:
    """The second app.retry of the same job finds it available and raises JobStateError."""

    @app.task
    async def work() -> None: ...

    job = await work.defer()
    await app.cancel(job.id)
    await app.retry(job.id)

    with pytest.raises(JobStateError, match="available"):
        await app.retry(job.id)


async def test_retry_of_an_unknown_id_is_job_not_found(app: App) -> None:
    """app.retry of an id that does not exist raises JobNotFound."""
    with pytest.raises(JobNotFound):
        await app.retry(987_654_321)


# --- list_jobs -------------------------------------------------------------------------------


async def _three_states(app: App, db: Connection) -> dict[str, int]:
    """Jobs in available, completed and discarded states (plus one cancelled); return their ids by state."""
    ids = {}
    for state in ("available", "completed", "discarded", "cancelled"):
        ids[state] = await _insert(db, state, finished_ago=None if state == "available" else 1.0)
    return ids


async def test_list_jobs_filters_by_one_state(app: App, db: Connection) -> None:
    """state='completed' (or JobState.COMPLETED) lists only completed jobs."""
    ids = await _three_states(app, db)

    by_str = await app.list_jobs(state="completed")
    by_enum = await app.list_jobs(state=JobState.COMPLETED)

    assert [j.id for j in by_str] == [ids["completed"]]
    assert [j.id for j in by_enum] == [ids["completed"]]


async def test_list_jobs_filters_by_several_states(app: App, db: Connection) -> None:
    """A list of states (strings and JobStates mixed) lists jobs in any of them, newest first."""
    ids = await _three_states(app, db)

    jobs = await app.list_jobs(state=["discarded", JobState.CANCELLED])

    assert [j.id for j in jobs] == [ids["cancelled"], ids["discarded"]]


async def test_list_jobs_filters_by_queue_and_task(app: App, db: Connection) -> None:
    """queue= and task= narrow the list, alone and together."""
    a = await _insert(db, "available", task="t.a", queue="q1")
    b = await _insert(db, "available", task="t.b", queue="q1")
    c = await _insert(db, "available", task="t.a", queue="q2")

    assert [j.id for j in await app.list_jobs(queue="q1")] == [b, a]
    assert [j.id for j in await app.list_jobs(task="t.a")] == [c, a]
    assert [j.id for j in await app.list_jobs(task="t.a", queue="q2")] == [c]
    assert await app.list_jobs(task="t.c") == []


async def test_list_jobs_is_newest_first_and_pages_with_limit_and_before_id(app: App, db: Connection) -> None:
    """limit caps a page; before_id=<last id of a page> gives the next page; together they list everything once."""
    ids = [await _insert(db, "available") for _ in range(7)]

    pages: list[list[int]] = []
    before: int | None = None
    while True:
        page = await app.list_jobs(limit=3, before_id=before)
        if not page:
            break
        pages.append([j.id for j in page])
        before = page[-1].id

    assert pages == [ids[6:3:-1], ids[3:0:-1], ids[0:1]]


async def test_list_jobs_returns_full_job_snapshots(app: App) -> None:
    """The listed jobs carry their arguments, queue and state like get_job."""

    @app.task(queue="listq")
    async def work(n: int) -> None: ...

    job = await work.defer(n=5)
    (listed,) = await app.list_jobs(queue="listq")
    assert listed == await app.get_job(job.id)
    assert listed.args == {"n": 5}


@pytest.mark.parametrize("bad", ["finished", ["available", "nope"], "AVAILABLE "])
async def test_list_jobs_with_an_unknown_state_is_a_configuration_error(app: App, bad: Any) -> None:
    """An unknown state is refused with ConfigurationError naming it."""
    with pytest.raises(ConfigurationError, match="not a job state"):
        await app.list_jobs(state=bad)


@pytest.mark.parametrize("limit", [0, -1, 10_001, True, 2.5])
async def test_list_jobs_with_a_bad_limit_is_a_configuration_error(app: App, limit: Any) -> None:
    """limit must be an int from 1 to 10000."""
    with pytest.raises(ConfigurationError, match="limit"):
        await app.list_jobs(limit=limit)


# --- pruning ---------------------------------------------------------------------------------


async def test_prune_deletes_only_finished_jobs_older_than_the_age(app: App, db: Connection) -> None:
    """app.prune deletes completed, discarded and cancelled jobs finished before the age, returning the count."""
    old = {s: await _insert(db, s, finished_ago=7200) for s in ("completed", "discarded", "cancelled")}
    recent = {s: await _insert(db, s, finished_ago=60) for s in ("completed", "discarded", "cancelled")}
    waiting = {s: await _insert(db, s) for s in ("available", "scheduled", "retryable")}

    deleted = await app.prune(older_than=3600)

    assert deleted == 3
    assert await _ids(db) == set(recent.values()) | set(waiting.values())
    assert not set(old.values()) & await _ids(db)


async def test_prune_accepts_a_timedelta(app: App, db: Connection) -> None:
    """older_than may be a timedelta."""
    old = await _insert(db, "completed", finished_ago=7200)
    recent = await _insert(db, "completed", finished_ago=60)

    assert await app.prune(older_than=dt.timedelta(hours=1)) == 1
    assert await _ids(db) == {recent}
    assert old not in await _ids(db)


async def test_prune_deletes_only_the_given_states(app: App, db: Connection) -> None:
    """states= limits pruning to those final states."""
    completed = await _insert(db, "completed", finished_ago=7200)
    discarded = await _insert(db, "discarded", finished_ago=7200)
    cancelled = await _insert(db, "cancelled", finished_ago=7200)

    assert await app.prune(older_than=3600, states=["discarded"]) == 1
    assert await _ids(db) == {completed, cancelled}
    assert discarded not in await _ids(db)


async def test_prune_with_nothing_to_delete_returns_zero(app: App, db: Connection) -> None:
    """A prune that finds nothing old enough returns 0 and deletes nothing."""
    recent = await _insert(db, "completed", finished_ago=10)
    assert await app.prune(older_than=3600) == 0
    assert await _ids(db) == {recent}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"older_than": -1}, "older_than"),
        ({"older_than": 10, "states": ["available"]}, "available"),
        ({"older_than": 10, "states": ["executing"]}, "executing"),
    ],
)
async def test_prune_with_bad_options_is_a_configuration_error(app: App, kwargs: dict[str, Any], match: str) -> None:
    """A negative age or a state that is not final is refused, naming it."""
    with pytest.raises(ConfigurationError, match=match):
        await app.prune(**kwargs)


async def test_the_pruner_applies_each_states_retention_and_keeps_states_given_none(app: App, db: Connection) -> None:
    """Pruner.run_once prunes each state by its own retention; a retention of None keeps that state."""
    completed_old = await _insert(db, "completed", finished_ago=600)
    completed_new = await _insert(db, "completed", finished_ago=30)
    discarded_old = await _insert(db, "discarded", finished_ago=600)
    discarded_older = await _insert(db, "discarded", finished_ago=7200)
    cancelled_old = await _insert(db, "cancelled", finished_ago=7200)

    counts = await Pruner(app.driver, retention={"completed": 60, "discarded": 3600, "cancelled": None}).run_once()

    assert counts == {"completed": 1, "discarded": 1}
    assert await _ids(db) == {completed_new, discarded_old, cancelled_old}
    assert not {completed_old, discarded_older} & await _ids(db)


async def test_a_worker_with_retention_prunes_by_itself(app: App, db: Connection) -> None:
    """A worker with a short prune_interval deletes finished jobs older than its retention on its own."""
    old = await _insert(db, "completed", finished_ago=600)
    kept = await _insert(db, "completed", finished_ago=5)
    old_discarded = await _insert(db, "discarded", finished_ago=600)  # default retention: 7 days

    async with open_worker(app, retention={"completed": 60}, prune_interval=0.1, **fast()):

        async def pruned() -> bool:
            return old not in await _ids(db)

        await wait_until(pruned, within=20)

    assert await _ids(db) == {kept, old_discarded}


async def test_a_worker_with_retention_none_does_not_prune(app: App, db: Connection) -> None:
    """retention=None turns pruning off: even ancient finished jobs stay while the worker runs."""
    ancient = await _insert(db, "completed", finished_ago=365 * 86400)

    @app.task
    async def marker() -> None: ...

    async with open_worker(app, retention=None, prune_interval=0.05, **fast()):
        job = await marker.defer()
        await wait_for_state(app, job.id, JobState.COMPLETED, within=20)
        await anyio.sleep(0.5)  # ten prune intervals: a pruner, had one started, would have run by now

    assert ancient in await _ids(db)


@pytest.mark.parametrize(
    ("retention", "match"),
    [
        ({"executing": 60}, "executing"),
        ({"finished": 60}, "finished"),
        ({"completed": -1}, "completed"),
        ({"discarded": "soon"}, "discarded"),
        (3600, "retention"),
    ],
)
async def test_a_bad_retention_is_a_configuration_error(app: App, retention: Any, match: str) -> None:
    """open_worker refuses an unknown state, a negative or non-numeric age, or a non-dict retention."""
    with pytest.raises(ConfigurationError, match=match):
        async with open_worker(app, retention=retention, **fast()):
            pytest.fail("the worker started")


# --- stale worker rows -----------------------------------------------------------------------


async def test_the_reaper_removes_stale_worker_rows(app: App, db: Connection) -> None:
    """Rescuer.run_once deletes workers whose heartbeat is older than rescue_after, and counts them."""
    for worker_id, ago in (("stale-1", 3600), ("stale-2", 30), ("fresh", 0)):
        await execute(
            db,
            "INSERT INTO workers (id, hostname, pid, queues, concurrency, heartbeat_at) "
            "VALUES (%s, 'elsewhere', 1, ARRAY['default'], 1, now() - %s * interval '1 second')",
            [worker_id, ago],
        )

    result = await Rescuer(app.driver, "rescuer", rescue_after=10).run_once()

    assert result.workers_removed == 2
    assert result.rescued == 0
    assert [r[0] for r in await query(db, "SELECT id FROM workers")] == ["fresh"]


async def test_a_running_worker_removes_a_stale_worker_row(app: App, db: Connection) -> None:
    """A worker's reaper deletes a peer's row whose heartbeat lapsed, without being asked."""
    await execute(
        db,
        "INSERT INTO workers (id, hostname, pid, queues, concurrency, heartbeat_at) "
        "VALUES ('ghost', 'elsewhere', 1, ARRAY['default'], 1, now() - interval '1 hour')",
    )
    async with open_worker(app, **fast()) as worker:

        async def ghost_gone() -> bool:
            rows = await query(db, "SELECT id FROM workers")
            return [r[0] for r in rows] == [worker.id]

        await wait_until(ghost_gone, within=20)


# --- wait_for_db -----------------------------------------------------------------------------


async def test_an_unreachable_database_fails_at_once_without_wait_for_db(schema: str) -> None:
    """With wait_for_db=0 (the default) an unreachable database fails the start with DatabaseError at once."""
    app = App(dsn=UNREACHABLE_DSN, schema=schema)
    start = time.monotonic()
    with pytest.raises(DatabaseError, match="cannot connect"):
        async with open_worker(app, wait_for_db=0, **fast()):
            pytest.fail("the worker started")
    assert time.monotonic() - start < 3


async def test_wait_for_db_retries_an_unreachable_database_then_fails(
    schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With wait_for_db=1.5 the start retries (logging each wait) and then fails with DatabaseError."""
    app = App(dsn=UNREACHABLE_DSN, schema=schema)
    caplog.set_level(logging.WARNING, logger="nursery_worker")
    start = time.monotonic()
    with pytest.raises(DatabaseError, match="cannot connect"):
        async with open_worker(app, wait_for_db=1.5, **fast()):
            pytest.fail("the worker started")
    elapsed = time.monotonic() - start

    waits = [r for r in caplog.records if "waiting for the database" in r.getMessage()]
    assert len(waits) >= 2
    # The lower bound is loose on purpose: see the xfail below for when it gives up too early.
    assert 0.7 <= elapsed < 10


async def test_wait_for_db_keeps_trying_until_about_the_time_given(
    schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the backoff's jitter at its lowest, wait_for_db=1.5 still waits at least about 1.5 s before failing."""
    monkeypatch.setattr(random, "uniform", lambda low, high: low)
    app = App(dsn=UNREACHABLE_DSN, schema=schema)
    start = time.monotonic()
    with pytest.raises(DatabaseError):
        async with open_worker(app, wait_for_db=1.5, **fast()):
            pytest.fail("the worker started")
    assert time.monotonic() - start >= 1.3


async def test_wait_for_db_waits_for_the_schema_to_be_migrated(dsn: str, schema: str) -> None:
    """A worker started before its schema exists, with wait_for_db=10, starts once a migration runs ~0.5 s later."""
    app = App(dsn=dsn, schema=schema)
    migrated = anyio.Event()

    async def migrate_later() -> None:
        await anyio.sleep(0.5)
        await app.migrate()
        migrated.set()

    @app.task
    async def work() -> int:
        return 1

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(migrate_later)
            with anyio.fail_after(20):
                async with open_worker(app, wait_for_db=10, **fast()) as worker:
                    assert migrated.is_set()
                    assert worker.state is WorkerState.RUNNING
                    job: Job = await work.defer()
                    done = await wait_for_state(app, job.id, JobState.COMPLETED, within=20)
                    assert done.result == 1
    finally:
        await app.aclose()


async def test_without_wait_for_db_a_missing_schema_fails_at_once(dsn: str, schema: str) -> None:
    """With wait_for_db=0 a reachable database without the schema fails the start with SchemaNotReady."""
    from nursery_worker import SchemaNotReady

    app = App(dsn=dsn, schema=schema)
    try:
        with pytest.raises(SchemaNotReady, match="migrate"):
            async with open_worker(app, **fast()):
                pytest.fail("the worker started")
    finally:
        await app.aclose()


async def test_prune_accepts_a_single_state_string(app: App, db: Connection) -> None:
    """states='completed' prunes that one state, as list_jobs(state='completed') lists it."""
    old = await _insert(db, "completed", finished_ago=7200)
    assert await app.prune(older_than=3600, states="completed") == 1
    assert old not in await _ids(db)


# --- the Admin object behind the App's inspect methods ----------------------------------------


async def test_admin_answers_what_the_app_answers_on_the_same_database(app: App, db: Connection) -> None:
    """Admin(app), which the CLI and the dashboard call, lists and retries the jobs the app's own methods see."""
    from nursery_worker._admin import Admin

    discarded = await _insert(db, "discarded", finished_ago=10)
    admin = Admin(app)

    assert [j.id for j in await admin.list_jobs(state="discarded")] == [j.id for j in await app.list_jobs()]
    assert (await admin.retry(discarded)).state is JobState.AVAILABLE
    assert (await app.get_job(discarded)).state is JobState.AVAILABLE


async def test_admin_follows_the_app_to_the_schema_configure_database_sets(app: App, dsn: str) -> None:
    """Admin reads the app's driver on every call, so after configure_database it queries the new schema."""
    from nursery_worker._admin import Admin

    admin = Admin(app)
    assert await admin.list_queues() == []
    await app.defer_many([app.job_by_name("some.task")])
    assert [q.name for q in await admin.list_queues()] == ["default"]

    other = App(dsn=dsn, schema=f"{app.schema}_b")
    try:
        other.migrate_sync()
        await app.aclose()
        app.configure_database(schema=other.schema)
        assert await admin.list_queues() == []
    finally:
        await other.driver.drop_schema()
        await other.aclose()
