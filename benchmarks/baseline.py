"""Section 5b, the plain-SQL baseline: what PostgreSQL on this machine can do without any queue library.

One synchronous psycopg connection (autocommit, statements prepared) loops over N rows pre-inserted
into a table shaped like ours (a schema migrated through ``App.migrate_sync()``, so the same
columns, constraints and partial indexes): claim 100 with ``FOR UPDATE SKIP LOCKED`` (available ->
executing, as the worker's fetch does), then complete those 100 with one ``UPDATE ... WHERE id =
ANY(...)``. Figure: rows claimed and completed per second.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql

from ._common import Plan, Report, log, migrated_schema

SECTION = "baseline"
BATCH = 100
#: The name of the plain-SQL limit figure (the denominator of the "25% of the limit" target).
PLAIN_SQL_LIMIT = f"plain-SQL limit: one statement claims and completes {BATCH}, minimal table, 2 connections"

_FILL = """
INSERT INTO {s}.jobs (task, queue, args)
SELECT 'bench.noop', 'bench', jsonb_build_object('i', g) FROM generate_series(1, %s) AS g
"""
_CLAIM = """
WITH next AS (
    SELECT id FROM {s}.jobs WHERE state = 'available' AND limit_key IS NULL AND {queue_test}
    ORDER BY priority DESC, scheduled_at, id LIMIT %s FOR UPDATE SKIP LOCKED
)
UPDATE {s}.jobs AS j SET state = 'executing', attempt = j.attempt + 1, attempted_at = clock_timestamp(),
    worker_id = 'baseline'
FROM next WHERE j.id = next.id RETURNING j.id
"""
_COMPLETE = """
UPDATE {s}.jobs SET state = 'completed', finished_at = now(), worker_id = NULL
WHERE id = ANY(%s::bigint[]) AND state = 'executing' AND worker_id = 'baseline'
"""


def _buffers(conn: psycopg.Connection[Any], schema: str) -> int:
    """Buffers the schema's tables and indexes were read from or hit so far (this server's statistics):
    the loop's work, free of the timing noise of a loaded machine."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    row = conn.execute(
        "SELECT sum(heap_blks_hit + heap_blks_read + coalesce(idx_blks_hit, 0) + coalesce(idx_blks_read, 0))::bigint "
        "FROM pg_statio_user_tables WHERE schemaname = %s",
        [schema],
    ).fetchone()
    return int(row[0] or 0) if row else 0


@contextlib.contextmanager
def _old_snapshot(dsn: str, hold: bool) -> Iterator[None]:
    """While inside, another session holds a REPEATABLE READ snapshot (if *hold*): no row version
    the loop makes dead can be cleaned up, as with a long transaction elsewhere on the server."""
    if not hold:
        yield
        return
    with psycopg.connect(dsn) as other:
        other.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        other.execute("SELECT txid_current()")
        try:
            yield
        finally:
            other.rollback()


def claim_complete(
    dsn: str,
    schema: str,
    rows: int,
    batch: int = BATCH,
    fillfactor: int | None = None,
    queue_any: bool = False,
    old_snapshot: bool = False,
) -> dict[str, float]:
    """Fill *rows*, then claim and complete them in batches; returns rows/s and HOT-update counts.

    ``queue_any``: test the queue as the worker's fetch does, ``queue = ANY(%s::text[])``, instead of
    ``queue = %s`` (which lets the partial index deliver the rows in order: no sort).
    """
    s = sql.Identifier(schema)
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as conn:
        conn.execute(sql.SQL("TRUNCATE {}.jobs CASCADE").format(s))  # the steps reference the jobs
        if fillfactor is not None:
            conn.execute(sql.SQL("ALTER TABLE {}.jobs SET (fillfactor = {})").format(s, sql.Literal(fillfactor)))
        conn.execute(sql.SQL(_FILL).format(s=s), [rows])
        conn.execute(sql.SQL("VACUUM ANALYZE {}.jobs").format(s))
        stats_sql = (
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE schemaname = %s AND relname = 'jobs'"
        )
        before = conn.execute(stats_sql, [schema]).fetchone()
        queue_test = sql.SQL("queue = ANY(%s::text[])" if queue_any else "queue = %s")
        claim, complete = sql.SQL(_CLAIM).format(s=s, queue_test=queue_test), sql.SQL(_COMPLETE).format(s=s)
        queue_param: object = ["bench"] if queue_any else "bench"
        done = 0
        claiming = 0.0
        buffers_before = _buffers(conn, schema)
        with _old_snapshot(dsn, old_snapshot):
            started = time.perf_counter()
            while True:
                t0 = time.perf_counter()
                ids = [r[0] for r in conn.execute(claim, [queue_param, batch]).fetchall()]
                claiming += time.perf_counter() - t0
                if not ids:
                    break
                done += conn.execute(complete, [ids]).rowcount
            elapsed = time.perf_counter() - started
        buffers = _buffers(conn, schema) - buffers_before
        completed = conn.execute(sql.SQL("SELECT count(*) FROM {}.jobs WHERE state = 'completed'").format(s)).fetchone()
        time.sleep(0.6)  # the statistics collector reports with a small delay
        after = conn.execute(stats_sql, [schema]).fetchone()
        if fillfactor is not None:
            conn.execute(sql.SQL("ALTER TABLE {}.jobs RESET (fillfactor)").format(s))
    upd = (after[0] - before[0]) if after and before else 0
    hot = (after[1] - before[1]) if after and before else 0
    return {
        "rate": done / elapsed,
        "done": done,
        "completed": completed[0] if completed else 0,
        "updates": upd,
        "hot_updates": hot,
        "buffers_per_row": buffers / max(1, done),
        "claim_share": claiming / elapsed,
    }


