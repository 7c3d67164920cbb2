"""What operators see of durable jobs on the command line, the same on every engine: ``jobs show``
(steps, progress, waits), ``status`` (suspended jobs, executing jobs' progress) and ``events emit``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from nursery_worker import App, Job, JobContext, JobState, open_worker

from ..integration.helpers import fast, wait_for_state, wait_until

pytestmark = pytest.mark.anyio

TIMEOUT = 60
CONSOLE_SCRIPT = str(Path(sys.executable).with_name("nursery-worker"))
#: A step result far longer than ``jobs show`` prints.
HUGE = "x" * 5000


async def _cli(args: Sequence[str], dsn: str, schema: str) -> subprocess.CompletedProcess[str]:
    """Run the command line in a thread (the test's worker keeps running meanwhile)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURSERY_WORKER_")}
    command = [CONSOLE_SCRIPT, *args, "--dsn", dsn, "--schema", schema]
    return await anyio.to_thread.run_sync(
        lambda: subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    )


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stdout


async def _suspended(app: App, **wait: float | None) -> Job:
    """Defer and run a job that records two steps and its progress, then waits for event ``go``
    (*wait* passes ``timeout``) or, given ``sleep``, sleeps; return it once suspended."""

    @app.task(name="durable.visible")
    async def visible(context: JobContext) -> None:
        await context.step("fetch", lambda: {"rows": 3})
        await context.step("big", lambda: HUGE)
        await context.progress(2, 4, note="halfway")
        if wait.get("sleep") is not None:
            await context.sleep(float(wait["sleep"] or 0), name="nap")
        else:
            await context.wait_for_event("go", timeout=wait.get("timeout"), name="payment")

    job = await visible.defer()
    async with open_worker(app, **fast(durable_sleep_threshold=0.1)):
        return await wait_for_state(app, job.id, JobState.SCHEDULED)


async def test_jobs_show_lists_the_steps_progress_and_event_wait(app: App, engine_dsn: str, engine_schema: str) -> None:
    """``jobs show`` prints the progress, the event wait (no timeout) and a steps table with long results shortened."""
    job = await _suspended(app)
    out = _ok(await _cli(["jobs", "show", str(job.id)], engine_dsn, engine_schema))
    assert "progress     2/4 (50%) halfway, updated " in out
    assert "waiting      event 'go', no timeout (step 'payment')" in out
    lines = out.splitlines()
    fetch = next(line for line in lines if " fetch " in line)
    assert fetch.split()[:5] == ["0", "fetch", "completed", "1", "1"] and '{"rows": 3}' in fetch
    big = next(line for line in lines if " big " in line)
    assert big.rstrip().endswith("…") and len(big) < 160 and HUGE not in out
    payment = next(line for line in lines if " payment " in line)
    assert "waiting" in payment and "waits for event 'go', no timeout" in payment


async def test_jobs_show_names_the_end_of_a_sleep_and_an_event_timeout(
    app: App, engine_dsn: str, engine_schema: str
) -> None:
    """A sleeping job says when its sleep ends; an event wait with a timeout says until when, marked as the timeout."""
    sleeping = await _suspended(app, sleep=3600)
    assert sleeping.waiting is not None
    out = _ok(await _cli(["jobs", "show", str(sleeping.id)], engine_dsn, engine_schema))
    until = sleeping.waiting.until.strftime("%Y-%m-%d %H:%M:%S")
    assert f"waiting      sleep until {until} UTC (step 'nap')" in out
    waiting = await _suspended(app, timeout=3600)
    out = _ok(await _cli(["jobs", "show", str(waiting.id)], engine_dsn, engine_schema))
    assert "waiting      event 'go' until " in out and "UTC (timeout; step 'payment')" in out


async def test_jobs_show_json_has_the_steps_progress_and_waiting(app: App, engine_dsn: str, engine_schema: str) -> None:
    """``jobs show --json`` carries each step with its whole result, the progress, and the wait (no timeout: null)."""
    job = await _suspended(app)
    data = json.loads(_ok(await _cli(["jobs", "show", str(job.id), "--json"], engine_dsn, engine_schema)))
    assert [(s["name"], s["state"], s["position"]) for s in data["steps"]] == [
        ("fetch", "completed", 0),
        ("big", "completed", 1),
        ("payment", "waiting", 2),
    ]
    assert data["steps"][1]["result"] == HUGE and data["steps"][0]["duration"] is not None
    assert data["steps"][2]["event"] == "go"
    progress = data["progress"]
    assert (progress["done"], progress["total"], progress["fraction"], progress["note"]) == (2, 4, 0.5, "halfway")
    assert data["waiting"] == {"kind": "event", "step": "payment", "event": "go", "until": None}


async def test_status_counts_suspended_jobs_and_shows_executing_progress(
    app: App, engine_dsn: str, engine_schema: str
) -> None:
    """``status`` counts the jobs a durable sleep and an event wait hold, and lists executing jobs' progress."""
    release = anyio.Event()

    @app.task(name="durable.sleeper")
    async def sleeper(context: JobContext) -> None:
        await context.sleep(3600, name="nap")

    @app.task(name="durable.waiter")
    async def waiter(context: JobContext) -> None:
        await context.wait_for_event("never", name="hold")

    @app.task(name="durable.copier")
    async def copier(context: JobContext) -> None:
        await context.progress(3, 10, note="copying")
        await release.wait()

    slept, waited, copying = await sleeper.defer(), await waiter.defer(), await copier.defer()
    async with open_worker(app, **fast(durable_sleep_threshold=0.1)):
        await wait_for_state(app, slept.id, JobState.SCHEDULED)
        await wait_for_state(app, waited.id, JobState.SCHEDULED)
        await wait_until(lambda: _reported(app, copying.id))
        text = _ok(await _cli(["status", "--width", "0"], engine_dsn, engine_schema))
        data = json.loads(_ok(await _cli(["status", "--json"], engine_dsn, engine_schema)))
        release.set()
        await wait_for_state(app, copying.id, JobState.COMPLETED)
    assert "suspended: 1 job(s) in a durable sleep, 1 waiting for an event" in text
    row = next(line for line in text.splitlines() if line.startswith(f"{copying.id} "))
    assert "durable.copier" in row and "3/10 (30%)" in row and "copying" in row
    durable = data["durable"]
    assert (durable["sleeping"], durable["waiting_for_events"], durable["reporting"]) == (1, 1, 1)
    (only,) = durable["progress"]
    assert (only["job_id"], only["task"], only["done"], only["total"], only["note"]) == (
        copying.id,
        "durable.copier",
        3,
        10,
        "copying",
    )


async def _reported(app: App, job_id: int) -> bool:
    job = await app.get_job(job_id)
    return job.state is JobState.EXECUTING and job.progress is not None


async def test_events_emit_wakes_the_waiter_and_says_whether_it_was_first(
    app: App, engine_dsn: str, engine_schema: str
) -> None:
    """``events emit`` wakes the job waiting for the key with the payload, and a second emit says it changed nothing."""

    @app.task(name="durable.payment")
    async def payment(context: JobContext) -> object:
        return await context.wait_for_event("paid:7", name="paid")

    job = await payment.defer()
    async with open_worker(app, **fast(durable_sleep_threshold=0.1)):
        await wait_for_state(app, job.id, JobState.SCHEDULED)
        out = _ok(await _cli(["events", "emit", "paid:7", "--payload", '{"amount": 1999}'], engine_dsn, engine_schema))
        assert out.strip() == "event 'paid:7' emitted: the jobs waiting for it run again"
        done = await wait_for_state(app, job.id, JobState.COMPLETED)
    assert done.result == {"amount": 1999}
    again = _ok(await _cli(["events", "emit", "paid:7", "--json"], engine_dsn, engine_schema))
    assert json.loads(again) == {"key": "paid:7", "first": False}
    words = _ok(await _cli(["events", "emit", "paid:7"], engine_dsn, engine_schema))
    assert "was emitted before" in words


async def test_events_emit_refuses_a_payload_that_is_not_json(app: App, engine_dsn: str, engine_schema: str) -> None:
    """A ``--payload`` that is not JSON is refused with a usage error naming the option and the value."""
    result = await _cli(["events", "emit", "k", "--payload", "{paid"], engine_dsn, engine_schema)
    assert result.returncode == 2 and result.stdout == ""
    assert "--payload is not valid JSON" in result.stderr and "'{paid'" in result.stderr
    assert "Traceback" not in result.stderr
    assert await app.emit("k") is True
