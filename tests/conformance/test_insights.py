"""What the dashboard reads (``Admin``'s insight methods and the rollups behind them), the same on
every engine: metric rollups written and summed, pruned; the audit trail; process health; job
graphs; failures by task and exception type; metrics history; periodic schedules with their runs.
"""

from __future__ import annotations

import os
import socket

import pytest

from nursery_worker import App, JobNotFound, JobState, open_worker
from nursery_worker._admin import Admin
from nursery_worker._maintenance import Pruner, RollupWriter
from nursery_worker._models import RollupRow, WorkerInfo
from nursery_worker._rollup import HISTOGRAM_BUCKETS, RollupCounter, bucket_of, bucket_upper

from ..integration.helpers import fast, wait_for_state

pytestmark = pytest.mark.anyio


def _histogram(**counts: int) -> tuple[int, ...]:
    """A histogram with *counts* by bucket index (``b3=2``: two attempts in bucket 3)."""
    out = [0] * HISTOGRAM_BUCKETS
    for key, n in counts.items():
        out[int(key[1:])] = n
    return tuple(out)


def _row(task: str = "t", error_type: str = "", **counts: int) -> RollupRow:
    return RollupRow(queue="default", task=task, error_type=error_type, **counts)


# --- rollups --------------------------------------------------------------------------------------


async def test_rollup_writes_add_up_in_the_minute_and_hour_rows(app: App) -> None:
    """Two writes to the same key sum their counts, durations and histograms at both grains, and a
    read sums them over queues."""
    one = RollupRow(queue="q", task="t", completed=2, duration_sum=0.5, histogram=_histogram(b3=2))
    two = RollupRow(queue="q2", task="t", completed=1, failed=1, duration_sum=1.5, histogram=_histogram(b3=1, b9=1))
    await app.driver.write_rollups([one])
    await app.driver.write_rollups([two])
    for hourly in (False, True):
        read = await app.driver.read_rollups(since=3600, hourly=hourly, step=3600)
        (bucket,) = read.buckets
        assert (bucket.row.completed, bucket.row.failed, bucket.row.duration_sum) == (3, 1, 2.0)
        assert bucket.row.histogram == _histogram(b3=3, b9=1)
        assert bucket.at <= read.now


async def test_old_minute_rollups_are_pruned_and_hourly_ones_kept_by_their_own_age(app: App) -> None:
    """prune_rollups deletes the minute rows past their age and keeps the hour rows within theirs."""
    await app.driver.write_rollups([_row(completed=1, histogram=_histogram(b1=1))])
    removed = await app.driver.prune_rollups(minute_older_than=-120.0, hour_older_than=86400.0)
    assert removed == 1
    assert (await app.driver.read_rollups(since=3600, hourly=False, step=60)).buckets == ()
    assert len((await app.driver.read_rollups(since=3600, hourly=True, step=3600)).buckets) == 1


async def test_the_pruner_keeps_rollups_within_their_retention(app: App) -> None:
    """Pruner.run_once with a rollup retention prunes nothing younger than it."""
    await app.driver.write_rollups([_row(completed=1, histogram=_histogram(b1=1))])
    assert await Pruner(app.driver, retention={}, rollup_retention=86400.0).run_once() == {}
    assert len((await app.driver.read_rollups(since=3600, hourly=False, step=60)).buckets) == 1


async def test_the_rollup_writer_keeps_counts_a_failed_write_could_not_store(app: App) -> None:
    """A RollupWriter pass drains the counter into the rollups; nothing counted means no write."""
    counter = RollupCounter()
    counter.count(queue="default", task="t", state="completed", error_type=None, duration=0.002)
    counter.count(queue="default", task="t", state="discarded", error_type="ValueError", duration=0.002)
    counter.count(queue="default", task="t", state="scheduled", error_type=None, duration=0.002)  # a snooze
    writer = RollupWriter(app.driver, counter)
    assert await writer.run_once() == 2
    assert await writer.run_once() == 0
    rows = {b.row.error_type: b.row for b in (await app.driver.read_rollups(since=60, hourly=False, step=60)).buckets}
    assert (rows[""].completed, rows["ValueError"].discarded) == (1, 1)


