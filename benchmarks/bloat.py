"""The bloat section (issue 21): a steady offered load while one REPEATABLE READ transaction holds
its snapshot open, on a private PostgreSQL server with production-like settings.

The shared local server runs with ``autovacuum=off``, which would make any bloat figure meaningless,
so this section starts a cluster of its own: ``initdb`` into a temporary directory, a free port,
``autovacuum=on`` (default thresholds and naptime), ``shared_buffers=128MB``, ``fsync=on``. It needs
the server binaries (``/usr/lib/postgresql/*/bin``); without them the section is skipped, saying so.

The run is one repetition whatever ``--reps`` says (it takes about 2 1/2 minutes; ``--quick``
about 40 s: phases of 5, 10 and 5 s):

1. clean capacity: a batch of no-op jobs worked off by one worker process at concurrency 50 (jobs/s,
   by the database's first-claim-to-last-finish span);
2. the offered load: a producer thread defers no-op jobs at a fixed rate, a third of that capacity (or
   ``$NURSERY_WORKER_BENCH_BLOAT_RATE`` jobs/s), in batches every 50 ms, to one worker process
   (concurrency 50, LISTEN on), for the three phases:
   clean (20 s), held (60 s: another client's REPEATABLE READ transaction has read the jobs table
   and stays open, idle in transaction), after (20 s: it has rolled back), and up to 40 s more
   while the backlog is not yet back to its clean level (so that the return can be timed);
3. every second: the jobs table's dead tuples (``Driver.database_health``, summed over partitions),
   the fetch index's size, the backlog (jobs not yet completed); afterwards, from the jobs
   themselves, completions and pickup latency (``attempted_at - scheduled_at``) per second.

Reported: completed jobs/s in each phase as a ratio to the clean phase, the time after the
transaction ends until the rate and the backlog are back to their clean level, the pickup p50/p99
per phase, and the dead tuples and fetch-index size before, at their peak and after. Verified: every
offered job completed.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from ._common import Plan, Report, db_span, log, percentile
from ._workers import finish_runner, start_runner

CONCURRENCY = 50
#: The producer defers one batch this often.
TICK = 0.05
#: Phase lengths in seconds (clean, held, after), full and quick.
PHASES = {"full": (20.0, 60.0, 20.0), "quick": (5.0, 10.0, 5.0)}
#: How much longer the load runs on after the after phase while the backlog is not back to clean.
EXTRA = {"full": 40.0, "quick": 10.0}
#: Jobs in the clean-capacity batch, full and quick.
CAPACITY_JOBS = {"full": 10_000, "quick": 2_000}
#: The offered load as a share of the clean capacity (unless $NURSERY_WORKER_BENCH_BLOAT_RATE).
#: The capacity is that of a worker alone on a queued backlog; under a steady load the producer
#: and the server's inserts share the same two cores, and half of it was more than a worker kept up
#: with in the clean phase here. A third is a load the clean phase sustains, so what the long
#: transaction does is what the figures show.
LOAD_SHARE = 1 / 3
RATE_ENV = "NURSERY_WORKER_BENCH_BLOAT_RATE"


# --- a private server ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateServer:
    """A PostgreSQL cluster of our own with production-like settings; root runs it as ``postgres``."""

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or [shutil.which("initdb") or ""]
        self.bin = Path(found[-1]).parent
        self.port = _free_port()
        self.base = Path(tempfile.mkdtemp(prefix="nw-bench-bloat-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            self.as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.base, "postgres", "postgres")
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.running = False

    def available(self) -> bool:
        return (self.bin / "initdb").exists()

    def _run(self, *args: str) -> None:
        subprocess.run([*self.as_user, *args], check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8")
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c max_connections=100 "
            "-c shared_buffers=128MB -c fsync=on -c autovacuum=on -c track_counts=on"
        )
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o",
                  options, "start")  # fmt: skip
        self.running = True

    def destroy(self) -> None:
        if self.running:
            with contextlib.suppress(Exception):
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def private_server() -> Iterator[PrivateServer | str]:
    """A started private server, or the reason there is none."""
    server = PrivateServer()
    if not server.available():
        shutil.rmtree(server.base, ignore_errors=True)
        yield "no PostgreSQL server binaries (initdb) on this machine"
        return
    try:
        try:
            server.start()
        except (subprocess.SubprocessError, OSError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            yield f"cannot start a private PostgreSQL server: {detail[-300:]}"
            return
        yield server
    finally:
        server.destroy()


# --- the load ----------------------------------------------------------------------------------


class Producer(threading.Thread):
    """Defers no-op jobs at *rate* per second, one batch every :data:`TICK`, until stopped."""

    def __init__(self, dsn: str, schema: str, rate: float) -> None:
        super().__init__(name="bloat-producer", daemon=True)
        from .bench_app import build_app

        self.app = build_app(dsn, schema)
        self.rate = rate
        self.deferred = 0
        self.late_ticks = 0
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            start = time.monotonic()
            tick = 0
            while not self._halt.is_set():
                tick += 1
                due = int(self.rate * tick * TICK) - self.deferred
                if due > 0:
                    self.app.defer_many_sync(
                        [self.app.job_by_name("bench.noop", {"i": self.deferred + k}) for k in range(due)]
                    )
                    self.deferred += due
                wait = start + tick * TICK - time.monotonic()
                if wait > 0:
                    self._halt.wait(wait)
                else:
                    self.late_ticks += 1
        except BaseException as exc:  # reported by the section, which fails the verification
            self.error = exc
        finally:
            self.app.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)


def _sample(conn: psycopg.Connection[Any], schema: str) -> tuple[int, int, int]:
    """(dead tuples of the jobs table(s), bytes of the fetch index(es), jobs not yet finished)."""
    row = conn.execute(
        sql.SQL(
            """
            SELECT
              (SELECT coalesce(sum(n_dead_tup), 0) FROM pg_stat_user_tables
               WHERE relid = {jobs}::regclass OR relid IN (SELECT relid FROM pg_partition_tree({jobs}::regclass))),
              (SELECT coalesce(sum(pg_relation_size(c.oid)), 0) FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = {name} AND c.relkind IN ('i', 'I') AND c.relname LIKE '%%fetch%%'),
              (SELECT count(*) FROM {s}.jobs WHERE state IN ('available', 'executing'))
            """
        ).format(jobs=sql.Literal(f'"{schema}".jobs'), name=sql.Literal(schema), s=sql.Identifier(schema))
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def _per_second(dsn: str, schema: str, t0: float) -> dict[int, tuple[int, float, float]]:
    """Second (since *t0*, wall clock) -> (jobs completed in it, pickup p50 ms, pickup p99 ms)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            sql.SQL(
                """
                SELECT floor(extract(epoch FROM finished_at) - %s)::int AS sec, count(*),
                       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM attempted_at - scheduled_at)),
                       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM attempted_at - scheduled_at))
                FROM {}.jobs WHERE state = 'completed' GROUP BY 1 ORDER BY 1
                """
            ).format(sql.Identifier(schema)),
            [t0],
        ).fetchall()
    return {int(r[0]): (int(r[1]), float(r[2]) * 1000, float(r[3]) * 1000) for r in rows}


