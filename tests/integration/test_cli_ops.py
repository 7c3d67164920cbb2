"""The operations commands (status, healthcheck, jobs, queues, prune, defer --file), run as a user
runs them: the real console script in a subprocess, against real data in a schema of the test's own."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest

from nursery_worker import App

TIMEOUT = 60
CONSOLE_SCRIPT = str(Path(sys.executable).with_name("nursery-worker"))
Conn = psycopg.Connection[Any]
TRACEBACK = 'Traceback (most recent call last):\n  File "tasks.py", line 3, in record\nValueError: boom\n'


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("NURSERY_WORKER_")}


def _cli(
    args: Sequence[str], *, dsn: str, schema: str, stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [CONSOLE_SCRIPT, *args, "--dsn", dsn, "--schema", schema]
    return subprocess.run(argv, env=_env(), input=stdin, capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd)


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def _one_line_error(result: subprocess.CompletedProcess[str], needle: str, code: int = 1) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert needle in lines[0], lines[0]
    return lines[0]


def _defer(app: App, *jobs: tuple[str, dict[str, Any]]) -> list[int]:
    """Enqueue ``record`` jobs as ``(queue, args)`` pairs; return their ids."""
    return [j.id for j in app.defer_many_sync([app.job_by_name("record", a, queue=q) for q, a in jobs])]


def _discard(db: Conn, job_id: int) -> None:
    error = {"attempt": 1, "at": "2026-01-01T00:00:00+00:00", "type": "ValueError", "message": "boom"}
    error["traceback"] = TRACEBACK
    db.execute(
        "UPDATE jobs SET state = 'discarded', attempt = 1, finished_at = now() - interval '2 days', "
        "errors = jsonb_build_array(%s::jsonb) WHERE id = %s",
        (json.dumps(error), job_id),
    )


def _register_worker(db: Conn, worker_id: str, *, age: float = 0.0, pid: int = 4242) -> None:
    db.execute(
        "INSERT INTO workers (id, hostname, pid, queues, concurrency, heartbeat_at) "
        "VALUES (%s, %s, %s, ARRAY['default'], 10, now() - %s * interval '1 second')",
        (worker_id, socket.gethostname(), pid, age),
    )


# --- status --------------------------------------------------------------------------------------


def test_status_shows_queue_counts_oldest_wait_and_workers(app: App, db: Conn, dsn: str, schema: str) -> None:
    """`status` prints a queues table (counts by state, oldest available job's age) and the workers table."""
    ids = _defer(app, ("default", {"n": 1}), ("default", {"n": 2}), ("mail", {"n": 3}))
    _discard(db, ids[2])
    started = time.monotonic()
    db.execute("UPDATE jobs SET scheduled_at = now() - interval '125 seconds' WHERE id = %s", (ids[0],))
    _register_worker(db, "w-1")

    out = _ok(_cli(["status", "--width", "0"], dsn=dsn, schema=schema))  # xdist sets COLUMNS=80
    took = time.monotonic() - started

    database, queues, workers = out.strip().split("\n\n")
    assert database.startswith(("database: ", "WARNING database: "))  # other sessions' transactions may be old
    header, *rows = queues.splitlines()
    assert header.split() == [
        "QUEUE", "STATE", "PENDING", "AVAILABLE", "SCHEDULED", "EXECUTING", "RETRYABLE", "COMPLETED", "DISCARDED",
        "CANCELLED", "OLDEST", "AVAILABLE", "LIMITS",
    ]  # fmt: skip
    assert [r.split()[:10] for r in rows] == [
        ["default", "running", "0", "2", "0", "0", "0", "0", "0", "0"],
        ["mail", "running", "0", "0", "0", "0", "0", "0", "1", "0"],
    ]
    # 125 s ago by the database clock, plus however long the command took to query it (a loaded
    # machine can take seconds to start a process): "2m05s" at once, "2m10s" 5 s later.
    minutes, seconds = re.fullmatch(r"(\d+)m(\d+)s", rows[0].split()[-2]).groups()  # type: ignore[union-attr]
    assert 125 <= int(minutes) * 60 + int(seconds) <= 125 + took
    assert rows[1].split()[-2:] == ["-", "-"]
    assert workers.splitlines()[0].split()[0] == "SUPERVISOR"
    assert "w-1" not in workers and "4242" in workers


def test_status_json_has_queues_and_workers(app: App, db: Conn, dsn: str, schema: str) -> None:
    """`status --json` is an object with the schema, each queue's counts and age, and each worker's heartbeat age."""
    _defer(app, ("default", {"n": 1}))
    _register_worker(db, "w-1", age=3.0)

    data = json.loads(_ok(_cli(["status", "--json"], dsn=dsn, schema=schema)))

    assert data["schema"] == schema
    (queue,) = data["queues"]
    assert queue["name"] == "default" and queue["paused"] is False
    assert queue["counts"]["available"] == 1 and queue["oldest_available_age"] >= 0
    (worker,) = data["workers"]
    assert worker["id"] == "w-1" and 3.0 <= worker["heartbeat_age"] < 60


class _Watch:
    """A `status --watch` subprocess whose stdout a thread drains, so waiting for a frame is bounded."""

    def __init__(self, dsn: str, schema: str) -> None:
        argv = [CONSOLE_SCRIPT, "status", "--watch", "0.2", "--dsn", dsn, "--schema", schema]
        self.proc = subprocess.Popen(argv, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def wait_for_frames(self, count: int) -> None:
        """Wait until *count* frames have been drawn; the deadline only bounds a hang."""
        deadline = time.monotonic() + TIMEOUT
        frames = 0
        while frames < count:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"{frames} frame(s) drawn in {TIMEOUT}s, expected {count}")
            assert line is not None, f"exited early ({self.proc.wait()}): {self.proc.stderr.read()}"  # type: ignore[union-attr]
            frames += line.startswith("nursery-worker status: schema")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def test_status_watch_redraws_until_interrupted(app: App, dsn: str, schema: str) -> None:
    """`status --watch 0.2` redraws the status repeatedly and exits 0 on Ctrl-C (SIGINT)."""
    _defer(app, ("default", {"n": 1}))
    watch = _Watch(dsn, schema)
    try:
        watch.wait_for_frames(2)
        watch.proc.send_signal(signal.SIGINT)
        assert watch.proc.wait(timeout=TIMEOUT) == 0
    finally:
        watch.stop()


def test_status_watch_stops_on_sigterm_too(app: App, dsn: str, schema: str) -> None:
    """`status --watch` stops at SIGTERM as at Ctrl-C: exit 0, no traceback."""
    watch = _Watch(dsn, schema)
    try:
        watch.wait_for_frames(1)
        watch.proc.send_signal(signal.SIGTERM)
        assert watch.proc.wait(timeout=TIMEOUT) == 0
        assert watch.proc.stderr is not None and "Traceback" not in watch.proc.stderr.read()
    finally:
        watch.stop()


# --- healthcheck ---------------------------------------------------------------------------------


def test_healthcheck_passes_with_a_fresh_heartbeat_on_this_host(db: Conn, app: App, dsn: str, schema: str) -> None:
    """`healthcheck` exits 0 when a worker of this host beat within --max-age."""
    _register_worker(db, "w-1", age=1.0)

    out = _ok(_cli(["healthcheck", "--max-age", "30"], dsn=dsn, schema=schema))

    assert out.startswith("healthy: worker w-1")


def test_healthcheck_fails_with_a_stale_heartbeat(db: Conn, app: App, dsn: str, schema: str) -> None:
    """`healthcheck` exits 1 with one line when the newest heartbeat is older than --max-age."""
    _register_worker(db, "w-1", age=120.0, pid=77)

    _one_line_error(_cli(["healthcheck"], dsn=dsn, schema=schema), "unhealthy: the last heartbeat")
    _one_line_error(_cli(["healthcheck", "--pid", "77"], dsn=dsn, schema=schema), "ago (worker w-1")
    assert _cli(["healthcheck", "--pid", "77", "--max-age", "600"], dsn=dsn, schema=schema).returncode == 0


def test_healthcheck_fails_without_a_matching_worker(db: Conn, app: App, dsn: str, schema: str) -> None:
    """`healthcheck --worker-id X` exits 1 when no such worker is registered."""
    _register_worker(db, "w-1")

    _one_line_error(_cli(["healthcheck", "--worker-id", "nope"], dsn=dsn, schema=schema), "no worker is registered")


# --- jobs ----------------------------------------------------------------------------------------


def test_jobs_list_filters_and_prints_a_table_or_json(app: App, db: Conn, dsn: str, schema: str) -> None:
    """`jobs list` prints the matching jobs newest first; --state/--queue/--task/--limit filter; --json as data."""
    ids = _defer(app, ("default", {"n": 1}), ("mail", {"n": 2}), ("mail", {"n": 3}))
    _discard(db, ids[1])

    table = _ok(_cli(["jobs", "list"], dsn=dsn, schema=schema)).splitlines()
    assert table[0].split()[:5] == ["ID", "TASK", "QUEUE", "STATE", "ATTEMPT"]
    assert [int(r.split()[0]) for r in table[1:]] == ids[::-1]
    assert "ValueError: boom" in table[2]

    def listed(*args: str) -> list[int]:
        return [j["id"] for j in json.loads(_ok(_cli(["jobs", "list", "--json", *args], dsn=dsn, schema=schema)))]

    assert listed("--state", "discarded") == [ids[1]]
    assert listed("--queue", "mail") == [ids[2], ids[1]]
    assert listed("--queue", "mail", "--state", "available") == [ids[2]]
    assert listed("--task", "other") == []
    assert listed("--limit", "1") == [ids[2]]


def test_jobs_show_prints_args_and_errors_with_tracebacks(app: App, db: Conn, dsn: str, schema: str) -> None:
    """`jobs show ID` prints the job's fields, arguments and each error's traceback; --json the same as data."""
    (job_id,) = _defer(app, ("mail", {"n": 42}))
    _discard(db, job_id)

    text = _ok(_cli(["jobs", "show", str(job_id)], dsn=dsn, schema=schema))
    data = json.loads(_ok(_cli(["jobs", "show", str(job_id), "--json"], dsn=dsn, schema=schema)))

    assert text.startswith(f"job {job_id}\n")
    assert "discarded" in text and '"n": 42' in text and "ValueError: boom" in text
    assert 'File "tasks.py", line 3, in record' in text
    assert data["args"] == {"n": 42} and data["state"] == "discarded" and data["queue"] == "mail"
    assert data["errors"][0]["traceback"] == TRACEBACK


def test_jobs_show_of_an_unknown_id_is_one_line(app: App, dsn: str, schema: str) -> None:
    """`jobs show` of a missing job prints one error line and exits 1."""
    _one_line_error(_cli(["jobs", "show", "999"], dsn=dsn, schema=schema), "999")


def test_jobs_retry_one_and_all_discarded(app: App, db: Conn, dsn: str, schema: str) -> None:
    """`jobs retry ID` and `jobs retry --state discarded --queue Q --yes` requeue discarded jobs and report them."""
    ids = _defer(app, ("default", {"n": 1}), ("mail", {"n": 2}), ("mail", {"n": 3}), ("other", {"n": 4}))
    for job_id in ids:
        _discard(db, job_id)

    one = _ok(_cli(["jobs", "retry", str(ids[0])], dsn=dsn, schema=schema))
    many = _ok(_cli(["jobs", "retry", "--state", "discarded", "--queue", "mail", "--yes"], dsn=dsn, schema=schema))
    rest = json.loads(_ok(_cli(["jobs", "retry", "--state", "discarded", "--yes", "--json"], dsn=dsn, schema=schema)))

    assert one.strip() == f"job {ids[0]} (record) is available again in queue 'default'"
    assert many.splitlines() == [
        "2 job(s) match (state discarded, queue mail) and would be retried",
        "retried 2 of 2 job(s)",
    ]
    assert (rest["matched"], rest["changed"], rest["skipped"]) == (1, 1, 0)
    assert db.execute("SELECT DISTINCT state FROM jobs").fetchall() == [("available",)]
    _one_line_error(
        _cli(["jobs", "retry", str(ids[0])], dsn=dsn, schema=schema),
        "only a failed (discarded) or cancelled job can be retried",
    )


def test_jobs_cancel_prints_what_happened(app: App, dsn: str, schema: str) -> None:
    """`jobs cancel ID` cancels a waiting job and prints the result's message; again, it says nothing changed."""
    (job_id,) = _defer(app, ("default", {"n": 1}))

    first = _ok(_cli(["jobs", "cancel", str(job_id)], dsn=dsn, schema=schema))
    again = json.loads(_ok(_cli(["jobs", "cancel", str(job_id), "--json"], dsn=dsn, schema=schema)))

    assert first.strip() == f"job {job_id} was cancelled"
    assert again["status"] == "already_finished" and again["state"] == "cancelled"
    _one_line_error(_cli(["jobs", "cancel", "12345"], dsn=dsn, schema=schema), "12345")


# --- queues, prune -------------------------------------------------------------------------------


def test_queues_pause_resume_and_list(app: App, dsn: str, schema: str) -> None:
    """`queues pause/resume NAME` flip the flag (saying whether it changed); `queues list` shows it."""
    _defer(app, ("mail", {"n": 1}))

    assert "paused" in _ok(_cli(["queues", "pause", "mail"], dsn=dsn, schema=schema))
    assert "already paused" in _ok(_cli(["queues", "pause", "mail"], dsn=dsn, schema=schema))
    table = _ok(_cli(["queues", "list"], dsn=dsn, schema=schema)).splitlines()
    assert table[1].split()[:4] == ["mail", "paused", "0", "1"]
    listed = json.loads(_ok(_cli(["queues", "list", "--json"], dsn=dsn, schema=schema)))
    assert [(q["name"], q["paused"]) for q in listed] == [("mail", True)]
    resumed = json.loads(_ok(_cli(["queues", "resume", "mail", "--json"], dsn=dsn, schema=schema)))
    assert resumed == {"queue": "mail", "paused": False, "changed": True}
    assert "was not paused" in _ok(_cli(["queues", "resume", "mail"], dsn=dsn, schema=schema))


def test_prune_deletes_finished_jobs_older_than_the_age(app: App, db: Conn, dsn: str, schema: str) -> None:
    """`prune --older-than 1d` deletes jobs finished over a day ago and keeps the rest; --json reports the count."""
    ids = _defer(app, ("default", {"n": 1}), ("default", {"n": 2}))
    _discard(db, ids[0])  # finished two days ago

    kept = json.loads(_ok(_cli(["prune", "--older-than", "3d", "--json"], dsn=dsn, schema=schema)))
    pruned = _ok(_cli(["prune", "--older-than", "1d"], dsn=dsn, schema=schema))

    assert kept["pruned"] == 0
    assert pruned.startswith("pruned 1 job(s)")
    assert db.execute("SELECT id FROM jobs").fetchall() == [(ids[1],)]
    _one_line_error(_cli(["prune", "--older-than", "soon"], dsn=dsn, schema=schema), "not a duration", 2)


# --- defer --file --------------------------------------------------------------------------------


def test_defer_file_inserts_every_line_with_progress(app: App, db: Conn, dsn: str, schema: str, tmp_path: Path) -> None:
    """`defer --file` inserts one job per line in batches, reports progress with --progress, and prints the count."""
    lines = [json.dumps({"task": "record", "args": {"n": i}, "queue": "bulk", "priority": i % 3}) for i in range(25)]
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(lines) + "\n\n")

    result = _cli(["defer", "--file", str(path), "--batch-size", "10", "--progress"], dsn=dsn, schema=schema)

    assert _ok(result).strip() == f"deferred 25 job(s) from {path}"
    assert result.stderr.splitlines()[-3:] == ["deferred 10/25", "deferred 20/25", "deferred 25/25"]
    rows = db.execute("SELECT args->>'n', queue, priority FROM jobs ORDER BY id").fetchall()
    assert rows == [(str(i), "bulk", i % 3) for i in range(25)]


