"""Prometheus metrics and health endpoints of one worker (``serve_metrics``), scraped over real HTTP."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.to_thread
import pytest
from prometheus_client.parser import text_string_to_metric_families

from nursery_worker import App, ConfigurationError, Worker, WorkerState, open_worker, serve_metrics
from nursery_worker._maintenance import Rescuer
from nursery_worker._metrics import check_available, merge_expositions

from .helpers import Connection, execute, fast, wait_until

pytestmark = pytest.mark.anyio

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


async def get(port: int, path: str) -> tuple[int, str]:
    """GET a path of the endpoint from a thread (the worker's event loop keeps running)."""
    return await anyio.to_thread.run_sync(_get, port, path)


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape(port: int) -> Samples:
    status, text = await get(port, "/metrics")
    assert status == 200, text
    return parse(text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@asynccontextmanager
async def served(app: App, **options: object) -> AsyncIterator[tuple[Worker, int]]:
    """A worker with its metrics endpoint on a free loopback port; the endpoint outlives the worker."""
    async with anyio.create_task_group() as tg:
        async with open_worker(app, **fast(**options)) as worker:  # type: ignore[arg-type]
            port = await tg.start(serve_metrics, worker, 0)
            yield worker, port
        tg.cancel_scope.cancel()


async def test_counters_move_with_real_jobs(app: App) -> None:
    """Completed, failed, retried and discarded counters and both histograms count real attempts by queue and task."""

    @app.task(name="send", queue="mail")
    async def send() -> None:
        pass

    @app.task(name="flaky", max_attempts=2, retry=0)
    async def flaky() -> None:
        raise RuntimeError("boom")

    async with served(app, queues=["default", "mail"]) as (_, port):
        before = await scrape(port)
        assert value(before, "nursery_worker_jobs_completed_total", queue="mail", task="send") == 0
        for _ in range(3):
            await send.defer()
        await flaky.defer()

        async def counted() -> Samples | None:
            samples = await scrape(port)
            done = value(samples, "nursery_worker_jobs_discarded_total", queue="default", task="flaky") == 1
            return (
                samples
                if done and value(samples, "nursery_worker_jobs_completed_total", queue="mail", task="send") == 3
                else None
            )

        samples = await wait_until(counted)
    assert value(samples, "nursery_worker_jobs_failed_total", queue="default", task="flaky") == 2
    assert value(samples, "nursery_worker_jobs_retried_total", queue="default", task="flaky") == 1
    assert value(samples, "nursery_worker_jobs_completed_total", queue="default", task="flaky") == 0
    assert value(samples, "nursery_worker_job_duration_seconds_count", queue="mail", task="send") == 3
    assert value(samples, "nursery_worker_job_duration_seconds_count", queue="default", task="flaky") == 2
    assert value(samples, "nursery_worker_job_pickup_latency_seconds_count", queue="mail", task="send") == 3
    assert value(samples, "nursery_worker_job_duration_seconds_bucket", queue="mail", task="send", le="+Inf") == 3


async def test_cancelled_and_running_jobs_are_counted(app: App) -> None:
    """A running job shows in the running gauge, and cancelling it moves the cancelled counter."""
    started = anyio.Event()

    @app.task(name="slow")
    async def slow() -> None:
        started.set()
        await anyio.sleep(60)

    async with served(app) as (_, port):
        job = await slow.defer()
        await started.wait()
        samples = await scrape(port)
        assert value(samples, "nursery_worker_running_jobs") == 1
        assert value(samples, "nursery_worker_worker_state", state="running") == 1
        assert value(samples, "nursery_worker_worker_state", state="stopping") == 0
        await app.cancel(job.id)

        async def cancelled() -> bool:
            return value(await scrape(port), "nursery_worker_jobs_cancelled_total", queue="default", task="slow") == 1

        await wait_until(cancelled)
        assert value(await scrape(port), "nursery_worker_running_jobs") == 0


async def test_a_late_outcome_the_database_ignored_is_counted_as_ignored(app: App) -> None:
    """A completion that arrives after its job was rescued moves jobs_ignored, not jobs_completed."""
    started = anyio.Event()
    release = anyio.Event()

    @app.task(name="held", max_attempts=1)
    async def held() -> None:
        started.set()
        await release.wait()

    async with served(app, heartbeat_interval=60, rescue_after=120, reap_interval=60) as (worker, port):
        await held.defer()
        with anyio.fail_after(10):
            await started.wait()
        await app.driver.deregister_worker(worker.id)  # its peers now see it as dead
        assert (await Rescuer(app.driver, "peer", rescue_after=120).run_once()).discarded == 1
        release.set()

        async def ignored() -> Samples | None:
            samples = await scrape(port)
            return (
                samples if value(samples, "nursery_worker_jobs_ignored_total", queue="default", task="held") else None
            )

        samples = await wait_until(ignored)
    assert value(samples, "nursery_worker_jobs_ignored_total", queue="default", task="held") == 1
    assert value(samples, "nursery_worker_jobs_completed_total", queue="default", task="held") == 0


async def test_queue_depth_counts_waiting_jobs_by_queue_and_state(app: App) -> None:
    """The queue depth gauge shows the jobs of every queue by state, including queues this worker does not work."""

    @app.task(name="other", queue="elsewhere")
    async def other() -> None:
        pass

    for _ in range(3):
        await other.defer()
    await other.configure(delay=3600).defer()
    # The worker serves only ``default``: left to itself it would serve every queue the app names.
    async with served(app, queues=["default"]) as (_, port):
        samples = await scrape(port)
    assert value(samples, "nursery_worker_queue_depth", queue="elsewhere", state="available") == 3
    assert value(samples, "nursery_worker_queue_depth", queue="elsewhere", state="scheduled") == 1


async def test_healthz_and_readyz_follow_the_worker(app: App) -> None:
    """/healthz answers 200; /readyz answers 200 while the worker runs with its listener, and 503 once it stopped."""
    async with served(app) as (worker, port):
        assert await get(port, "/healthz") == (200, "ok\n")
        await wait_until(lambda: worker.listener_connected)
        assert await get(port, "/readyz") == (200, "ready\n")
        assert (await get(port, "/nothing"))[0] == 404
        worker.stop()
        await worker.wait_stopped()
        status, text = await get(port, "/readyz")
        assert status == 503
        assert "worker is stopped" in text
        assert worker.state is WorkerState.STOPPED
        assert (await get(port, "/healthz"))[0] == 200


async def test_readyz_fails_and_errors_count_while_the_database_fails(app: App, db: Connection) -> None:
    """While database calls fail, /readyz answers 503 with the error and database errors are counted."""
    async with served(app) as (worker, port):
        await wait_until(lambda: worker.listener_connected)
        await execute(db, "ALTER TABLE jobs RENAME TO jobs_away")
        try:

            async def failing() -> str | None:
                status, text = await get(port, "/readyz")
                return text if status == 503 else None

            text = await wait_until(failing)
            assert "last database call failed" in text
            samples = await scrape(port)
            assert sum(v for (name, _), v in samples.items() if name == "nursery_worker_database_errors_total") >= 1
        finally:
            await execute(db, "ALTER TABLE jobs_away RENAME TO jobs")

        async def ready() -> bool:
            return (await get(port, "/readyz"))[0] == 200

        await wait_until(ready)


async def test_nothing_is_recorded_unless_metrics_are_served(app: App) -> None:
    """A worker without serve_metrics has no metrics object, and serving them attaches one that goes away after."""

    @app.task
    async def noop() -> None:
        pass

    async with open_worker(app, **fast()) as worker:
        assert worker.metrics is None
        await noop.defer()
        await wait_until(lambda: worker.stats().completed == 1)
        async with anyio.create_task_group() as tg:
            await tg.start(serve_metrics, worker, 0)
            assert worker.metrics is not None
            tg.cancel_scope.cancel()
        assert worker.metrics is None


def test_missing_prometheus_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without prometheus-client installed, asking for metrics raises ConfigurationError naming the extra."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ConfigurationError, match=r"nursery-worker\[metrics\]"):
        check_available()


def test_merged_expositions_label_each_worker() -> None:
    """Merging two workers' metrics keeps one family per name and labels every sample with its worker."""
    text = (
        "# HELP nursery_worker_jobs_completed_total Attempts that succeeded.\n"
        "# TYPE nursery_worker_jobs_completed_total counter\n"
        'nursery_worker_jobs_completed_total{{queue="default",task="t"}} {n}\n'
    )
    merged = merge_expositions([("0", text.format(n=2)), ("1", text.format(n=5))]).decode()
    assert merged.count("# TYPE nursery_worker_jobs_completed_total counter") == 1
    samples = parse(merged)
    assert value(samples, "nursery_worker_jobs_completed_total", worker="0", queue="default", task="t") == 2
    assert value(samples, "nursery_worker_jobs_completed_total", worker="1", queue="default", task="t") == 5
