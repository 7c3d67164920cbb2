"""The ledger app of the fault tests and of the soak (``python -m benchmarks.soak``).

Its tasks write down every attempt they start and every attempt they finish in a ``ledger`` table of
the app's schema, each write in a transaction of its own on a connection of its own (never the
worker's). The ledger and the jobs table together are the ground truth of what ran, where and how
often: :func:`audit` reads both and explains every attempt beyond the first by a process the test
killed.

Worker subprocesses import ``tests.faults.ledger_app:app``, built from the environment
(``$NURSERY_WORKER_DSN``, ``$NURSERY_WORKER_SCHEMA``); tests that run a worker in their own process
call :func:`register` on their own app.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Collection, Iterable
from typing import Any

import anyio
import anyio.to_thread
import attrs
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from nursery_worker import App, JobContext

#: The ledger: one row per attempt that started. ``token`` makes each write idempotent, so a write
#: retried after its connection broke (the first try may have committed) never adds a second row.
LEDGER_DDL = """
CREATE TABLE IF NOT EXISTS {schema}.ledger (
    token text PRIMARY KEY,
    job_id bigint NOT NULL,
    attempt int NOT NULL,
    pid int NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    ended_at timestamptz,
    outcome text
)
"""

#: How long a ledger write keeps retrying while the database is away (a restart, a terminated backend).
RETRY_FOR = 120.0

#: The worker id is ``host:pid:random``; a rescue's error names the worker that stopped beating.
_LOST_WORKER = re.compile(r"worker \S*?:(\d+):[0-9a-f]{12} stopped heartbeating")


def create_ledger(conn: psycopg.Connection[Any], schema: str) -> None:
    """Create the ledger table in *schema* (idempotent)."""
    conn.execute(sql.SQL(LEDGER_DDL).format(schema=sql.Identifier(schema)))


class Ledger:
    """Writes ledger rows from worker threads, one autocommit connection per thread.

    A write that fails with a connection error reconnects and tries again for up to
    :data:`RETRY_FOR` seconds, so a database restart delays a task but never loses its row.
    """

    def __init__(self, dsn: str | None = None, schema: str | None = None, application_name: str = "nw-ledger") -> None:
        self._dsn = dsn
        self._schema = schema
        self._application_name = application_name
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened: list[psycopg.Connection[Any]] = []

    @property
    def schema(self) -> str:
        return self._schema or os.environ.get("NURSERY_WORKER_SCHEMA", "nursery_worker")

    def _connection(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            dsn = self._dsn or os.environ["NURSERY_WORKER_DSN"]
            conn = psycopg.connect(
                make_conninfo(dsn, application_name=self._application_name, connect_timeout=3), autocommit=True
            )
            self._local.conn = conn
            with self._lock:
                self._opened.append(conn)
        return conn

    def close(self) -> None:
        """Close every connection any thread opened (a test's clean-up)."""
        with self._lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            conn.close()

    def _execute(self, statement: sql.Composable, params: dict[str, Any]) -> None:
        deadline = time.monotonic() + RETRY_FOR
        delay = 0.05
        while True:
            try:
                self._connection().execute(statement, params)
                return
            except psycopg.OperationalError:
                conn = getattr(self._local, "conn", None)
                if conn is not None:
                    conn.close()
                self._local.conn = None
                if time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(1.0, delay * 2)

    def start_sync(self, job_id: int, attempt: int) -> str:
        """Record that attempt *attempt* of job *job_id* starts in this process; return its token."""
        token = uuid.uuid4().hex
        self._execute(
            sql.SQL(
                "INSERT INTO {}.ledger (token, job_id, attempt, pid) VALUES (%(token)s, %(job)s, %(attempt)s, %(pid)s) "
                "ON CONFLICT (token) DO NOTHING"
            ).format(sql.Identifier(self.schema)),
            {"token": token, "job": job_id, "attempt": attempt, "pid": os.getpid()},
        )
        return token

    def end_sync(self, token: str, outcome: str = "ok") -> None:
        """Record that the attempt of *token* ended (``ok``, or ``cancelled`` when its scope was cancelled)."""
        self._execute(
            sql.SQL(
                "UPDATE {}.ledger SET ended_at = clock_timestamp(), outcome = %(outcome)s "
                "WHERE token = %(token)s AND ended_at IS NULL"
            ).format(sql.Identifier(self.schema)),
            {"token": token, "outcome": outcome},
        )

    async def start(self, job_id: int, attempt: int) -> str:
        return await anyio.to_thread.run_sync(self.start_sync, job_id, attempt)

    async def end(self, token: str, outcome: str = "ok") -> None:
        await anyio.to_thread.run_sync(self.end_sync, token, outcome)


def register(app: App, ledger: Ledger) -> App:
    """Register the ledger tasks on *app*; return it.

    * ``ledger.work(n, seconds=0, first_seconds=None)``: sleeps (cooperatively) *seconds*, or
      *first_seconds* on attempt 1, between its two ledger writes; returns ``{"pid", "attempt"}``.
      When its scope is cancelled it records ``cancelled`` and re-raises.
    * ``ledger.blocking(seconds)``: a plain ``def`` that blocks its thread for *seconds*: a job
      that cannot be interrupted.
    * ``ledger.shielded(seconds)``: an async job that ignores its cancellation (it shields itself)
      until *seconds* have passed, then returns without another checkpoint.
    """

    @app.task(name="ledger.work", max_attempts=1000)
    async def work(context: JobContext, n: int = 0, seconds: float = 0.0, first_seconds: float | None = None) -> Any:
        token = await ledger.start(context.job_id, context.attempt)
        wait = first_seconds if first_seconds is not None and context.attempt == 1 else seconds
        try:
            await anyio.sleep(wait)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await ledger.end(token, "cancelled")
            raise
        await ledger.end(token)
        return {"pid": os.getpid(), "attempt": context.attempt}

    @app.task(name="ledger.blocking", max_attempts=1000)
    def blocking(context: JobContext, seconds: float) -> None:
        token = ledger.start_sync(context.job_id, context.attempt)
        time.sleep(seconds)
        ledger.end_sync(token)

    @app.task(name="ledger.shielded", max_attempts=1000)
    async def shielded(context: JobContext, seconds: float) -> None:
        token = await ledger.start(context.job_id, context.attempt)
        with anyio.CancelScope(shield=True):  # and its last write too: a checkpoint after it would cancel it
            await anyio.sleep(seconds)
            await ledger.end(token)

    return app


#: For worker subprocesses (``--app tests.faults.ledger_app:app``): DSN and schema from the environment.
app = register(App(), Ledger())


# --- the audit ----------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Audit:
    """What the jobs table and the ledger say after a run.

    Attributes:
        jobs: jobs in the table.
        states: how many jobs are in each state.
        attempts: ledger rows (attempts that started their code).
        duplicates: ledger rows beyond the first of each job (attempts that ran again).
        lost: committed jobs (*expected*) missing from the table or not completed.
        stuck: jobs still executing.
        unexplained: one sentence per attempt beyond the first that no kill explains.
    """

    jobs: int
    states: dict[str, int]
    attempts: int
    duplicates: int
    lost: int
    stuck: int
    unexplained: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def audit(conn: psycopg.Connection[Any], *, expected: Iterable[int], killed: Collection[int]) -> Audit:
    """Check the jobs table against the ledger after a run in which the processes *killed* were SIGKILLed.

    Every attempt beyond the first of a job must be explained by a kill: each error of the job is a
    ``WorkerLost`` naming a worker of a killed process, there is one error per extra attempt, and
    every ledger row except the completed attempt's belongs to a killed process. *conn* has its
    ``search_path`` on the run's schema.
    """
    jobs = {
        int(r[0]): (str(r[1]), int(r[2]), r[3])
        for r in conn.execute("SELECT id, state, attempt, errors FROM jobs").fetchall()
    }
    rows: dict[int, list[tuple[int, int, bool, str | None]]] = {}
    for job_id, attempt, pid, ended, outcome in conn.execute(
        "SELECT job_id, attempt, pid, ended_at IS NOT NULL, outcome FROM ledger ORDER BY started_at"
    ).fetchall():
        rows.setdefault(int(job_id), []).append((int(attempt), int(pid), bool(ended), outcome))
    expected_ids = set(expected)
    lost = sum(1 for i in expected_ids if i not in jobs or jobs[i][0] != "completed")
    killed_pids = set(killed)
    unexplained: list[str] = []
    for job_id, (state, attempt, errors) in sorted(jobs.items()):
        if state != "completed":
            continue
        for error in errors or ():
            match = _LOST_WORKER.search(str(error.get("message", "")))
            if error.get("type") != "WorkerLost" or match is None or int(match.group(1)) not in killed_pids:
                unexplained.append(f"job {job_id}: error of attempt {error.get('attempt')} not from a kill: {error}")
        if len(errors or ()) != attempt - 1:
            unexplained.append(f"job {job_id}: attempt {attempt} with {len(errors or ())} error(s) recorded")
        ledger = rows.get(job_id, [])
        final = [r for r in ledger if r[0] == attempt and r[2] and r[3] == "ok"]
        if len(final) != 1:
            unexplained.append(f"job {job_id}: {len(final)} finished ledger row(s) for its completed attempt {attempt}")
        for row in ledger:
            if row not in final[:1] and row[1] not in killed_pids:
                unexplained.append(f"job {job_id}: attempt {row[0]} in pid {row[1]}, which was not killed")
    per_job = Counter(job_id for job_id, ledger in rows.items() for _ in ledger)
    return Audit(
        jobs=len(jobs),
        states=dict(sorted(Counter(state for state, _, _ in jobs.values()).items())),
        attempts=sum(per_job.values()),
        duplicates=sum(n - 1 for n in per_job.values()),
        lost=lost,
        stuck=sum(1 for state, _, _ in jobs.values() if state == "executing"),
        unexplained=tuple(unexplained),
    )
