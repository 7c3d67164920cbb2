"""Section 3, pickup latency: an idle worker, probe jobs deferred one at a time a few ms apart.

Latency = (wall clock at the first line of the job, in the worker process) − (wall clock in the
producer right after ``defer_sync()`` returned, i.e. once the commit was acknowledged). Both
processes run on this machine and read the same clock (``time.time()``). The job's start times are
collected in memory and written to a file by a shutdown hook, so nothing is written while measuring.
The producer is the harness process, deferring through the public sync API (no thread hop).
"""

from __future__ import annotations

import json
import random
import signal
import tempfile
import time
from pathlib import Path

from ._common import BACKENDS, Plan, Report, count_states, log, migrated_schema, percentile, truncate_jobs
from ._workers import finish_runner, start_runner
from .bench_app import build_app

SECTION = "latency"
POLL_ONLY_INTERVAL = 0.1
MODES = (("LISTEN/NOTIFY", True, 1.0), (f"polling only, every {POLL_ONLY_INTERVAL:g} s", False, POLL_ONLY_INTERVAL))


def one_run(dsn: str, schema: str, backend: str, listen: bool, poll: float, samples: int) -> list[float]:
    truncate_jobs(dsn, schema)
    with tempfile.TemporaryDirectory() as tmp:
        probe_file = Path(tmp) / "probes.json"
        proc = start_runner(
            dsn,
            schema,
            backend,
            10,
            once=False,
            listen=listen,
            poll_interval=poll,
            env={"NW_BENCH_PROBE_FILE": str(probe_file)},
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.strip() != "READY":
                raise RuntimeError(f"worker did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
            time.sleep(0.3)  # let the listener connect and the first fetch pass
            app = build_app(dsn, schema)
            sent: dict[int, float] = {}
            try:
                probe = app.get_task("bench.probe")
                probe.defer_sync(seq=-1)  # warm the producer's pool
                time.sleep(0.05)
                rng = random.Random(1)
                for seq in range(samples):
                    probe.defer_sync(seq=seq)
                    sent[seq] = time.time()
                    time.sleep(rng.uniform(0.002, 0.005))
            finally:
                app.close()
            deadline = time.time() + 10
            while count_states(dsn, schema).get("completed", 0) < samples + 1 and time.time() < deadline:
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGTERM)
        finish_runner(proc, timeout=60)
        starts = dict((int(s), float(t)) for s, t in json.loads(probe_file.read_text()))
    return [(starts[seq] - sent[seq]) * 1000 for seq in sent if seq in starts]


def run(dsn: str, plan: Plan, report: Report) -> None:
    n = plan.latency_samples
    with migrated_schema(dsn) as schema:
        figs = {}
        for mode, _, _ in MODES:
            for backend in BACKENDS:
                for p in (50, 95, 99):
                    figs[mode, backend, p] = report.figure(
                        section=SECTION,
                        name=f"pickup p{p}, {mode}",
                        system="nursery-worker",
                        backend=backend,
                        unit="ms",
                        higher_is_better=False,
                        extra={"samples": n},
                    )
        for rep in range(plan.reps):
            for mode, listen, poll in MODES:
                for backend in BACKENDS if rep % 2 == 0 else BACKENDS[::-1]:
                    lat = one_run(dsn, schema, backend, listen, poll, n)
                    states = count_states(dsn, schema)
                    for p in (50, 95, 99):
                        fig = figs[mode, backend, p]
                        fig.reps.append(percentile(lat, p))
                        report.verify(
                            fig,
                            len(lat) == n and states == {"completed": n + 1},
                            f"{len(lat)}/{n} probes timed, states {states}",
                        )
                    log(
                        f"latency {backend:7} {mode}: p50 {percentile(lat, 50):.2f} ms, "
                        f"p99 {percentile(lat, 99):.2f} ms"
                    )
