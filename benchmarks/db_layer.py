"""How should one code base talk to PostgreSQL from trio *and* asyncio without blocking the loop?

psycopg's async API runs on asyncio only, so this script measures the candidates on the same local
PostgreSQL and the same workloads:

(a) ``hop``:      a sync ``psycopg.Connection`` from ``psycopg_pool.ConnectionPool``, every statement in
                  one ``anyio.to_thread.run_sync`` call (what the driver does), on trio and on asyncio;
(b) ``native``:   ``psycopg.AsyncConnection`` from ``AsyncConnectionPool``, on asyncio only;
(c) ``blocking``: the same sync calls made directly on the event-loop thread (the wrong way, as a
                  floor for the cost of the hop), on trio and on asyncio.

and, for LISTEN/NOTIFY wake-ups, a sync connection whose socket is awaited with
``anyio.wait_readable`` (no thread), a thread blocking in ``Connection.notifies(timeout=...)``, and
``AsyncConnection.notifies()`` on asyncio.

Run ``python -m benchmarks.db_layer`` from the repository root (about 2-3 minutes) or with
``--quick`` (about 20 s, for the smoke test). It prints a table and writes JSON to
``benchmarks/results/db_layer.json`` (or ``--output``). Every figure is the median of ``--repeats``
runs; the variants are interleaved across runs so that drift on a shared machine spreads evenly.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import queue
import random
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import psycopg
import psycopg_pool
from psycopg import sql

DEFAULT_DSN = os.environ.get("NURSERY_WORKER_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test")
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "db_layer.json"
POOL_SIZE = 10
BATCH_ROWS = 100
BATCH_TASKS = 10

# The candidates for statements: (name, event-loop backend).
VARIANTS: tuple[tuple[str, str], ...] = (
    ("hop", "trio"),
    ("hop", "asyncio"),
    ("native", "asyncio"),
    ("blocking", "trio"),
    ("blocking", "asyncio"),
)
# The candidates for LISTEN/NOTIFY wake-ups.
WAITERS: tuple[tuple[str, str], ...] = (
    ("socket", "trio"),
    ("socket", "asyncio"),
    ("thread", "trio"),
    ("thread", "asyncio"),
    ("native", "asyncio"),
)


@dataclass(frozen=True)
class Plan:
    """How much work each figure does."""

    repeats: int
    hop_calls: int
    seq_calls: int
    conc_calls: int
    batch_seq_calls: int
    batch_conc_calls: int
    notify_samples: int
    warmup: int


FULL = Plan(
    repeats=5,
    hop_calls=3000,
    seq_calls=2000,
    conc_calls=4000,
    batch_seq_calls=300,
    batch_conc_calls=600,
    notify_samples=500,
    warmup=100,
)
QUICK = Plan(
    repeats=1,
    hop_calls=500,
    seq_calls=300,
    conc_calls=600,
    batch_seq_calls=50,
    batch_conc_calls=100,
    notify_samples=60,
    warmup=20,
)

#: Rows of the statement table: key, label, unit, higher-is-better.
METRICS: tuple[tuple[str, str, str], ...] = (
    ("hop_us", "to_thread hop alone, no database (µs per call, p50)", "µs"),
    ("seq_us", "SELECT 1, one task, sequential (µs per call, p50)", "µs"),
    ("conc10_cps", "SELECT 1, 10 tasks (calls/s)", "calls/s"),
    ("conc50_cps", "SELECT 1, 50 tasks (calls/s)", "calls/s"),
    ("batch_seq_cps", f"UPDATE ... FROM unnest() of {BATCH_ROWS} rows, one task (calls/s)", "calls/s"),
    ("batch_conc_cps", f"UPDATE ... FROM unnest() of {BATCH_ROWS} rows, {BATCH_TASKS} tasks (calls/s)", "calls/s"),
    ("lag50_ms", "event-loop lag p99 while 50 tasks run SELECT 1 (ms)", "ms"),
)


# --- the statements -------------------------------------------------------------------------------


class Statements:
    """The two statements of the workloads, as text bound to the scratch schema."""

    def __init__(self, schema: str) -> None:
        ident = sql.Identifier(schema)
        self.select = b"SELECT 1"
        self.batch = sql.SQL(
            "UPDATE {}.items AS t SET n = t.n + u.d, v = u.v "
            "FROM unnest(%s::int[], %s::int[], %s::text[]) AS u(id, d, v) WHERE t.id = u.id"
        ).format(ident)

    def batch_params(self, task: int, call: int) -> tuple[list[int], list[int], list[str]]:
        """Arguments for one batch of *task* (disjoint rows per task, so tasks never wait on locks)."""
        first = task * BATCH_ROWS + 1
        ids = list(range(first, first + BATCH_ROWS))
        return ids, [1] * BATCH_ROWS, [f"t{task}c{call}"] * BATCH_ROWS


def _select_sync(pool: psycopg_pool.ConnectionPool, stmt: Statements) -> None:
    with pool.connection() as conn:
        conn.execute(stmt.select).fetchone()


def _batch_sync(pool: psycopg_pool.ConnectionPool, stmt: Statements, task: int, call: int) -> None:
    with pool.connection() as conn:
        conn.execute(stmt.batch, stmt.batch_params(task, call))


def _noop() -> None:
    return None


Call = Callable[[int, int], Awaitable[None]]  # (task, call number) -> one statement


@contextlib.contextmanager
def _sync_pool(dsn: str) -> Iterator[psycopg_pool.ConnectionPool]:
    pool = psycopg_pool.ConnectionPool(
        dsn, min_size=POOL_SIZE, max_size=POOL_SIZE, kwargs={"autocommit": True}, open=False, name="bench"
    )
    pool.open(wait=True, timeout=30)
    try:
        yield pool
    finally:
        pool.close()


def _make_calls(kind: str, pool: Any, stmt: Statements) -> tuple[Call, Call]:
    """The (SELECT 1, batch) calls of candidate *kind* on *pool*."""
    if kind == "hop":

        async def select(task: int, n: int) -> None:
            await anyio.to_thread.run_sync(_select_sync, pool, stmt)

        async def batch(task: int, n: int) -> None:
            await anyio.to_thread.run_sync(_batch_sync, pool, stmt, task, n)

    elif kind == "blocking":
        # The wrong way: the loop thread blocks for the whole round trip. It yields between calls
        # (the best such code can do), so other tasks and the lag probe get a turn in between.

        async def select(task: int, n: int) -> None:
            _select_sync(pool, stmt)
            await anyio.lowlevel.checkpoint()

        async def batch(task: int, n: int) -> None:
            _batch_sync(pool, stmt, task, n)
            await anyio.lowlevel.checkpoint()

    elif kind == "native":

        async def select(task: int, n: int) -> None:
            async with pool.connection() as conn:
                cur = await conn.execute(stmt.select)
                await cur.fetchone()

        async def batch(task: int, n: int) -> None:
            async with pool.connection() as conn:
                await conn.execute(stmt.batch, stmt.batch_params(task, n))

    else:  # pragma: no cover - a typo in VARIANTS
        raise ValueError(kind)
    return select, batch


# --- the workloads --------------------------------------------------------------------------------


async def _sequential_us(call: Call, calls: int, warmup: int) -> float:
    """Median latency of one call, in µs, one call at a time."""
    for i in range(warmup):
        await call(0, i)
    samples = []
    clock = time.perf_counter_ns
    for i in range(calls):
        start = clock()
        await call(0, i)
        samples.append(clock() - start)
    return statistics.median(samples) / 1000


async def _concurrent(call: Call, tasks: int, calls: int, warmup: int) -> tuple[float, float]:
    """Throughput of *tasks* tasks sharing *calls* calls, and the p99 lag of a 1 ms timer meanwhile."""

    async def run(per_task: int, offset: int) -> None:
        async def one(task: int) -> None:
            for i in range(per_task):
                await call(task, offset + i)

        async with anyio.create_task_group() as tg:
            for task in range(tasks):
                tg.start_soon(one, task)

    await run(max(1, warmup // tasks), 0)
    lags: list[float] = []

    async def probe() -> None:
        while True:
            start = time.perf_counter()
            await anyio.sleep(0.001)
            lags.append(time.perf_counter() - start - 0.001)

    per_task = calls // tasks
    async with anyio.create_task_group() as outer:
        outer.start_soon(probe)
        start = time.perf_counter()
        await run(per_task, 1_000_000)
        elapsed = time.perf_counter() - start
        outer.cancel_scope.cancel()
    lag_p99 = _quantile(lags, 0.99) * 1000 if lags else elapsed * 1000
    return per_task * tasks / elapsed, lag_p99


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _run_variant(kind: str, dsn: str, stmt: Statements, plan: Plan) -> dict[str, float | None]:
    """Every statement workload for one candidate on the current event loop."""
    results: dict[str, float | None] = {}
    if kind == "hop":
        results["hop_us"] = await _sequential_us(
            lambda task, n: anyio.to_thread.run_sync(_noop), plan.hop_calls, plan.warmup
        )
    else:
        results["hop_us"] = None
    async with contextlib.AsyncExitStack() as stack:
        if kind == "native":
            apool = psycopg_pool.AsyncConnectionPool(
                dsn, min_size=POOL_SIZE, max_size=POOL_SIZE, kwargs={"autocommit": True}, open=False, name="bench"
            )
            await apool.open(wait=True, timeout=30)
            stack.push_async_callback(apool.close)
            pool: Any = apool
        else:
            pool = await anyio.to_thread.run_sync(stack.enter_context, _sync_pool(dsn))
        select, batch = _make_calls(kind, pool, stmt)
        results["seq_us"] = await _sequential_us(select, plan.seq_calls, plan.warmup)
        results["conc10_cps"], _ = await _concurrent(select, 10, plan.conc_calls, plan.warmup)
        results["conc50_cps"], results["lag50_ms"] = await _concurrent(select, 50, plan.conc_calls, plan.warmup)
        seq_us = await _sequential_us(batch, plan.batch_seq_calls, plan.warmup // 4)
        results["batch_seq_cps"] = 1e6 / seq_us
        results["batch_conc_cps"], _ = await _concurrent(batch, BATCH_TASKS, plan.batch_conc_calls, plan.warmup)
    return results


# --- LISTEN/NOTIFY --------------------------------------------------------------------------------


class Sender:
    """A thread that sends one NOTIFY at a time, stamped with perf_counter(), and waits for the ack."""

    def __init__(self, dsn: str, channel: str, samples: int) -> None:
        self.dsn, self.channel, self.samples = dsn, channel, samples
        self.acks: queue.SimpleQueue[None] = queue.SimpleQueue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="notify-sender", daemon=True)

    def _run(self) -> None:
        rng = random.Random(7)
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                for i in range(self.samples):
                    # A pause so that the waiter is parked again before the next notification.
                    time.sleep(0.001 + rng.random() * 0.002)
                    conn.execute("SELECT pg_notify(%s, %s)", [self.channel, f"{i} {time.perf_counter()!r}"])
                    self.acks.get(timeout=10)
        except BaseException as exc:  # reported by the waiter
            self.error = exc

    def seen(self, payload: str, at: float) -> float:
        """Record that *payload* woke the waiter at *at*; return the latency in seconds."""
        self.acks.put(None)
        return at - float(payload.split()[1])


async def _wait_socket(dsn: str, channel: str, samples: int) -> list[float]:
    """A sync connection, its socket awaited on the loop: no thread (the driver's listener)."""
    conn = await anyio.to_thread.run_sync(functools.partial(psycopg.connect, dsn, autocommit=True))
    latencies: list[float] = []
    try:
        await anyio.to_thread.run_sync(conn.execute, f"LISTEN {channel}")
        sender = Sender(dsn, channel, samples)
        sender.thread.start()
        pgconn = conn.pgconn
        with anyio.fail_after(60):
            while len(latencies) < samples and sender.error is None:
                await anyio.wait_readable(conn.fileno())
                pgconn.consume_input()
                while (note := pgconn.notifies()) is not None:
                    latencies.append(sender.seen(note.extra.decode(), time.perf_counter()))
    finally:
        conn.close()
    return _checked(sender, latencies)


async def _wait_thread(dsn: str, channel: str, samples: int) -> list[float]:
    """A thread blocking in Connection.notifies(timeout=...), one hop per wake-up."""
    conn = await anyio.to_thread.run_sync(functools.partial(psycopg.connect, dsn, autocommit=True))
    latencies: list[float] = []

    def block() -> list[psycopg.Notify]:
        return list(conn.notifies(timeout=1.0, stop_after=1))

    try:
        await anyio.to_thread.run_sync(conn.execute, f"LISTEN {channel}")
        sender = Sender(dsn, channel, samples)
        sender.thread.start()
        with anyio.fail_after(60):
            while len(latencies) < samples and sender.error is None:
                for note in await anyio.to_thread.run_sync(block):
                    latencies.append(sender.seen(note.payload, time.perf_counter()))
    finally:
        conn.close()
    return _checked(sender, latencies)


async def _wait_native(dsn: str, channel: str, samples: int) -> list[float]:
    """psycopg.AsyncConnection.notifies() (asyncio only)."""
    latencies: list[float] = []
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(f"LISTEN {channel}")
        sender = Sender(dsn, channel, samples)
        sender.thread.start()
        with anyio.fail_after(60):
            gen = conn.notifies(timeout=5.0)
            try:
                async for note in gen:
                    latencies.append(sender.seen(note.payload, time.perf_counter()))
                    if len(latencies) >= samples or sender.error is not None:
                        break
            finally:
                await gen.aclose()
    return _checked(sender, latencies)


def _checked(sender: Sender, latencies: list[float]) -> list[float]:
    sender.thread.join(timeout=10)
    if sender.error is not None:
        raise RuntimeError(f"the NOTIFY sender failed: {sender.error!r}")
    return latencies


WAIT_FUNCTIONS: dict[str, Callable[[str, str, int], Awaitable[list[float]]]] = {
    "socket": _wait_socket,
    "thread": _wait_thread,
    "native": _wait_native,
}


# --- running, reporting ---------------------------------------------------------------------------


def _environment(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "psycopg": psycopg.__version__,
        "psycopg_impl": psycopg.pq.__impl__,
        "libpq": psycopg.pq.version(),
        "psycopg_pool": version("psycopg-pool"),
        "anyio": version("anyio"),
        "trio": version("trio"),
        "postgresql": row[0] if row else "?",
        "platform": platform.platform(),
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
    }


def _setup(dsn: str, schema: str) -> None:
    ident = sql.Identifier(schema)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
        conn.execute(sql.SQL("CREATE TABLE {}.items (id int PRIMARY KEY, n int NOT NULL, v text)").format(ident))
        rows = BATCH_TASKS * BATCH_ROWS
        conn.execute(
            sql.SQL("INSERT INTO {}.items SELECT g, 0, '' FROM generate_series(1, %s) AS g").format(ident), [rows]
        )
        conn.execute(sql.SQL("ANALYZE {}.items").format(ident))


def _teardown(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@dataclass
class Figure:
    """One measured quantity of one candidate: every run and their median."""

    metric: str
    candidate: str
    backend: str
    unit: str
    runs: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    def as_json(self) -> dict[str, Any]:
        spread = (max(self.runs) - min(self.runs)) / self.median if self.median else 0.0
        return {**asdict(self), "median": self.median, "min": min(self.runs), "max": max(self.runs), "spread": spread}


def measure(dsn: str, plan: Plan, *, log: Callable[[str], None]) -> tuple[list[Figure], list[Figure]]:
    """Run every variant *plan.repeats* times (interleaved) and collect the figures."""
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    channel = f"{schema}_ch"
    _setup(dsn, schema)
    stmt = Statements(schema)
    stats: dict[tuple[str, str, str], list[float]] = {}
    notify: dict[tuple[str, str, str], list[float]] = {}
    try:
        for repeat in range(plan.repeats):
            order = list(VARIANTS[repeat % len(VARIANTS) :] + VARIANTS[: repeat % len(VARIANTS)])
            for kind, backend in order:
                log(f"run {repeat + 1}/{plan.repeats}: {kind} on {backend}")
                results = anyio.run(_run_variant, kind, dsn, stmt, plan, backend=backend)
                for metric, value in results.items():
                    if value is not None:
                        stats.setdefault((metric, kind, backend), []).append(value)
            for kind, backend in WAITERS:
                log(f"run {repeat + 1}/{plan.repeats}: NOTIFY wake-up, {kind} on {backend}")
                lat = anyio.run(WAIT_FUNCTIONS[kind], dsn, channel, plan.notify_samples, backend=backend)
                notify.setdefault(("p50_us", kind, backend), []).append(_quantile(lat, 0.50) * 1e6)
                notify.setdefault(("p99_us", kind, backend), []).append(_quantile(lat, 0.99) * 1e6)
    finally:
        _teardown(dsn, schema)
    units = {key: unit for key, _, unit in METRICS}
    figures = [Figure(m, k, b, units[m], runs) for (m, k, b), runs in stats.items()]
    notifies = [Figure(m, k, b, "µs", runs) for (m, k, b), runs in notify.items()]
    return figures, notifies


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.0f}"
    return f"{value:.2f}"


def table(figures: list[Figure], notifies: list[Figure]) -> str:
    """The medians as two Markdown tables."""
    by = {(f.metric, f.candidate, f.backend): f.median for f in figures}
    heads = [f"({'a' if k == 'hop' else 'b' if k == 'native' else 'c'}) {k}, {b}" for k, b in VARIANTS]
    lines = ["| workload | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(VARIANTS)]
    for key, label, _ in METRICS:
        cells = [_fmt(by.get((key, k, b))) for k, b in VARIANTS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    nby = {(f.metric, f.candidate, f.backend): f.median for f in notifies}
    lines += ["", "| NOTIFY wake-up | p50 (µs) | p99 (µs) |", "|---|---:|---:|"]
    labels = {
        "socket": "sync conn, anyio.wait_readable(fileno) + consume_input (no thread)",
        "thread": "thread blocking in conn.notifies(timeout) via to_thread",
        "native": "AsyncConnection.notifies()",
    }
    for kind, backend in WAITERS:
        p50, p99 = nby.get(("p50_us", kind, backend)), nby.get(("p99_us", kind, backend))
        lines.append(f"| {labels[kind]}, {backend} | {_fmt(p50)} | {_fmt(p99)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.db_layer", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts, one run (about 20 s; for the smoke test)")
    parser.add_argument("--dsn", default=DEFAULT_DSN, help="PostgreSQL to measure (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON file (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per figure (default: 5, --quick: 1)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.repeats is not None:
        plan = Plan(**{**asdict(plan), "repeats": max(1, args.repeats)})

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    env = _environment(args.dsn)
    figures, notifies = measure(args.dsn, plan, log=log)
    env["loadavg_end"] = os.getloadavg()
    elapsed = time.perf_counter() - started
    command = "python -m benchmarks.db_layer" + (" --quick" if args.quick else "")
    if args.repeats is not None:
        command += f" --repeats {args.repeats}"
    report = {
        "command": command,
        "mode": "quick" if args.quick else "full",
        "plan": asdict(plan),
        "pool_max_size": POOL_SIZE,
        "anyio_thread_limit": 40,
        "environment": env,
        "elapsed_s": round(elapsed, 1),
        "statements": [f.as_json() for f in figures],
        "notify": [f.as_json() for f in notifies],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"# {command}: medians of {plan.repeats} run(s), {elapsed:.0f} s")
    print(
        f"# Python {env['python']}, psycopg {env['psycopg']} ({env['psycopg_impl']}), psycopg_pool "
        f"{env['psycopg_pool']}, anyio {env['anyio']}, trio {env['trio']}, PostgreSQL {env['postgresql']}, "
        f"nproc {env['nproc']}, load {env['loadavg_start'][0]:.2f} -> {env['loadavg_end'][0]:.2f}"
    )
    print(table(figures, notifies))
    noisy = [f for f in figures + notifies if len(f.runs) > 1 and f.as_json()["spread"] > 0.25]
    if noisy:
        print(f"# {len(noisy)} figure(s) varied by more than 25% between runs: the machine was busy")
    print(f"# JSON: {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
