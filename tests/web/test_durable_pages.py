"""Durable jobs on the dashboard over HTTP, on both engines and both backends: the job page's steps,
progress bar and wait, escaped and redacted; executing jobs' progress on the jobs list and the
overview; suspended jobs counted on the overview."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest

from nursery_worker import App, Job, JobContext, JobState, open_worker

from ..integration.helpers import fast, wait_for_state, wait_until

pytestmark = pytest.mark.anyio

#: Markup a task returns from a step and writes in its progress note: shown as text, never as HTML.
MARKUP = "<script>alert(1)</script>"


async def _suspended(app: App) -> Job:
    """Run a job that records a step holding markup, a failed-then-retried step, its progress, and
    then waits for event ``go``; return it once suspended."""
    failures: list[int] = []

    @app.task(name="web.durable", max_attempts=2)
    async def durable(context: JobContext) -> None:
        async def flaky() -> str:
            if not failures:
                failures.append(1)
                raise ConnectionError("smtp down")
            return "sent"

        await context.step("render", lambda: {"html": MARKUP, "secret": "hunter2-token"})
        await context.progress(1, 4, note=MARKUP)
        await context.step("email", flaky)
        await context.wait_for_event("go", timeout=3600, name="approval")

    job = await durable.defer()
    async with open_worker(app, **fast(durable_sleep_threshold=0.1)):
        return await wait_for_state(app, job.id, JobState.SCHEDULED)


async def test_job_page_shows_steps_progress_and_wait(migrated: App, client: httpx.AsyncClient) -> None:
    """The job page lists each step with its state and result, a progress bar with its text, and what it waits for."""
    job = await _suspended(migrated)
    page = (await client.get(f"/jobs/{job.id}")).text
    steps = page.split('id="steps"', 1)[1].split("</table>", 1)[0]
    assert [row.split('"', 1)[0] for row in steps.split('data-step="')[1:]] == ["render", "email", "approval"]
    email = steps.split('data-step="email"', 1)[1].split("</tr>", 1)[0]
    assert "completed" in email and "&#34;sent&#34;" in email
    assert '<progress max="1" value="0.25" aria-label="25% done">' in page
    assert "waits for event &#39;go&#39; until" in steps
    waiting = page.split('id="waiting">', 1)[1].split("</dd>", 1)[0]
    assert waiting.startswith("event &#39;go&#39; until ") and "(timeout; step &#39;approval&#39;)" in waiting


async def test_job_page_escapes_step_results_and_progress_notes(migrated: App, client: httpx.AsyncClient) -> None:
    """Markup in a step's result and in the progress note is escaped, never rendered."""
    job = await _suspended(migrated)
    page = (await client.get(f"/jobs/{job.id}")).text
    assert MARKUP not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


async def test_job_page_json_twin_carries_steps_progress_and_waiting(migrated: App, client: httpx.AsyncClient) -> None:
    """The job page's JSON twin holds the steps with their runs and results, the progress and the wait."""
    job = await _suspended(migrated)
    data = (await client.get(f"/api/jobs/{job.id}")).json()
    steps = {s["name"]: s for s in data["steps"]}
    assert steps["email"]["runs"] == 2 and steps["email"]["result"] == "sent"
    assert steps["render"]["result"]["html"] == MARKUP
    assert data["job"]["progress"]["done"] == 1 and data["job"]["progress"]["total"] == 4
    assert data["job"]["waiting"]["kind"] == "event" and data["job"]["waiting"]["event"] == "go"
    assert "approval" in data["waiting"]


async def test_redaction_hook_covers_step_results(client_for: Callable[..., Any], migrated: App) -> None:
    """With a redact hook, a secret in a step's result appears neither on the job page nor in its JSON twin."""
    job = await _suspended(migrated)

    def redact(task: str, value: Any) -> Any:
        return {k: "***" if k == "secret" else v for k, v in value.items()} if isinstance(value, dict) else value

    async with client_for(redact=redact) as c:
        for path in (f"/jobs/{job.id}", f"/api/jobs/{job.id}"):
            response = await c.get(path)
            assert response.status_code == 200
            assert "hunter2" not in response.text


async def test_executing_progress_shows_on_the_jobs_list_and_overview(migrated: App, client: httpx.AsyncClient) -> None:
    """An executing job's progress shows on the jobs list and the overview, and suspended jobs are counted by kind."""
    release = anyio.Event()

    @migrated.task(name="web.copier")
    async def copier(context: JobContext) -> None:
        await context.progress(3, 10, note="copying")
        await release.wait()

    @migrated.task(name="web.sleeper")
    async def sleeper(context: JobContext) -> None:
        await context.sleep(3600)

    copying, slept = await copier.defer(), await sleeper.defer()

    async def reported() -> bool:
        job = await migrated.get_job(copying.id)
        return job.state is JobState.EXECUTING and job.progress is not None

    async with open_worker(migrated, **fast(durable_sleep_threshold=0.1)):
        await wait_for_state(migrated, slept.id, JobState.SCHEDULED)
        await wait_until(reported)
        listing = (await client.get("/jobs", params={"state": "executing"})).text
        overview = (await client.get("/")).text
        data = (await client.get("/api/overview")).json()
        release.set()
        await wait_for_state(migrated, copying.id, JobState.COMPLETED)
    assert '<progress max="1" value="0.3" aria-label="30% done">' in listing and "3/10 (30%) copying" in listing
    assert "1 in a durable sleep, 0 waiting for an event" in overview
    table = overview.split('id="progress"', 1)[1].split("</table>", 1)[0]
    assert f'href="/jobs/{copying.id}"' in table and "3/10 (30%) copying" in table
    durable = data["durable"]
    assert (durable["sleeping"], durable["waiting_for_events"], durable["reporting"]) == (1, 0, 1)
    assert [r["job_id"] for r in durable["progress"]] == [copying.id]
