"""An outcome the database refuses to store never stalls a worker, the same on every engine.

The refusal is injected with a trigger that refuses a result holding ``"poison"``: on PostgreSQL
with the SQLSTATE of the real jsonb size limit (54000, which psycopg files under
OperationalError, next to a dropped connection), on SQLite with a constraint error. One test on
PostgreSQL uses a real result over jsonb's 256 MB limit.
"""

from __future__ import annotations

import uuid

import anyio
import pytest

from nursery_worker import App, JobState, open_worker

from ..integration.helpers import fast, wait_for_state, wait_until
from .conftest import raw_execute

pytestmark = pytest.mark.anyio

_PG_FUNCTION = """
CREATE FUNCTION {s}.refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.result IS NOT NULL AND NEW.result::text LIKE '%%poison%%' THEN
        RAISE EXCEPTION 'string too long to represent as jsonb string' USING ERRCODE = 'program_limit_exceeded';
    END IF;
    RETURN NEW;
END $$
"""
_PG_TRIGGER = """
CREATE TRIGGER refuse_poison BEFORE UPDATE ON {s}.jobs FOR EACH ROW EXECUTE FUNCTION {s}.refuse_poison()
"""
_SQLITE_TRIGGER = """
CREATE TRIGGER {p}refuse_poison BEFORE UPDATE OF result ON {p}jobs
WHEN NEW.result LIKE '%poison%'
BEGIN SELECT RAISE(ABORT, 'poison result refused'); END
"""


def _refuse_poison(app: App) -> None:
    raw_execute(app, _PG_FUNCTION, _SQLITE_TRIGGER)
    raw_execute(app, _PG_TRIGGER, "SELECT 1")


async def test_a_refused_result_fails_its_attempt_and_every_other_outcome_is_written(app: App) -> None:
    """One result the database refuses among many jobs: the others complete, the poison job is retried by its
    policy and then discarded with errors that say what was refused, and the worker goes on taking jobs."""

    @app.task(max_attempts=2, retry=0)
    async def produce(n: int) -> dict[str, object]:
        return {"n": n, "tag": "poison" if n == 7 else "fine"}

    jobs = [await produce.defer(n=n) for n in range(30)]
    _refuse_poison(app)  # after the first defer: SQLite creates its tables on first use
    poison = jobs[7]
    async with open_worker(app, **fast(concurrency=10)):
        with anyio.fail_after(30):  # bounds a hang; the outcome is decided by the states below
            discarded = await wait_for_state(app, poison.id, JobState.DISCARDED, within=30)
            for job in jobs:
                if job.id != poison.id:
                    await wait_for_state(app, job.id, JobState.COMPLETED, within=30)
            later = await produce.defer(n=100)
            done = await wait_for_state(app, later.id, JobState.COMPLETED, within=30)
    assert done.result == {"n": 100, "tag": "fine"}
    assert discarded.attempt == 2 and discarded.result is None
    assert [e.type for e in discarded.errors] == ["OutcomeRefused", "OutcomeRefused"]
    message = discarded.errors[-1].message
    assert "refused to record this attempt's outcome (completed, with a result of" in message
    for job in jobs:
        if job.id != poison.id:
            assert (await app.get_job(job.id)).result == {"n": job.args["n"], "tag": "fine"}


async def test_a_refused_result_is_retried_by_the_jobs_policy_like_any_failure(app: App) -> None:
    """The attempt whose result was refused is retryable after the policy's delay while attempts remain."""

    @app.task(max_attempts=3, retry=3600)
    async def produce() -> str:
        return "poison"

    job = await produce.defer()
    _refuse_poison(app)
    async with open_worker(app, **fast()):
        failed = await wait_for_state(app, job.id, JobState.RETRYABLE, within=20)
    (error,) = failed.errors
    assert (failed.attempt, error.attempt, error.type) == (1, 1, "OutcomeRefused")
    assert error.at is not None
    assert 3000 < (failed.scheduled_at - error.at).total_seconds() <= 3600