def test_the_histogram_buckets_are_log_scale_and_bound_their_durations() -> None:
    """Every duration lands in a bucket whose upper bound is above it and within a factor sqrt(2)."""
    assert bucket_of(0.0) == 0 and bucket_of(-1.0) == 0 and bucket_of(1e9) == HISTOGRAM_BUCKETS - 1
    for seconds in (0.001, 0.0137, 0.25, 1.0, 42.0, 3600.0):
        upper = bucket_upper(bucket_of(seconds))
        assert seconds < upper <= seconds * 2**0.5 * 1.000001


async def test_a_worker_writes_rollups_of_the_attempts_it_finished(app: App) -> None:
    """Completed and discarded attempts of a worker's jobs appear in the metrics history and failures."""

    @app.task(retry=0, max_attempts=1)
    async def flaky(fail: bool) -> None:
        if fail:
            raise ValueError("bad input")

    jobs = [await flaky.defer(fail=False), await flaky.defer(fail=False), await flaky.defer(fail=True)]
    async with open_worker(app, **fast()):
        for job in jobs:
            await wait_for_state(app, job.id, JobState.COMPLETED, JobState.DISCARDED)
    admin = Admin(app)
    history = await admin.metrics_history(period="1h")
    (task,) = history.tasks
    assert (task.task, task.total.completed, task.total.discarded) == (flaky.name, 2, 1)
    assert task.total.failure_rate == pytest.approx(1 / 3)
    assert task.total.p50 is not None and task.total.p99 is not None and task.total.p50 <= task.total.p99
    assert sum(p.completed for p in task.points) == 2 and len(task.points) == 61
    report = await admin.failures(window="1h")
    assert [(g.key, g.discarded, g.attempts) for g in report.by_task] == [(flaky.name, 1, 3)]
    (by_type,) = report.by_type
    assert (by_type.key, by_type.discarded, by_type.last_message) == ("ValueError", 1, "bad input")
    assert by_type.sample_job_ids == (jobs[2].id,)


async def test_metrics_history_reads_percentiles_from_the_summed_histograms(app: App) -> None:
    """p50 and p99 come from the histogram buckets of every row of the range, summed."""
    await app.driver.write_rollups(
        [
            _row(task="a", completed=90, histogram=_histogram(b5=90)),
            _row(task="a", error_type="E", failed=10, histogram=_histogram(b20=10)),
        ]
    )
    (task,) = (await Admin(app).metrics_history(period="6h", task="a")).tasks
    assert task.total.p50 == bucket_upper(5) and task.total.p99 == bucket_upper(20)
    assert task.total.failure_rate == pytest.approx(0.1)


async def test_insight_windows_and_ranges_refuse_unknown_names(app: App) -> None:
    """An unknown failures window or metrics range is a ValueError naming the choices."""
    admin = Admin(app)
    with pytest.raises(ValueError, match="1h, 24h, 7d"):
        await admin.failures(window="2h")
    with pytest.raises(ValueError, match="1h, 6h, 24h, 7d, 30d"):
        await admin.metrics_history(period="1y")


# --- the audit trail --------------------------------------------------------------------------------


async def test_audit_entries_are_listed_newest_first_and_paged(app: App) -> None:
    """record_audit stamps entries by the database's clock; list_audit pages them newest first."""
    admin = Admin(app)
    first = await admin.record_audit(actor="ann", action="retry", target={"job_id": 7}, count=1)
    second = await admin.record_audit(actor="bob", action="bulk_cancel", target={"state": "available"}, count=40)
    assert [e.id for e in await admin.list_audit()] == [second.id, first.id]
    (older,) = await admin.list_audit(before_id=second.id)
    assert (older.actor, older.action, dict(older.target), older.count) == ("ann", "retry", {"job_id": 7}, 1)
    assert second.at >= first.at


