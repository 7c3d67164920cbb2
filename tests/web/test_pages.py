"""The dashboard's pages over HTTP on both engines and both backends: what each shows, the JSON
twins, the redaction hook, and the 4xx answers to bad input."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from nursery_worker import App
from nursery_worker.testing import drain

pytestmark = pytest.mark.anyio


async def _failed_job(app: App) -> int:
    """Defer a job that fails for good, run it, and return its id."""

    @app.task(max_attempts=1, name="web.explode")
    async def explode(secret: str, n: int = 0) -> None:
        raise RuntimeError("boom from the task")

    job = await explode.defer(secret="hunter2-password", n=1)
    await drain(app, queues="default")
    return job.id


async def test_overview_lists_queues_with_links_to_filtered_lists(migrated: App, client: httpx.AsyncClient) -> None:
    """A queue with an available job appears on the overview with a link to its filtered job list."""

    @migrated.task(queue="mail", name="web.send")
    async def send() -> None: ...

    await send.defer()
    response = await client.get("/")
    assert response.status_code == 200
    assert "/jobs?queue=mail&amp;state=available" in response.text


async def test_overview_shows_recent_failures_and_attention(migrated: App, client: httpx.AsyncClient) -> None:
    """A discarded job appears among the overview's recent failures, with its error."""
    job_id = await _failed_job(migrated)
    response = await client.get("/")
    assert f'href="/jobs/{job_id}"' in response.text
    assert "boom from the task" in response.text


async def test_paused_queue_is_in_the_attention_panel(migrated: App, client: httpx.AsyncClient) -> None:
    """A paused queue is listed in the overview's attention panel."""
    await migrated.pause_queue("slow")
    data = (await client.get("/api/overview")).json()
    assert [q["name"] for q in data["attention"]["paused"]] == ["slow"]


async def test_overview_shows_the_database_health_line(migrated: App, client: httpx.AsyncClient, engine: str) -> None:
    """The overview carries the database line of ``status``: PostgreSQL's dead tuples, or SQLite's WAL size."""
    response = await client.get("/")
    assert response.status_code == 200
    line = response.text.split('id="database">', 1)[1].split("</p>", 1)[0]
    assert line.startswith("database: ")
    assert ("jobs dead tuples" if engine == "postgres" else "write-ahead log") in line
    data = (await client.get("/api/overview")).json()
    # Another request, another moment: other clients' transactions may have come or gone meanwhile.
    assert data["database"].startswith("database: ") and isinstance(data["attention"]["database"], list)


async def test_jobs_page_filters_by_state_and_task(migrated: App, client: httpx.AsyncClient) -> None:
    """The jobs list filters by state and task from the URL."""
    failed = await _failed_job(migrated)

    @migrated.task(name="web.other")
    async def other() -> None: ...

    await other.defer()
    data = (await client.get("/api/jobs", params={"state": "discarded", "task": "web.explode"})).json()
    assert [j["id"] for j in data["jobs"]] == [failed]


async def test_jobs_page_args_text_filter(migrated: App, client: httpx.AsyncClient) -> None:
    """The args text filter matches a substring of the args' JSON."""

    @migrated.task(name="web.greet")
    async def greet(who: str) -> None: ...

    wanted = await greet.defer(who="zebra")
    await greet.defer(who="lion")
    data = (await client.get("/api/jobs", params={"args": "zeb"})).json()
    assert [j["id"] for j in data["jobs"]] == [wanted.id]


async def test_jobs_page_cursor_pagination(migrated: App, client: httpx.AsyncClient) -> None:
    """The cursor pages through the jobs newest first without repeats or gaps."""

    @migrated.task(name="web.count")
    async def count(i: int) -> None: ...

    ids = [(await count.defer(i=i)).id for i in range(5)]
    first = (await client.get("/api/jobs", params={"limit": 2})).json()
    second = (await client.get("/api/jobs", params={"limit": 2, "cursor": first["next_cursor"]})).json()
    third = (await client.get("/api/jobs", params={"limit": 2, "cursor": second["next_cursor"]})).json()
    seen = [j["id"] for page in (first, second, third) for j in page["jobs"]]
    assert seen == sorted(ids, reverse=True)
    assert third["next_cursor"] is None


