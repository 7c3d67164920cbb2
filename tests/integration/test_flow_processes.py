"""Flow control across processes: `nursery-worker run --processes 3` children share one global limit
and one workflow, enforced by the database (real subprocesses, real PostgreSQL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from nursery_worker import App

pytestmark = pytest.mark.slow

APP_MODULE = """\
import os
import time

import psycopg

from nursery_worker import App

app = App(schema={schema!r})
DSN = os.environ.get("NURSERY_WORKER_DSN", "")


def _ledger(job: str, started: bool) -> None:
    with psycopg.connect(DSN, autocommit=True) as conn:
        if started:
            conn.execute(
                "INSERT INTO {schema}.ledger (job, pid, started) VALUES (%s, %s, clock_timestamp())", [job, os.getpid()]
            )
        else:
            conn.execute("UPDATE {schema}.ledger SET ended = clock_timestamp() WHERE job = %s", [job])


@app.task(name="limited", max_concurrency=2)
def limited(n: int) -> None:
    _ledger(f"limited-{{n}}", True)
    time.sleep(0.05)
    _ledger(f"limited-{{n}}", False)


@app.task(name="step")
def step(name: str) -> None:
    _ledger(name, True)
    time.sleep(0.02)
    _ledger(name, False)
"""


def _overlap(conn: psycopg.Connection[Any], prefix: str) -> int:
    row = conn.execute(
        """
        SELECT max(n) FROM (
            SELECT (SELECT count(*) FROM ledger o
                    WHERE o.job LIKE %(p)s AND o.started <= l.started AND (o.ended IS NULL OR o.ended > l.started)) AS n
            FROM ledger l WHERE l.job LIKE %(p)s
        ) AS x
        """,
        {"p": prefix + "%"},
    ).fetchone()
    return int(row[0] or 0) if row else 0


def test_three_worker_processes_share_one_concurrency_limit_and_one_workflow(
    tmp_path: Path, dsn: str, schema: str, app: App, db: psycopg.Connection[Any]
) -> None:
    """Three child processes never run more than two `max_concurrency=2` jobs at once, and run a chain in order."""
    db.execute("CREATE TABLE ledger (job text, pid int, started timestamptz, ended timestamptz)")
    (tmp_path / "flowapp.py").write_text(APP_MODULE.format(schema=schema))
    sys.path.insert(0, str(tmp_path))
    try:
        import flowapp  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))
    producer: App = flowapp.app
    producer.configure_database(dsn=dsn)
    try:
        limited_jobs = producer.defer_many_sync([producer.job_by_name("limited", {"n": n}) for n in range(40)])
        chain: list[Any] = []
        for i in range(5):
            chain.append(producer.get_task("step").configure(depends_on=chain[-1:]).job(name=f"step-{i}"))
        chain_jobs = producer.defer_many_sync(chain)
    finally:
        producer.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURSERY_WORKER_")}
    env["NURSERY_WORKER_DSN"] = dsn
    env["PYTHONPATH"] = str(tmp_path)
    err = (tmp_path / "supervisor.err").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nursery_worker", "run", "--app", "flowapp:app", "--processes", "3",
         "--concurrency", "4", "--poll-interval", "0.2"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=err,
    )  # fmt: skip
    try:
        ids = [j.id for j in limited_jobs + chain_jobs]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            row = db.execute("SELECT count(*) FROM jobs WHERE id = ANY(%s) AND state = 'completed'", [ids]).fetchone()
            if row and row[0] == len(ids):
                break
            assert proc.poll() is None, (tmp_path / "supervisor.err").read_text()
            time.sleep(0.1)
        else:
            pytest.fail("jobs did not complete:\n" + (tmp_path / "supervisor.err").read_text())
        pids = {r[0] for r in db.execute("SELECT DISTINCT pid FROM ledger WHERE job LIKE 'limited-%'").fetchall()}
        assert _overlap(db, "limited-") <= 2
        assert len(pids) >= 2, "the limited jobs ran in one process only"
        order = [r[0] for r in db.execute("SELECT job FROM ledger WHERE job LIKE 'step-%' ORDER BY started").fetchall()]
        assert order == [f"step-{i}" for i in range(5)]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        err.close()
