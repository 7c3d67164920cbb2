"""The embedded engine across processes: the README quick start on a machine without PostgreSQL,
and two worker processes sharing one SQLite file with no job lost and none run twice."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import anyio
import pytest

from nursery_worker import App, JobState

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CONSOLE_SCRIPT = str(Path(sys.executable).with_name("nursery-worker"))
TIMEOUT = 120


def _fresh_env(cwd: Path) -> dict[str, str]:
    """The environment of a machine without PostgreSQL: no NURSERY_WORKER_*, libpq pointed at nothing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NURSERY_WORKER_", "PG"))}
    env.update(PGHOST=str(cwd / "no-such-socket-dir"), PGPORT="1", PGCONNECT_TIMEOUT="1", HOME=str(cwd))
    return env


def _quick_start() -> tuple[str, list[str]]:
    """The README's quick start: the tasks.py it shows and the commands of its first console block."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    console = re.search(r"```console\n(.*?)```", section, re.S)
    assert code is not None and console is not None
    commands = [line[2:].split("  #", 1)[0].strip() for line in console.group(1).splitlines() if line.startswith("$ ")]
    return code.group(1), commands


def test_the_readme_quick_start_runs_without_any_database_server(tmp_path: Path) -> None:
    """The README quick start (tasks.py, defer, run) works in an empty directory with no DSN and no PostgreSQL."""
    code, commands = _quick_start()
    assert code.startswith("# tasks.py\n")
    (tmp_path / "tasks.py").write_text(code)
    env = _fresh_env(tmp_path)
    outputs: list[str] = []
    for command in commands:
        argv = shlex.split(command)
        if argv[:2] == ["pip", "install"]:
            continue  # installed in this environment already
        if argv[0] == "python":
            argv[0] = sys.executable
        elif argv[0] == "nursery-worker":
            argv[0] = CONSOLE_SCRIPT
            if argv[1] == "run":
                argv.append("--once")  # the README's worker runs until Ctrl-C
        result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT)
        assert result.returncode == 0, (command, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        outputs.append(result.stdout + result.stderr)
    assert "welcome, user 42!" in outputs[-1]
    assert "processed 1 job(s): 1 completed" in outputs[-1]
    assert "embedded SQLite" in outputs[-1] and "NURSERY_WORKER_DSN" in outputs[-1]
    assert (tmp_path / "nursery-worker.sqlite3").exists()


def test_the_hello_example_runs_from_the_cli_without_any_database_server(tmp_path: Path) -> None:
    """``nursery-worker defer`` then ``run --app examples.hello:app --once`` work with no DSN and no PostgreSQL."""
    env = {**_fresh_env(tmp_path), "PYTHONPATH": str(ROOT)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CONSOLE_SCRIPT, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT
        )

    deferred = cli("defer", "examples.hello.greet", "--args", '{"name": "Ada"}')
    assert deferred.returncode == 0, deferred.stderr
    ran = cli("run", "--app", "examples.hello:app", "--once")
    assert ran.returncode == 0, ran.stderr
    assert "hello, Ada!" in ran.stdout


LEDGER_APP = """\
import os

from nursery_worker import App, JobContext

app = App()


