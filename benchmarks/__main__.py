"""The benchmark harness of issue 3: ``python -m benchmarks`` (or ``nox -s bench``).

Sections: enqueue, throughput, latency, scaling, growth, peers, baseline, levers (and storage, a
part of levers that ``--only storage`` runs alone), steps (a job of 10 durable steps against one of
10 plain calls, on PostgreSQL and SQLite), bloat (a long transaction under a steady load, on
a private PostgreSQL server: ``benchmarks/bloat.py``). Every figure is the median of ``--reps``
repetitions; every run verifies its result in the database (all jobs really completed) and the
harness exits 1 if any verification failed. Prints markdown tables and writes JSON
(``benchmarks/results/latest.json`` unless ``--output``) with the machine, the versions, every
repetition, the medians and the targets with their ratios.

    python -m benchmarks                      # full run, about 18 minutes on 2 quiet cores
    python -m benchmarks --quick              # every section on a small N, one repetition (< 1 min + peer install)
    python -m benchmarks --only throughput,latency --reps 5
    python -m benchmarks --only steps         # the step overhead (benchmarks/steps.py); --step-jobs N
    python -m benchmarks --no-peers --dsn postgresql://postgres@127.0.0.1:5432/test
    python -m benchmarks soak --minutes 10    # the soak (benchmarks/soak.py): kills, restarts, an audit
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from . import baseline, bloat, enqueue, growth, latency, levers, peers, scaling, steps, storage, throughput
from ._common import DEFAULT_DSN, DEFAULT_OUTPUT, FULL, QUICK, Report, dump_json, environment, loadavg, log
from ._report import print_tables, targets

SECTIONS = {
    "enqueue": enqueue.run,
    "throughput": throughput.run,
    "latency": latency.run,
    "scaling": scaling.run,
    "growth": growth.run,
    "peers": peers.run,
    "baseline": baseline.run,
    "levers": levers.run,
    "steps": steps.run,
    "bloat": bloat.run,
    # Issue 21's storage levers alone; "levers" runs them too, so a full run leaves this one out.
    "storage": storage.run,
}


def main(argv: list[str] | None = None) -> int:
    args_given = sys.argv[1:] if argv is None else argv
    if args_given[:1] == ["soak"]:
        from . import soak

        return soak.main(args_given[1:])
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small N, one repetition: a smoke test")
    parser.add_argument("--only", default="", help=f"comma-separated sections: {', '.join(SECTIONS)}")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per figure (default 3, quick 1)")
    parser.add_argument(
        "--dsn",
        default=DEFAULT_DSN,
        help="PostgreSQL DSN (default $NURSERY_WORKER_BENCH_DSN, "
        "else $NURSERY_WORKER_TEST_DSN, else the local test database)",
    )
    parser.add_argument(
        "--step-jobs", type=int, default=None, help="jobs per run of the steps section (default 2,000, quick 200)"
    )
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="where to write the JSON report")
    parser.add_argument("--no-peers", action="store_true", help="skip PgQueuer, Procrastinate and oban-py")
    parser.add_argument("--render", metavar="JSON", help="print the tables of an earlier run's JSON report and exit")
    args = parser.parse_args(argv)
    if args.render:
        print_tables(json.loads(Path(args.render).read_text(encoding="utf-8")))
        return 0

    plan = QUICK if args.quick else FULL
    if args.reps is not None:
        plan = dataclasses.replace(plan, reps=max(1, args.reps))
    if args.step_jobs is not None:
        plan = dataclasses.replace(plan, step_jobs=max(1, args.step_jobs))
    chosen = [s.strip() for s in args.only.split(",") if s.strip()] or [s for s in SECTIONS if s != "storage"]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    if args.no_peers and "peers" in chosen:
        chosen.remove("peers")

    report = Report()
    env = environment(args.dsn)
    log(
        f"mode {plan.name}, {plan.reps} repetition(s), sections {', '.join(chosen)}; "
        f"load average {env['loadavg_start']}"
    )
    started = time.time()
    section_info: dict[str, Any] = {}
    peers_info: dict[str, Any] = {}
    for name in chosen:
        t0 = time.time()
        log(f"== {name} (load average {loadavg()})")
        out = SECTIONS[name](args.dsn, plan, report)
        if name == "peers" and out:
            peers_info = out
        section_info[name] = {"seconds": round(time.time() - t0, 1), "loadavg_after": loadavg()}
    env["loadavg_end"] = loadavg()
    env["peers"] = peers_info
    target_rows = targets(report)
    data = {
        "mode": plan.name,
        "plan": dataclasses.asdict(plan),
        "command": " ".join(["python -m benchmarks", *(argv if argv is not None else sys.argv[1:])]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "environment": env,
        "sections": section_info,
        "figures": [f.to_json() for f in report.figures],
        "levers": report.levers,
        "skipped": report.skipped,
        "targets": target_rows,
        "verification": {"passed": not report.verification_failures, "failures": report.verification_failures},
    }
    print_tables(data)
    dump_json(Path(args.output), data)
    log(f"wrote {args.output} ({data['seconds']:.0f}s)")
    if report.verification_failures:
        log(f"{len(report.verification_failures)} verification failure(s)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
