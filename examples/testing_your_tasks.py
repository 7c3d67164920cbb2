"""Testing your own tasks without sleeping: run_task, drain and isolated_schema from nursery_worker.testing.

NURSERY_WORKER_DSN=postgresql://postgres@127.0.0.1:5432/test python -m examples.testing_your_tasks
"""

from __future__ import annotations

import anyio

from nursery_worker import App, JobContext, Snooze
from nursery_worker.testing import drain, isolated_schema, make_context, run_task

app = App(schema="example_testing")


@app.task
async def add(a: int, b: int) -> int:
    return a + b


@app.task
async def wait_until_ready(context: JobContext) -> str:
    if context.attempt < 2 and not context.job.errors:
        raise Snooze(3600)
    return "ready"


async def main() -> None:
    # 1. Call the function directly, with a fake context when it declares one: no database.
    print("run_task(add) ->", await run_task(add, a=2, b=3))
    try:
        await run_task(wait_until_ready, job_context=make_context(wait_until_ready, attempt=1))
    except Snooze as snooze:
        print(f"run_task(wait_until_ready) raised Snooze({snooze.seconds:g})")
    # 2. A fresh schema for this test, dropped afterwards; drain runs what is due, in-process.
    async with isolated_schema(app):
        await add.defer(a=1, b=1)
        await wait_until_ready.defer()
        result = await drain(app)
        print("drain: completed", [job.result for job in result.completed], "snoozed", len(result.snoozed))
    await app.aclose()


if __name__ == "__main__":
    anyio.run(main)
