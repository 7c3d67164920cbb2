"""The dashboard's actions over HTTP on both engines and both backends: each does what it says
behind the write checks; read-only mode, another origin, a missing CSRF token or credential are
refused with 403 and change nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from nursery_worker import App, JobNotFound, JobState
from nursery_worker.testing import drain

from .conftest import BASE, TOKEN

pytestmark = pytest.mark.anyio


async def _failed_job(app: App) -> int:
    @app.task(max_attempts=1, name="web.fail")
    async def fail() -> None:
        raise RuntimeError("nope")

    job = await fail.defer()
    await drain(app, queues="default")
    return job.id


async def _waiting_job(app: App, **options: Any) -> int:
    @app.task(name="web.wait")
    async def wait() -> None: ...

    return (await wait.configure(**options).defer()).id


async def test_retry_makes_a_discarded_job_available(migrated: App, writer: httpx.AsyncClient) -> None:
    """POST retry on a discarded job makes it available again."""
    job_id = await _failed_job(migrated)
    response = await writer.post(f"/api/jobs/{job_id}/retry")
    assert response.status_code == 200, response.text
    assert (await migrated.get_job(job_id)).state is JobState.AVAILABLE


async def test_cancel_cancels_a_waiting_job(migrated: App, writer: httpx.AsyncClient) -> None:
    """POST cancel on an available job cancels it."""
    job_id = await _waiting_job(migrated)
    response = await writer.post(f"/api/jobs/{job_id}/cancel")
    assert response.status_code == 200
    assert (await migrated.get_job(job_id)).state is JobState.CANCELLED


async def test_delete_deletes_a_job(migrated: App, writer: httpx.AsyncClient) -> None:
    """POST delete removes the job."""
    job_id = await _waiting_job(migrated)
    assert (await writer.post(f"/api/jobs/{job_id}/delete")).status_code == 200
    with pytest.raises(JobNotFound):
        await migrated.get_job(job_id)


async def test_run_now_makes_a_scheduled_job_available(migrated: App, writer: httpx.AsyncClient) -> None:
    """POST run-now on a job scheduled an hour ahead makes it available now."""
    job_id = await _waiting_job(migrated, delay=3600)
    assert (await writer.post(f"/api/jobs/{job_id}/run-now")).status_code == 200
    assert (await migrated.get_job(job_id)).state is JobState.AVAILABLE


async def test_run_now_of_an_available_job_is_a_409(migrated: App, writer: httpx.AsyncClient) -> None:
    """Run now on an available job answers 409 saying it is already available."""
    job_id = await _waiting_job(migrated)
    response = await writer.post(f"/api/jobs/{job_id}/run-now")
    assert response.status_code == 409 and "already available" in response.json()["error"]


async def test_action_on_unknown_job_is_a_404(writer: httpx.AsyncClient) -> None:
    """An action on an id that does not exist answers 404."""
    assert (await writer.post("/api/jobs/987654/retry")).status_code == 404


async def test_pause_resume_and_limits(migrated: App, writer: httpx.AsyncClient) -> None:
    """The queue actions pause, resume and set its limits."""
    await _waiting_job(migrated)
    assert (await writer.post("/api/queues/default/pause")).status_code == 200
    assert [q.paused for q in await migrated.list_queues() if q.name == "default"] == [True]
    assert (await writer.post("/api/queues/default/resume")).status_code == 200
    response = await writer.post("/api/queues/default/limits", json={"max_concurrency": 4, "rate_limit": "10/1s"})
    assert response.status_code == 200, response.text
    (info,) = [q for q in await migrated.list_queues() if q.name == "default"]
    assert (info.paused, info.max_concurrency) == (False, 4)


async def test_bad_limit_is_a_400_and_changes_nothing(migrated: App, writer: httpx.AsyncClient) -> None:
    """A malformed rate limit answers 400 and leaves the queue's limits alone."""
    await _waiting_job(migrated)
    response = await writer.post("/api/queues/default/limits", json={"rate_limit": "lots"})
    assert response.status_code == 400 and "lots" in response.text
    (info,) = [q for q in await migrated.list_queues() if q.name == "default"]
    assert info.rate_limit is None