async def test_a_bad_audit_entry_is_refused_before_anything_is_written(app: App) -> None:
    """An empty actor, a negative count or a non-object target raises and writes nothing."""
    admin = Admin(app)
    with pytest.raises(ValueError, match="actor"):
        await admin.record_audit(actor=" ", action="retry", target={}, count=1)
    with pytest.raises(ValueError, match="count"):
        await admin.record_audit(actor="ann", action="retry", target={}, count=-1)
    with pytest.raises(TypeError, match="mapping"):
        await admin.record_audit(actor="ann", action="retry", target=[1], count=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="when"):
        await admin.record_audit(actor="ann", action="retry", target={"when": object()}, count=1)
    assert await admin.list_audit() == []


# --- workers --------------------------------------------------------------------------------------


async def test_worker_health_shows_a_running_worker_and_a_slots_last_exit(app: App) -> None:
    """A running worker is listed fresh with its pid; a supervised one carries its slot's last exit."""
    child = WorkerInfo(
        id="sup-child",
        hostname=socket.gethostname(),
        pid=1234,
        queues=("default",),
        concurrency=2,
        supervisor_id="sup",
        child_index=0,
        restarts=1,
        last_exit="exited with code 3",
    )
    await app.driver.register_worker(child)
    async with open_worker(app, **fast()) as worker:
        health = {w.id: w for w in await Admin(app).worker_health()}
    assert health["sup-child"].last_exit == "exited with code 3" and health["sup-child"].restarts == 1
    mine = health[worker.id]
    assert (mine.pid, mine.stale, mine.last_exit, mine.supervisor_id) == (os.getpid(), False, None, None)
    assert mine.uptime >= 0 and mine.heartbeat_age >= 0
    assert next(iter(health)) == "sup-child"  # supervised workers first


# --- workflows ----------------------------------------------------------------------------------


async def test_a_job_graph_holds_ancestors_and_descendants_with_their_states(app: App) -> None:
    """The graph of a middle job has its dependency above it and both dependants below, with states."""

    @app.task
    async def step(n: int) -> None:
        return None

    root = await step.defer(n=1)
    middle = await step.defer(n=2, depends_on=[root])
    leaf = await step.defer(n=3, depends_on=[middle])
    side = await step.defer(n=4, depends_on=[middle, root])
    unrelated = await step.defer(n=5)
    graph = await Admin(app).job_graph(middle.id)
    by_id = {n.id: n for n in graph.nodes}
    assert set(by_id) == {root.id, middle.id, leaf.id, side.id} and unrelated.id not in by_id
    assert (by_id[root.id].depth, by_id[middle.id].depth, by_id[leaf.id].depth) == (-1, 0, 1)
    assert by_id[root.id].state is JobState.AVAILABLE and by_id[leaf.id].state is JobState.PENDING
    assert set(graph.edges()) == {(root.id, middle.id), (middle.id, leaf.id), (middle.id, side.id), (root.id, side.id)}
    assert not graph.truncated


async def test_the_graph_of_an_unknown_job_is_job_not_found(app: App) -> None:
    """job_graph of an id with no job raises JobNotFound."""
    with pytest.raises(JobNotFound):
        await Admin(app).job_graph(10**12)


# --- periodic -------------------------------------------------------------------------------------


async def test_periodic_overview_lists_schedules_with_their_tasks_recent_runs(app: App) -> None:
    """Each schedule comes with its task's newest jobs and its next fire time."""

    @app.task
    async def report() -> None:
        return None

    app.periodic(report, cron="*/5 * * * *", name="report")
    jobs = [await report.defer() for _ in range(3)]
    (overview,) = await Admin(app).periodic_overview(runs=2)
    assert overview.info.name == "report" and overview.info.next_tick is not None
    assert [j.id for j in overview.recent] == [jobs[2].id, jobs[1].id]
    assert (overview.completed_24h, overview.failed_24h) == (0, 0)
