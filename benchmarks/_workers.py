"""Start worker processes for the harness and read what they report."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from typing import Any

from ._common import ROOT


def worker_env(dsn: str, schema: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        NURSERY_WORKER_DSN=dsn,
        NURSERY_WORKER_SCHEMA=schema,
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
    )
    env.update(extra)
    return env


def runner_cmd(
    backend: str,
    concurrency: int,
    *,
    once: bool = True,
    listen: bool = True,
    poll_interval: float = 1.0,
    rss: bool = False,
) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks._runner",
        "--backend",
        backend,
        "--concurrency",
        str(concurrency),
        "--poll-interval",
        str(poll_interval),
    ]
    if once:
        cmd.append("--once")
    if not listen:
        cmd.append("--no-listen")
    if rss:
        cmd.append("--rss")
    return cmd


def start_runner(dsn: str, schema: str, backend: str, concurrency: int, **kwargs: Any) -> subprocess.Popen[str]:
    env = worker_env(dsn, schema, **kwargs.pop("env", {}))
    return subprocess.Popen(
        runner_cmd(backend, concurrency, **kwargs),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_runner(proc: subprocess.Popen[str], timeout: float = 600) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"worker exited with {proc.returncode}: {err[-2000:]}")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"worker printed no result: {out[-500:]} {err[-1500:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def run_once(dsn: str, schema: str, backend: str, concurrency: int, **kwargs: Any) -> dict[str, Any]:
    """One worker process, ``--once``: works off what is queued and exits."""
    return finish_runner(start_runner(dsn, schema, backend, concurrency, once=True, **kwargs))


@functools.cache
def cli_has_processes() -> bool:
    """Does ``nursery-worker run`` have ``--processes`` (the supervisor) yet?"""
    proc = subprocess.run(
        [sys.executable, "-m", "nursery_worker", "run", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    return "--processes" in proc.stdout


def run_cli_processes(dsn: str, schema: str, backend: str, concurrency: int, processes: int, n: int) -> None:
    """``nursery-worker run --processes N`` (the supervisor) until the *n* queued jobs are completed.

    The supervisor runs until signalled (``--once`` is a single-process mode), so the harness waits
    until the database shows every job completed, then stops it with SIGTERM; the figure is taken
    from the database span (first claim to last finish), not counting the children's start-up.
    """
    import signal
    import time

    from ._common import count_states

    cmd = [
        sys.executable,
        "-m",
        "nursery_worker",
        "run",
        "--app",
        "benchmarks.bench_app:app",
        "--queues",
        "bench",
        "--concurrency",
        str(concurrency),
        "--backend",
        backend,
        "--processes",
        str(processes),
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=worker_env(dsn, schema), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600
        while count_states(dsn, schema).get("completed", 0) < n:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nursery-worker run --processes ended early or timed out (exit {proc.returncode})")
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"nursery-worker run --processes exited with {proc.returncode}: {stderr[-2000:]}")