def run(dsn: str, plan: Plan, report: Report) -> None:
    n = plan.baseline_rows
    fig = report.figure(
        section=SECTION,
        name=f"claim {BATCH} + complete {BATCH}, SKIP LOCKED, one connection",
        system="plain-sql",
        backend="-",
        unit="rows/s",
        higher_is_better=True,
        extra={"rows": n},
    )
    with migrated_schema(dsn) as schema:
        for _ in range(plan.reps):
            out = claim_complete(dsn, schema, n)
            fig.reps.append(out["rate"])
            report.verify(fig, out["done"] == n and out["completed"] == n, f"completed {out['completed']} of {n}")
            log(f"baseline plain SQL: {out['rate']:,.0f} rows/s")
    run_minimal(dsn, plan, report)
    run_limit(dsn, plan, report)


_MINI = """
CREATE TABLE {s}.mini (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, state text NOT NULL DEFAULT 'available',
                       args jsonb NOT NULL, finished_at timestamptz);
CREATE INDEX mini_available ON {s}.mini (id) WHERE state = 'available';
"""


def _fill_minimal(conn: psycopg.Connection[Any], s: sql.Identifier, rows: int) -> None:
    """(Re)create the minimal table in schema *s* with *rows* available rows, vacuumed and analyzed."""
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}.mini").format(s))
    for statement in _MINI.split(";"):
        if statement.strip():
            conn.execute(sql.SQL(statement).format(s=s))
    conn.execute(
        sql.SQL("INSERT INTO {}.mini (args) SELECT jsonb_build_object('i', g) FROM generate_series(1, %s) g").format(s),
        [rows],
    )
    conn.execute(sql.SQL("VACUUM ANALYZE {}.mini").format(s))


def claim_complete_minimal(
    dsn: str, schema: str, rows: int, batch: int = BATCH, old_snapshot: bool = False
) -> dict[str, float]:
    """The same loop on the smallest table that can hold a queue: id, state, args, one partial index."""
    s = sql.Identifier(schema)
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as conn:
        _fill_minimal(conn, s, rows)
        claim = sql.SQL(
            "WITH next AS (SELECT id FROM {s}.mini WHERE state = 'available' ORDER BY id LIMIT %s "
            "FOR UPDATE SKIP LOCKED) UPDATE {s}.mini AS m SET state = 'executing' FROM next WHERE m.id = next.id "
            "RETURNING m.id"
        ).format(s=s)
        complete = sql.SQL(
            "UPDATE {}.mini SET state = 'completed', finished_at = now() WHERE id = ANY(%s::bigint[]) "
            "AND state = 'executing'"
        ).format(s)
        done = 0
        claiming = 0.0
        buffers_before = _buffers(conn, schema)
        with _old_snapshot(dsn, old_snapshot):
            started = time.perf_counter()
            while True:
                t0 = time.perf_counter()
                ids = [r[0] for r in conn.execute(claim, [batch]).fetchall()]
                claiming += time.perf_counter() - t0
                if not ids:
                    break
                done += conn.execute(complete, [ids]).rowcount
            elapsed = time.perf_counter() - started
        buffers = _buffers(conn, schema) - buffers_before
        completed = conn.execute(sql.SQL("SELECT count(*) FROM {}.mini WHERE state = 'completed'").format(s)).fetchone()
        conn.execute(sql.SQL("DROP TABLE {}.mini").format(s))
    return {
        "rate": done / elapsed,
        "done": done,
        "completed": completed[0] if completed else 0,
        "buffers_per_row": buffers / max(1, done),
        "claim_share": claiming / elapsed,
    }


