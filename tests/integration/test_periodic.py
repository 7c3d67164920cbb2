"""Periodic jobs against PostgreSQL: each tick enqueued exactly once by any number of schedulers,
catch-up after missed ticks, registration errors, and the schedules as listed."""

from __future__ import annotations

import datetime as dt
import itertools
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from nursery_worker import App, ConfigurationError, JobState, PeriodicInfo, open_worker
from nursery_worker._maintenance import Scheduler

from .helpers import Connection, execute, fast, query, wait_until

pytestmark = pytest.mark.anyio

EVERY_SECOND = "* * * * * *"


async def _db_now(db: Connection) -> dt.datetime:
    return (await query(db, "SELECT now()"))[0][0]  # type: ignore[no-any-return]


async def _ticks(db: Connection) -> list[tuple[dt.datetime, int]]:
    """(tick, number of jobs) for every tick that has jobs, oldest first: the tick from the job's
    ``tick`` argument (tick_arg="tick"), else its scheduled_at."""
    rows = await query(
        db, "SELECT coalesce((args->>'tick')::timestamptz, scheduled_at), count(*) FROM jobs GROUP BY 1 ORDER BY 1"
    )
    return [(r[0], int(r[1])) for r in rows]


def _scheduler(app: App, *names: str) -> Scheduler:
    chosen = names or tuple(app.schedules)
    return Scheduler(app.driver, tuple(app.schedules[n] for n in chosen))


async def _age(db: Connection, name: str, *, active: str = "2 hours", last_tick: str | None = None) -> None:
    """Pretend schedule *name* has been active for *active* (and last enqueued *last_tick* ago)."""
    await execute(
        db,
        "UPDATE periodic SET active_since = now() - %s::interval, "
        "last_tick = CASE WHEN %s::interval IS NULL THEN NULL ELSE now() - %s::interval END WHERE name = %s",
        [active, last_tick, last_tick, name],
    )


# --- registration ------------------------------------------------------------------------------


def test_periodic_stacks_on_a_task_and_validates_its_args(app: App) -> None:
    """@app.periodic above @app.task returns the task and keeps a schedule named after it with encoded args."""

    @app.periodic(cron="*/5 * * * *", timezone="Europe/Paris", args={"kind": "daily"}, queue="reports", priority=3)
    @app.task(name="reports.send")
    async def send(kind: str, copies: int = 1) -> None: ...

    schedule = app.schedules["reports.send"]
    assert send.name == "reports.send"
    assert (schedule.cron.expression, schedule.timezone) == ("*/5 * * * *", "Europe/Paris")
    assert (schedule.spec.args_json, schedule.spec.queue, schedule.spec.priority) == ('{"kind":"daily"}', "reports", 3)


def test_periodic_registers_an_existing_task_by_object_or_name_under_several_names(app: App) -> None:
    """app.periodic(task, ...) and app.periodic("name", ...) add schedules; name= tells two of one task apart."""

    @app.task(name="cleanup")
    def cleanup(scope: str = "tmp") -> None: ...

    assert app.periodic(cleanup, cron="@hourly") is cleanup
    assert app.periodic("cleanup", cron="0 3 * * *", name="cleanup.nightly", args={"scope": "all"}) is cleanup
    assert sorted(app.schedules) == ["cleanup", "cleanup.nightly"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cron": "61 * * * *"}, "cron='61 * * * *' is not a valid cron expression"),
        ({"cron": "0 0 30 2 *"}, "cron='0 0 30 2 *' never fires"),
        ({"cron": "* * * * *", "timezone": "Europe/Atlantis"}, "'Europe/Atlantis' is not a known IANA time zone"),
        ({"cron": "* * * * *", "args": {"nope": 1}}, "args do not fit task 'job'"),
        ({"cron": "* * * * *", "args": {"n": {1, 2}}}, "args do not fit task 'job'"),
        ({"cron": "* * * * *", "catch_up": 0}, "catch_up=0 must be seconds > 0"),
        ({"cron": "* * * * *", "queue": "bad queue"}, "is not a valid queue name"),
        ({"cron": "* * * * *", "name": "has space"}, "name='has space' is not valid"),
    ],
)
def test_a_bad_schedule_is_refused_at_registration(app: App, options: dict[str, Any], message: str) -> None:
    """An invalid or never-firing expression, an unknown zone, bad args or options raise ConfigurationError."""

    @app.task(name="job")
    async def job(n: int = 0) -> None: ...

    with pytest.raises(ConfigurationError) as info:
        app.periodic(job, **options)
    assert message in str(info.value)
    assert app.schedules == {}


def test_periodic_below_task_or_on_an_unknown_name_says_what_to_do(app: App) -> None:
    """On a plain function it raises TypeError (put it above @app.task); an unknown task is a ConfigurationError."""
    with pytest.raises(TypeError, match=r"put it above @app\.task"):

        @app.periodic(cron="* * * * *")  # type: ignore[arg-type]
        async def plain() -> None: ...

    with pytest.raises(ConfigurationError, match="no task named 'missing'"):
        app.periodic("missing", cron="* * * * *")


