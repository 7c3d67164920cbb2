"""Operator experience (no silent surprises), the same on every engine: retry refusals, queue names
the database has never seen, limit changes that keep what they were not given, workers that serve
their app's queues, and the command line's notices."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from nursery_worker import App, JobState, JobStateError, open_worker

from ..integration.helpers import fast

TIMEOUT = 60
CONSOLE_SCRIPT = str(Path(sys.executable).with_name("nursery-worker"))

APP_MODULE = """\
from nursery_worker import App

app = App(schema={schema!r})


@app.task(name="mail.send", queue="emails")
def send(to: str) -> str:
    return to


@app.task(name="plain")
def plain() -> None:
    return None
"""


def _cli(
    args: Sequence[str], *, cwd: Path, dsn: str | None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NURSERY_WORKER_")}
    if dsn is not None:
        clean["NURSERY_WORKER_DSN"] = dsn
    clean.update(env or {})
    return subprocess.run([CONSOLE_SCRIPT, *args], cwd=cwd, env=clean, capture_output=True, text=True, timeout=TIMEOUT)


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stdout


@pytest.fixture
def app_dir(tmp_path: Path, engine_schema: str) -> Path:
    """A directory holding ``opapp.py``: an app with a task on queue ``emails`` and one on ``default``."""
    (tmp_path / "opapp.py").write_text(APP_MODULE.format(schema=engine_schema))
    return tmp_path


# --- jobs retry -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_retry_of_a_completed_job_names_its_state_and_what_can_be_retried(app: App) -> None:
    """Retrying a completed job says it is completed and that only a discarded or cancelled job can be retried."""

    @app.task
    async def work() -> None: ...

    job = await work.defer()
    async with open_worker(app, **fast(once=True)) as worker:
        await worker.wait_stopped()
    assert (await app.get_job(job.id)).state is JobState.COMPLETED
    with pytest.raises(JobStateError) as caught:
        await app.retry(job.id)
    assert str(caught.value) == (
        f"job {job.id} is completed: only a failed (discarded) or cancelled job can be retried"
    )


@pytest.mark.anyio
async def test_retry_of_an_available_job_says_it_is_already_queued(app: App) -> None:
    """Retrying an available job says it is available and already queued."""

    @app.task
    async def waiting() -> None: ...

    job = await waiting.defer()
    with pytest.raises(JobStateError, match=rf"job {job.id} is available \(it is already queued\): only a failed"):
        await app.retry(job.id)


# --- which queues a worker serves -------------------------------------------------------------


def test_the_app_names_default_and_the_queues_of_its_tasks_and_schedules(tmp_path: Path) -> None:
    """App.queue_names is default plus each queue a registered task or periodic schedule names, sorted."""
    app = App(dsn=f"sqlite:///{tmp_path / 'unused.sqlite3'}")

    @app.task(queue="emails")
    def send() -> None: ...

    @app.periodic(cron="0 * * * *", queue="reports")
    @app.task
    def report() -> None: ...

    assert app.queue_names() == ("default", "emails", "reports")


@pytest.mark.anyio
async def test_a_worker_without_queues_serves_every_queue_its_app_names(app: App) -> None:
    """open_worker(app) with no queues= runs jobs of a task on its own queue, and lists the app's queues."""

    @app.task(queue="emails")
    async def send() -> str:
        return "sent"

    job = await send.defer()
    async with open_worker(app, **fast(once=True)) as worker:
        assert worker.config.queues == ("default", "emails")
        await worker.wait_stopped()
    assert (await app.get_job(job.id)).result == "sent"