async def test_bulk_preview_then_chunked_bulk_cancel(migrated: App, writer: httpx.AsyncClient) -> None:
    """The bulk preview counts the filter's jobs, and the bulk cancel cancels exactly them."""
    ids = [await _waiting_job(migrated) for _ in range(3)]
    preview = (await writer.get("/api/jobs/bulk", params={"action": "cancel", "state": "available"})).json()
    assert preview["count"] == 3
    response = await writer.post("/api/jobs/bulk/cancel", json={"state": "available", "task": "web.wait"})
    assert response.status_code == 200 and response.json()["changed"] == 3
    assert {(await migrated.get_job(i)).state for i in ids} == {JobState.CANCELLED}


async def test_bulk_with_args_filter_is_refused(migrated: App, writer: httpx.AsyncClient) -> None:
    """A bulk action over a filter it cannot take (args text) answers 400 and changes nothing."""
    job_id = await _waiting_job(migrated)
    response = await writer.post("/api/jobs/bulk/cancel", json={"args": "x"})
    assert response.status_code == 400
    assert (await migrated.get_job(job_id)).state is JobState.AVAILABLE


ACTIONS = [
    "/jobs/{id}/retry",
    "/jobs/{id}/cancel",
    "/jobs/{id}/delete",
    "/jobs/{id}/run-now",
    "/queues/default/pause",
    "/queues/default/resume",
    "/queues/default/limits",
    "/jobs/bulk/cancel",
    "/jobs/bulk/retry",
    "/jobs/bulk/delete",
]


async def _snapshot(app: App) -> tuple[Any, ...]:
    jobs = await app.list_jobs(limit=100)
    queues = await app.list_queues()
    return tuple((j.id, j.state) for j in jobs), tuple((q.name, q.paused, q.max_concurrency) for q in queues)


async def test_read_only_refuses_every_action_and_changes_nothing(migrated: App, client: httpx.AsyncClient) -> None:
    """In read-only mode every action, form or API, answers 403 and the database is unchanged."""
    failed = await _failed_job(migrated)
    await _waiting_job(migrated, delay=3600)
    before = await _snapshot(migrated)
    for template in ACTIONS:
        path = template.format(id=failed)
        for url in (path, "/api" + path):
            response = await client.post(url, headers={"origin": BASE, "authorization": f"Bearer {TOKEN}"})
            assert response.status_code == 403, url
            assert "read-only" in response.text
    assert await _snapshot(migrated) == before


async def test_cross_origin_post_is_refused(migrated: App, client_for: Callable[..., Any]) -> None:
    """A POST whose Origin is another site is refused with 403 and changes nothing, even with the token."""
    job_id = await _failed_job(migrated)
    async with client_for(read_only=False, token=TOKEN) as c:
        response = await c.post(
            f"/jobs/{job_id}/retry", headers={"origin": "https://evil.example", "authorization": f"Bearer {TOKEN}"}
        )
    assert response.status_code == 403 and "origin" in response.text
    assert (await migrated.get_job(job_id)).state is JobState.DISCARDED


async def test_form_post_without_csrf_token_is_refused(migrated: App, client_for: Callable[..., Any]) -> None:
    """A same-origin form post with the login cookie but no CSRF token is refused."""
    job_id = await _failed_job(migrated)
    async with client_for(read_only=False, token=TOKEN) as c:
        c.cookies.set("nw_token", TOKEN)
        response = await c.post(f"/jobs/{job_id}/retry", data={}, headers={"origin": BASE})
    assert response.status_code == 403 and "CSRF" in response.text
    assert (await migrated.get_job(job_id)).state is JobState.DISCARDED


async def test_write_without_credential_is_refused(migrated: App, client_for: Callable[..., Any]) -> None:
    """With writes on, a POST without the token is refused."""
    job_id = await _failed_job(migrated)
    async with client_for(read_only=False, token=TOKEN) as c:
        response = await c.post(f"/api/jobs/{job_id}/retry", headers={"authorization": "Bearer wrong-token-xyz"})
    assert response.status_code == 403
    assert (await migrated.get_job(job_id)).state is JobState.DISCARDED


