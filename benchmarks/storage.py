"""Issue 21's storage levers, in raw SQL: what the jobs table's shape costs the claim-and-complete loop.

Each variant is a schema migrated through ``App.migrate_sync()`` and then changed by a few DDL
statements (an index dropped or narrowed, the table partitioned by state, a fillfactor); the
loop is ``baseline.claim_complete`` (claim 100 with ``FOR UPDATE SKIP LOCKED``, complete those
100, until every row is done) on one sync connection in autocommit. Variants are interleaved (the
order alternates at each repetition) so that drift in the machine's load falls on all of them,
and the minimal table runs in the same rounds: the ratio real / minimal is taken per round.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Iterator

import psycopg
from psycopg import sql

from . import baseline
from ._common import Plan, Report, log, migrated_schema

#: Before migration 10: migration 2's full (task, id) index, where every claim and every completion
#: writes an entry (no update of a job is HOT: its state is in every partial index's predicate).
_FULL_TASK_IDX = "DROP INDEX {s}.jobs_task_idx; CREATE INDEX jobs_task_idx ON {s}.jobs (task, id)"
#: No index by task at all (reads filtered by task would walk the primary key).
_DROP_TASK_IDX = "DROP INDEX {s}.jobs_task_idx"
#: The index on finished rows only: neither the insert nor the claim writes an entry, but reads by
#: task would have to find the waiting jobs of a task (possibly millions) without it.
_TASK_IDX_FINISHED = (
    "DROP INDEX {s}.jobs_task_idx;"
    "CREATE INDEX jobs_task_idx ON {s}.jobs (task, id) WHERE state IN ('completed', 'discarded', 'cancelled')"
)

#: The jobs table LIST-partitioned by state: a hot partition of waiting and running jobs with the
#: claim's indexes, a done partition of finished jobs with the pruning and listing indexes. A
#: completion is a cross-partition move (a delete in the hot partition, an insert in the done one).
_PARTITIONED = """
ALTER TABLE {s}.jobs RENAME TO jobs_flat;
CREATE TABLE {s}.jobs (LIKE {s}.jobs_flat INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING IDENTITY)
    PARTITION BY LIST (state);
DROP TABLE {s}.jobs_flat CASCADE;
ALTER TABLE {s}.jobs ADD PRIMARY KEY (id, state);
CREATE TABLE {s}.jobs_hot PARTITION OF {s}.jobs
    FOR VALUES IN ('pending', 'scheduled', 'available', 'executing', 'retryable');
CREATE TABLE {s}.jobs_done PARTITION OF {s}.jobs FOR VALUES IN ('completed', 'discarded', 'cancelled');
CREATE INDEX jobs_fetch_idx ON {s}.jobs_hot (queue, priority DESC, scheduled_at, id)
    WHERE state = 'available' AND limit_key IS NULL;