@pytest.mark.anyio
async def test_a_worker_narrowed_by_queues_warns_of_each_task_it_does_not_serve(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    """open_worker(queues=...) leaving out a task's queue logs one WARNING naming the task, the queue and the fix."""

    @app.task(name="mail.send", queue="emails")
    async def send() -> None: ...

    @app.task(name="plain")
    async def plain() -> None: ...

    job = await send.defer()
    with caplog.at_level("WARNING", logger="nursery_worker.worker"):
        async with open_worker(app, **fast(once=True, queues=["default"])) as worker:
            await worker.wait_stopped()
    warnings = [r.getMessage() for r in caplog.records if "does not serve" in r.getMessage()]
    assert len(warnings) == 1
    assert "'mail.send'" in warnings[0] and "'emails'" in warnings[0] and "--queues" in warnings[0]
    assert (await app.get_job(job.id)).state is JobState.AVAILABLE


@pytest.mark.slow
def test_run_without_queues_serves_the_apps_queues_and_the_environment_narrows_them(
    app_dir: Path, engine_dsn: str
) -> None:
    """`run --once` works a task's own queue by default; NURSERY_WORKER_QUEUES=default narrows it, with a warning."""

    def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return _cli(args, cwd=app_dir, dsn=engine_dsn, env=env)

    _ok(cli("migrate", "--app", "opapp:app"))
    _ok(cli("defer", "mail.send", "--app", "opapp:app", "--args", '{"to": "a"}'))
    narrowed = cli("run", "--app", "opapp:app", "--once", env={"NURSERY_WORKER_QUEUES": "default"})
    assert "processed 0 job(s)" in _ok(narrowed)
    assert "task 'mail.send' goes to queue 'emails', which this worker does not serve" in narrowed.stderr
    assert "processed 1 job(s)" in _ok(cli("run", "--app", "opapp:app", "--once"))


# --- run's options from the environment -------------------------------------------------------


def test_every_run_option_names_its_environment_variable_in_help() -> None:
    """`run --help` shows NURSERY_WORKER_<OPTION> for each worker and supervisor option."""
    from click.testing import CliRunner

    from nursery_worker._cli import cli
    from nursery_worker._config import worker_options

    shown = CliRunner().invoke(cli, ["run", "--help"], terminal_width=1000).output
    names = [o.name for o in worker_options() if o.name != "retention"]
    names += ["processes", "health_timeout", "max_restarts", "restart_window", "restart_delay", "status_interval"]
    for name in [*names, "app", "backend", "metrics_port", "metrics_host", "reload", "log_level", "log_format"]:
        assert f"NURSERY_WORKER_{name.upper()}" in shown, name


def test_run_options_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """NURSERY_WORKER_SHUTDOWN_TIMEOUT=1m, _CONCURRENCY, _QUEUES and _PROCESSES set run's options."""
    from nursery_worker._cli import run

    monkeypatch.setenv("NURSERY_WORKER_SHUTDOWN_TIMEOUT", "1m")
    monkeypatch.setenv("NURSERY_WORKER_CONCURRENCY", "3")
    monkeypatch.setenv("NURSERY_WORKER_QUEUES", "a,b")
    monkeypatch.setenv("NURSERY_WORKER_PROCESSES", "2")
    params = run.make_context("run", ["--app", "x:app"]).params

    assert (params["shutdown_timeout"], params["concurrency"], params["queues"]) == (60.0, 3, "a,b")
    assert params["processes"] == 2


def test_a_bad_value_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    """An invalid NURSERY_WORKER_PROCESSES is one error line naming the option and the variable."""
    result = _cli(["run", "--app", "x:app"], cwd=tmp_path, dsn=None, env={"NURSERY_WORKER_PROCESSES": "0"})
    assert result.returncode == 2
    assert "Invalid value for '--processes' (env var: 'NURSERY_WORKER_PROCESSES'): 0" in result.stderr


# --- queue names nothing knows, and limits that keep what they were not given -----------------


@pytest.mark.anyio
async def test_a_queue_nothing_names_is_refused_naming_the_known_queues_and_the_closest(app: App) -> None:
    """Admin.pause_queue(create=False) of a likely typo raises naming it, the known queues, the match and --create."""
    from nursery_worker import ConfigurationError
    from nursery_worker._admin import Admin

    @app.task(queue="emails")
    async def send() -> None: ...

    with pytest.raises(ConfigurationError) as caught:
        await Admin(app).pause_queue("emials", create=False)
    message = str(caught.value)
    assert "queue 'emials' is unknown" in message and "known queues: default, emails" in message
    assert "did you mean 'emails'?" in message and "--create" in message
    assert [q.name for q in await app.list_queues()] == []


@pytest.mark.anyio
async def test_a_queue_named_by_a_job_or_a_worker_is_known_and_create_allows_any(app: App) -> None:
    """A queue with a job, one a running worker serves, and (with create=True) a new one can be paused."""
    from nursery_worker._admin import Admin

    admin = Admin(app)
    await app.defer_many([app.job_by_name("elsewhere.task", {}, queue="reports")])
    assert await admin.pause_queue("reports", create=False)
    async with open_worker(app, **fast(queues=["served"])):
        assert await admin.set_queue_limits("served", max_concurrency=2, create=False)
    assert await admin.resume_queue("reports", create=False) and await admin.pause_queue("brand.new", create=True)


@pytest.mark.anyio
async def test_set_queue_limits_changes_only_what_is_given(app: App) -> None:
    """A rate limit set after a concurrency limit keeps it; None lifts only the limit it is given for."""
    await app.set_queue_limits("emails", max_concurrency=3)
    both = await app.set_queue_limits("emails", rate_limit="10/s")
    assert (both.max_concurrency, both.rate_limit) == (3, "10/1s")
    rate_only = await app.set_queue_limits("emails", max_concurrency=None)
    assert (rate_only.max_concurrency, rate_only.rate_limit) == (None, "10/1s")
    concurrency_only = await app.set_queue_limits("emails", max_concurrency=5, rate_limit=None)
    assert (concurrency_only.max_concurrency, concurrency_only.rate_limit) == (5, None)


@pytest.mark.anyio
async def test_set_queue_limits_with_neither_limit_is_refused(app: App) -> None:
    """set_queue_limits(name) alone changes nothing and says to give a limit (None lifts one)."""
    from nursery_worker import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"give max_concurrency= or rate_limit= \(a value sets a limit, None"):
        await app.set_queue_limits("emails")
    assert await app.list_queues() == []


