"""Pages 5-9 of the dashboard over HTTP, on both engines and both loops: workers and supervisors,
periodic jobs, workflows, failures and metrics history, each with its JSON twin and its 4xx answers."""

from __future__ import annotations

import socket

import httpx
import pytest

from nursery_worker import App
from nursery_worker._admin import Admin
from nursery_worker._models import RollupRow, WorkerInfo
from nursery_worker._rollup import HISTOGRAM_BUCKETS

pytestmark = pytest.mark.anyio


def _histogram(index: int, n: int) -> tuple[int, ...]:
    out = [0] * HISTOGRAM_BUCKETS
    out[index] = n
    return tuple(out)


async def _rollups(app: App) -> None:
    """Rollups of one task: 8 completed attempts and 2 discarded ones with a KeyError."""
    await app.driver.write_rollups(
        [
            RollupRow(
                queue="default", task="billing.charge", completed=8, duration_sum=0.4, histogram=_histogram(10, 8)
            ),
            RollupRow(
                queue="default",
                task="billing.charge",
                error_type="KeyError",
                discarded=2,
                duration_sum=0.1,
                histogram=_histogram(12, 2),
            ),
        ]
    )


# --- workers -----------------------------------------------------------------------------------


async def test_workers_page_shows_each_child_with_its_last_exit(migrated: App, client: httpx.AsyncClient) -> None:
    """A supervised worker is listed under its supervisor with pid, restarts and the last exit reason."""
    info = WorkerInfo(
        id="sup-1:child",
        hostname=socket.gethostname(),
        pid=4242,
        queues=("default", "mail"),
        concurrency=4,
        supervisor_id="sup-1",
        child_index=2,
        restarts=3,
        last_exit="was killed by SIGKILL",
    )
    await migrated.driver.register_worker(info)
    page = await client.get("/workers")
    assert page.status_code == 200
    assert "sup-1" in page.text and "4242" in page.text and "was killed by SIGKILL" in page.text
    api = (await client.get("/api/workers")).json()
    (worker,) = api["workers"]
    assert (worker["pid"], worker["restarts"], worker["last_exit"], worker["stale"]) == (
        4242,
        3,
        "was killed by SIGKILL",
        False,
    )


async def test_workers_page_says_when_no_worker_runs(client: httpx.AsyncClient) -> None:
    """Without workers the page says how to start one."""
    page = await client.get("/workers")
    assert page.status_code == 200 and "No worker is registered" in page.text


# --- periodic ------------------------------------------------------------------------------------


async def test_periodic_page_lists_schedules_with_next_fire_and_recent_runs(
    migrated: App, client: httpx.AsyncClient
) -> None:
    """A schedule of the app is shown with its cron, its next fire and its task's recent runs."""

    @migrated.task
    async def nightly() -> None:
        return None

    migrated.periodic(nightly, cron="0 3 * * *", name="nightly-report")
    job = await nightly.defer()
    page = await client.get("/periodic")
    assert page.status_code == 200
    assert "nightly-report" in page.text and "0 3 * * *" in page.text and f"#{job.id}" in page.text
    (schedule,) = (await client.get("/api/periodic")).json()["schedules"]
    assert schedule["name"] == "nightly-report" and schedule["next_tick"] is not None
    assert [r["id"] for r in schedule["recent"]] == [job.id]


# --- workflows -----------------------------------------------------------------------------------


async def test_workflow_page_draws_the_graph_with_links_to_each_job(migrated: App, client: httpx.AsyncClient) -> None:
    """The graph of a job is an SVG whose boxes link to each job's page and show its state."""

    @migrated.task
    async def step(n: int) -> None:
        return None

    first = await step.defer(n=1)
    second = await step.defer(n=2, depends_on=[first])
    page = await client.get("/workflows", params={"job": second.id})
    assert page.status_code == 200
    assert "<svg" in page.text and f'href="/jobs/{first.id}"' in page.text
    assert f"#{second.id} pending" in page.text and f"#{first.id} available" in page.text
    data = (await client.get("/api/workflows", params={"job": first.id})).json()
    assert data["edges"] == [[first.id, second.id]]
    assert [(n["id"], n["depth"]) for n in data["graph"]["nodes"]] == [(first.id, 0), (second.id, 1)]


async def test_workflow_page_without_a_job_asks_for_one(client: httpx.AsyncClient) -> None:
    """Without ``job`` the page shows the form and no graph."""
    page = await client.get("/workflows")
    assert page.status_code == 200 and 'name="job"' in page.text and "<svg" not in page.text


async def test_workflow_of_an_unknown_or_malformed_job_is_a_4xx(client: httpx.AsyncClient) -> None:
    """An unknown job id is a 404 naming it; a non-integer one a 400; neither shows a traceback."""
    missing = await client.get("/workflows", params={"job": 999999})
    assert missing.status_code == 404 and "job 999999 does not exist" in missing.text
    bad = await client.get("/api/workflows", params={"job": "abc"})
    assert bad.status_code == 400 and "Traceback" not in bad.text


