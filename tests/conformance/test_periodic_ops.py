"""Periodic schedules by hand: trigger one now, pause and resume one (stored in the database, so
every scheduler skips it), on every engine; and the same through `nursery-worker cron`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from nursery_worker import App, JobFilter, JobState, PeriodicNotFound
from nursery_worker._maintenance import Scheduler

from .conftest import raw_execute

pytestmark = pytest.mark.anyio

TIMEOUT = 60
CONSOLE_SCRIPT = str(Path(sys.executable).with_name("nursery-worker"))


def _define(app: App) -> None:
    """Schedule 'reports.every_second' (queue reports, priority 3, args kind=daily)."""

    @app.periodic(cron="* * * * * *", args={"kind": "daily"}, queue="reports", priority=3, name="reports.every_second")
    @app.task(name="reports.send")
    async def send(kind: str) -> None: ...


def _age(app: App) -> None:
    """Make every schedule active since two hours ago, so its latest tick is due now."""
    raw_execute(
        app,
        "UPDATE {s}.periodic SET active_since = now() - interval '2 hours'",
        "UPDATE {p}periodic SET active_since = active_since - 7200000000",
    )


def _scheduler(app: App) -> Scheduler:
    return Scheduler(app.driver, tuple(app.schedules.values()))


async def test_a_paused_schedule_is_skipped_until_resumed(app: App) -> None:
    """While paused a due tick is not enqueued; once resumed the scheduler enqueues it."""
    _define(app)
    scheduler = _scheduler(app)
    await scheduler.run_once()  # registers the row
    _age(app)
    assert await app.pause_periodic("reports.every_second") is True
    assert (await scheduler.run_once()).enqueued == 0
    assert await app.count_jobs(JobFilter()) == 0
    assert await app.resume_periodic("reports.every_second") is True
    assert (await scheduler.run_once()).enqueued == 1


async def test_pause_and_resume_say_whether_they_changed_it_and_list_shows_it(app: App) -> None:
    """pause twice gives True then False, resume likewise; list_periodic reports paused and when."""
    _define(app)
    await _scheduler(app).run_once()
    assert [await app.pause_periodic("reports.every_second") for _ in range(2)] == [True, False]
    (info,) = await app.list_periodic()
    assert info.paused and info.paused_at is not None
    assert [await app.resume_periodic("reports.every_second") for _ in range(2)] == [True, False]
    (info,) = await app.list_periodic()
    assert not info.paused and info.paused_at is None


async def test_pausing_a_schedule_no_worker_registered_yet_holds_when_workers_register_it(app: App) -> None:
    """An app-only schedule is registered and paused; a scheduler starting later keeps it paused."""
    _define(app)
    assert await app.pause_periodic("reports.every_second") is True
    scheduler = _scheduler(app)
    await scheduler.run_once()
    _age(app)
    assert (await scheduler.run_once()).enqueued == 0
    (info,) = await app.list_periodic()
    assert info.paused


async def test_trigger_enqueues_the_schedules_job_now_and_leaves_its_ticks(app: App) -> None:
    """trigger_periodic enqueues the schedule's task with its queue, args and priority, even paused,
    and the last tick stays as it was."""
    _define(app)
    await _scheduler(app).run_once()
    await app.pause_periodic("reports.every_second")
    job = await app.trigger_periodic("reports.every_second")
    assert (job.task, job.queue, dict(job.args), job.priority) == ("reports.send", "reports", {"kind": "daily"}, 3)
    assert job.state is JobState.AVAILABLE
    (info,) = await app.list_periodic()
    assert info.last_tick is None


async def test_trigger_of_a_schedule_only_the_database_knows_uses_its_row(
    app: App, make_app: Callable[..., App]
) -> None:
    """Without the defining app, trigger enqueues the task, queue and args the row was registered with."""
    _define(app)
    await _scheduler(app).run_once()
    bare = make_app()
    job = await bare.trigger_periodic("reports.every_second")
    assert (job.task, job.queue, dict(job.args)) == ("reports.send", "reports", {"kind": "daily"})


async def test_an_unknown_schedule_name_lists_the_known_ones(app: App) -> None:
    """PeriodicNotFound (a LookupError) names the bad name and the schedules that exist."""
    _define(app)
    for operation in (app.trigger_periodic, app.pause_periodic, app.resume_periodic):
        with pytest.raises(
            PeriodicNotFound, match=r"no periodic schedule named 'reports\.evry'.*'reports\.every_second'"
        ):
            await operation("reports.evry")
    assert issubclass(PeriodicNotFound, LookupError)


APP_MODULE = """\
from nursery_worker import App

app = App(schema={schema!r})


@app.periodic(cron="0 3 * * *", args={{"kind": "nightly"}}, queue="reports")
@app.task(name="reports.build")
async def build(kind: str) -> None: ...
"""


def test_the_cron_commands_trigger_pause_resume_and_list(engine_dsn: str, engine_schema: str, tmp_path: Path) -> None:
    """`cron pause` shows in `cron list`, `cron trigger` enqueues the job, `cron resume` undoes the pause."""
    (tmp_path / "cronapp.py").write_text(APP_MODULE.format(schema=engine_schema))
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURSERY_WORKER_")}
    env["NURSERY_WORKER_DSN"] = engine_dsn

    def cli(*args: str) -> str:
        argv = [CONSOLE_SCRIPT, *args, "--app", "cronapp:app"]
        result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT)
        assert result.returncode == 0, (result.stdout, result.stderr)
        return result.stdout

    cli("migrate")
    assert cli("cron", "pause", "reports.build").strip() == "schedule 'reports.build' paused"
    assert "paused" in cli("cron", "list")
    assert json.loads(cli("cron", "list", "--json"))[0]["paused"] is True
    out = cli("cron", "trigger", "reports.build")
    assert out.startswith("enqueued job ") and "of schedule 'reports.build' in queue 'reports'" in out
    assert cli("cron", "resume", "reports.build").strip() == "schedule 'reports.build' resumed"
    assert json.loads(cli("cron", "list", "--json"))[0]["paused"] is False
    argv = [CONSOLE_SCRIPT, "cron", "trigger", "reports.nope", "--app", "cronapp:app"]
    missing = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert missing.returncode == 1 and "known: 'reports.build'" in missing.stderr


async def test_the_guarded_enqueue_refuses_a_paused_schedule(app: App) -> None:
    """A scheduler that read the row before the pause committed still cannot enqueue its tick."""
    _define(app)
    scheduler = _scheduler(app)
    await scheduler.run_once()
    _age(app)
    snapshot = await app.driver.periodic_state(["reports.every_second"])
    schedule = app.schedules["reports.every_second"]
    tick = schedule.due(snapshot.now, snapshot.states["reports.every_second"])
    assert tick is not None
    await app.pause_periodic("reports.every_second")
    done = await app.driver.enqueue_periodic(
        name=schedule.name, tick=tick, catch_up=schedule.catch_up, spec=schedule.job_for(tick)
    )
    assert done is None
    assert await app.count_jobs(JobFilter()) == 0
