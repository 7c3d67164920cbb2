"""`nursery-worker run --processes N`: a real supervisor with real child processes on real PostgreSQL.

An app module is written into ``tmp_path``; the supervisor runs as a subprocess (so that it owns its
signals, as under a process manager) and the tests watch the jobs and workers tables, signal the
supervisor or kill its children, and check what happened. Every wait is a bounded poll.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest

from nursery_worker import App

pytestmark = pytest.mark.slow

T = TypeVar("T")
TIMEOUT = 60
BACKENDS = pytest.mark.parametrize(
    "backend", [b.strip() for b in os.environ.get("NW_BACKENDS", "asyncio,trio").split(",") if b.strip()]
)
#: Small intervals so that rescues and replacements take seconds.
FAST = (
    "--heartbeat-interval",
    "0.2",
    "--rescue-after",
    "1",
    "--poll-interval",
    "0.2",
    "--restart-delay",
    "0.2",
    "--status-interval",
    "1",
)

APP_MODULE = """\
import os
import time
from pathlib import Path

import anyio

from nursery_worker import App, JobContext

app = App(schema={schema!r})
HERE = Path(__file__).parent


@app.task(name="short")
async def short(n: int) -> None:
    await anyio.sleep(1.0)


@app.task(name="record")
async def record(n: int) -> None:
    await anyio.sleep(0.1)
    with open(HERE / "ran.txt", "a") as f:
        f.write(f"{{n}}\\n")


@app.task(name="relay")
async def relay(n: int, ctx: JobContext) -> None:
    # Records its id and, until the test writes "enough", defers the next job of its chain before
    # it completes: the chain always has a job to run, however long the test needs the work to last.
    await anyio.sleep(0.1)
    with open(HERE / "ran.txt", "a") as f:
        f.write(f"{{ctx.job.id}}\\n")
    if not (HERE / "enough").exists():
        await relay.defer(n=n)


@app.task(name="stuck_once")
async def stuck_once(n: int) -> None:
    # The first attempt waits until its process is killed; the re-run completes.
    marker = HERE / f"stuck-{{n}}"
    if not marker.exists():
        marker.touch()
        await anyio.sleep(3600)


@app.task(name="gated")
async def gated(n: int) -> None:
    # Marks its start, then runs until the test creates its release file; marks a cancellation.
    (HERE / f"gated-started-{{n}}").touch()
    try:
        while not (HERE / f"gated-release-{{n}}").exists():
            await anyio.sleep(0.05)
    except anyio.get_cancelled_exc_class():
        (HERE / f"gated-cancelled-{{n}}").touch()
        raise


@app.task(name="hang_once")
async def hang_once(n: int) -> None:
    # The first attempt blocks its process's event loop (a hung loop); the re-run completes.
    marker = HERE / f"hang-{{n}}"
    if not marker.exists():
        marker.touch()
        time.sleep(3600)
"""

CRASHING_MODULE = """\
import os
import threading

from myjobs import app


@app.on_startup
async def die_soon() -> None:
    # Starts fine, runs briefly, then the process dies: a crash loop.
    threading.Timer(0.3, os._exit, args=(7,)).start()
"""

BROKEN_MODULE = """\
import os

from myjobs import app

if os.environ.get("NURSERY_WORKER_CHILD"):
    raise RuntimeError("this module refuses to load in a worker process")
"""

Conn = psycopg.Connection[Any]


def poll(what: str, check: Callable[[], T], sup: SupervisorProcess | None = None, within: float = TIMEOUT) -> T:
    """Call *check* until it returns something truthy (failing early if the supervisor died)."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if sup is not None:
            assert sup.proc.poll() is None, f"supervisor exited early ({sup.proc.returncode}):\n{sup.stderr}"
        assert time.monotonic() < deadline, f"{what}: not within {within}s" + (f":\n{sup.stderr}" if sup else "")
        time.sleep(0.05)