def _capacity(dsn: str, schema: str, n: int) -> float:
    """No-op jobs/s of one worker process at concurrency 50 on *n* queued jobs (the database span)."""
    from .bench_app import build_app

    app = build_app(dsn, schema)
    try:
        app.defer_many_sync([app.job_by_name("bench.noop", {"i": i}) for i in range(n)])
    finally:
        app.close()
    from ._workers import run_once

    run_once(dsn, schema, "asyncio", CONCURRENCY)
    rate = n / db_span(dsn, schema)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DELETE FROM {}.jobs").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("VACUUM {}.jobs").format(sql.Identifier(schema)))
    return rate


def _backlog_threshold(clean_backlogs: list[int], rate: float) -> float:
    """The backlog that counts as "back to clean": half again the clean phase's p95, or 100 ms of load."""
    return max(percentile([float(b) for b in clean_backlogs] or [0.0], 95) * 1.5, rate * 0.1)


def _phase_stats(seconds: dict[int, tuple[int, float, float]], start: float, end: float) -> dict[str, float]:
    """Completed jobs/s and pickup p50/p99 (medians of the seconds) over the whole seconds in [start, end)."""
    first, last = math.ceil(start), math.floor(end)  # seconds first .. last-1
    inside = [seconds[s] for s in range(first, last) if s in seconds]
    if not inside:
        return {"rate": 0.0, "p50": float("nan"), "p99": float("nan")}
    return {
        "rate": sum(v[0] for v in inside) / max(1, last - first),
        "p50": statistics.median(v[1] for v in inside),
        "p99": statistics.median(v[2] for v in inside),
    }


