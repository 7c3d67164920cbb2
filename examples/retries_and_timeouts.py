"""Retries with backoff, attempt budgets and timeouts, and what the job records about each failure.

NURSERY_WORKER_DSN=postgresql://postgres@127.0.0.1:5432/test python -m examples.retries_and_timeouts
"""

from __future__ import annotations

import uuid

import anyio

from nursery_worker import App, ExponentialBackoff, open_worker

app = App(schema="example_retries")
calls: dict[str, int] = {}


@app.task(max_attempts=3, retry=ExponentialBackoff(base=0.2, max_delay=1))
async def flaky(key: str) -> None:
    """Fails twice, then succeeds: each failure is recorded and retried after a backoff."""
    calls[key] = calls.get(key, 0) + 1
    if calls[key] < 3:
        raise ConnectionError(f"upstream unavailable (call {calls[key]})")


@app.task(timeout=0.5, max_attempts=1)
async def too_slow() -> None:
    """Its timeout is its cancel scope's deadline: cancelled after 0.5 s, recorded, not retried."""
    await anyio.sleep(60)


async def main() -> None:
    await app.migrate()
    job_a = await flaky.defer(key=uuid.uuid4().hex)
    job_b = await too_slow.defer()
    async with open_worker(app, promote_interval=0.1):
        with anyio.fail_after(30):
            # Polling the database is the point here: wait until both jobs reached a final state.
            while not all([(await app.get_job(j.id)).state.is_terminal for j in (job_a, job_b)]):  # noqa: ASYNC110
                await anyio.sleep(0.1)
    for job in (await app.get_job(job_a.id), await app.get_job(job_b.id)):
        print(f"job {job.id} {job.task}: {job.state} after {job.attempt} attempt(s)")
        for error in job.errors:
            print(f"   attempt {error.attempt}: {error.type}: {error.message}")
    await app.aclose()


if __name__ == "__main__":
    anyio.run(main)
