"""Pausing a queue: its jobs wait (and can still be deferred) until it is resumed; the rest go on.

NURSERY_WORKER_DSN=postgresql://postgres@127.0.0.1:5432/test python -m examples.queue_pause
"""

from __future__ import annotations

import anyio

from nursery_worker import App, open_worker

app = App(schema="example_pause")
done: list[str] = []


@app.task(queue="emails")
async def send(to: str) -> None:
    done.append(f"email to {to}")


@app.task(queue="reports")
async def report(name: str) -> None:
    done.append(f"report {name}")


async def main() -> None:
    await app.migrate()
    await app.pause_queue("emails")  # say, the mail provider is down
    async with open_worker(app, queues=["emails", "reports"]):
        await send.defer(to="ada@example.com")
        job = await report.defer(name="daily")
        await app.wait_for(job.id, timeout=30)
        print("while paused:", done)
        print("queues:", [(q.name, "paused" if q.paused else "running") for q in await app.list_queues()])
        await app.resume_queue("emails")  # the workers are notified and fetch at once
        with anyio.fail_after(30):
            while len(done) < 2:  # noqa: ASYNC110 - waiting for the other task's side effect
                await anyio.sleep(0.05)
        print("after resume:", done)
    await app.aclose()


if __name__ == "__main__":
    anyio.run(main)