# --- failures ------------------------------------------------------------------------------------


async def test_failures_page_groups_by_task_and_exception_type(migrated: App, client: httpx.AsyncClient) -> None:
    """Rolled-up failures appear under their task (with its failure rate) and under their exception type."""
    await _rollups(migrated)
    page = await client.get("/failures", params={"window": "1h"})
    assert page.status_code == 200
    assert "billing.charge" in page.text and "KeyError" in page.text and "20.0%" in page.text
    data = (await client.get("/api/failures", params={"window": "7d"})).json()
    assert [(g["key"], g["discarded"], g["attempts"]) for g in data["by_task"]] == [("billing.charge", 2, 10)]
    assert [g["key"] for g in data["by_type"]] == ["KeyError"]


async def test_failures_page_refuses_an_unknown_window(client: httpx.AsyncClient) -> None:
    """``window=2h`` is a 400 naming the windows there are."""
    response = await client.get("/failures", params={"window": "2h"})
    assert response.status_code == 400 and "1h, 24h, 7d" in response.text


# --- metrics -------------------------------------------------------------------------------------


async def test_metrics_page_charts_each_tasks_history(migrated: App, client: httpx.AsyncClient) -> None:
    """Each task with rolled-up attempts gets its totals and three inline SVG charts; no script."""
    await _rollups(migrated)
    page = await client.get("/metrics", params={"period": "6h"})
    assert page.status_code == 200
    assert page.text.count('<svg xmlns="http://www.w3.org/2000/svg" class="chart"') == 3
    assert "billing.charge" in page.text and "20.0%" in page.text and "<script>" not in page.text
    data = (await client.get("/api/metrics", params={"period": "24h", "task": "billing.charge"})).json()
    (task,) = data["tasks"]
    assert (task["total"]["completed"], task["total"]["discarded"], data["period"]) == (8, 2, "24h")
    assert task["total"]["p50"] is not None


async def test_metrics_page_refuses_an_unknown_period(client: httpx.AsyncClient) -> None:
    """``period=1y`` is a 400 naming the periods there are."""
    response = await client.get("/api/metrics", params={"period": "1y"})
    assert response.status_code == 400 and "1h, 6h, 24h, 7d, 30d" in response.text


async def test_every_insight_page_is_in_the_nav(client: httpx.AsyncClient) -> None:
    """The overview links to pages 5-9."""
    page = await client.get("/")
    for path in ("/workers", "/periodic", "/workflows", "/failures", "/metrics"):
        assert f'href="{path}"' in page.text


# --- periodic actions ----------------------------------------------------------------------------


def _schedule(app: App) -> str:
    @app.task
    async def hourly() -> None:
        return None

    app.periodic(hourly, cron="0 * * * *", name="hourly-sync")
    return "hourly-sync"


async def test_a_schedule_is_triggered_paused_and_resumed_from_the_page(
    migrated: App, writer: httpx.AsyncClient
) -> None:
    """Trigger enqueues a job of the schedule's task; pause shows it paused; resume clears it; each is audited."""
    name = _schedule(migrated)
    page = await writer.get("/periodic")
    assert f'action="/periodic/{name}/trigger"' in page.text and f'action="/periodic/{name}/pause"' in page.text
    triggered = await writer.post(f"/api/periodic/{name}/trigger")
    assert triggered.status_code == 200
    (job,) = await migrated.list_jobs()
    assert job.task.endswith("hourly")
    assert (await writer.post(f"/api/periodic/{name}/pause")).status_code == 200
    (schedule,) = (await writer.get("/api/periodic")).json()["schedules"]
    assert schedule["paused"] is True
    assert f'action="/periodic/{name}/resume"' in (await writer.get("/periodic")).text
    assert (await writer.post(f"/api/periodic/{name}/resume")).status_code == 200
    (schedule,) = (await writer.get("/api/periodic")).json()["schedules"]
    assert schedule["paused"] is False
    actions = [e.action for e in await Admin(migrated).list_audit()]
    assert actions == ["periodic.resume", "periodic.pause", "periodic.trigger"]


async def test_periodic_actions_are_refused_read_only_and_for_unknown_schedules(
    migrated: App, client: httpx.AsyncClient, writer: httpx.AsyncClient
) -> None:
    """A read-only dashboard answers 403 and enqueues nothing; an unknown schedule is a 404."""
    name = _schedule(migrated)
    assert (await client.post(f"/api/periodic/{name}/trigger")).status_code == 403
    assert "Trigger now" not in (await client.get("/periodic")).text
    assert await migrated.list_jobs() == []
    missing = await writer.post("/api/periodic/no-such-schedule/pause")
    assert missing.status_code == 404 and "no-such-schedule" in missing.text