@pytest.mark.slow
def test_queues_commands_refuse_a_typo_and_limit_changes_only_what_is_given(app_dir: Path, engine_dsn: str) -> None:
    """`queues pause emials` is refused naming 'emails' and --create; `queues limit` flags change one limit each."""

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return _cli([*args, "--app", "opapp:app"], cwd=app_dir, dsn=engine_dsn)

    _ok(cli("migrate"))
    typo = cli("queues", "pause", "emials")
    assert typo.returncode == 1 and "did you mean 'emails'?" in typo.stderr and "--create" in typo.stderr
    assert "paused" in _ok(cli("queues", "pause", "emials", "--create"))
    assert "at most 2 running" in _ok(cli("queues", "limit", "emails", "--max-concurrency", "2"))
    assert "at most 2 running, at most 5/1s starts" in _ok(cli("queues", "limit", "emails", "--rate-limit", "5/s"))
    assert (
        _ok(cli("queues", "limit", "emails", "--no-concurrency-limit")).strip() == "queue 'emails': at most 5/1s starts"
    )
    assert _ok(cli("queues", "limit", "emails", "--no-rate-limit")).strip() == "queue 'emails': no limits"
    both = cli("queues", "limit", "emails", "--max-concurrency", "2", "--no-concurrency-limit")
    assert both.returncode == 2 and "not both" in both.stderr


# --- defer without the app -----------------------------------------------------------------------


@pytest.mark.slow
def test_defer_without_app_says_which_queue_it_used_and_that_nothing_was_checked(
    app_dir: Path, engine_dsn: str, engine_schema: str
) -> None:
    """`defer mail.send` without --app notes on stderr the queue it used and the unchecked name; --app uses 'emails'."""
    _ok(_cli(["migrate", "--app", "opapp:app"], cwd=app_dir, dsn=engine_dsn))
    blind = _cli(["defer", "mail.send", "--schema", engine_schema], cwd=app_dir, dsn=engine_dsn)
    assert json.loads(_ok(blind))["queue"] == "default"
    assert "went to queue 'default'" in blind.stderr and "could not be checked" in blind.stderr
    checked = _cli(["defer", "mail.send", "--app", "opapp:app", "--args", '{"to": "a"}'], cwd=app_dir, dsn=engine_dsn)
    assert json.loads(_ok(checked))["queue"] == "emails"
    assert "note:" not in checked.stderr


# --- the embedded engine's notice ----------------------------------------------------------------