@app.task(name="ledger.write", max_attempts=3)
async def write(n: int, context: JobContext) -> None:
    # One write(2) with O_APPEND per attempt: lines from both processes never interleave.
    fd = os.open(os.environ["LEDGER_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{context.job_id} {n} {context.attempt} {os.getpid()}\\n".encode())
    finally:
        os.close(fd)
"""

JOBS = 3000


def test_two_worker_processes_share_one_file_without_losing_or_repeating_a_job(tmp_path: Path) -> None:
    """Two ``nursery-worker run`` processes on one SQLite file run 3,000 jobs, deferred while they run, once each."""
    database = tmp_path / "shared.sqlite3"
    ledger = tmp_path / "ledger.txt"
    (tmp_path / "ledgerapp.py").write_text(LEDGER_APP)
    env = {**_fresh_env(tmp_path), "NURSERY_WORKER_DSN": f"sqlite:///{database}", "LEDGER_FILE": str(ledger)}
    app = App(dsn=f"sqlite:///{database}")
    app.migrate_sync()
    argv = [CONSOLE_SCRIPT, "run", "--app", "ledgerapp:app", "--concurrency", "20", "--log-level", "warning"]
    workers = [
        subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        deadline = time.monotonic() + 30
        while len(anyio.run(app.driver.list_workers)) < 2:
            assert time.monotonic() < deadline, "the workers did not register"
            assert all(w.poll() is None for w in workers)
            time.sleep(0.1)
        started = time.monotonic()
        ids: list[int] = []
        n = 0
        while n < JOBS:  # batches and single defers, interleaved, while both workers run
            if n % 300 < 200:
                ids += [
                    j.id
                    for j in app.defer_many_sync([app.job_by_name("ledger.write", {"n": n + i}) for i in range(100)])
                ]
                n += 100
            else:
                ids.append(app.defer_many_sync([app.job_by_name("ledger.write", {"n": n})])[0].id)
                n += 1

        def completed() -> int:
            (queue,) = anyio.run(app.list_queues)
            return queue.counts["completed"]

        deadline = time.monotonic() + TIMEOUT
        while completed() < JOBS:
            assert time.monotonic() < deadline, f"only {completed()} of {JOBS} jobs completed"
            assert all(w.poll() is None for w in workers)
            time.sleep(0.1)
        elapsed = time.monotonic() - started
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        outputs = [worker.communicate(timeout=60) for worker in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    # No warning but the stop's own: no statement waited out the busy timeout, none was retried.
    noise = [line for _, err in outputs for line in err.splitlines() if "SIGTERM" not in line]
    assert noise == [], outputs
    print(f"\n{JOBS} jobs on 2 worker processes sharing one SQLite file: {elapsed:.2f}s ({JOBS / elapsed:.0f} jobs/s)")

    lines = [line.split() for line in ledger.read_text().splitlines()]
    assert len(lines) == JOBS  # none run twice ...
    assert sorted(int(job_id) for job_id, _, _, _ in lines) == sorted(ids)  # ... and none lost
    assert {attempt for _, _, attempt, _ in lines} == {"1"}
    assert sorted(int(n) for _, n, _, _ in lines) == list(range(JOBS))
    by_process = Counter(pid for _, _, _, pid in lines)
    assert set(by_process) == {str(w.pid) for w in workers}, by_process
    jobs = anyio.run(lambda: app.list_jobs(limit=JOBS + 10))
    assert len(jobs) == JOBS
    assert {(j.state, j.attempt, j.worker_id) for j in jobs} == {(JobState.COMPLETED, 1, None)}
    assert anyio.run(app.driver.list_workers) == []
    app.close()


def test_a_supervisor_of_two_processes_works_the_default_file(tmp_path: Path) -> None:
    """``run --processes 2`` with no DSN: both children use ./nursery-worker.sqlite3, are healthy, run the jobs."""
    ledger = tmp_path / "ledger.txt"
    (tmp_path / "ledgerapp.py").write_text(LEDGER_APP)
    env = {**_fresh_env(tmp_path), "LEDGER_FILE": str(ledger)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CONSOLE_SCRIPT, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT
        )

    for n in range(2):  # the first ones from the CLI (which creates the file), the rest in one batch
        assert cli("defer", "ledger.write", "--args", f'{{"n": {n}}}').returncode == 0
    app = App(dsn=f"sqlite:///{tmp_path / 'nursery-worker.sqlite3'}")
    app.defer_many_sync([app.job_by_name("ledger.write", {"n": n}) for n in range(2, 200)])
    argv = [CONSOLE_SCRIPT, "run", "--app", "ledgerapp:app", "--processes", "2", "--status-interval", "600"]
    supervisor = subprocess.Popen(
        argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert supervisor.poll() is None and time.monotonic() < deadline
            done = ledger.exists() and len(ledger.read_text().splitlines()) == 200
            workers = anyio.run(app.driver.list_workers)
            if done and len(workers) == 2 and all(w.state == "running" for w in workers):
                break
            time.sleep(0.2)
        status = cli("status", "--json")
        assert status.returncode == 0, status.stderr
        healthy = cli("healthcheck")
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    finally:
        supervisor.send_signal(signal.SIGTERM)
        _, err = supervisor.communicate(timeout=60)
    assert supervisor.returncode == 0, err
    rows = json.loads(status.stdout)["workers"]
    assert sorted(r["child_index"] for r in rows) == [0, 1]
    assert len({r["supervisor_id"] for r in rows}) == 1
    assert sorted(int(line.split()[1]) for line in ledger.read_text().splitlines()) == list(range(200))
    app.close()


LIMITED_APP = """\
import os
import time

import anyio
from nursery_worker import App, JobContext

app = App()


@app.task(name="limited.write", max_concurrency=2)
async def write(n: int, context: JobContext) -> None:
    # A start and an end line per job (one O_APPEND write each), stamped with the host's clock.
    def line(kind: str) -> None:
        fd = os.open(os.environ["LEDGER_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{kind} {context.job_id} {time.time_ns()} {os.getpid()}\\n".encode())
        finally:
            os.close(fd)

    line("start")
    await anyio.sleep(0.05)
    line("end")
"""


def test_two_worker_processes_on_one_file_respect_max_concurrency(tmp_path: Path) -> None:
    """Two worker processes of spare capacity on one SQLite file never run three jobs of a max_concurrency=2 task."""
    database = tmp_path / "shared.sqlite3"
    ledger = tmp_path / "ledger.txt"
    (tmp_path / "limitedapp.py").write_text(LIMITED_APP)
    env = {**_fresh_env(tmp_path), "NURSERY_WORKER_DSN": f"sqlite:///{database}", "LEDGER_FILE": str(ledger)}
    app = App(dsn=f"sqlite:///{database}")

    @app.task(name="limited.write", max_concurrency=2)  # the producer knows the limit: its jobs carry the key
    async def write(n: int) -> None: ...

    app.migrate_sync()
    argv = [CONSOLE_SCRIPT, "run", "--app", "limitedapp:app", "--concurrency", "10", "--log-level", "warning"]
    workers = [
        subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        deadline = time.monotonic() + 30
        while len(anyio.run(app.driver.list_workers)) < 2:  # both compete for every slot
            assert time.monotonic() < deadline, "the workers did not register"
            assert all(w.poll() is None for w in workers)
            time.sleep(0.1)
        jobs = app.defer_many_sync([write.job(n=n) for n in range(40)])
        deadline = time.monotonic() + TIMEOUT
        while not ledger.exists() or ledger.read_text().count("end ") < len(jobs):
            assert time.monotonic() < deadline, "the jobs did not all finish"
            assert all(w.poll() is None for w in workers)
            time.sleep(0.1)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        outputs = [worker.communicate(timeout=60) for worker in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    events = sorted((int(at), kind) for kind, _, at, _ in (line.split() for line in ledger.read_text().splitlines()))
    running = peak = 0
    for _, kind in events:  # an end and a start at the same nanosecond: the end sorts first
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    assert peak == 2
    assert {(j.state, j.attempt) for j in anyio.run(lambda: app.list_jobs(limit=100))} == {(JobState.COMPLETED, 1)}
    app.close()