def run_minimal(dsn: str, plan: Plan, report: Report) -> None:
    n = plan.baseline_rows
    fig = report.figure(
        section=SECTION,
        name=f"claim {BATCH} + complete {BATCH}, minimal table (id, state, args)",
        system="plain-sql",
        backend="-",
        unit="rows/s",
        higher_is_better=True,
        extra={"rows": n},
    )
    with migrated_schema(dsn) as schema:
        for _ in range(plan.reps):
            out = claim_complete_minimal(dsn, schema, n)
            fig.reps.append(out["rate"])
            report.verify(fig, out["done"] == n and out["completed"] == n, f"completed {out['completed']} of {n}")
            log(f"baseline plain SQL, minimal table: {out['rate']:,.0f} rows/s")


#: How many connections the plain-SQL limit runs side by side (this machine has two cores).
LIMIT_CLIENTS = 2


def claim_and_complete_limit(dsn: str, schema: str, rows: int, clients: int = LIMIT_CLIENTS) -> dict[str, float]:
    """The plain-SQL limit: on the minimal table, ONE statement claims a batch with ``FOR UPDATE
    SKIP LOCKED`` and completes it (available -> completed), on *clients* connections at once, until
    every row is done. No queue can do less work per job on this server; issue 21 calls it the
    plain-SQL limit."""
    import threading

    s = sql.Identifier(schema)
    with psycopg.connect(dsn, autocommit=True) as conn:
        _fill_minimal(conn, s, rows)
    statement = sql.SQL(
        "UPDATE {s}.mini SET state = 'completed', finished_at = now() WHERE id = ANY(ARRAY("
        "SELECT id FROM {s}.mini WHERE state = 'available' ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED))"
    ).format(s=s)
    counts = [0] * clients
    go = threading.Barrier(clients + 1)

    def client(k: int) -> None:
        with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as c:
            c.execute("SELECT 1")
            go.wait()
            while True:
                n = c.execute(statement, [BATCH]).rowcount
                if n <= 0:
                    # SKIP LOCKED may see nothing while the other client holds the last batch.
                    left = c.execute(sql.SQL("SELECT count(*) FROM {}.mini WHERE state = 'available'").format(s))
                    row = left.fetchone()
                    if row is None or row[0] == 0:
                        return
                    continue
                counts[k] += n

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    go.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    with psycopg.connect(dsn, autocommit=True) as conn:
        completed = conn.execute(sql.SQL("SELECT count(*) FROM {}.mini WHERE state = 'completed'").format(s)).fetchone()
        conn.execute(sql.SQL("DROP TABLE {}.mini").format(s))
    done = sum(counts)
    return {"rate": done / elapsed, "done": done, "completed": completed[0] if completed else 0}


def run_limit(dsn: str, plan: Plan, report: Report) -> None:
    """The plain-SQL limit figure (see :func:`claim_and_complete_limit`)."""
    n = plan.baseline_rows
    fig = report.figure(
        section=SECTION,
        name=PLAIN_SQL_LIMIT,
        system="plain-sql",
        backend="-",
        unit="rows/s",
        higher_is_better=True,
        extra={"rows": n, "clients": LIMIT_CLIENTS, "batch": BATCH},
    )
    with migrated_schema(dsn) as schema:
        for _ in range(plan.reps):
            out = claim_and_complete_limit(dsn, schema, n)
            fig.reps.append(out["rate"])
            report.verify(
                fig, out["done"] == n and out["completed"] == n, f"limit: completed {out['completed']} of {n}"
            )
            log(f"baseline plain-SQL limit ({LIMIT_CLIENTS} clients, one statement): {out['rate']:,.0f} rows/s")
