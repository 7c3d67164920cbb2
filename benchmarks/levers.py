"""The levers of issue 3, measured without touching ``src/``: raw-SQL variants on our own table.

Every experiment runs in a schema migrated through ``App.migrate_sync()``, on one sync psycopg
connection in autocommit, so it measures the database side plus libpq/psycopg, never the thread
hop (except where the hop itself is the lever). The statements marked "as is" are taken from the
driver object at run time (``app.driver._sql.insert`` etc.), so they follow changes in ``src/``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import anyio
import psycopg
from psycopg import sql

from . import baseline, storage
from ._common import Plan, Report, log, migrated_schema
from .bench_app import build_app

SECTION = "levers"


def _truncate(conn: psycopg.Connection[Any], s: sql.Identifier) -> None:
    conn.execute(sql.SQL("TRUNCATE {}.jobs CASCADE").format(s))  # the steps reference the jobs


# --- bulk insert --------------------------------------------------------------------------------

_UNNEST_RETURNING_NO_NOTIFY = """
INSERT INTO {s}.jobs (task, queue, args, priority, max_attempts, scheduled_at, state)
SELECT u.task, u.queue, u.args::jsonb, u.priority, u.max_attempts, now(), 'available'
FROM unnest(%(tasks)s::text[], %(queues)s::text[], %(args)s::text[], %(priorities)s::int[], %(max_attempts)s::int[])
     AS u(task, queue, args, priority, max_attempts)
