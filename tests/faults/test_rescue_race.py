"""The rescuer racing the completer: a reaper with a zero rescue window (every executing job looks
orphaned to it, every worker dead) runs back to back while two workers complete thousands of jobs.

Rescues and completions then hit the same rows within milliseconds of each other. A trigger records
every write to a finished row, and the finished rows seen during the race are compared at the end:
no finished job ever moves again, however the race goes.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import psycopg
import pytest
from psycopg import sql

from nursery_worker import App, open_worker
from nursery_worker._maintenance import Rescuer

from ..integration.helpers import fast, wait_until
from .helpers import rows, scalar

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

JOBS = 3_000
ERROR_CAP = 20

#: Records every UPDATE or DELETE of a finished row (pruning is off in this test: none is legitimate).
GUARD = """
CREATE TABLE {s}.violations (
    job_id bigint, op text, old_state text, new_state text, old_attempt int, new_attempt int,
    at timestamptz DEFAULT clock_timestamp()
);
CREATE FUNCTION {s}.record_finished_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.state IN ('completed', 'discarded', 'cancelled') THEN
        INSERT INTO {s}.violations (job_id, op, old_state, new_state, old_attempt, new_attempt)
        VALUES (OLD.id, TG_OP, OLD.state, CASE WHEN TG_OP = 'UPDATE' THEN NEW.state END, OLD.attempt,
                CASE WHEN TG_OP = 'UPDATE' THEN NEW.attempt END);
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END $$;
CREATE TRIGGER record_finished_write BEFORE UPDATE OR DELETE ON {s}.jobs
    FOR EACH ROW EXECUTE FUNCTION {s}.record_finished_write();
"""


async def test_a_zero_window_reaper_never_moves_a_finished_job(
    app: App, db: psycopg.Connection[Any], schema: str, anyio_backend: str
) -> None:
    """With a reaper rescuing every executing job back to back, no completed job is ever written again."""
    await anyio.to_thread.run_sync(lambda: db.execute(sql.SQL(GUARD).format(s=sql.Identifier(schema))))

    @app.task(name="race.quick", max_attempts=10_000)
    async def quick(n: int) -> None:
        await anyio.lowlevel.checkpoint()

    await app.defer_many([quick.job(n=n) for n in range(JOBS)])
    reaper = Rescuer(app.driver, "zero-window", rescue_after=0.0, error_cap=ERROR_CAP)
    rescued = passes = 0
    seen: dict[int, tuple[Any, ...]] = {}
    options = fast(concurrency=20, retention=None)
    async with open_worker(app, **options), open_worker(app, **options):
        with anyio.fail_after(120):
            # The race: until half of the jobs have completed under it.
            while (done := await scalar(db, "SELECT count(*) FROM jobs WHERE state = 'completed'")) < JOBS // 2:
                for _ in range(10):
                    rescued += (await reaper.run_once()).rescued
                    passes += 1
                for job_id, attempt, finished_at in await rows(
                    db, "SELECT id, attempt, finished_at FROM jobs WHERE state = 'completed'"
                ):
                    seen.setdefault(job_id, (attempt, finished_at))
        await wait_until(
            lambda: scalar(db, "SELECT count(*) = %s FROM jobs WHERE state = 'completed'", [JOBS]), within=120
        )

    print(f"[{anyio_backend}] {passes} zero-window passes rescued {rescued} attempts while {done} jobs completed")
    assert rescued > 0, "the zero-window reaper never caught a job executing: no race happened"
    assert await rows(db, "SELECT * FROM violations") == []
    after = {r[0]: (r[1], r[2]) for r in await rows(db, "SELECT id, attempt, finished_at FROM jobs")}
    assert {job_id: after[job_id] for job_id in seen} == seen
    assert await scalar(db, "SELECT count(*) FROM jobs WHERE state <> 'completed'") == 0
    # Every extra attempt is one of the zero-window rescues (errors kept up to the cap).
    for job_id, attempt, errors in await rows(db, "SELECT id, attempt, errors FROM jobs"):
        assert len(errors) == min(attempt - 1, ERROR_CAP), (job_id, attempt, errors)
        assert {e["type"] for e in errors} <= {"WorkerLost"}, (job_id, errors)