class SupervisorProcess:
    """A `nursery-worker run --processes N` subprocess whose output goes to files in tmp_path."""

    def __init__(self, tmp_path: Path, dsn: str, args: tuple[str, ...]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NURSERY_WORKER_")}
        env["NURSERY_WORKER_DSN"] = dsn
        self.stdout_path = tmp_path / "supervisor.out"
        self.stderr_path = tmp_path / "supervisor.err"
        with self.stdout_path.open("w") as out, self.stderr_path.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "nursery_worker", "run", *args], cwd=tmp_path, env=env, stdout=out, stderr=err
            )

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def signal(self, signum: int) -> None:
        assert self.proc.poll() is None, f"supervisor exited early ({self.proc.returncode}):\n{self.stderr}"
        self.proc.send_signal(signum)

    def wait(self, within: float = TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout=within)
        except subprocess.TimeoutExpired:
            pytest.fail(f"supervisor did not exit within {within}s:\n{self.stderr}")

    def kill(self) -> None:
        """Test clean-up: the supervisor and any child it left behind."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT)


@pytest.fixture
def start(tmp_path: Path, dsn: str, schema: str, app: App) -> Iterator[Callable[..., SupervisorProcess]]:
    """Write the app modules into tmp_path; return a function starting the supervisor with arguments."""
    (tmp_path / "myjobs.py").write_text(APP_MODULE.format(schema=schema))
    (tmp_path / "crashing.py").write_text(CRASHING_MODULE)
    (tmp_path / "broken.py").write_text(BROKEN_MODULE)
    started: list[SupervisorProcess] = []

    def run(*args: str) -> SupervisorProcess:
        sup = SupervisorProcess(tmp_path, dsn, args)
        started.append(sup)
        return sup

    yield run
    for sup in started:
        sup.kill()


def workers(db: Conn) -> list[tuple[Any, ...]]:
    """(child_index, pid, state, restarts) of every registered worker, by slot."""
    return db.execute("SELECT child_index, pid, state, restarts FROM workers ORDER BY child_index, pid").fetchall()


def running_children(db: Conn, count: int) -> list[tuple[Any, ...]] | None:
    """The workers, once exactly *count* are registered and running under a supervisor."""
    rows = workers(db)
    ok = len(rows) == count and all(r[0] is not None and r[2] == "running" for r in rows)
    return rows if ok else None


def defer(app: App, task: str, count: int) -> list[int]:
    return [job.id for job in app.defer_many_sync([app.job_by_name(task, {"n": n}) for n in range(count)])]


def states(db: Conn) -> list[tuple[Any, ...]]:
    return db.execute("SELECT state, attempt FROM jobs ORDER BY id").fetchall()


def executing(db: Conn, count: int) -> list[tuple[Any, ...]] | None:
    rows = db.execute("SELECT id, worker_id FROM jobs WHERE state = 'executing'").fetchall()
    return rows if len(rows) >= count else None


def child_pids(sup: SupervisorProcess) -> set[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(sup.proc.pid)], capture_output=True, text=True)
    return {int(p) for p in out.stdout.split()}


def assert_clean_exit(sup: SupervisorProcess, status: int) -> None:
    assert status == 0, f"exit status {status}:\n{sup.stderr}"
    assert "Traceback" not in sup.stderr, sup.stderr


# --- the five behaviours of the issue ------------------------------------------------------------


@BACKENDS
def test_a_sigkilled_child_is_replaced_and_its_job_is_rerun_by_a_sibling(
    start: Callable[..., SupervisorProcess], app: App, db: Conn, tmp_path: Path, backend: str
) -> None:
    """A child killed with SIGKILL mid-job is replaced in its slot, and a sibling rescues and completes its job."""
    sup = start("--app", "myjobs:app", "--processes", "2", "--backend", backend, *FAST)
    before = poll("two running children", lambda: running_children(db, 2), sup)
    (job_id,) = defer(app, "stuck_once", 1)
    ((_, worker_id),) = poll("the job executing", lambda: executing(db, 1), sup)
    ((victim,),) = db.execute("SELECT pid FROM workers WHERE id = %s", [worker_id]).fetchall()
    # Claimed is not yet started: kill only once the first attempt has left its marker.
    poll("the first attempt started", lambda: (tmp_path / "stuck-0").exists(), sup)

    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    done = poll(
        "the job completed by a sibling",
        lambda: db.execute(
            "SELECT attempt, errors FROM jobs WHERE id = %s AND state = 'completed'", [job_id]
        ).fetchone(),
        sup,
    )
    rescued_after = time.monotonic() - killed_at
    after = poll(
        "a replacement registered",
        lambda: (rows := running_children(db, 2)) and victim not in {r[1] for r in rows} and rows,
        sup,
    )
    replaced_after = time.monotonic() - killed_at

    attempt, errors = done
    assert attempt == 2 and [e["type"] for e in errors] == ["WorkerLost"]
    assert {r[0] for r in after} == {0, 1}
    assert sorted(r[3] for r in after) == [0, 1]  # the replaced slot counts one restart
    exits = db.execute("SELECT restarts, last_exit FROM workers ORDER BY restarts").fetchall()
    assert exits == [(0, None), (1, "was killed by SIGKILL")]  # the dashboard's last exit reason
    assert {r[1] for r in after} & {r[1] for r in before} == {r[1] for r in before} - {victim}
    assert "was killed by SIGKILL; restarting it" in sup.stderr
    print(
        f"[{backend}] SIGKILL -> job completed by a sibling in {rescued_after:.2f}s, replacement running in "
        f"{replaced_after:.2f}s"
    )
    sup.signal(signal.SIGTERM)
    assert_clean_exit(sup, sup.wait())


@BACKENDS
def test_a_child_whose_event_loop_hangs_is_killed_and_replaced(
    start: Callable[..., SupervisorProcess], app: App, db: Conn, backend: str
) -> None:
    """A child whose event loop blocks stops reporting; after --health-timeout it is SIGKILLed and replaced."""
    sup = start("--app", "myjobs:app", "--processes", "2", "--backend", backend, "--health-timeout", "2", *FAST)
    poll("two running children", lambda: running_children(db, 2), sup)
    (job_id,) = defer(app, "hang_once", 1)
    ((_, worker_id),) = poll("the job executing", lambda: executing(db, 1), sup)
    ((hung,),) = db.execute("SELECT pid FROM workers WHERE id = %s", [worker_id]).fetchall()

    poll("the hung child killed", lambda: "a hung event loop" in sup.stderr, sup)
    poll("the hung child gone", lambda: hung not in child_pids(sup), sup)
    after = poll(
        "a replacement registered",
        lambda: (rows := running_children(db, 2)) and hung not in {r[1] for r in rows} and rows,
        sup,
    )
    poll(
        "the job completed by another child",
        lambda: db.execute("SELECT 1 FROM jobs WHERE id = %s AND state = 'completed'", [job_id]).fetchone(),
        sup,
    )
    assert {r[0] for r in after} == {0, 1}
    assert "hung (no report within the health timeout) and was killed; restarting it" in sup.stderr
    sup.signal(signal.SIGTERM)
    assert_clean_exit(sup, sup.wait())


@BACKENDS
def test_sigterm_drains_every_child_and_exits_zero(
    start: Callable[..., SupervisorProcess], app: App, db: Conn, backend: str
) -> None:
    """SIGTERM lets each child finish its running jobs, leaves no job executing, deregisters all and exits 0."""
    sup = start("--app", "myjobs:app", "--processes", "2", "--concurrency", "2", "--backend", backend, *FAST)
    poll("two running children", lambda: running_children(db, 2), sup)
    defer(app, "short", 4)
    rows = poll("four jobs executing", lambda: executing(db, 4), sup)
    assert len({worker for _, worker in rows}) == 2  # both children are busy

    sup.signal(signal.SIGTERM)
    assert_clean_exit(sup, sup.wait())
    assert states(db) == [("completed", 1)] * 4
    assert workers(db) == []
    assert "every child stopped cleanly" in sup.stderr


def test_a_second_sigterm_stops_every_child_at_once_and_hands_jobs_back(
    start: Callable[..., SupervisorProcess], app: App, db: Conn
) -> None:
    """A second SIGTERM during the drain makes every child cancel its jobs now; they go back to the queue."""
    sup = start("--app", "myjobs:app", "--processes", "2", "--shutdown-timeout", "60", *FAST)
    poll("two running children", lambda: running_children(db, 2), sup)
    defer(app, "stuck_once", 2)
    poll("two jobs executing", lambda: executing(db, 2), sup)
    sup.signal(signal.SIGTERM)
    poll("the graceful stop begun", lambda: "stopping every child gracefully" in sup.stderr, sup)
    signalled = time.monotonic()
    sup.signal(signal.SIGTERM)
    assert_clean_exit(sup, sup.wait())
    assert time.monotonic() - signalled < 30  # well below the 60 s shutdown timeout
    assert states(db) == [("available", 0)] * 2


@BACKENDS
def test_sighup_replaces_every_child_without_losing_or_duplicating_a_completion(
    start: Callable[..., SupervisorProcess], app: App, db: Conn, tmp_path: Path, backend: str
) -> None:
    """SIGHUP replaces each child one at a time while jobs flow; every job runs exactly once, on its first attempt."""
    sup = start("--app", "myjobs:app", "--processes", "2", "--concurrency", "3", "--backend", backend, *FAST)
    before = {r[1] for r in poll("two running children", lambda: running_children(db, 2), sup)}
    # Twelve chains of jobs for six slots: the work flows until the test says enough, however long
    # the restart takes on a loaded machine.
    defer(app, "relay", 12)
    poll("jobs flowing", lambda: executing(db, 2), sup)

    sup.signal(signal.SIGHUP)
    poll("the rolling restart done", lambda: "rolling restart done" in sup.stderr, sup)
    after = {r[1] for r in poll("two new children", lambda: running_children(db, 2), sup)}
    remaining = db.execute("SELECT count(*) FROM jobs WHERE state <> 'completed'").fetchone()
    (tmp_path / "enough").touch()
    poll(
        "every job completed",
        lambda: db.execute("SELECT count(*) FROM jobs WHERE state <> 'completed'").fetchone() == (0,),
        sup,
    )

    assert after.isdisjoint(before)
    assert remaining is not None and remaining[0] > 0, "the jobs ran out before the restart finished"
    ran = sorted(int(line) for line in (tmp_path / "ran.txt").read_text().split())
    assert ran == [r[0] for r in db.execute("SELECT id FROM jobs ORDER BY id")]  # none lost, none run twice
    assert {attempt for _, attempt in states(db)} == {1}
    sup.signal(signal.SIGTERM)
    assert_clean_exit(sup, sup.wait())


def _retire_during_a_job(
    start: Callable[..., SupervisorProcess], app: App, db: Conn, tmp_path: Path, backend: str
) -> SupervisorProcess:
    """A child running a gated job; SIGHUP, then SIGTERM once that child is retired and its
    replacement runs; returns once the replacement has stopped (the job still runs in the old one)."""
    sup = start("--app", "myjobs:app", "--processes", "2", "--backend", backend, "--shutdown-timeout", "60", *FAST)
    poll("two running children", lambda: running_children(db, 2), sup)
    defer(app, "gated", 1)
    ((_, worker_id),) = poll("the job executing", lambda: executing(db, 1), sup)
    ((pid,),) = db.execute("SELECT pid FROM workers WHERE id = %s", [worker_id]).fetchall()
    poll("the job started", lambda: (tmp_path / "gated-started-0").exists(), sup)
    sup.signal(signal.SIGHUP)
    pattern = re.compile(rf"\(pid {pid}\) replaced by pid (\d+): stopping it")
    retired = poll("its child retired", lambda: pattern.search(sup.stderr), sup)
    assert retired is not None
    sup.signal(signal.SIGTERM)
    poll("the replacement stopped", lambda: f"(pid {retired.group(1)}) stopped" in sup.stderr, sup)
    return sup


@BACKENDS
def test_a_sigterm_during_a_rolling_restart_lets_the_retiring_child_finish_its_job(
    start: Callable[..., SupervisorProcess], app: App, db: Conn, tmp_path: Path, backend: str
) -> None:
    """SIGTERM after SIGHUP gives the retiring child its whole grace period: its running job completes."""
    sup = _retire_during_a_job(start, app, db, tmp_path, backend)
    # The child being retired already had its SIGTERM; a second one would have been its hard stop.
    (tmp_path / "gated-release-0").touch()
    assert_clean_exit(sup, sup.wait())
    assert states(db) == [("completed", 1)]
    assert not (tmp_path / "gated-cancelled-0").exists()
    assert "stopping now" not in sup.stderr


def test_a_second_sigterm_during_a_rolling_restart_stops_the_retiring_child_at_once(
    start: Callable[..., SupervisorProcess], app: App, db: Conn, tmp_path: Path
) -> None:
    """A second SIGTERM stops the retiring child of a rolling restart at once too; its job goes back to the queue."""
    sup = _retire_during_a_job(start, app, db, tmp_path, "asyncio")
    sup.signal(signal.SIGTERM)
    assert_clean_exit(sup, sup.wait())
    assert states(db) == [("available", 0)]
    assert (tmp_path / "gated-cancelled-0").exists()


def test_a_crash_looping_child_stops_the_supervisor_with_a_clear_reason(
    start: Callable[..., SupervisorProcess],
) -> None:
    """A child that keeps dying after it started is restarted with backoff until --max-restarts; then exit 1."""
    sup = start("--app", "crashing:app", "--processes", "2", "--max-restarts", "2", *FAST)
    status = sup.wait()
    err = sup.stderr
    last = err.strip().splitlines()[-1]

    assert status == 1, err
    assert last.startswith("Error: child "), last
    assert "exited with code 7: crash loop, 3 exits within 60s (max_restarts=2)" in last
    assert err.count("restarting it in") >= 2
    assert "Traceback" not in err


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--app", "myjobs:app", "--processes", "0"), "Invalid value for '--processes': 0 is not in the range x>=1"),
        (("--app", "nosuchmodule:app", "--processes", "2"), "cannot import 'nosuchmodule'"),
        (("--app", "myjobs:HERE", "--processes", "2"), "is not a nursery_worker.App"),
        (("--app", "myjobs:app", "--processes", "2", "--once"), "--once runs a single process"),
    ],
    ids=["processes-0", "bad-module", "not-an-app", "once"],
)
def test_bad_input_is_one_line_before_any_child_starts(
    start: Callable[..., SupervisorProcess], args: tuple[str, ...], message: str
) -> None:
    """A bad --processes, an app path that does not import or is not an App: one error line, exit 2, no child."""
    sup = start(*args)
    status = sup.wait()
    lines = sup.stderr.strip().splitlines()

    assert status == 2, sup.stderr
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], sup.stderr


def test_a_child_that_fails_to_start_is_reported_once_with_its_traceback(
    start: Callable[..., SupervisorProcess], db: Conn
) -> None:
    """An import error that only happens in the children: its traceback is logged once, nothing restarts, exit 1."""
    sup = start("--app", "broken:app", "--processes", "2", *FAST)
    status = sup.wait()
    err = sup.stderr
    last = err.strip().splitlines()[-1]

    assert status == 1, err
    assert err.count("Traceback (most recent call last)") == 1, err
    assert "RuntimeError: this module refuses to load in a worker process" in err
    assert last.startswith("Error: child ") and "failed to start: RuntimeError" in last, last
    assert "restarting" not in err
    assert workers(db) == []


def test_an_unmigrated_schema_fails_every_child_with_one_line(tmp_path: Path, dsn: str, schema: str) -> None:
    """Children that cannot start on an unmigrated schema: the supervisor exits 1 naming `nursery-worker migrate`."""
    (tmp_path / "myjobs.py").write_text(APP_MODULE.format(schema=schema))
    sup = SupervisorProcess(tmp_path, dsn, ("--app", "myjobs:app", "--processes", "2"))
    try:
        status = sup.wait()
    finally:
        sup.kill()
    last = sup.stderr.strip().splitlines()[-1]

    assert status == 1, sup.stderr
    assert "failed to start" in last and "nursery-worker migrate" in last, last
    assert "Traceback" not in sup.stderr


# --- what people see -----------------------------------------------------------------------------


def test_process_titles_name_each_child(start: Callable[..., SupervisorProcess], db: Conn) -> None:
    """`ps` shows the supervisor and each child by slot, queues and processed count."""
    sup = start("--app", "myjobs:app", "--processes", "2", "--queues", "default,emails", *FAST)
    poll("two running children", lambda: running_children(db, 2), sup)

    def titles() -> list[str] | None:
        out = subprocess.run(["ps", "-o", "args=", "--ppid", str(sup.proc.pid)], capture_output=True, text=True)
        lines = sorted(out.stdout.strip().splitlines())
        return lines if len(lines) == 2 and all(t.endswith("processed=0") for t in lines) else None

    assert poll("child titles", titles, sup) == [
        "nursery-worker: worker 0 [queues=default,emails] processed=0",
        "nursery-worker: worker 1 [queues=default,emails] processed=0",
    ]
    own = subprocess.run(["ps", "-o", "args=", "-p", str(sup.proc.pid)], capture_output=True, text=True)
    assert own.stdout.strip() == "nursery-worker: supervisor [app=myjobs:app processes=2]"


def test_status_shows_each_child_with_its_counters(
    start: Callable[..., SupervisorProcess], app: App, db: Conn, dsn: str, schema: str, tmp_path: Path
) -> None:
    """`nursery-worker status` lists every child (pid, state, restarts, processed...); --json the same as data."""
    import json

    sup = start("--app", "myjobs:app", "--processes", "2", *FAST)
    rows = poll("two running children", lambda: running_children(db, 2), sup)
    defer(app, "record", 6)
    poll(
        "the counters reach the table",
        lambda: db.execute("SELECT sum(processed) FROM workers").fetchone() == (6,),
        sup,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURSERY_WORKER_")}
    cli = [sys.executable, "-m", "nursery_worker", "status", "--dsn", dsn, "--schema", schema, "--width", "0"]
    table = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    as_json = subprocess.run([*cli, "--json"], env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False)

    assert table.returncode == 0, table.stderr
    header, *lines = table.stdout.strip().split("\n\n")[-1].splitlines()  # the queues table comes first
    assert header.split() == [
        "SUPERVISOR", "CHILD", "PID", "HOST", "STATE", "UPTIME", "RESTARTS", "PROCESSED", "FAILED", "RUNNING",
        "HEARTBEAT", "QUEUES",
    ]  # fmt: skip
    assert [line.split()[1:3] for line in lines] == [[str(i), str(pid)] for i, pid, _, _ in rows]
    data = json.loads(as_json.stdout)["workers"]
    assert [(d["child_index"], d["pid"], d["state"], d["restarts"]) for d in data] == rows
    assert sum(d["processed"] for d in data) == 6
    assert {d["supervisor_id"] for d in data} == {f"{os.uname().nodename}:{sup.proc.pid}"}
    sup.signal(signal.SIGTERM)
    assert_clean_exit(sup, sup.wait())


def test_status_with_no_workers_says_so(tmp_path: Path, app: App, dsn: str, schema: str) -> None:
    """`nursery-worker status` on a schema without workers prints one sentence and exits 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURSERY_WORKER_")}
    cli = [sys.executable, "-m", "nursery_worker", "status", "--dsn", dsn, "--schema", schema]
    result = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False)

    assert result.returncode == 0, result.stderr
    database, sentence = result.stdout.strip().split("\n\n")
    assert database.startswith("database: ")
    assert sentence == f"no workers are registered in schema {schema!r}"


def test_the_supervisor_logs_a_status_line_per_child(start: Callable[..., SupervisorProcess], db: Conn) -> None:
    """Every --status-interval the supervisor logs one line per child: pid, state, uptime, restarts, counters."""
    sup = start("--app", "myjobs:app", "--processes", "2", *FAST)
    rows = poll("two running children", lambda: running_children(db, 2), sup)
    for index, pid, _, _ in rows:
        poll(
            f"a status line for child {index}",
            lambda index=index, pid=pid: f"child {index} pid={pid} state=running uptime=" in sup.stderr,
            sup,
        )
    assert "restarts=0 processed=0 failed=0 running=0" in sup.stderr
    sup.signal(signal.SIGTERM)
    assert_clean_exit(sup, sup.wait())
