"""`nursery-worker run` under SIGTERM and SIGINT, as a process manager sends them.

A worker subprocess runs an app written into ``tmp_path``; the tests watch the jobs table until a
job is executing, signal the process, and check its exit status and what it wrote back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from nursery_worker import App

pytestmark = pytest.mark.slow

TIMEOUT = 60
BACKENDS = pytest.mark.parametrize("backend", ["asyncio", "trio"])

APP_MODULE = """\
import anyio

from nursery_worker import App

app = App(schema={schema!r})


@app.task(name="short")
async def short(n: int) -> None:
    await anyio.sleep(1.0)


@app.task(name="long")
async def long() -> None:
    await anyio.sleep(60)
"""


class Worker:
    """A `nursery-worker run` subprocess whose output goes to files in tmp_path."""

    def __init__(self, tmp_path: Path, dsn: str, app_path: str, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NURSERY_WORKER_")}
        env["NURSERY_WORKER_DSN"] = dsn
        self.stdout_path = tmp_path / "worker.out"
        self.stderr_path = tmp_path / "worker.err"
        with self.stdout_path.open("w") as out, self.stderr_path.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "nursery_worker", "run", "--app", app_path, *args],
                cwd=tmp_path,
                env=env,
                stdout=out,
                stderr=err,
            )

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def signal(self, signum: int) -> None:
        assert self.proc.poll() is None, f"worker exited early ({self.proc.returncode}):\n{self.stderr}"
        self.proc.send_signal(signum)

    def wait(self) -> int:
        """Wait (bounded) for the process to exit and return its exit status."""
        try:
            return self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker did not exit within {TIMEOUT}s:\n{self.stderr}")

    def wait_for_stderr(self, text: str) -> None:
        """Wait (bounded) until *text* appears in the worker's stderr."""
        deadline = time.monotonic() + TIMEOUT
        while text not in self.stderr:
            assert self.proc.poll() is None, f"worker exited early ({self.proc.returncode}):\n{self.stderr}"
            assert time.monotonic() < deadline, f"{text!r} never appeared on stderr:\n{self.stderr}"
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT)


@pytest.fixture
def start_worker(tmp_path: Path, dsn: str, schema: str, app: App) -> Iterator[Any]:
    """Write the app module into tmp_path and return a function starting `run` with extra arguments.

    ``app_path`` (a keyword) selects another app than ``myjobs:app``.
    """
    (tmp_path / "myjobs.py").write_text(APP_MODULE.format(schema=schema))
    workers: list[Worker] = []

    def start(*args: str, app_path: str = "myjobs:app") -> Worker:
        worker = Worker(tmp_path, dsn, app_path, *args)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.kill()


def _defer(app: App, task: str, count: int) -> list[int]:
    specs = [app.job_by_name(task, {"n": n} if task == "short" else {}) for n in range(count)]
    return [job.id for job in app.defer_many_sync(specs)]


