"""The soak: the crash storm of ``tests/faults/test_crash_storm.py``, for minutes instead of seconds.

A supervisor of worker processes (``run_supervisor``, the ledger app of ``tests/faults/ledger_app.py``)
works through a steady stream of jobs (mostly short, some slow) while this program SIGKILLs its
busiest child every few seconds and, now and then, asks for a rolling restart. When the time is up
it stops producing, lets every job finish, stops the supervisor and audits the jobs table against
the ledger: every job completed, none left executing, every extra attempt explained by a kill.

    python -m benchmarks.soak --minutes 10            # or: python -m benchmarks soak --minutes 10
    python -m benchmarks.soak --seconds 20 --rate 100 # a short run

Prints the figures (jobs, kills, restarts, duplicates, lost, stuck, unexplained) and writes them as
JSON (``benchmarks/results/soak.json`` unless ``--output``). Exits 1 unless lost, stuck and
unexplained are all 0.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import psycopg
from psycopg import sql

from nursery_worker import App, Supervisor, run_supervisor

from ._common import BENCH_DIR, DEFAULT_DSN, ROOT, dump_json, environment, log, migrated_schema

LEDGER_APP = "tests.faults.ledger_app:app"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0])
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, default=None, help="how long to produce and kill (default 10)")
    length.add_argument("--seconds", type=float, default=None, help="the same, in seconds")
    parser.add_argument("--rate", type=float, default=300.0, help="jobs deferred per second (default 300)")
    parser.add_argument("--slow-share", type=float, default=0.02, help="share of 1.5 s jobs (default 0.02)")
    parser.add_argument("--processes", type=int, default=3, help="worker processes (default 3)")
    parser.add_argument("--concurrency", type=int, default=10, help="jobs at once per process (default 10)")
    parser.add_argument("--kill-every", type=float, default=4.0, help="seconds between SIGKILLs (default 4)")
    parser.add_argument(
        "--rolling-every", type=float, default=60.0, help="seconds between rolling restarts, 0 for none (default 60)"
    )
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--dsn", default=DEFAULT_DSN, help="PostgreSQL DSN (default: the test database)")
    parser.add_argument("--output", default=str(BENCH_DIR / "results" / "soak.json"), help="the JSON report")
    parser.add_argument("--seed", type=int, default=None, help="seed of the job mix and the kill timing")
    args = parser.parse_args(argv)
    args.duration = args.seconds if args.seconds is not None else 60.0 * (args.minutes or 10.0)
    return args


class Soak:
    def __init__(self, args: argparse.Namespace, schema: str) -> None:
        self.args = args
        self.schema = schema
        self.rng = random.Random(args.seed)
        self.app = App(dsn=args.dsn, schema=schema)
        self.conn = psycopg.connect(args.dsn, autocommit=True)
        self.conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        self.ids: list[int] = []
        self.killed: list[int] = []
        self.rolling = 0
        self.restarts = 0

    async def scalar(self, statement: str) -> Any:
        return await anyio.to_thread.run_sync(lambda: self.conn.execute(statement).fetchone()[0])  # type: ignore[index]

    async def produce(self, until: float) -> None:
        tick = 0.5
        while anyio.current_time() < until:
            specs = []
            for _ in range(max(1, round(self.args.rate * tick))):
                slow = self.rng.random() < self.args.slow_share
                specs.append(self.app.job_by_name("ledger.work", {"seconds": 1.5 if slow else 0.005}))
            self.ids.extend(j.id for j in await self.app.defer_many(specs))
            await anyio.sleep(tick)

    async def kill(self, supervisor: Supervisor, until: float) -> None:
        while True:
            await anyio.sleep(self.args.kill_every * self.rng.uniform(0.5, 1.5))
            if anyio.current_time() >= until:
                return
            children = {c.pid for c in supervisor.children() if c.pid is not None and c.state == "running"}
            busy = await anyio.to_thread.run_sync(
                lambda: self.conn.execute(
                    "SELECT w.pid FROM jobs AS j JOIN workers AS w ON w.id = j.worker_id "
                    "WHERE j.state = 'executing' GROUP BY w.pid ORDER BY count(*) DESC"
                ).fetchall()
            )
            victim = next((int(pid) for (pid,) in busy if pid in children), None)
            if victim is not None:
                os.kill(victim, signal.SIGKILL)
                self.killed.append(victim)

    async def roll(self, supervisor: Supervisor, until: float) -> None:
        if self.args.rolling_every <= 0:
            return
        while True:
            await anyio.sleep(self.args.rolling_every)
            if anyio.current_time() >= until:
                return
            supervisor.restart()
            self.rolling += 1

    async def report(self, until: float) -> None:
        started = anyio.current_time()
        while (remaining := until - anyio.current_time()) > 1:
            await anyio.sleep(min(30.0, remaining))
            done = await self.scalar("SELECT count(*) FROM jobs WHERE state = 'completed'")
            log(
                f"{anyio.current_time() - started:.0f}s: {len(self.ids)} deferred, {done} completed, "
                f"{len(self.killed)} kills, {self.rolling} rolling restarts"
            )

    async def drained(self, within: float) -> None:
        """Wait until every job deferred has completed (bounded)."""
        with anyio.fail_after(within):
            while True:
                if not await self.scalar("SELECT count(*) FROM jobs WHERE state <> 'completed'"):
                    return
                await anyio.sleep(0.5)

    async def run(self) -> float:
        a = self.args
        async with anyio.create_task_group() as tg:
            supervisor: Supervisor = await tg.start(
                functools.partial(
                    run_supervisor,
                    LEDGER_APP,
                    dsn=a.dsn,
                    backend=a.backend,
                    processes=a.processes,
                    concurrency=a.concurrency,
                    heartbeat_interval=0.5,
                    rescue_after=2.0,
                    reap_interval=0.5,
                    poll_interval=0.5,
                    promote_interval=0.5,
                    restart_delay=0.2,
                    max_restart_delay=2.0,
                    max_restarts=1_000_000,
                    health_timeout=60.0,
                    shutdown_timeout=10.0,
                    status_interval=3600.0,
                    log_level="error",
                    handle_signals=False,
                )
            )
            started = anyio.current_time()
            until = started + a.duration
            async with anyio.create_task_group() as chaos:
                chaos.start_soon(self.produce, until)
                chaos.start_soon(self.kill, supervisor, until)
                chaos.start_soon(self.roll, supervisor, until)
                chaos.start_soon(self.report, until)
            log(f"producing stopped after {anyio.current_time() - started:.0f}s; draining")
            await self.drained(within=max(300.0, a.duration))
            elapsed = anyio.current_time() - started
            self.restarts = sum(c.restarts for c in supervisor.children())
            supervisor.stop()
            await supervisor.wait_stopped()
        return elapsed


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # The children import the ledger app from the repository, with DSN and schema from the environment.
    sys.path.insert(0, str(ROOT))
    from tests.faults.ledger_app import audit, create_ledger

    with migrated_schema(args.dsn, prefix="soak") as schema:
        os.environ.update(NURSERY_WORKER_DSN=args.dsn, NURSERY_WORKER_SCHEMA=schema)
        soak = Soak(args, schema)
        try:
            create_ledger(soak.conn, schema)
            log(
                f"soak of {args.duration:g}s on {args.backend}: {args.processes} processes x {args.concurrency}, "
                f"{args.rate:g} jobs/s, a kill every ~{args.kill_every:g}s; schema {schema}"
            )
            started = time.time()
            elapsed = anyio.run(soak.run, backend=args.backend)
            result = audit(soak.conn, expected=soak.ids, killed=soak.killed)
        finally:
            soak.conn.close()
            soak.app.close()
    figures = {
        "jobs": result.jobs,
        "kills": len(soak.killed),
        "restarts": soak.restarts,
        "rolling_restarts": soak.rolling,
        "attempts": result.attempts,
        "duplicates": result.duplicates,
        # Per kill: the running jobs, and as many finished ones whose outcomes were not yet written.
        "duplicate_bound": len(soak.killed) * 2 * args.concurrency,
        "lost": result.lost,
        "stuck": result.stuck,
        "unexplained": len(result.unexplained),
    }
    data = {
        "command": " ".join(["python -m benchmarks.soak", *(argv if argv is not None else sys.argv[1:])]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(elapsed, 1),
        "options": {k: v for k, v in vars(args).items() if k not in ("dsn", "output")},
        "environment": environment(args.dsn),
        "figures": figures,
        "states": result.states,
        "unexplained_examples": list(result.unexplained[:20]),
    }
    print("| figure | value |\n|---|---:|")
    for name, value in figures.items():
        print(f"| {name} | {value} |")
    print(f"| seconds | {elapsed:.0f} |")
    dump_json(Path(args.output), data)
    log(f"wrote {args.output}")
    ok = (result.lost, result.stuck, result.unexplained) == (0, 0, ()) and result.duplicates <= figures[
        "duplicate_bound"
    ]
    if not ok:
        log("SOAK FAILED: " + json.dumps({k: figures[k] for k in ("lost", "stuck", "unexplained", "duplicates")}))
        for line in result.unexplained[:20]:
            log(f"  {line}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
