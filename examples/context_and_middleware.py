"""JobContext (a task that declares it learns about its run) and middleware around every job.

NURSERY_WORKER_DSN=postgresql://postgres@127.0.0.1:5432/test python -m examples.context_and_middleware
"""

from __future__ import annotations

import time
from typing import Any

import anyio

from nursery_worker import App, CallNext, JobContext, open_worker

app = App(schema="example_middleware")
log: list[str] = []


@app.middleware
async def timing(context: JobContext, call_next: CallNext) -> Any:
    """Around: runs before and after the job, sees its result and its exception."""
    start = time.perf_counter()
    try:
        return await call_next()
    finally:
        log.append(f"timing: job {context.job_id} took {time.perf_counter() - start:.2f}s")


@app.before_job
async def announce(context: JobContext) -> None:
    log.append(f"before: {context.task.rsplit('.', 1)[-1]} attempt {context.attempt}/{context.max_attempts}")


@app.after_job
async def audit(context: JobContext, result: Any, error: BaseException | None) -> None:
    log.append(f"after: result={result!r} error={error!r}")


@app.task(timeout=5)
async def greet(context: JobContext, name: str) -> str:
    """The context is not an argument of the job: defer(name=...) only (first, type checkers leave it out too)."""
    assert context.deadline is not None
    return f"hello {name} from job {context.job_id} on queue {context.queue}"


async def main() -> None:
    await app.migrate()
    async with open_worker(app):
        job = await greet.defer(name="ada")
        print((await app.wait_for(job.id, timeout=30)).result)
    print("\n".join(log))
    await app.aclose()


if __name__ == "__main__":
    anyio.run(main)
