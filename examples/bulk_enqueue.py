"""Enqueue thousands of jobs in one round trip with ``defer_many``, then work them off.

NURSERY_WORKER_DSN=postgresql://postgres@127.0.0.1:5432/test python -m examples.bulk_enqueue
"""

from __future__ import annotations

import time

import anyio

from nursery_worker import App, open_worker

app = App(schema="example_bulk")
done = 0


@app.task(queue="bulk")
async def index_document(doc_id: int) -> None:
    global done
    done += 1


async def main() -> None:
    await app.migrate()
    started = time.perf_counter()
    jobs = await app.defer_many([index_document.job(doc_id=i) for i in range(10_000)])
    print(f"enqueued {len(jobs)} jobs in {time.perf_counter() - started:.3f}s (one statement)")
    started = time.perf_counter()
    async with open_worker(app, queues=["bulk"], concurrency=50, once=True) as worker:
        await worker.wait_stopped()
    print(f"worked {done} jobs in {time.perf_counter() - started:.2f}s")
    await app.aclose()


if __name__ == "__main__":
    anyio.run(main)