async def test_a_result_over_max_result_bytes_is_refused_before_writing_and_the_job_discarded(app: App) -> None:
    """A result over the worker's max_result_bytes among many jobs fails its attempt for good (discarded, not
    retried, nothing written) with its size, the limit and the fix; the others complete and the worker goes on.

    Had the result reached the completer it would have been written (100 bytes is far below either engine's
    limit) and the job completed: a discarded job without a result, with a ValueError, was refused before."""

    @app.task(max_attempts=3, retry=0)
    async def produce(n: int) -> str:
        return "x" * (500 if n == 7 else 10)

    jobs = [await produce.defer(n=n) for n in range(30)]
    big = jobs[7]
    async with open_worker(app, **fast(concurrency=10, max_result_bytes=100)):
        with anyio.fail_after(30):  # bounds a hang; the outcome is decided by the states below
            discarded = await wait_for_state(app, big.id, JobState.DISCARDED, within=30)
            for job in jobs:
                if job.id != big.id:
                    await wait_for_state(app, job.id, JobState.COMPLETED, within=30)
            later = await produce.defer(n=100)
            done = await wait_for_state(app, later.id, JobState.COMPLETED, within=30)
    assert done.result == "x" * 10
    assert (discarded.attempt, discarded.result) == (1, None)
    (error,) = discarded.errors
    assert error.type == "ValueError"
    assert error.message.startswith(
        f"task {produce.name!r} returned a result of 502 bytes of JSON, above the limit of 100 (max_result_bytes); "
        "store a large result elsewhere"
    )
    assert "return a reference" in error.message and "open_worker(max_result_bytes=...)" in error.message
    for job in jobs:
        if job.id != big.id:
            assert (await app.get_job(job.id)).result == "x" * 10


async def test_a_result_of_exactly_max_result_bytes_is_written(app: App) -> None:
    """A result of exactly max_result_bytes bytes of JSON (multi-byte characters counted in UTF-8) completes."""

    @app.task
    async def produce() -> str:
        return "é" * 49  # '"' + 98 bytes + '"'

    job = await produce.defer()
    async with open_worker(app, **fast(max_result_bytes=100)):
        done = await wait_for_state(app, job.id, JobState.COMPLETED, within=20)
    assert done.result == "é" * 49


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["postgres"], indirect=True)
async def test_a_result_over_postgres_jsonb_limit_is_isolated_from_its_batch(app: App) -> None:
    """A real 300 MB result beside small ones: the small outcomes are written, the big one's attempt fails
    with its size, the limit and the fix, and nothing is left executing."""
    from nursery_worker._completer import Completer
    from nursery_worker._models import Completion
    from nursery_worker._state import Transition

    @app.task
    async def noop() -> None: ...

    jobs = [await noop.defer() for _ in range(5)]
    worker_id = f"w-{uuid.uuid4().hex[:8]}"
    claimed = await app.driver.fetch_jobs(worker_id=worker_id, queues=["default"], limit=5)
    assert len(claimed) == 5
    big = '"' + "x" * 300_000_000 + '"'
    completer = Completer(app.driver, worker_id, final_timeout=60.0)
    async with anyio.create_task_group() as tg:
        await tg.start(completer.serve)
        for i, job in enumerate(claimed):
            completer.submit(
                Completion(
                    job_id=job.id,
                    attempt=job.attempt,
                    attempted_at=job.attempted_at,
                    transition=Transition(state=JobState.COMPLETED),
                    result_json=big if i == 2 else '"small"',
                    max_attempts=1,
                )
            )
        del big
        await wait_until(lambda: not completer.pending, within=240)
        completer.close()
    by_id = {j.id: await app.get_job(j.id) for j in jobs}
    refused = by_id[claimed[2].id]
    assert refused.state is JobState.DISCARDED and refused.result is None
    (error,) = refused.errors
    assert error.type == "OutcomeRefused"
    assert "300,000,002 bytes" in error.message and "268,435,455" in error.message
    assert "return a reference" in error.message
    others = [job for job in by_id.values() if job.id != refused.id]
    assert [(job.state, job.result) for job in others] == [(JobState.COMPLETED, "small")] * 4