CREATE INDEX jobs_due_idx ON {s}.jobs_hot (scheduled_at) WHERE state IN ('scheduled', 'retryable');
CREATE INDEX jobs_executing_idx ON {s}.jobs_hot (worker_id) WHERE state = 'executing';
CREATE INDEX jobs_finished_idx ON {s}.jobs_done (state, finished_at);
CREATE INDEX jobs_task_idx ON {s}.jobs_done (task, id);
"""

#: The variants, by name: the DDL that turns a schema migrated by the code as it is into each.
VARIANTS: dict[str, str | None] = {
    "before (migrations 1-9: full jobs_task_idx)": _FULL_TASK_IDX,
    "as is (migration 10: jobs_task_idx without the executing jobs)": None,
    "no jobs_task_idx": _DROP_TASK_IDX,
    "jobs_task_idx on finished rows only": _TASK_IDX_FINISHED,
    "partitioned by state: hot (5 states) / done (3)": _PARTITIONED,
    "before, fillfactor 70": _FULL_TASK_IDX,
}
_FILLFACTOR = {"before, fillfactor 70": 70}
MINIMAL = "minimal table (id, state, args, one partial index)"


def _apply(dsn: str, schema: str, ddl: str | None) -> None:
    if ddl is None:
        return
    s = sql.Identifier(schema)
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        for statement in ddl.split(";"):
            if statement.strip():
                conn.execute(sql.SQL(statement).format(s=s))


@contextlib.contextmanager
def _schemas(dsn: str, names: list[str]) -> Iterator[dict[str, str]]:
    with contextlib.ExitStack() as stack:
        out = {}
        for name in names:
            schema = stack.enter_context(migrated_schema(dsn, prefix="bench_shape"))
            _apply(dsn, schema, VARIANTS.get(name))
            out[name] = schema
        yield out


def table_shapes(dsn: str, plan: Plan, report: Report, *, rows: int | None = None) -> dict[str, list[float]]:
    """Every variant of VARIANTS and the minimal table, interleaved; returns rows/s per variant."""
    n = rows or plan.lever_rows
    names = list(VARIANTS)
    rates: dict[str, list[float]] = {k: [] for k in [*names, MINIMAL]}
    ratios: dict[str, list[float]] = {k: [] for k in names}
    work: dict[str, list[float]] = {k: [] for k in rates}
    claim_share: dict[str, list[float]] = {k: [] for k in rates}
    with _schemas(dsn, names) as schemas:
        for rep in range(plan.reps):
            order = [*names, MINIMAL] if rep % 2 == 0 else [MINIMAL, *reversed(names)]
            got: dict[str, float] = {}
            for name in order:
                if name == MINIMAL:
                    out = baseline.claim_complete_minimal(dsn, schemas[names[0]], n)
                else:
                    out = baseline.claim_complete(dsn, schemas[name], n, fillfactor=_FILLFACTOR.get(name))
                if out["done"] != n or out["completed"] != n:
                    report.verification_failures.append(f"lever table shape {name}: {out['completed']} of {n}")
                got[name] = out["rate"]
                work[name].append(out["buffers_per_row"])
                claim_share[name].append(out["claim_share"])
                rates[name].append(out["rate"])
            for name in names:
                ratios[name].append(got[name] / got[MINIMAL])
    for name, values in rates.items():
        notes = (
            f"buffers per row {statistics.median(work[name]):.1f}, claim {statistics.median(claim_share[name]):.0%} "
            "of the time"
        )
        if name != MINIMAL:
            notes += f"; ratio to the minimal table, per round: {_spread(ratios[name])}"
        _record(report, f"claim 100 + complete 100, {name} ({n:,} rows)", values, notes)
    return rates


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"median {statistics.median(values):.2f} (range {min(values):.2f}-{max(values):.2f})"


def _record(report: Report, variant: str, reps: list[float], notes: str) -> None:
    entry = {
        "lever": "storage",
        "variant": variant,
        "unit": "rows/s",
        "reps": reps,
        "median": statistics.median(reps) if reps else None,
        "higher_is_better": True,
        "notes": notes,
    }
    report.levers.append(entry)
    log(f"lever storage: {variant}: {entry['median']:,.0f} rows/s {notes}")


# Complete the previous batch and claim the next one in one statement: one round trip and one commit
# per cycle instead of two. The claim's sub-select does not see the completion (one snapshot), which
# it does not need: it reads available rows, the completion writes executing ones.
_COMPLETE_AND_CLAIM = """
WITH done AS (
    UPDATE {s}.jobs SET state = 'completed', finished_at = now(), worker_id = NULL
    WHERE id = ANY(%(ids)s::bigint[]) AND state = 'executing' AND worker_id = 'baseline'
    RETURNING 1
), claimed AS (
    UPDATE {s}.jobs AS j SET state = 'executing', attempt = j.attempt + 1, attempted_at = clock_timestamp(),
        worker_id = 'baseline'
    WHERE j.id = ANY(ARRAY(
        SELECT id FROM {s}.jobs WHERE state = 'available' AND limit_key IS NULL AND queue = 'bench'
        ORDER BY priority DESC, scheduled_at, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED))
    RETURNING j.id
)
SELECT (SELECT count(*) FROM done), (SELECT array_agg(id) FROM claimed)
"""


def round_trips(dsn: str, plan: Plan, report: Report) -> None:
    """The baseline loop (claim, then complete: two statements per cycle) against one statement per
    cycle that completes the previous batch and claims the next, interleaved, on the table as is."""
    import time

    n = plan.lever_rows
    two: list[float] = []
    one: list[float] = []
    with migrated_schema(dsn, prefix="bench_rt") as schema:
        s = sql.Identifier(schema)
        statement = sql.SQL(_COMPLETE_AND_CLAIM).format(s=s)
        for rep in range(plan.reps):
            for kind in ("two", "one") if rep % 2 == 0 else ("one", "two"):
                if kind == "two":
                    out = baseline.claim_complete(dsn, schema, n)
                    two.append(out["rate"])
                    ok = out["completed"] == n
                else:
                    with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as conn:
                        conn.execute(sql.SQL("TRUNCATE {}.jobs CASCADE").format(s))  # the steps reference the jobs
                        conn.execute(sql.SQL(baseline._FILL).format(s=s), [n])
                        conn.execute(sql.SQL("VACUUM ANALYZE {}.jobs").format(s))
                        ids: list[int] = []
                        started = time.perf_counter()
                        while True:
                            row = conn.execute(statement, {"ids": ids, "limit": baseline.BATCH}).fetchone()
                            assert row is not None
                            ids = row[1] or []
                            if not ids:
                                break
                        one.append(n / (time.perf_counter() - started))
                        done = conn.execute(
                            sql.SQL("SELECT count(*) FROM {}.jobs WHERE state = 'completed'").format(s)
                        ).fetchone()
                        ok = done is not None and done[0] == n
                if not ok:
                    report.verification_failures.append(f"lever round trips {kind}: not every row completed")
    _record(report, f"claim 100, then complete 100: two statements per cycle ({n:,} rows)", two, "")
    _record(report, f"complete the previous 100 and claim 100 in one statement ({n:,} rows)", one, "")


#: The variants measured under an old snapshot.
_SNAPSHOT_VARIANTS = (
    "before (migrations 1-9: full jobs_task_idx)",
    "as is (migration 10: jobs_task_idx without the executing jobs)",
    "partitioned by state: hot (5 states) / done (3)",
)


def old_snapshot(dsn: str, plan: Plan, report: Report) -> None:
    """The loop with and without a REPEATABLE READ snapshot held open by another session for its
    whole length (nothing the loop makes dead can be cleaned up), interleaved, per table shape."""
    n = plan.lever_rows
    names = [*_SNAPSHOT_VARIANTS, MINIMAL]
    rates: dict[tuple[str, bool], list[float]] = {(k, h): [] for k in names for h in (False, True)}
    work: dict[tuple[str, bool], list[float]] = {k: [] for k in rates}
    with _schemas(dsn, list(_SNAPSHOT_VARIANTS)) as schemas:
        for rep in range(plan.reps):
            order = list(rates) if rep % 2 == 0 else list(reversed(rates))
            for name, hold in order:
                if name == MINIMAL:
                    out = baseline.claim_complete_minimal(dsn, schemas[names[0]], n, old_snapshot=hold)
                else:
                    out = baseline.claim_complete(dsn, schemas[name], n, old_snapshot=hold)
                if out["done"] != n or out["completed"] != n:
                    report.verification_failures.append(f"lever old snapshot {name}: {out['completed']} of {n}")
                rates[(name, hold)].append(out["rate"])
                work[(name, hold)].append(out["buffers_per_row"])
    for (name, hold), values in rates.items():
        what = "an old snapshot held by another session" if hold else "no other session"
        notes = f"buffers per row {statistics.median(work[(name, hold)]):.1f}"
        if hold:
            clean = statistics.median(rates[(name, False)])
            notes += f"; {statistics.median(values) / clean:.2f} of the rate without it"
        _record(report, f"claim 100 + complete 100, {name}, {what} ({n:,} rows)", values, notes)


def run(dsn: str, plan: Plan, report: Report) -> None:
    table_shapes(dsn, plan, report)
    round_trips(dsn, plan, report)
    old_snapshot(dsn, plan, report)