def test_defer_from_stdin(app: App, db: Conn, dsn: str, schema: str) -> None:
    """`defer --file -` reads the jobs from stdin."""
    stdin = '{"task": "record", "args": {"n": 1}}\n{"task": "record"}\n'

    assert _ok(_cli(["defer", "--file", "-"], dsn=dsn, schema=schema, stdin=stdin)).strip() == (
        "deferred 2 job(s) from stdin"
    )
    assert db.execute("SELECT count(*) FROM jobs").fetchone() == (2,)


def test_defer_file_with_a_bad_line_inserts_nothing(app: App, db: Conn, dsn: str, schema: str) -> None:
    """A bad line (bad JSON, unknown key, bad queue) is named by its number and nothing is deferred."""
    good = '{"task": "record", "args": {"n": 1}}\n'
    for bad, needle in [
        ("{not json\n", "stdin line 2: not valid JSON"),
        ('{"task": "record", "color": 1}\n', "stdin line 2: unknown key(s) 'color'"),
        ('{"task": "record", "queue": "no spaces"}\n', "stdin line 2:"),
        ('{"args": {}}\n', "stdin line 2: 'task' must be"),
    ]:
        result = _cli(["defer", "--file", "-"], dsn=dsn, schema=schema, stdin=good + bad + good)
        line = _one_line_error(result, needle)
        assert "nothing was deferred" in line
    assert db.execute("SELECT count(*) FROM jobs").fetchone() == (0,)


@pytest.mark.parametrize("args", [["defer"], ["defer", "record", "--file", "-"]], ids=["neither", "both"])
def test_defer_needs_a_task_or_a_file(app: App, dsn: str, schema: str, args: list[str]) -> None:
    """`defer` without TASK or --file, or with both, is a usage error."""
    result = _cli(args, dsn=dsn, schema=schema, stdin="")

    assert result.returncode == 2
    assert "either TASK" in result.stderr