async def test_job_page_shows_timeline_traceback_and_why(migrated: App, client: httpx.AsyncClient) -> None:
    """A failed job's page shows its attempt's error and traceback and why it is not running."""
    job_id = await _failed_job(migrated)
    response = await client.get(f"/jobs/{job_id}")
    assert response.status_code == 200
    assert "attempt 1 failed" in response.text and "Traceback" in response.text
    assert 'data-reason="not_waiting"' in response.text


async def test_job_page_explains_a_paused_queue(migrated: App, client: httpx.AsyncClient) -> None:
    """An available job on a paused queue with no worker is explained by both reasons."""

    @migrated.task(queue="held", name="web.held")
    async def held() -> None: ...

    job = await held.defer()
    await migrated.pause_queue("held")
    response = await client.get(f"/jobs/{job.id}")
    assert 'data-reason="queue_paused"' in response.text
    assert 'data-reason="no_worker"' in response.text


async def test_job_page_shows_dependencies_and_dependants(migrated: App, client: httpx.AsyncClient) -> None:
    """A job's page links its dependencies, and theirs link it back as a dependant."""

    @migrated.task(name="web.step")
    async def step() -> None: ...

    first = await step.defer()
    second = await step.configure(depends_on=[first]).defer()
    page = await client.get(f"/jobs/{second.id}")
    assert 'data-reason="dependencies"' in page.text and f'href="/jobs/{first.id}"' in page.text
    back = await client.get(f"/jobs/{first.id}")
    assert f'href="/jobs/{second.id}"' in back.text


async def test_queues_page_and_queue_page(migrated: App, client: httpx.AsyncClient) -> None:
    """The queues page lists a queue and its page shows its depth and limits."""

    @migrated.task(queue="reports", name="web.report")
    async def report() -> None: ...

    await report.defer()
    await migrated.set_queue_limits("reports", max_concurrency=3)
    listing = await client.get("/queues")
    assert 'href="/queues/reports"' in listing.text
    page = await client.get("/queues/reports")
    assert page.status_code == 200 and "0 running of 3" in page.text


async def test_redacted_arg_never_reaches_the_html(client_for: Callable[..., Any], migrated: App) -> None:
    """With a redact hook, a secret arg appears on no page and in no JSON answer."""
    job_id = await _failed_job(migrated)

    def redact(task: str, value: Any) -> Any:
        return {k: "***" if k == "secret" else v for k, v in value.items()} if isinstance(value, dict) else value

    async with client_for(redact=redact) as c:
        for path in ("/", "/jobs", f"/jobs/{job_id}", "/api/jobs", f"/api/jobs/{job_id}", "/api/overview"):
            response = await c.get(path)
            assert response.status_code == 200
            assert "hunter2" not in response.text


async def test_dsn_password_never_appears(engine: str, migrated: App, client: httpx.AsyncClient) -> None:
    """No page shows the database's DSN (so no password either)."""
    response = await client.get("/")
    assert "postgresql://" not in response.text and "sqlite:///" not in response.text


@pytest.mark.parametrize(
    ("path", "status", "words"),
    [
        ("/jobs/999999", 404, "999999"),
        ("/jobs?state=bogus", 400, "bogus"),
        ("/jobs?cursor=abc", 400, "cursor"),
        ("/jobs?priority=high", 400, "priority"),
        ("/jobs?after=yesterday", 400, "after"),
        ("/jobs/bulk?action=explode", 400, "explode"),
        ("/api/jobs?state=bogus", 400, "bogus"),
        ("/api/jobs/999999", 404, "999999"),
    ],
)
async def test_bad_input_is_a_clear_4xx(client: httpx.AsyncClient, path: str, status: int, words: str) -> None:
    """Bad input answers a 4xx naming the bad value, never a traceback."""
    response = await client.get(path)
    assert response.status_code == status
    assert words in response.text and "Traceback" not in response.text
