"""Cancelling jobs: a waiting job at once, a running one through its cancel scope, a finished one not at all.

NURSERY_WORKER_DSN=postgresql://postgres@127.0.0.1:5432/test python -m examples.cancel
"""

from __future__ import annotations

import anyio

from nursery_worker import App, JobFailed, open_worker

app = App(schema="example_cancel")


@app.task
async def export_report(pages: int) -> int:
    """A long job: cancelling it cancels its scope at its next await; it ends cancelled, never retried."""
    for _page in range(pages):
        await anyio.sleep(0.1)
    return pages


async def main() -> None:
    await app.migrate()
    waiting = await export_report.configure(delay=3600).defer(pages=1)
    print((await app.cancel(waiting.id)).message)

    async with open_worker(app, poll_interval=0.2):
        running = await export_report.defer(pages=10_000)
        with anyio.fail_after(30):
            while (await app.get_job(running.id)).state != "executing":  # noqa: ASYNC110 - polling the DB is the point
                await anyio.sleep(0.05)
        print((await app.cancel(running.id)).message)
        try:
            await app.wait_for(running.id, timeout=30)
        except JobFailed as exc:
            print(f"wait_for: {exc}")
    print((await app.cancel(running.id)).message)
    await app.aclose()


if __name__ == "__main__":
    anyio.run(main)