RETURNING id, state, scheduled_at, inserted_at
"""
_UNNEST_ID_ONLY = _UNNEST_RETURNING_NO_NOTIFY.replace("RETURNING id, state, scheduled_at, inserted_at", "RETURNING id")
_UNNEST_NO_RETURNING = _UNNEST_RETURNING_NO_NOTIFY.replace("RETURNING id, state, scheduled_at, inserted_at", "")
_NOTIFY_ONCE = "SELECT pg_notify(%(channel)s, 'available:' || %(queue)s)"


def _bulk_variants(app: Any, conn: psycopg.Connection[Any], s: sql.Identifier, n: int) -> dict[str, Callable[[], Any]]:
    driver = app.driver
    task = app.get_task("bench.noop")
    specs = [task.job(i=i) for i in range(n)]
    params = driver._insert_params(specs)  # the driver's own parameters: arrays of n values
    short = {k: params[k] for k in ("tasks", "queues", "args", "priorities", "max_attempts")}

    def as_is() -> None:
        conn.execute(driver._sql.insert, params).fetchall()

    def notify_once() -> None:
        with conn.transaction():
            conn.execute(sql.SQL(_UNNEST_RETURNING_NO_NOTIFY).format(s=s), short).fetchall()
            conn.execute(_NOTIFY_ONCE, {"channel": driver.channel, "queue": "bench"})

    def id_only() -> None:
        with conn.transaction():
            conn.execute(sql.SQL(_UNNEST_ID_ONLY).format(s=s), short).fetchall()
            conn.execute(_NOTIFY_ONCE, {"channel": driver.channel, "queue": "bench"})

    def no_returning() -> None:
        with conn.transaction():
            conn.execute(sql.SQL(_UNNEST_NO_RETURNING).format(s=s), short)
            conn.execute(_NOTIFY_ONCE, {"channel": driver.channel, "queue": "bench"})

    def copy_ids() -> None:
        # Ids taken from the identity sequence first (so the caller still learns them), then COPY.
        with conn.transaction():
            seq = conn.execute(
                sql.SQL("SELECT pg_get_serial_sequence({}, 'id')").format(sql.Literal(f"{s.as_string(conn)}.jobs"))
            ).fetchone()[0]
            ids = [r[0] for r in conn.execute("SELECT nextval(%s) FROM generate_series(1, %s)", [seq, n])]
            with conn.cursor().copy(
                sql.SQL("COPY {}.jobs (id, task, queue, args, priority, max_attempts) FROM STDIN").format(s)
            ) as cp:
                for i, spec in zip(ids, specs, strict=True):
                    cp.write_row((i, spec.task, spec.queue, spec.args_json, spec.priority, spec.max_attempts))
            conn.execute(_NOTIFY_ONCE, {"channel": driver.channel, "queue": "bench"})

    def copy_plain() -> None:
        with conn.transaction():
            with conn.cursor().copy(
                sql.SQL("COPY {}.jobs (task, queue, args, priority, max_attempts) FROM STDIN").format(s)
            ) as cp:
                for spec in specs:
                    cp.write_row((spec.task, spec.queue, spec.args_json, spec.priority, spec.max_attempts))
            conn.execute(_NOTIFY_ONCE, {"channel": driver.channel, "queue": "bench"})

    def public_api() -> None:
        app.defer_many_sync([task.job(i=i) for i in range(n)])

    def lean_api() -> None:
        task.defer_batch_sync([{"i": i} for i in range(n)])

    return {
        "defer_many_sync(): the public API end to end (specs built, inserted, Job objects made)": public_api,
        "defer_batch_sync(): the lean path end to end (arguments checked and encoded, ids back)": lean_api,
        "driver INSERT as is: unnest, RETURNING 4 columns, pg_notify() per row": as_is,
        "unnest, RETURNING 4 columns, one pg_notify() per statement": notify_once,
        "unnest, RETURNING id only, one pg_notify()": id_only,
        "unnest, no RETURNING, one pg_notify()": no_returning,
        "COPY with ids from nextval() first, one pg_notify()": copy_ids,
        "COPY, no ids back, one pg_notify()": copy_plain,
    }


def bulk_insert(dsn: str, plan: Plan, report: Report, schema: str) -> None:
    n = plan.lever_rows
    s = sql.Identifier(schema)
    app = build_app(dsn, schema)
    try:
        task = app.get_task("bench.noop")
        # Building specs alone (validation + JSON): the Python side of defer_many.
        spec_rates = []
        for _ in range(plan.reps):
            started = time.perf_counter()
            [task.job(i=i) for i in range(n)]
            spec_rates.append(n / (time.perf_counter() - started))
        _lever(report, "bulk insert", f"building {n:,} JobSpecs alone (task.job(), no database)", "jobs/s", spec_rates)
        with psycopg.connect(dsn, autocommit=True) as conn:
            variants = _bulk_variants(app, conn, s, n)
            rates: dict[str, list[float]] = {k: [] for k in variants}
            for _ in range(plan.reps):
                for name, fn in variants.items():
                    _truncate(conn, s)
                    started = time.perf_counter()
                    fn()
                    rates[name].append(n / (time.perf_counter() - started))
                    count = conn.execute(sql.SQL("SELECT count(*) FROM {}.jobs").format(s)).fetchone()[0]
                    if count != n:
                        report.verification_failures.append(f"lever bulk insert {name}: {count} rows, expected {n}")
            for name, values in rates.items():
                _lever(report, "bulk insert", f"{name} ({n:,} jobs)", "jobs/s", values)
    finally:
        app.close()


# --- single defer -------------------------------------------------------------------------------

_SINGLE_VALUES = """
INSERT INTO {s}.jobs (task, queue, args, priority, max_attempts)
VALUES (%(task)s, %(queue)s, %(args)s::jsonb, %(priority)s, %(max_attempts)s)
RETURNING id, state, scheduled_at, inserted_at, pg_notify(%(channel)s, 'available:' || queue)
"""


def single_defer(dsn: str, plan: Plan, report: Report, schema: str) -> None:
    n = max(200, plan.seq_defers // 2)
    s = sql.Identifier(schema)
    app = build_app(dsn, schema)
    try:
        driver = app.driver
        task = app.get_task("bench.noop")
        spec = task.job(i=1)
        params = driver._insert_params([spec])
        one = {
            "task": spec.task,
            "queue": spec.queue,
            "args": spec.args_json,
            "priority": spec.priority,
            "max_attempts": spec.max_attempts,
            "channel": driver.channel,
        }
        spec_us = []
        for _ in range(plan.reps):
            started = time.perf_counter()
            for i in range(n):
                task.job(i=i)
            spec_us.append((time.perf_counter() - started) / n * 1e6)
        _lever(
            report,
            "single defer",
            "task.job(): validate + encode one job, no database",
            "µs/job",
            spec_us,
            higher=False,
        )

        def raw(statement: Any, p: dict[str, Any], prepare: bool | None) -> Callable[[psycopg.Connection[Any]], None]:
            def go(conn: psycopg.Connection[Any]) -> None:
                for _ in range(n):
                    conn.execute(statement, p, prepare=prepare).fetchall()

            return go

        values_sql = sql.SQL(_SINGLE_VALUES).format(s=s)
        variants: dict[str, Callable[[psycopg.Connection[Any]], None]] = {
            "driver one-job INSERT as is, prepared": raw(driver._sql.insert_one, driver._one_params(spec), True),
            "driver one-job INSERT as is, never prepared": raw(driver._sql.insert_one, driver._one_params(spec), False),
            "driver many-job INSERT (1-element arrays), prepared": raw(driver._sql.insert, params, True),
            "INSERT ... VALUES ... RETURNING, pg_notify, prepared": raw(values_sql, one, True),
            "INSERT ... VALUES ... RETURNING, pg_notify, never prepared": raw(values_sql, one, False),
        }
        rates: dict[str, list[float]] = {k: [] for k in variants}
        api: dict[str, list[float]] = {"defer_sync() (no thread hop)": []}
        modes = {
            "direct from the event loop, our own prepared statement (as is)": (True, True),
            "direct from the event loop, psycopg's cursor (before)": (True, False),
            "one thread hop (before the direct path)": (False, False),
        }
        for backend in ("asyncio", "trio"):
            for label in modes:
                api[f"await defer() on {backend}, {label}"] = []

        async def async_defers() -> float:
            await task.defer(i=-1)
            started = time.perf_counter()
            for i in range(n):
                await task.defer(i=i)
            return time.perf_counter() - started

        tiny = sql.SQL("INSERT INTO {}.tiny VALUES (1)").format(s)

        def floor(conn: psycopg.Connection[Any]) -> None:
            for _ in range(n):
                conn.execute(tiny, prepare=True)

        def async_commit(conn: psycopg.Connection[Any]) -> None:
            conn.execute("SET synchronous_commit = off")
            try:
                raw(driver._sql.insert_one, driver._one_params(spec), True)(conn)
            finally:
                conn.execute("RESET synchronous_commit")

        variants["commit floor: INSERT INTO a one-column table, prepared"] = floor
        variants["driver one-job INSERT as is, prepared, synchronous_commit = off (not durable)"] = async_commit
        rates = {k: [] for k in variants}
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE TABLE {}.tiny (x int)").format(s))
            for _ in range(plan.reps):
                for name, fn in variants.items():
                    _truncate(conn, s)
                    conn.execute(driver._sql.insert, params).fetchall()  # warm
                    started = time.perf_counter()
                    fn(conn)
                    rates[name].append(n / (time.perf_counter() - started))
                _truncate(conn, s)
                task.defer_sync(i=-1)
                started = time.perf_counter()
                for i in range(n):
                    task.defer_sync(i=i)
                api["defer_sync() (no thread hop)"].append(n / (time.perf_counter() - started))
                for backend in ("asyncio", "trio"):
                    for label, (direct, prepared) in modes.items():
                        _truncate(conn, s)
                        app.close()
                        driver.direct = direct
                        driver.prepared_insert = prepared
                        elapsed = anyio.run(async_defers, backend=backend)
                        api[f"await defer() on {backend}, {label}"].append(n / elapsed)
                    driver.direct = True
                    driver.prepared_insert = True
        for name, values in {**api, **rates}.items():
            _lever(report, "single defer", f"{name}, sequential", "jobs/s", values)
    finally:
        app.close()


# --- fetch --------------------------------------------------------------------------------------

_FETCH_SCALAR_ID = """
WITH next AS (
    SELECT id FROM {s}.jobs WHERE state = 'available' AND limit_key IS NULL AND queue = %(queue)s
    ORDER BY priority DESC, scheduled_at, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED
)
UPDATE {s}.jobs AS j SET state = 'executing', attempt = j.attempt + 1, attempted_at = clock_timestamp(),
    worker_id = %(worker)s
