"""A once-mode worker's last look races its own promoter service.

``open_worker(once=True)`` stops when a fetch finds nothing, nothing runs, no outcome is unwritten,
and a promotion followed by one more fetch finds nothing either. The promoter *service* keeps
running beside that last look: when it is promoting the due retry at that moment, its statement
holds the row, the last look's promotion skips it (``SKIP LOCKED``) and the fetch after it does not
see it yet, so the worker stops and leaves a due retry behind (found as the flake of
``test_once_works_off_a_due_retry_even_when_its_write_is_slow``, issue 17 §4). A promoter service
that runs all the time (every millisecond) makes the race likely in each round; the test runs a
dozen rounds.
"""

from __future__ import annotations

import anyio
import pytest

from nursery_worker import App, JobState, open_worker

from .helpers import fast

pytestmark = pytest.mark.anyio

ROUNDS = 12


async def test_once_runs_a_due_retry_while_its_promoter_service_is_busy(app: App) -> None:
    """open_worker(once=True) runs a failed job's due retry, however its promoter service's run falls."""
    calls: dict[int, int] = {}

    @app.task(retry=0, max_attempts=3)
    async def second_time_lucky(round_: int) -> None:
        calls[round_] = calls.get(round_, 0) + 1
        if calls[round_] == 1:
            raise RuntimeError("first attempt fails")

    for round_ in range(ROUNDS):
        job = await second_time_lucky.defer(round_=round_)
        with anyio.fail_after(60):  # bounds a hang only
            async with open_worker(app, **fast(once=True, promote_interval=0.001)) as worker:
                await worker.wait_stopped()
        done = await app.get_job(job.id)
        assert (round_, calls[round_], done.state, done.attempt) == (round_, 2, JobState.COMPLETED, 2)