def test_a_schedule_name_is_unique_unless_the_definition_is_the_same(app: App) -> None:
    """Registering the same definition twice is a no-op; another definition under a taken name is refused."""

    @app.task(name="job")
    async def job() -> None: ...

    app.periodic(job, cron="*/5 * * * *")
    app.periodic(job, cron="*/5  *  * * *")  # a module imported twice
    with pytest.raises(ConfigurationError, match=r"'job' is already registered .* pass @app\.periodic\(name=\.\.\.\)"):
        app.periodic(job, cron="*/10 * * * *")


def test_tick_arg_must_be_a_parameter_not_given_in_args(app: App) -> None:
    """tick_arg names a parameter the task accepts and that args leave to the tick."""

    @app.task(name="job")
    async def job(day: str, tick: str) -> None: ...

    with pytest.raises(ConfigurationError, match="args do not fit task 'job'"):
        app.periodic(job, cron="@daily", args={"day": "x"}, tick_arg="when")
    with pytest.raises(ConfigurationError, match="tick_arg='tick' is also in args"):
        app.periodic(job, cron="@daily", args={"day": "x", "tick": "y"}, tick_arg="tick")
    app.periodic(job, cron="@daily", args={"day": "x"}, tick_arg="tick")


# --- exactly once ------------------------------------------------------------------------------


async def test_three_workers_enqueue_every_second_exactly_once(app: App, db: Connection) -> None:
    """Three workers running a seconds schedule for a few seconds leave one completed job per tick, second by second."""
    seen: list[dt.datetime] = []

    @app.periodic(cron=EVERY_SECOND, name="pulse", tick_arg="tick")
    @app.task(name="pulse")
    async def pulse(tick: str) -> None:
        seen.append(dt.datetime.fromisoformat(tick))

    async with open_worker(app, **fast()), open_worker(app, **fast()), open_worker(app, **fast()):
        await wait_until(lambda: len(seen) >= 4, within=15)
        await anyio.sleep(0.5)
    ticks = await _ticks(db)
    assert len(ticks) >= 4 and all(count == 1 for _, count in ticks)
    gaps = [(b - a).total_seconds() for (a, _), (b, _) in itertools.pairwise(ticks)]
    assert gaps.count(1.0) >= len(gaps) - 1  # a gap only if all three loops stalled past a tick (CI load)
    states = await query(db, "SELECT DISTINCT state FROM jobs WHERE scheduled_at < now() - interval '2 seconds'")
    assert {r[0] for r in states} <= {"completed"}


VICTIM_APP = """\
from nursery_worker import App

app = App(schema={schema!r})


@app.periodic(cron="* * * * * *", name="pulse", tick_arg="tick")
@app.task(name="pulse")
async def pulse(tick: str) -> None:
    pass
"""


