"""Run a worker inside your own program, on trio, as a child of your task tree.

``open_worker`` is an async context manager: the worker runs while the block runs, and leaving the
block stops it gracefully (running jobs finish or are handed back to the queue). Lifecycle hooks run
while the worker starts and stops.

    NURSERY_WORKER_DSN=postgresql://postgres@127.0.0.1:5432/test python -m examples.embedded_worker
"""

from __future__ import annotations

import trio

from nursery_worker import App, open_worker

app = App(schema="example_embedded")
resources: dict[str, object] = {}


@app.on_startup
async def connect_services() -> None:
    resources["http"] = "a shared client, opened once per worker"


@app.on_shutdown
async def close_services() -> None:
    resources.clear()


@app.task
async def fetch_page(url: str) -> None:
    await trio.sleep(0.05)  # stands in for an HTTP request made with resources["http"]
    print(f"fetched {url}")


async def main() -> None:
    await app.migrate()
    await app.defer_many([fetch_page.job(url=f"https://example.com/{i}") for i in range(5)])
    async with open_worker(app, concurrency=5, once=True) as worker:
        await worker.wait_stopped()  # once=True: stops by itself when the queue is empty
    print(worker.stats())
    await app.aclose()


if __name__ == "__main__":
    trio.run(main)