@pytest.mark.anyio
async def test_a_worker_on_the_embedded_file_by_default_warns_once_naming_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """open_worker on an App with no DSN anywhere logs one WARNING with the file's path and 'only ... this host'."""
    monkeypatch.delenv("NURSERY_WORKER_DSN", raising=False)
    monkeypatch.chdir(tmp_path)
    caplog.set_level("INFO", logger="nursery_worker")
    app = App(schema=f"t_{tmp_path.name[-8:]}")
    try:
        async with open_worker(app, **fast(once=True)) as worker:
            await worker.wait_stopped()
    finally:
        await app.aclose()
    notices = [r for r in caplog.records if "embedded SQLite file" in r.getMessage()]
    (warning,) = notices
    assert warning.levelname == "WARNING"
    assert str(tmp_path / "nursery-worker.sqlite3") in warning.getMessage()
    assert "only processes on this host see" in warning.getMessage()


@pytest.mark.slow
def test_cli_commands_on_the_embedded_file_print_one_short_line(tmp_path: Path) -> None:
    """`queues list` with no DSN anywhere prints one short notice naming the file, on stderr."""
    result = _cli(["queues", "list"], cwd=tmp_path, dsn=None)
    _ok(result)
    (line,) = [line for line in result.stderr.splitlines() if "embedded" in line]
    assert str(tmp_path / "nursery-worker.sqlite3") in line and len(line.replace(str(tmp_path), "")) < 170


# --- run --reload ------------------------------------------------------------------------------------

RELOAD_APP = """\
from pathlib import Path

from nursery_worker import App

app = App(schema={schema!r})


@app.on_startup
async def mark() -> None:
    Path(__file__).with_name("marker.txt").write_text({version!r})
"""


def _wait_for(predicate: Callable[[], bool], what: str, proc: subprocess.Popen[str], within: float = 30.0) -> None:
    """Poll *predicate* until it holds; fail naming *what* if the process exits or *within* passes."""
    deadline = time.monotonic() + within
    while not predicate():
        assert proc.poll() is None, f"the reloader exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {within}s"
        time.sleep(0.05)


def _change_until(module: Path, source: str, done: Callable[[], bool], what: str, proc: subprocess.Popen[str]) -> None:
    """Write *source* to *module* until *done* holds (rewritten every 5 s: a watcher that was not up yet
    when the file changed sees the next change)."""
    written = -math.inf

    def check() -> bool:
        nonlocal written
        if time.monotonic() - written > 5:
            module.write_text(source + ("\n" if written > -math.inf else ""))
            written = time.monotonic()
        return done()

    _wait_for(check, what, proc)


@pytest.mark.slow
def test_run_reload_restarts_the_worker_with_the_new_code(tmp_path: Path, engine_dsn: str, engine_schema: str) -> None:
    """`run --reload` restarts on a change with the new code, and after code that fails, at the next change."""
    module = tmp_path / "reloadapp.py"
    marker = tmp_path / "marker.txt"
    module.write_text(RELOAD_APP.format(schema=engine_schema, version="v1"))
    _ok(_cli(["migrate", "--app", "reloadapp:app"], cwd=tmp_path, dsn=engine_dsn))
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURSERY_WORKER_")}
    env["NURSERY_WORKER_DSN"] = engine_dsn
    argv = [CONSOLE_SCRIPT, "run", "--app", "reloadapp:app", "--reload", "--shutdown-timeout", "5"]
    log_path = tmp_path / "reloader.log"

    def has_marker(version: str) -> Callable[[], bool]:
        return lambda: marker.exists() and marker.read_text() == version

    with log_path.open("w") as log:
        proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            _wait_for(has_marker("v1"), "first worker", proc)
            _change_until(module, RELOAD_APP.format(schema=engine_schema, version="v2"), has_marker("v2"), "v2", proc)
            broken = 'raise RuntimeError("half-edited")\n'
            _change_until(module, broken, lambda: "it restarts when a .py file" in log_path.read_text(), "exit", proc)
            _change_until(module, RELOAD_APP.format(schema=engine_schema, version="v3"), has_marker("v3"), "v3", proc)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=TIMEOUT) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    output = log_path.read_text()
    assert "reloadapp.py changed; stopping the worker to restart it" in output, output
    assert "RuntimeError: half-edited" in output, output


def test_run_reload_refuses_several_processes(tmp_path: Path) -> None:
    """`run --reload --processes 2` is one usage error naming both options."""
    result = _cli(["run", "--app", "x:app", "--reload", "--processes", "2"], cwd=tmp_path, dsn=None)
    assert result.returncode == 2
    assert "--reload restarts one worker process: drop --processes or --reload" in result.stderr
