"""examples/fastapi_app.py driven through its ASGI app in-process (lifespan included), on both
engines and both event loops."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager
from examples import fastapi_app

from nursery_worker.testing import drain


@pytest.fixture
async def client(engine_dsn: str, engine_schema: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the example's app, its lifespan running, its jobs on the test's database."""
    fastapi_app.jobs.configure_database(dsn=engine_dsn, schema=engine_schema)
    async with LifespanManager(fastapi_app.api, startup_timeout=60, shutdown_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
            yield http


@pytest.mark.anyio
async def test_job_enqueued_by_a_handler_is_run_by_the_lifespan_worker(client: httpx.AsyncClient) -> None:
    """A signup's welcome job, enqueued by the handler, completes on the worker the lifespan runs."""
    created = await client.post("/signups", params={"email": "ada@example.com"})
    assert created.status_code == 202
    status = (await client.get(f"/jobs/{created.json()['job_id']}", params={"wait": 30})).json()
    assert status["state"] == "completed"
    assert status["result"] == "welcome mail sent to ada@example.com"


@pytest.mark.anyio
async def test_without_the_embedded_worker_jobs_wait_for_a_separate_worker(
    monkeypatch: pytest.MonkeyPatch, engine_dsn: str, engine_schema: str
) -> None:
    """With NURSERY_WORKER_EMBEDDED=0 the web app only enqueues; a worker of its own runs the job."""
    monkeypatch.setenv("NURSERY_WORKER_EMBEDDED", "0")
    fastapi_app.jobs.configure_database(dsn=engine_dsn, schema=engine_schema)
    async with LifespanManager(fastapi_app.api, startup_timeout=60, shutdown_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
            job_id = (await http.post("/signups", params={"email": "bob@example.com"})).json()["job_id"]
            assert (await http.get(f"/jobs/{job_id}")).json()["state"] == "available"
            result = await drain(fastapi_app.jobs)
            assert [job.id for job in result.completed] == [job_id]
            assert (await http.get(f"/jobs/{job_id}")).json()["state"] == "completed"


@pytest.mark.anyio
async def test_unknown_job_is_a_404(client: httpx.AsyncClient) -> None:
    """Asking for a job that does not exist answers 404, naming the id."""
    response = await client.get("/jobs/999999")
    assert response.status_code == 404
    assert "999999" in response.json()["detail"]
