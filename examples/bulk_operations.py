"""Bulk operations by filter: count first, then cancel, retry or delete in chunks, each chunk its own
short transaction, with a progress callback; one job deleted by id.

NURSERY_WORKER_DSN=postgresql://postgres@127.0.0.1:5432/test python -m examples.bulk_operations
"""

from __future__ import annotations

import anyio

from nursery_worker import App, JobFilter

app = App(schema="example_bulk_ops")


@app.task(queue="emails")
async def send(to: str) -> None:
    print("sending to", to)


async def main() -> None:
    await app.migrate()
    # Say the mail provider is down and 2500 emails are queued: no worker runs here, so they wait.
    await app.defer_many([send.job(to=f"user{i}@example.com") for i in range(2500)])

    emails = JobFilter(states="available", queue="emails")
    print("would cancel:", await app.count_jobs(emails))
    chunks: list[int] = []
    cancelled = await app.bulk_cancel(emails, chunk_size=1000, progress=chunks.append)
    print(f"cancelled {cancelled.changed} of {cancelled.matched} in chunks of {chunks}")

    # The provider is back: put the first 100 back in the queue (an id range narrows it).
    still_cancelled = JobFilter(states="cancelled", queue="emails")
    ids = [job.id for job in await app.list_jobs(state="cancelled", queue="emails", limit=10_000)]
    retried = await app.bulk_retry(JobFilter(states="cancelled", min_id=min(ids), max_id=min(ids) + 99))
    print(f"retried {retried.changed}; still cancelled: {await app.count_jobs(still_cancelled)}")

    # Clean up the rest, and one retried job by its id.
    deleted = await app.bulk_delete(still_cancelled)
    gone = await app.delete_job(min(ids))
    print(f"deleted {deleted.changed} cancelled job(s) and job {gone.id} ({gone.state.value})")
    await app.aclose()


if __name__ == "__main__":
    anyio.run(main)
