"""A task steers its own job: Snooze (later, no attempt used), Retry(after=...) and Discard; retry policies.

NURSERY_WORKER_DSN=postgresql://postgres@127.0.0.1:5432/test python -m examples.snooze_retry_discard
"""

from __future__ import annotations

import anyio

from nursery_worker import App, ConstantBackoff, Discard, JobContext, LinearBackoff, Retry, Snooze, open_worker

app = App(schema="example_steer")


@app.task
async def wait_for_export(context: JobContext, export_id: str) -> str:
    """Polls something that is not ready yet: snoozing does not use up attempts."""
    if not await _export_ready(context):
        raise Snooze(0.3)
    return f"export {export_id} downloaded"


_polls: dict[int, int] = {}


async def _export_ready(context: JobContext) -> bool:
    _polls[context.job_id] = _polls.get(context.job_id, 0) + 1
    return _polls[context.job_id] >= 3  # ready on the third look


@app.task(max_attempts=5, retry=LinearBackoff(base=0.1, step=0.1))
async def call_api(context: JobContext, endpoint: str) -> str:
    """Rate limited on the first attempt: it chooses when to retry, instead of its policy."""
    if context.attempt == 1:
        raise Retry(after=0.3, reason="429 Too Many Requests; Retry-After: 0.3")
    return f"{endpoint} answered on attempt {context.attempt}"


@app.task
async def charge(account: str) -> None:
    """Some failures are final: Discard ends the job now, with attempts left."""
    raise Discard(f"account {account} was closed")


async def main() -> None:
    await app.migrate()
    jobs = [
        await wait_for_export.defer(export_id="e-1"),
        await call_api.defer(endpoint="/v1/users"),
        await charge.defer(account="acme"),
        # A per-job policy, stored on the job: this one retries every 0.2 s.
        await call_api.configure(retry=ConstantBackoff(seconds=0.2)).defer(endpoint="/v1/orders"),
    ]
    async with open_worker(app, poll_interval=0.1, promote_interval=0.1) as worker:
        with anyio.fail_after(30):
            while not all([(await app.get_job(j.id)).state.is_terminal for j in jobs]):  # noqa: ASYNC110
                await anyio.sleep(0.1)
        stats = worker.stats()
    for job in [await app.get_job(j.id) for j in jobs]:
        note = f"result={job.result!r}" if job.result else f"error={job.errors[-1].type}: {job.errors[-1].message}"
        print(f"job {job.id} {job.task.rsplit('.', 1)[-1]}: {job.state} after {job.attempt} attempt(s), {note}")
    print(f"snoozed {stats.snoozed} time(s), retried {stats.retried}, discarded {stats.discarded}")
    await app.aclose()


if __name__ == "__main__":
    anyio.run(main)
