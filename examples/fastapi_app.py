"""FastAPI (or any Starlette app): enqueue from request handlers, work the jobs in the lifespan.

The lifespan owns the worker: ``open_worker`` opens its task group in the lifespan's task, so the
worker starts before the first request is served and stops gracefully (running jobs finish or are
handed back) when the server shuts down. In production, run the web processes without it
(``NURSERY_WORKER_EMBEDDED=0``) and the workers as their own service (``nursery-worker run``); see
docs/integrations/fastapi.md for why.

    uvicorn examples.fastapi_app:api                     # serve it (uvicorn is not a dependency)
    python -m examples.fastapi_app                       # or: one request in-process, and its job

The jobs live in ``$NURSERY_WORKER_DSN`` (PostgreSQL), or in the embedded engine's SQLite file
without it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
from fastapi import FastAPI, HTTPException

from nursery_worker import App, JobFailed, JobNotFound, open_worker

jobs = App(schema="example_fastapi")


@jobs.task(queue="emails", max_attempts=3)
async def send_welcome(email: str) -> str:
    await anyio.lowlevel.checkpoint()  # stands in for the call to the mail service
    return f"welcome mail sent to {email}"


def embedded_worker_enabled() -> bool:
    """Whether this web process also works jobs (``NURSERY_WORKER_EMBEDDED=0`` turns it off)."""
    return os.environ.get("NURSERY_WORKER_EMBEDDED", "1") != "0"


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    await jobs.migrate()  # once per deploy in production (`nursery-worker migrate`); harmless here
    try:
        if embedded_worker_enabled():
            # The worker's task group belongs to the lifespan task: it is running while the app
            # serves, and leaving the block (server shutdown) stops it gracefully.
            async with open_worker(jobs, queues=["emails"], concurrency=10, shutdown_timeout=10):
                yield
        else:
            yield
    finally:
        await jobs.aclose()


api = FastAPI(lifespan=lifespan)


@api.post("/signups", status_code=202)
async def sign_up(email: str) -> dict[str, Any]:
    """Record a signup and enqueue its welcome mail; the response does not wait for the mail."""
    job = await send_welcome.defer(email=email)
    return {"job_id": job.id}


@api.get("/jobs/{job_id}")
async def job_status(job_id: int, wait: float = 0.0) -> dict[str, Any]:
    """A job's state and result; ``?wait=SECONDS`` waits for it to finish first."""
    try:
        job = await jobs.wait_for(job_id, timeout=wait, poll_interval=0.05) if wait > 0 else await jobs.get_job(job_id)
    except JobNotFound:
        raise HTTPException(status_code=404, detail=f"no job {job_id}") from None
    except JobFailed as exc:
        job = exc.job
    except TimeoutError:
        job = await jobs.get_job(job_id)
    return {"job_id": job.id, "state": job.state.value, "result": job.result}


async def main() -> None:
    import httpx
    from asgi_lifespan import LifespanManager

    async with LifespanManager(api, startup_timeout=60, shutdown_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            created = (await client.post("/signups", params={"email": "ada@example.com"})).json()
            status = (await client.get(f"/jobs/{created['job_id']}", params={"wait": 30})).json()
    print(f"job {status['job_id']} {status['state']}: {status['result']}")


if __name__ == "__main__":
    anyio.run(main)