FROM next WHERE j.id = next.id AND j.state = 'available'
RETURNING {returning}
"""

# The claim of several queues before the per-queue scans: one scan of queue = ANY(...), which cannot
# deliver rows in priority order, so every available job of those queues was sorted on every claim.
_FETCH_ANY_BEFORE = """
UPDATE {s}.jobs AS j SET state = 'executing', attempt = j.attempt + 1, attempted_at = clock_timestamp(),
    worker_id = %(worker)s
WHERE j.id = ANY(ARRAY(
    SELECT id FROM {s}.jobs WHERE state = 'available' AND limit_key IS NULL AND queue = ANY(%(queues)s::text[])
    ORDER BY priority DESC, scheduled_at, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED
))
RETURNING {returning}
"""


def fetch(dsn: str, plan: Plan, report: Report, schema: str) -> None:
    n = plan.lever_rows
    s = sql.Identifier(schema)
    app = build_app(dsn, schema)
    try:
        driver = app.driver
        few = "j.id, j.task, j.args, j.attempt, j.attempted_at"
        full = (
            "j.id, j.task, j.queue, j.args, j.state, j.attempt, j.max_attempts, j.priority, j.scheduled_at, "
            "j.inserted_at, j.attempted_at, j.finished_at, j.errors, j.worker_id"
        )
        variants = {
            "two queues, before: one scan of queue = ANY(array), sorted": (
                sql.SQL(_FETCH_ANY_BEFORE).format(s=s, returning=sql.SQL(full)),
                True,
            ),
            "driver fetch as is, two queues: one ordered scan per queue (LATERAL)": (driver._sql.fetch, True),
            "driver fetch as is, one queue: queue = $1": (driver._sql.fetch_one, False),
            "queue = $1 (scalar), RETURNING 14 columns": (
                sql.SQL(_FETCH_SCALAR_ID).format(s=s, returning=sql.SQL(full)),
                False,
            ),
            "queue = $1 (scalar), RETURNING 5 columns (id, task, args, attempt, lease)": (
                sql.SQL(_FETCH_SCALAR_ID).format(s=s, returning=sql.SQL(few)),
                False,
            ),
        }
        rates: dict[str, list[float]] = {k: [] for k in variants}
        fill = sql.SQL(
            "INSERT INTO {}.jobs (task, queue, args) SELECT 'bench.noop', 'bench', jsonb_build_object('i', g) "
            "FROM generate_series(1, %s) g"
        ).format(s)
        with psycopg.connect(dsn, autocommit=True) as conn:
            for _ in range(plan.reps):
                for name, (statement, any_) in variants.items():
                    _truncate(conn, s)
                    conn.execute(fill, [n])
                    conn.execute(sql.SQL("ANALYZE {}.jobs").format(s))
                    p: dict[str, Any] = {"limit": 50, "worker": "lever"}
                    p.update({"queues": ["bench", "other"]} if any_ else {"queue": "bench"})
                    got = 0
                    started = time.perf_counter()
                    while rows := conn.execute(statement, p).fetchall():
                        got += len(rows)
                    rates[name].append(got / (time.perf_counter() - started))
                    if got != n:
                        report.verification_failures.append(f"lever fetch {name}: claimed {got} of {n}")
        for name, values in rates.items():
            _lever(report, "fetch", f"{name}: claim 50 at a time from {n:,} available", "jobs/s", values)
    finally:
        app.close()


_FETCH_BY_PK = """
UPDATE {s}.jobs AS j SET state = 'executing', attempt = j.attempt + 1, attempted_at = clock_timestamp(),
    worker_id = %(worker)s