async def test_browser_flow_login_then_form_retry(migrated: App, client_for: Callable[..., Any]) -> None:
    """A browser logs in with the token, then retries through the page's form with its CSRF token."""
    job_id = await _failed_job(migrated)
    async with client_for(read_only=False, token=TOKEN) as c:
        page = await c.get("/login")
        csrf = c.cookies["nw_csrf"]
        assert csrf in page.text
        login = await c.post("/login", data={"csrf_token": csrf, "token": TOKEN}, headers={"origin": BASE})
        assert login.status_code == 303
        job_page = await c.get(f"/jobs/{job_id}")
        assert f"/jobs/{job_id}/retry" in job_page.text
        response = await c.post(
            f"/jobs/{job_id}/retry",
            data={"csrf_token": csrf},
            headers={"origin": BASE, "referer": f"{BASE}/jobs/{job_id}"},
        )
    assert response.status_code == 303 and response.headers["location"].startswith(f"/jobs/{job_id}?flash=")
    assert (await migrated.get_job(job_id)).state is JobState.AVAILABLE


async def test_authorize_hook_decides_per_action(migrated: App, client_for: Callable[..., Any]) -> None:
    """An authorize hook that allows retries only lets a retry through and refuses a delete."""
    job_id = await _failed_job(migrated)
    asked: list[str] = []

    def authorize(request: Any, action: str) -> bool:
        asked.append(action)
        return action == "job.retry"

    async with client_for(read_only=False, authorize=authorize) as c:
        c.headers["authorization"] = "Bearer from-the-host-app"
        assert (await c.post(f"/api/jobs/{job_id}/delete")).status_code == 403
        assert (await c.post(f"/api/jobs/{job_id}/retry")).status_code == 200
    assert asked == ["job.delete", "job.retry"]


async def test_get_never_changes_anything(migrated: App, writer: httpx.AsyncClient) -> None:
    """A GET of an action's URL is not allowed (405) and changes nothing."""
    job_id = await _failed_job(migrated)
    assert (await writer.get(f"/jobs/{job_id}/retry")).status_code in (404, 405)
    assert (await migrated.get_job(job_id)).state is JobState.DISCARDED


async def test_each_action_writes_an_audit_row(migrated: App, writer: httpx.AsyncClient) -> None:
    """A retry through the dashboard is recorded in the audit table with its action, target and count."""
    job_id = await _failed_job(migrated)
    assert (await writer.post(f"/api/jobs/{job_id}/retry")).status_code == 200
    from nursery_worker._admin import Admin

    (entry,) = await Admin(migrated).list_audit(limit=5)
    assert (entry.action, entry.count) == ("job.retry", 1)
    assert f"job {job_id}" in str(entry.target)


async def test_bulk_from_htmx_reports_progress_by_ticket(migrated: App, writer: httpx.AsyncClient) -> None:
    """A bulk post from the confirmation page (htmx) answers a fragment, and its ticket's progress counts the jobs."""
    for _ in range(3):
        await _waiting_job(migrated)
    preview = await writer.get("/jobs/bulk", params={"action": "cancel", "state": "available"})
    assert 'name="ticket"' in preview.text and "hx-post" in preview.text
    response = await writer.post(
        "/jobs/bulk/cancel", data={"state": "available", "ticket": "t-123"}, headers={"hx-request": "true"}
    )
    assert response.status_code == 200 and response.text.startswith('<p class="flash"')
    assert "cancelled 3 of 3" in response.text
    progress = await writer.get("/api/jobs/bulk/progress", params={"ticket": "t-123"})
    assert progress.json() == {"ticket": "t-123", "examined": 3}


async def test_unknown_progress_ticket_is_a_404(client: httpx.AsyncClient) -> None:
    """The progress of a ticket that never started answers 404."""
    assert (await client.get("/jobs/bulk/progress", params={"ticket": "nope"})).status_code == 404
