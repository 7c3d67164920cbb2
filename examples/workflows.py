"""Workflows: jobs that wait for other jobs. A whole graph goes in with one defer_many call; a job
runs once every job it depends on completed, and is cancelled (naming the culprit) if one fails.

NURSERY_WORKER_DSN=postgresql://postgres@127.0.0.1:5432/test python -m examples.workflows
"""

from __future__ import annotations

import anyio

from nursery_worker import App, Discard, JobFailed, open_worker

app = App(schema="example_workflows")
log: list[str] = []


@app.task
async def fetch(source: str) -> None:
    await anyio.sleep(0.05)
    log.append(f"fetched {source}")


@app.task
async def merge(name: str) -> None:
    log.append(f"merged {name}")


@app.task
async def publish(name: str) -> None:
    if name == "broken":
        raise Discard("nothing to publish")
    log.append(f"published {name}")


async def main() -> None:
    await app.migrate()
    # fetch a, fetch b -> merge -> publish: one call, in any order; the jobs wait as 'pending'.
    a, b = fetch.job(source="a"), fetch.job(source="b")
    m = merge.job(name="report", depends_on=[a, b])
    p = publish.job(name="report", depends_on=[m])
    # A failing step cancels what depends on it: notify never runs.
    broken = publish.job(name="broken")
    notify = merge.job(name="notify", depends_on=[broken])
    jobs = await app.defer_many([p, m, a, b, broken, notify])
    print("states at enqueue:", [j.state.value for j in jobs])
    async with open_worker(app, concurrency=4):
        await app.wait_for(jobs[0].id, timeout=30)  # publish report: the last of its chain
        try:
            await app.wait_for(jobs[-1].id, timeout=30)
        except JobFailed as exc:  # notify ended cancelled, not completed
            cancelled = exc.job
    print("order:", log)
    print("notify:", cancelled.state.value, "-", cancelled.errors[-1].message)
    await app.aclose()


if __name__ == "__main__":
    anyio.run(main)