WHERE j.id = ANY(ARRAY(
    SELECT id FROM {s}.jobs WHERE state = 'available' AND limit_key IS NULL AND queue = %(queue)s
    ORDER BY priority DESC, scheduled_at, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED
)) AND j.state = 'available'
RETURNING j.id, j.task, j.args, j.attempt, j.attempted_at
"""


def fetch_with_history(dsn: str, plan: Plan, report: Report, schema: str) -> None:
    """The fetch with many finished rows in the table and a small backlog (the growth section's shape)."""
    finished = plan.lever_rows * 5
    backlog = plan.lever_rows // 4
    s = sql.Identifier(schema)
    app = build_app(dsn, schema)
    try:
        driver = app.driver
        scalar = sql.SQL(_FETCH_SCALAR_ID).format(
            s=s,
            returning=sql.SQL(
                "j.id, j.task, j.queue, j.args, j.state, j.attempt, j.max_attempts, j.priority, j.scheduled_at, "
                "j.inserted_at, j.attempted_at, j.finished_at, j.errors, j.worker_id"
            ),
        )
        by_pk = sql.SQL(_FETCH_BY_PK).format(s=s)
        variants = {
            "driver fetch as is, one queue: queue = $1": (driver._sql.fetch_one, False),
            "driver fetch as is, two queues: one ordered scan per queue (LATERAL)": (driver._sql.fetch, True),
            "queue = $1 (scalar), UPDATE joined to the CTE": (scalar, False),
            "queue = $1, UPDATE ... WHERE id = ANY(ARRAY(SELECT ... SKIP LOCKED)), 5 columns": (by_pk, False),
        }
        rates: dict[str, list[float]] = {k: [] for k in variants}
        with psycopg.connect(dsn, autocommit=True) as conn:
            _truncate(conn, s)
            conn.execute(
                sql.SQL(
                    "INSERT INTO {}.jobs (task, queue, args, state, attempt, finished_at) SELECT 'bench.noop', "
                    "'bench', jsonb_build_object('i', g), 'completed', 1, now() FROM generate_series(1, %s) g"
                ).format(s),
                [finished],
            )
            for _ in range(plan.reps):
                for name, (statement, any_) in variants.items():
                    conn.execute(sql.SQL("DELETE FROM {}.jobs WHERE state <> 'completed'").format(s))
                    # Statistics taken while nothing was available (after a quiet period), then a burst
                    # arrives: the planner believes state = 'available' matches about one row.
                    conn.execute(sql.SQL("VACUUM ANALYZE {}.jobs").format(s))
                    conn.execute(
                        sql.SQL(
                            "INSERT INTO {}.jobs (task, queue, args) SELECT 'bench.noop', 'bench', "
                            "jsonb_build_object('i', g) FROM generate_series(1, %s) g"
                        ).format(s),
                        [backlog],
                    )
                    p: dict[str, Any] = {"limit": 50, "worker": "lever"}
                    p.update({"queues": ["bench", "other"]} if any_ else {"queue": "bench"})
                    got = 0
                    started = time.perf_counter()
                    while rows := conn.execute(statement, p).fetchall():
                        got += len(rows)
                    rates[name].append(got / (time.perf_counter() - started))
                    if got != backlog:
                        report.verification_failures.append(f"lever fetch/history {name}: claimed {got} of {backlog}")
            plan_rows = conn.execute(
                b"EXPLAIN " + driver._sql.fetch_one, {"queue": "bench", "limit": 50, "worker": "x"}
            ).fetchall()
        for name, values in rates.items():
            _lever(
                report,
                "fetch",
                f"{name}: claim 50 at a time, {backlog:,} available among {finished:,} finished",
                "jobs/s",
                values,
                notes="plan as is (stale statistics): "
                + " / ".join(r[0].strip() for r in plan_rows if "Scan" in r[0] or "Loop" in r[0])
                if "as is, one queue" in name
                else "",
            )
    finally:
        app.close()


# --- completion ---------------------------------------------------------------------------------

_FINISH_ONE = """
UPDATE {s}.jobs SET state = 'completed', finished_at = now(), worker_id = NULL
WHERE id = %s AND state = 'executing' AND attempt = %s AND worker_id = 'lever' AND attempted_at = %s
"""
_FINISH_BATCH = """
UPDATE {s}.jobs AS j SET state = 'completed', finished_at = now(), worker_id = NULL
FROM unnest(%s::bigint[], %s::int[], %s::timestamptz[]) AS u(id, attempt, lease)
WHERE j.id = u.id AND j.state = 'executing' AND j.attempt = u.attempt AND j.worker_id = 'lever'
  AND j.attempted_at = u.lease
"""


def completion(dsn: str, plan: Plan, report: Report, schema: str) -> None:
    n = plan.lever_rows // 2
    s = sql.Identifier(schema)
    rates: dict[str, list[float]] = {
        "guarded UPDATE per job": [],
        "guarded UPDATE ... FROM unnest(), 50 jobs per statement": [],
    }
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(plan.reps):
            for name in rates:
                _truncate(conn, s)
                conn.execute(
                    sql.SQL(
                        "INSERT INTO {}.jobs (task, queue, state, attempt, attempted_at, worker_id) "
                        "SELECT 'bench.noop', 'bench', 'executing', 1, clock_timestamp(), 'lever' "
                        "FROM generate_series(1, %s)"
                    ).format(s),
                    [n],
                )
                conn.execute(sql.SQL("ANALYZE {}.jobs").format(s))
                rows = conn.execute(sql.SQL("SELECT id, attempt, attempted_at FROM {}.jobs").format(s)).fetchall()
                done = 0
                started = time.perf_counter()
                if name.endswith("per job"):
                    one = sql.SQL(_FINISH_ONE).format(s=s)
                    for r in rows:
                        done += conn.execute(one, r).rowcount
                else:
                    batch = sql.SQL(_FINISH_BATCH).format(s=s)
                    for k in range(0, len(rows), 50):
                        chunk = rows[k : k + 50]
                        done += conn.execute(
                            batch, [[r[0] for r in chunk], [r[1] for r in chunk], [r[2] for r in chunk]]
                        ).rowcount
                rates[name].append(done / (time.perf_counter() - started))
                if done != n:
                    report.verification_failures.append(f"lever completion {name}: {done} of {n}")
    for name, values in rates.items():
        _lever(report, "completion", f"{name} ({n:,} jobs)", "jobs/s", values)


# --- fillfactor and the partial-index fetch -----------------------------------------------------


def table_shape(dsn: str, plan: Plan, report: Report, schema: str) -> None:
    n = plan.lever_rows
    variants = {
        "claim 100 + complete 100, fillfactor 100 (default), queue = $1": {},
        "claim 100 + complete 100, fillfactor 70, queue = $1": {"fillfactor": 70},
        "claim 100 + complete 100, fillfactor 100, queue = ANY($1) (as the worker's fetch)": {"queue_any": True},
    }
    rates: dict[str, list[float]] = {k: [] for k in variants}
    hot: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(plan.reps):
        for name, kwargs in variants.items():
            out = baseline.claim_complete(dsn, schema, n, **kwargs)  # type: ignore[arg-type]
            rates[name].append(out["rate"])
            hot[name].append(out["hot_updates"] / max(1, out["updates"]))
            if out["completed"] != n:
                report.verification_failures.append(f"lever table shape {name}: {out['completed']} of {n}")
    for name, values in rates.items():
        _lever(
            report,
            "table shape",
            f"{name} ({n:,} rows)",
            "rows/s",
            values,
            notes=f"HOT updates: {statistics.median(hot[name]):.0%} of updates",
        )


def _lever(
    report: Report, lever: str, variant: str, unit: str, reps: list[float], *, higher: bool = True, notes: str = ""
) -> None:
    entry = {
        "lever": lever,
        "variant": variant,
        "unit": unit,
        "reps": reps,
        "median": statistics.median(reps) if reps else None,
        "higher_is_better": higher,
        "notes": notes,
    }
    report.levers.append(entry)
    log(f"lever {lever}: {variant}: {entry['median']:,.1f} {unit} {notes}")


def _worker_variants(
    dsn: str,
    plan: Plan,
    report: Report,
    schema: str,
    *,
    lever: str,
    label: str,
    backend: str,
    variants: dict[str, dict[str, str]],
    task: str = "bench.noop",
    **args: float,
) -> None:
    """Worker processes (``--once``) on the same queued jobs, one per variant (its environment) and rep."""
    from ._common import count_states, truncate_jobs
    from ._workers import run_once
    from .throughput import enqueue

    n = plan.throughput_jobs
    rates: dict[str, list[float]] = {k: [] for k in variants}
    cpus: dict[str, list[float]] = {k: [] for k in variants}
    for rep in range(plan.reps):
        # Alternate the order, so that drift in the machine's load falls on every variant.
        names = list(variants) if rep % 2 == 0 else list(reversed(variants))
        for name in names:
            truncate_jobs(dsn, schema)
            enqueue(dsn, schema, n, task, **args)
            result = run_once(dsn, schema, backend, 50, env=variants[name])
            states = count_states(dsn, schema)
            if states != {"completed": n}:
                report.verification_failures.append(f"lever {lever} {name}: expected {n} completed jobs, got {states}")
            rates[name].append(n / (result["t_stopped"] - result["t_running"]))
            cpus[name].append((result["cpu_stopped"] - result["cpu_running"]) / n * 1e6)
    for name, values in rates.items():
        _lever(report, lever, f"{label}, {backend}: {name}", "jobs/s", values)
        _lever(report, lever, f"{label}, {backend}: {name}, worker CPU", "µs/job", cpus[name], higher=False)


def worker_cycle(dsn: str, plan: Plan, report: Report, schema: str) -> None:
    """The worker's cycle, in worker processes: thread hops or the direct path, serial or overlapped."""
    variants = {
        "thread hops, serial cycle (before)": {
            "NURSERY_WORKER_BENCH_THREAD_HOPS": "1",
            "NURSERY_WORKER_BENCH_OVERLAP": "0",
        },
        "direct statements, serial cycle": {
            "NURSERY_WORKER_BENCH_THREAD_HOPS": "0",
            "NURSERY_WORKER_BENCH_OVERLAP": "0",
        },
        "direct statements, claim overlaps the write (as is)": {
            "NURSERY_WORKER_BENCH_THREAD_HOPS": "0",
            "NURSERY_WORKER_BENCH_OVERLAP": "1",
        },
    }
    for backend in ("asyncio", "trio"):
        _worker_variants(
            dsn,
            plan,
            report,
            schema,
            lever="worker cycle",
            label="no-op, concurrency 50",
            backend=backend,
            variants=variants,
        )


async def _spawn_cost(kind: str, tasks: int, sleep: float) -> float:
    """µs per task: *tasks* tasks started 50 at a time, each sleeping *sleep* seconds."""
    import anyio
    import anyio.lowlevel

    async def job() -> None:
        await anyio.sleep(sleep)

    started = time.perf_counter()
    if kind == "trio nursery":
        import trio
        import trio.lowlevel

        async with trio.open_nursery() as nursery:
            for i in range(tasks):
                nursery.start_soon(job)
                if i % 50 == 49:
                    await trio.lowlevel.checkpoint()
    else:
        async with anyio.create_task_group() as tg:
            for i in range(tasks):
                tg.start_soon(job)
                if i % 50 == 49:
                    await anyio.lowlevel.checkpoint()
    return (time.perf_counter() - started) / tasks * 1e6


def job_spawn(dsn: str, plan: Plan, report: Report, schema: str) -> None:
    """A task per job: anyio's task group (a handle, a cancel scope and an event per task) or, on trio,
    a trio nursery; alone, then in worker processes on trio and on asyncio (an asyncio.TaskGroup)."""
    import anyio

    tasks = max(1_000, plan.lever_rows)
    for backend, kind in (("trio", "anyio task group"), ("trio", "trio nursery"), ("asyncio", "anyio task group")):
        for sleep, what in ((0.0, "a no-op"), (0.001, "a 1 ms sleep")):
            reps = [anyio.run(_spawn_cost, kind, tasks, sleep, backend=backend) for _ in range(plan.reps)]
            before = " (before)" if backend == "trio" and kind == "anyio task group" else ""
            _lever(
                report,
                "job spawn",
                f"{backend}, {kind}{before}: {tasks:,} tasks, each {what}",
                "µs/task",
                reps,
                higher=False,
            )
    native = {"trio": "trio nursery and cancel scopes (as is)", "asyncio": "asyncio.TaskGroup, anyio scopes (as is)"}
    for backend, as_is in native.items():
        variants = {"anyio task group and cancel scopes (before)": {"NURSERY_WORKER_BENCH_ANYIO_JOBS": "1"}, as_is: {}}
        for task, label, args in (
            ("bench.noop", "no-op, concurrency 50", {}),
            ("bench.sleep", "1 ms sleep, concurrency 50", {"ms": 1.0}),
        ):
            _worker_variants(
                dsn,
                plan,
                report,
                schema,
                lever="job spawn",
                label=label,
                backend=backend,
                variants=variants,
                task=task,
                **args,
            )


def run(dsn: str, plan: Plan, report: Report) -> None:
    with migrated_schema(dsn) as schema:
        worker_cycle(dsn, plan, report, schema)
        job_spawn(dsn, plan, report, schema)
        bulk_insert(dsn, plan, report, schema)
        single_defer(dsn, plan, report, schema)
        fetch(dsn, plan, report, schema)
        fetch_with_history(dsn, plan, report, schema)
        completion(dsn, plan, report, schema)
        table_shape(dsn, plan, report, schema)
    storage.run(dsn, plan, report)