@pytest.mark.slow
async def test_a_killed_workers_schedule_goes_on_in_another_worker(
    app: App, db: Connection, dsn: str, tmp_path: Path
) -> None:
    """After the scheduling worker is SIGKILLed, another worker enqueues the next ticks: none twice, the missed
    ones at most once (the latest, caught up)."""
    (tmp_path / "victim.py").write_text(VICTIM_APP.format(schema=app.schema))

    @app.periodic(cron=EVERY_SECOND, name="pulse", tick_arg="tick")
    @app.task(name="pulse")
    async def pulse(tick: str) -> None: ...

    env = {k: v for k, v in os.environ.items() if not k.startswith("NURSERY_WORKER_")}
    env["NURSERY_WORKER_DSN"] = dsn
    victim = await anyio.open_process(
        [sys.executable, "-m", "nursery_worker", "run", "--app", "victim:app"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    async with victim:
        try:
            await wait_until(lambda: _count(db, 2), within=30)
        finally:
            victim.send_signal(signal.SIGKILL)
            await victim.wait()
    before = await _ticks(db)
    await anyio.sleep(2.2)  # ticks pass with no scheduler alive
    start = await _db_now(db)
    async with open_worker(app, **fast()):
        await wait_until(lambda: _count(db, len(before) + 3), within=15)
    after = await _ticks(db)
    assert all(count == 1 for _, count in after)
    assert after[: len(before)] == before
    new = [tick for tick, _ in after[len(before) :]]
    caught_up = [tick for tick in new if tick < start.replace(microsecond=0)]
    assert len(caught_up) <= 1  # of the two or more ticks missed while no worker ran
    assert len(new) - len(caught_up) >= 2  # and it goes on ticking


async def _count(db: Connection, at_least: int) -> bool:
    return int((await query(db, "SELECT count(*) FROM jobs"))[0][0]) >= at_least


# --- catch-up ----------------------------------------------------------------------------------


async def test_the_tick_reaches_the_task_in_its_time_zone_and_survives_a_retry(app: App, db: Connection) -> None:
    """tick_arg passes the tick as ISO 8601 in the schedule's zone; it is in the stored args, unlike scheduled_at."""

    @app.periodic(cron="* * * * *", timezone="Asia/Kolkata", args={"n": 1}, tick_arg="tick", catch_up=3600)
    @app.task(name="job")
    async def job(n: int, tick: str) -> None: ...

    scheduler = _scheduler(app)
    await scheduler.run_once()
    await _age(db, "job")
    result = await scheduler.run_once()
    (job_row,) = await app.list_jobs()
    tick = dt.datetime.fromisoformat(job_row.args["tick"])
    assert job_row.args["n"] == 1 and tick.utcoffset() == dt.timedelta(hours=5, minutes=30)
    assert tick == job_row.scheduled_at == result.now.replace(second=0, microsecond=0)


async def test_changing_the_expression_restarts_the_schedule_from_now(app: App, dsn: str, db: Connection) -> None:
    """Re-registering the same expression keeps a schedule's past; another expression makes it active from now."""

    @app.task(name="job")
    async def job() -> None: ...

    app.periodic(job, cron="* * * * *", catch_up=3600)
    await _scheduler(app).run_once()
    await _age(db, "job")
    same = await _scheduler(app).run_once()  # a restarted worker registers the same expression again
    assert same.enqueued == 1
    await _age(db, "job")
    other = App(dsn=dsn, schema=app.schema)
    try:

        @other.task(name="job")
        async def job2() -> None: ...

        other.periodic(job2, cron="*/2 * * * *", catch_up=3600)
        changed = await Scheduler(other.driver, tuple(other.schedules.values())).run_once()
    finally:
        await other.aclose()
    assert changed.enqueued == 0  # its latest tick predates the change
    (row,) = await query(db, "SELECT cron, now() - active_since < interval '1 minute' FROM periodic")
    assert row == ("*/2 * * * *", True)


async def test_a_deleted_row_is_put_back_and_active_from_then(app: App, db: Connection) -> None:
    """A scheduler whose schedule's row disappeared re-creates it and enqueues nothing from before."""

    @app.periodic(cron=EVERY_SECOND)
    @app.task(name="job")
    async def job() -> None: ...

    scheduler = _scheduler(app)
    await scheduler.run_once()
    await execute(db, "DELETE FROM periodic")
    result = await scheduler.run_once()
    assert result.enqueued == 0
    assert (await query(db, "SELECT name FROM periodic"))[0][0] == "job"


# --- which workers schedule ---------------------------------------------------------------------


async def test_a_worker_schedules_only_its_own_queues_and_never_in_once_mode(app: App, db: Connection) -> None:
    """A worker of another queue, or a once-mode worker, runs no scheduler; one of the queue does."""

    @app.periodic(cron=EVERY_SECOND, queue="reports")
    @app.task(name="job")
    async def job() -> None: ...

    async with open_worker(app, queues=["default"], **fast()) as other:
        assert other._scheduler is None
    async with open_worker(app, queues=["reports"], once=True, **fast()) as once:
        assert once._scheduler is None
    assert await query(db, "SELECT name FROM periodic") == []
    async with open_worker(app, queues="default,reports", **fast()) as worker:
        assert worker._scheduler is not None
        await wait_until(lambda: _count(db, 1), within=10)


# --- listing -----------------------------------------------------------------------------------


async def test_list_periodic_shows_the_next_tick_the_last_job_and_schedules_the_app_lost(
    app: App, dsn: str, db: Connection
) -> None:
    """list_periodic gives each schedule's next tick and last job; one only the database knows is not in_app."""

    @app.task(name="job")
    async def job() -> None: ...

    app.periodic(job, cron="* * * * *", name="a", timezone="Europe/Paris", catch_up=3600)
    app.periodic(job, cron="0 0 1 1 *", name="b")
    await _scheduler(app, "a").run_once()  # only "a" reached the database
    await _age(db, "a")
    await _scheduler(app, "a").run_once()

    listed = await app.list_periodic()
    assert [(p.name, p.in_app, p.updated_at is not None) for p in listed] == [("a", True, True), ("b", True, False)]
    a, b = listed
    assert isinstance(a, PeriodicInfo) and a.timezone == "Europe/Paris" and a.cron == "* * * * *"
    assert a.last_job_state is JobState.AVAILABLE and a.last_tick is not None
    assert a.next_tick is not None and 0 < (a.next_tick - a.now).total_seconds() <= 60
    assert b.next_tick is not None and (b.next_tick.month, b.next_tick.day) == (1, 1) and b.last_job_id is None

    bare = App(dsn=dsn, schema=app.schema)
    try:
        (lost,) = await bare.list_periodic()
    finally:
        await bare.aclose()
    assert (lost.name, lost.in_app, lost.task) == ("a", False, "job")
    assert lost.next_tick == a.next_tick
