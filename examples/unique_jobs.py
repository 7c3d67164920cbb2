"""Unique jobs: the database refuses a twin while one is queued or running, across processes.

NURSERY_WORKER_DSN=postgresql://postgres@127.0.0.1:5432/test python -m examples.unique_jobs
"""

from __future__ import annotations

import anyio

from nursery_worker import App
from nursery_worker.testing import drain

app = App(schema="example_unique")


@app.task(unique_key=True)  # the arguments are the key
async def reindex(table: str) -> None:
    """Reindexing twice at once is waste: a second request while one is queued returns the first."""


@app.task(
    unique_key=lambda args: f"user:{args['user_id']}",
    unique_states=["scheduled", "available", "executing", "retryable", "completed"],
)
async def send_welcome(user_id: int, campaign: str) -> None:
    """Once per user, ever (completed is in the scope): the key ignores the campaign argument."""


async def main() -> None:
    await app.migrate()
    first = await reindex.defer(table="orders")
    again = await reindex.defer(table="orders")
    print(f"reindex orders: job {first.id}, then job {again.id} duplicate={again.duplicate}")

    # Twenty producers racing: exactly one row.
    results = []

    async def produce() -> None:
        results.append(await reindex.defer(table="users"))

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(produce)
    print(f"20 concurrent defers of reindex users -> {len({j.id for j in results})} job")

    batch = await app.defer_many(
        [
            send_welcome.job(user_id=1, campaign="spring"),
            send_welcome.job(user_id=1, campaign="summer"),
            send_welcome.job(user_id=2, campaign="spring"),
        ]
    )
    print("defer_many:", [(job.id, job.duplicate) for job in batch])
    await drain(app)
    later = await send_welcome.defer(user_id=1, campaign="autumn")
    print(f"after it completed, welcome user 1 again -> job {later.id} duplicate={later.duplicate}")
    await app.aclose()


if __name__ == "__main__":
    anyio.run(main)
