"""Logs that add up: one INFO line per finished attempt, and every figure a field of its own in JSON."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from nursery_worker import App, Discard, JobState, Snooze, open_worker
from nursery_worker._logging import ConsoleFormatter, JobContextFilter, JsonFormatter

from ..integration.helpers import fast, wait_for_state, wait_until

pytestmark = pytest.mark.anyio


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(JobContextFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def of(self, logger: str) -> list[logging.LogRecord]:
        return [r for r in self.records if r.name == logger]


@pytest.fixture
def collected() -> Iterator[_Collect]:
    handler = _Collect()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield handler
    root.removeHandler(handler)
    root.setLevel(old_level)


async def test_each_finished_attempt_logs_one_info_line_with_its_figures(app: App, collected: _Collect) -> None:
    """Every finished attempt (completed, retried, discarded, snoozed) logs one INFO line with its figures."""
    snoozed: set[int] = set()

    @app.task(queue="mail")
    async def ok() -> None:
        pass

    @app.task(queue="mail", max_attempts=2, retry=0)
    async def flaky() -> None:
        raise ValueError("boom")

    @app.task(queue="mail")
    async def give_up() -> None:
        raise Discard("no")

    @app.task(queue="mail")
    async def later(n: int) -> None:
        if n not in snoozed:
            snoozed.add(n)
            raise Snooze(0)

    jobs = [await ok.defer(), await flaky.defer(), await give_up.defer(), await later.defer(n=1)]
    async with open_worker(app, **fast(queues="mail")) as worker:
        for job, state in zip(jobs, ("completed", "discarded", "discarded", "completed"), strict=True):
            await wait_for_state(app, job.id, JobState(state))
    lines = collected.of("nursery_worker.attempts")
    seen = sorted((r.job_id, r.attempt, r.outcome) for r in lines)  # type: ignore[attr-defined]
    assert seen == sorted(
        [
            (jobs[0].id, 1, "completed"),
            (jobs[1].id, 1, "retried"),
            (jobs[1].id, 2, "discarded"),
            (jobs[2].id, 1, "discarded"),
            (jobs[3].id, 1, "snoozed"),
            (jobs[3].id, 1, "completed"),
        ]
    )
    for r in lines:
        assert r.levelno == logging.INFO
        assert (r.queue, r.worker_id) == ("mail", worker.id)  # type: ignore[attr-defined]
        assert isinstance(r.duration, float) and r.duration >= 0  # type: ignore[attr-defined]
        assert r.task == {j.id: j.task for j in jobs}[r.job_id]  # type: ignore[attr-defined]
    failed = next(r for r in lines if r.outcome == "retried")  # type: ignore[attr-defined]
    assert failed.error == "ValueError"  # type: ignore[attr-defined]
    assert "failed, retry scheduled in " in failed.getMessage()


async def test_attempt_lines_are_off_with_log_attempts_false(app: App, collected: _Collect) -> None:
    """With log_attempts=False no attempt line is logged, and the worker's other lines still are."""

    @app.task
    async def ok() -> None:
        pass

    job = await ok.defer()
    async with open_worker(app, **fast(log_attempts=False)):
        await wait_for_state(app, job.id, JobState.COMPLETED)
    assert collected.of("nursery_worker.attempts") == []
    assert any("stopped" in r.getMessage() for r in collected.of("nursery_worker.worker"))


async def test_the_attempt_line_in_json_has_every_figure_as_a_key(app: App, collected: _Collect) -> None:
    """In JSON logs the attempt line's job id, attempt, duration and outcome are top-level keys."""

    @app.task(queue="mail")
    async def ok() -> None:
        pass

    job = await ok.defer()
    async with open_worker(app, **fast(queues="mail")):
        await wait_for_state(app, job.id, JobState.COMPLETED)
    (record,) = collected.of("nursery_worker.attempts")
    entry = json.loads(JsonFormatter().format(record))
    assert entry["logger"] == "nursery_worker.attempts"
    assert (entry["job_id"], entry["queue"], entry["attempt"], entry["max_attempts"], entry["outcome"]) == (
        job.id,
        "mail",
        1,
        job.max_attempts,
        "completed",
    )
    assert isinstance(entry["duration"], float)
    console = ConsoleFormatter().format(record)
    assert " attempt 1/" in console and f"[job={job.id} " in console


async def test_the_stop_statistics_in_json_are_fields_not_a_dict_in_the_message(app: App, collected: _Collect) -> None:
    """The worker's stop line carries each counter as its own JSON key, and its message holds no dict."""

    @app.task
    async def ok() -> None:
        pass

    jobs = [await ok.defer() for _ in range(3)]
    async with open_worker(app, **fast()) as worker:
        for job in jobs:
            await wait_for_state(app, job.id, JobState.COMPLETED)
    (record,) = [r for r in collected.of("nursery_worker.worker") if " stopped: " in r.getMessage()]
    entry = json.loads(JsonFormatter().format(record))
    assert "{" not in entry["message"] and "3 processed (3 completed" in entry["message"]
    assert entry["worker_id"] == worker.id
    assert {k: entry[k] for k in ("processed", "completed", "failed", "retried", "discarded", "ignored")} == {
        "processed": 3,
        "completed": 3,
        "failed": 0,
        "retried": 0,
        "discarded": 0,
        "ignored": 0,
    }


def test_the_json_formatter_keeps_its_own_keys_over_extra_fields() -> None:
    """An ``extra`` field named like a key of the JSON line never replaces that key."""
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %d", (1,), None)
    record.level = "spoofed"
    record.figure = 7
    entry = json.loads(JsonFormatter().format(record))
    assert (entry["level"], entry["message"], entry["figure"]) == ("info", "hello 1", 7)


def test_run_has_a_log_attempts_switch_generated_from_the_config() -> None:
    """``nursery-worker run`` offers ``--log-attempts/--no-log-attempts``, on by default."""
    from click.testing import CliRunner

    from nursery_worker._cli import cli

    result = CliRunner().invoke(cli, ["run", "--help"])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if "--log-attempts" in line)
    assert "--no-log-attempts" in line
    assert "default:log-attempts]" in "".join(result.output.split())  # help text wraps anywhere


async def test_the_pruner_line_in_json_has_a_count_per_state(app: App, collected: _Collect) -> None:
    """The pruner's line carries each state's count as its own JSON key, and its message reads as a sentence."""
    from nursery_worker._maintenance import Pruner

    for job in await app.defer_many([app.job_by_name("noop", {"n": n}) for n in range(2)]):
        await app.cancel(job.id)
    pruner = Pruner(app.driver, retention={"cancelled": 0.0})
    pruned: list[int] = []

    async def all_pruned() -> bool:
        # A job finished in the very same clock tick is not yet older than 0 s: it goes on the next pass.
        pruned.append((await pruner.run_once()).get("cancelled", 0))
        return sum(pruned) == 2

    await wait_until(all_pruned)
    entries = [json.loads(JsonFormatter().format(r)) for r in collected.of("nursery_worker.maintenance")]
    assert [(e["message"], e["pruned_cancelled"]) for e in entries] == [
        (f"pruned finished jobs: {n} cancelled", n) for n in pruned if n
    ]