def _wait_executing(db: psycopg.Connection[Any], worker: Worker, count: int) -> None:
    """Wait (bounded) until *count* jobs are executing, failing early if the worker died."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        (executing,) = db.execute("SELECT count(*) FROM jobs WHERE state = 'executing'").fetchone() or (0,)
        if executing >= count:
            return
        assert worker.proc.poll() is None, f"worker exited early ({worker.proc.returncode}):\n{worker.stderr}"
        assert time.monotonic() < deadline, f"no {count} job(s) executing after {TIMEOUT}s:\n{worker.stderr}"
        time.sleep(0.02)


def _states(db: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return db.execute("SELECT state, attempt, worker_id FROM jobs ORDER BY id").fetchall()


def _assert_clean_exit(worker: Worker, status: int) -> None:
    assert status == 0, f"exit status {status}:\n{worker.stderr}"
    assert "Traceback" not in worker.stderr, worker.stderr


@BACKENDS
def test_sigterm_lets_running_jobs_finish_and_exits_zero(
    start_worker: Any, app: App, db: psycopg.Connection[Any], backend: str
) -> None:
    """After SIGTERM the worker finishes its short running jobs, leaves none executing and exits 0."""
    _defer(app, "short", 3)
    worker = start_worker("--backend", backend)
    _wait_executing(db, worker, 3)
    worker.signal(signal.SIGTERM)
    _assert_clean_exit(worker, worker.wait())
    assert [(s, a) for s, a, _ in _states(db)] == [("completed", 1)] * 3


@BACKENDS
def test_sigint_stops_gracefully_like_sigterm(
    start_worker: Any, app: App, db: psycopg.Connection[Any], backend: str
) -> None:
    """SIGINT, like SIGTERM, lets the short running jobs finish, leaves none executing and exits 0."""
    _defer(app, "short", 3)
    worker = start_worker("--backend", backend)
    _wait_executing(db, worker, 3)
    worker.signal(signal.SIGINT)
    _assert_clean_exit(worker, worker.wait())
    assert [s for s, _, _ in _states(db)] == ["completed"] * 3


@BACKENDS
def test_sigterm_stops_fetching_new_jobs(
    start_worker: Any, app: App, db: psycopg.Connection[Any], backend: str
) -> None:
    """After SIGTERM the worker finishes the job it is running but starts none of the waiting ones."""
    _defer(app, "short", 3)
    worker = start_worker("--backend", backend, "--concurrency", "1")
    _wait_executing(db, worker, 1)
    worker.signal(signal.SIGTERM)
    _assert_clean_exit(worker, worker.wait())
    assert sorted(s for s, _, _ in _states(db)) == ["available", "available", "completed"]


@BACKENDS
def test_sigterm_cancels_a_long_job_after_the_shutdown_timeout(
    start_worker: Any, app: App, db: psycopg.Connection[Any], backend: str
) -> None:
    """A job still running when --shutdown-timeout expires is cancelled and written back available, attempt 0."""
    _defer(app, "long", 1)
    worker = start_worker("--backend", backend, "--shutdown-timeout", "1")
    _wait_executing(db, worker, 1)
    signalled = time.monotonic()
    worker.signal(signal.SIGTERM)
    status = worker.wait()
    elapsed = time.monotonic() - signalled
    _assert_clean_exit(worker, status)
    # Bounded well below both the job's 60 s sleep and the default 30 s shutdown timeout.
    assert elapsed < 20, f"exit took {elapsed:.1f}s after SIGTERM with --shutdown-timeout 1"
    assert _states(db) == [("available", 0, None)]


@BACKENDS
@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_second_signal_stops_at_once_and_releases_the_job(
    start_worker: Any, app: App, db: psycopg.Connection[Any], backend: str, second: signal.Signals
) -> None:
    """A second signal during the grace period stops the worker at once and still writes the job back available."""
    _defer(app, "long", 1)
    worker = start_worker("--backend", backend, "--shutdown-timeout", "30")
    _wait_executing(db, worker, 1)
    worker.signal(signal.SIGTERM)
    worker.wait_for_stderr("stopping gracefully")
    signalled = time.monotonic()
    worker.signal(second)
    status = worker.wait()
    elapsed = time.monotonic() - signalled
    _assert_clean_exit(worker, status)
    assert elapsed < 20, f"exit took {elapsed:.1f}s after the second signal; the shutdown timeout is 30s"
    assert _states(db) == [("available", 0, None)]


@BACKENDS
def test_sigterm_on_an_idle_worker_exits_zero(
    start_worker: Any, app: App, db: psycopg.Connection[Any], backend: str
) -> None:
    """SIGTERM to a running worker with nothing to do exits 0 and deregisters it."""
    worker = start_worker("--backend", backend)
    deadline = time.monotonic() + TIMEOUT
    # A heartbeat after registration means the worker is past startup and handling signals.
    beaten = "SELECT count(*) FROM workers WHERE heartbeat_at > started_at"
    while not db.execute(beaten).fetchone()[0]:  # type: ignore[index]
        assert worker.proc.poll() is None, f"worker exited early:\n{worker.stderr}"
        assert time.monotonic() < deadline, worker.stderr
        time.sleep(0.05)
    worker.signal(signal.SIGTERM)
    _assert_clean_exit(worker, worker.wait())
    assert db.execute("SELECT count(*) FROM workers").fetchone() == (0,)


SYNC_MODULE = """\
import time

from myjobs import app


@app.task(name="blocking")
def blocking() -> None:
    time.sleep(40)
"""


@BACKENDS
def test_abandoned_sync_job_does_not_keep_the_process_alive(
    start_worker: Any, tmp_path: Path, app: App, db: psycopg.Connection[Any], backend: str
) -> None:
    """A plain-def job still running at --shutdown-timeout is written back and the process exits without it."""
    (tmp_path / "syncjobs.py").write_text(SYNC_MODULE)
    _defer(app, "blocking", 1)
    worker = start_worker("--backend", backend, "--shutdown-timeout", "1", app_path="syncjobs:app")
    _wait_executing(db, worker, 1)
    worker.signal(signal.SIGTERM)
    signalled = time.monotonic()
    status = worker.wait()
    elapsed = time.monotonic() - signalled
    _assert_clean_exit(worker, status)
    assert _states(db) == [("available", 0, None)]
    # Bounded well below the job's 40 s sleep: the abandoned thread must not hold the process.
    assert elapsed < 20, f"exit took {elapsed:.1f}s after SIGTERM with --shutdown-timeout 1"


STARTUP_MODULE = """\
from pathlib import Path

import anyio

from myjobs import app


@app.on_startup
async def slow_start() -> None:
    Path(__file__).with_name("starting").touch()
    await anyio.sleep(5)
"""


@BACKENDS
def test_sigterm_during_startup_stops_cleanly(
    start_worker: Any, tmp_path: Path, app: App, db: psycopg.Connection[Any], backend: str
) -> None:
    """SIGTERM while the startup hooks run stops the worker cleanly: exit 0 and no worker left registered."""
    (tmp_path / "slowstart.py").write_text(STARTUP_MODULE)
    worker = start_worker("--backend", backend, app_path="slowstart:app")
    deadline = time.monotonic() + TIMEOUT
    while not (tmp_path / "starting").exists():
        assert worker.proc.poll() is None, f"worker exited early:\n{worker.stderr}"
        assert time.monotonic() < deadline, worker.stderr
        time.sleep(0.02)
    worker.signal(signal.SIGTERM)
    _assert_clean_exit(worker, worker.wait())
    assert db.execute("SELECT count(*) FROM workers").fetchone() == (0,)