def run(dsn: str, plan: Plan, report: Report) -> dict[str, Any]:
    """The bloat section; *dsn* is not used (the section runs on a private server of its own)."""
    del dsn
    with private_server() as server:
        if isinstance(server, str):
            report.skip("bloat", server)
            return {}
        return _run(server.dsn, plan, report)


def _run(dsn: str, plan: Plan, report: Report) -> dict[str, Any]:
    from nursery_worker import App

    mode = "quick" if plan.name == "quick" else "full"
    clean_s, held_s, after_s = PHASES[mode]
    extra_s = EXTRA[mode]
    schema = "bloat"
    App(dsn=dsn, schema=schema).migrate_sync()
    capacity = _capacity(dsn, schema, CAPACITY_JOBS[mode])
    rate = float(os.environ.get(RATE_ENV) or round(capacity * LOAD_SHARE, -1))
    log(f"  clean capacity {capacity:,.0f} jobs/s; offered load {rate:,.0f} jobs/s")

    worker = start_runner(dsn, schema, "asyncio", CONCURRENCY, once=False)
    assert worker.stdout is not None
    if worker.stdout.readline().strip() != "READY":
        worker.kill()
        raise RuntimeError(f"the worker did not start: {worker.communicate(timeout=30)[1][-1500:]}")
    try:
        producer = Producer(dsn, schema, rate)
        samples: list[tuple[float, int, int, int]] = []
        holder: psycopg.Connection[Any] | None = None
        t0 = time.time()
        marks = {"held": t0 + clean_s, "released": t0 + clean_s + held_s, "end": t0 + clean_s + held_s + after_s}
        producer.start()
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                next_at = t0
                threshold: float | None = None  # the clean phase's backlog, set when the transaction ends
                while True:
                    now = time.time()
                    if now >= marks["end"]:
                        # Not back yet: keep the load on (up to extra_s more) until the backlog has
                        # been back to its clean level for a few seconds, to time the return.
                        recent = [b for _, _, _, b in samples[-4:]]
                        back = threshold is None or (len(recent) == 4 and max(recent) <= threshold)
                        if back or now >= marks["end"] + extra_s:
                            break
                    if holder is None and now >= marks["held"] and now < marks["released"]:
                        holder = psycopg.connect(dsn, application_name="bloat-holder")
                        holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                        holder.execute(sql.SQL("SELECT count(*) FROM {}.jobs").format(sql.Identifier(schema)))
                        marks["held"] = time.time()
                        log("  REPEATABLE READ transaction open, snapshot taken")
                    if holder is not None and now >= marks["released"]:
                        holder.rollback()
                        holder.close()
                        holder = None
                        marks["released"] = time.time()
                        log("  transaction ended")
                        clean_backlogs = [b for t, _, _, b in samples if 2.0 <= t < marks["held"] - t0]
                        threshold = _backlog_threshold(clean_backlogs, rate)
                    samples.append((now - t0, *_sample(conn, schema)))
                    next_at += 1.0
                    time.sleep(max(0.0, next_at - time.time()))
        finally:
            producer.stop()
            marks["stop"] = time.time()
            if holder is not None:
                holder.close()
        # Let the worker finish the backlog, then stop it: as long as it makes progress (a backlog
        # grown under the held transaction can take minutes), but not past a minute without any.
        with psycopg.connect(dsn, autocommit=True) as conn:
            left = _sample(conn, schema)[2]
            stalled_since = time.monotonic()
            while left:
                time.sleep(0.2)
                now_left = _sample(conn, schema)[2]
                if now_left < left:
                    stalled_since = time.monotonic()
                elif time.monotonic() - stalled_since > 60:
                    break
                left = now_left
            completed = conn.execute(
                sql.SQL("SELECT count(*) FROM {}.jobs WHERE state = 'completed'").format(sql.Identifier(schema))
            ).fetchone()
        worker.send_signal(signal.SIGTERM)
        finish_runner(worker, timeout=120)
    except BaseException:
        # Never leave the worker process behind (it would run on against a removed server).
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=30)
        raise
    per_second = _per_second(dsn, schema, t0)

    held_at, released_at, end_at = (marks[k] - t0 for k in ("held", "released", "end"))
    clean = _phase_stats(per_second, 2.0, held_at)  # the first 2 s: the worker warming up
    during = _phase_stats(per_second, held_at, released_at)
    after = _phase_stats(per_second, released_at, end_at)
    threshold = _backlog_threshold([b for t, _, _, b in samples if 2.0 <= t < held_at], rate)
    stop_at = marks["stop"] - t0
    recovered = None
    for t, _, _, backlog in samples:
        if t < released_at or t + 3 > stop_at:
            continue
        window = [per_second.get(int(t) + k, (0, 0.0, 0.0))[0] for k in range(3)]
        if statistics.mean(window) >= 0.9 * clean["rate"] and backlog <= threshold:
            recovered = t - released_at
            break
    dead_before = [d for t, d, _, _ in samples if t < held_at][-1:] or [0]
    dead_peak = max(d for _, d, _, _ in samples)
    dead_after = samples[-1][1]
    index_before = [i for t, _, i, _ in samples if t < held_at][-1:] or [0]
    index_peak = max(i for _, _, i, _ in samples)
    index_after = samples[-1][2]

    def fig(name: str, unit: str, value: float | None, higher: bool, notes: str = "") -> Any:
        f = report.figure(
            section="bloat", name=name, system="nursery-worker", backend="asyncio", unit=unit,
            higher_is_better=higher, notes=notes,
        )  # fmt: skip
        if value is not None:
            f.reps.append(value)
        return f

    rate_fig = fig("clean rate (offered load)", "jobs/s", clean["rate"], True, f"offered {rate:,.0f} jobs/s")
    fig("clean capacity (c=50, one process)", "jobs/s", capacity, True)
    fig("rate during / clean", "ratio", during["rate"] / clean["rate"] if clean["rate"] else None, True)
    fig("rate after / clean", "ratio", after["rate"] / clean["rate"] if clean["rate"] else None, True)
    back = fig(
        "return to clean rate", "s", recovered if recovered is not None else stop_at - released_at, False,
        "3 s mean >= 90% of clean and the backlog back to its clean level"
        if recovered is not None
        else f"a lower bound: not back within the {stop_at - released_at:.0f} s the load ran on after the transaction",
    )  # fmt: skip
    back.extra["lower_bound"] = recovered is None
    for label, stats in (("clean", clean), ("during", during), ("after", after)):
        fig(f"pickup p50 {label}", "ms", stats["p50"], False)
        fig(f"pickup p99 {label}", "ms", stats["p99"], False)
    fig("dead tuples before", "rows", float(dead_before[0]), False)
    fig("dead tuples peak", "rows", float(dead_peak), False)
    fig("dead tuples after", "rows", float(dead_after), False)
    fig("fetch index before", "kB", index_before[0] / 1024, False)
    fig("fetch index peak", "kB", index_peak / 1024, False)
    fig("fetch index after", "kB", index_after / 1024, False)
    rate_fig.extra["timeline"] = [
        {"t": round(t, 1), "dead_tuples": d, "fetch_index_bytes": i, "backlog": b} for t, d, i, b in samples
    ]
    rate_fig.extra["per_second"] = {str(s): list(v) for s, v in sorted(per_second.items())}
    rate_fig.extra["marks"] = {"held": round(held_at, 1), "released": round(released_at, 1), "end": round(end_at, 1)}
    done = int(completed[0]) if completed else 0
    report.verify(
        rate_fig,
        producer.error is None and left == 0 and done == producer.deferred,
        f"offered {producer.deferred} jobs, completed {done}, left {left}, producer error {producer.error!r}",
    )
    if clean["rate"] < 0.95 * rate:
        # The worker fell behind before the transaction began: the figures below are of an
        # overloaded worker (a loaded machine, or a load too close to capacity), not of bloat alone.
        rate_fig.notes += f"; the clean phase did not keep up with the offered load ({clean['rate']:,.0f}/s)"
    if producer.late_ticks > 0.1 * (end_at / TICK):
        rate_fig.notes += f"; the producer fell behind on {producer.late_ticks} ticks"
    log(
        f"  rate clean {clean['rate']:,.0f}/s, during {during['rate']:,.0f}/s, after {after['rate']:,.0f}/s; "
        f"dead tuples {dead_before[0]:,} -> peak {dead_peak:,} -> {dead_after:,}; recovered "
        f"{'never' if recovered is None else f'{recovered:.0f}s'}"
    )
    return {}
